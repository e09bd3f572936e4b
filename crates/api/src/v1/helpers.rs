//! Small accessors the controllers and the node agent share (no IO, no clocks: callers pass
//! the time).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;

impl VirtualMachineInstance {
    /// The phase, `Unset` when there is no status yet.
    pub fn phase(&self) -> VirtualMachineInstancePhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }

    /// True once the VMI has stopped for good (`Succeeded` or `Failed`).
    pub fn is_final(&self) -> bool {
        self.phase().is_final()
    }

    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&VirtualMachineInstanceCondition> {
        self.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == type_)
    }

    /// True when the condition of the given type has status `True`.
    pub fn condition_true(&self, type_: &str) -> bool {
        self.condition(type_)
            .is_some_and(|c| c.status == ConditionStatus::True)
    }
}

impl VirtualMachineInstanceStatus {
    /// Adds or replaces the condition of `cond.type_`. The transition time is kept when the
    /// status did not change (like upstream's condition manager) and set to `now` otherwise.
    pub fn set_condition(&mut self, cond: VirtualMachineInstanceCondition, now: Time) {
        set_condition_in(&mut self.conditions, cond, now)
    }

    /// Removes the condition of the given type; true if one was removed.
    pub fn remove_condition(&mut self, type_: &str) -> bool {
        remove_condition_in(&mut self.conditions, type_)
    }
}

impl VirtualMachine {
    /// The run strategy in effect (see [`VirtualMachineSpec::effective_run_strategy`]).
    pub fn run_strategy(&self) -> RunStrategy {
        self.spec.effective_run_strategy()
    }

    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&VirtualMachineCondition> {
        self.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == type_)
    }
}

impl VirtualMachineStatus {
    /// Adds or replaces the condition of `cond.type_`, keeping the transition time when the
    /// status did not change.
    pub fn set_condition(&mut self, cond: VirtualMachineCondition, now: Time) {
        set_condition_in(&mut self.conditions, cond, now)
    }

    /// Removes the condition of the given type; true if one was removed.
    pub fn remove_condition(&mut self, type_: &str) -> bool {
        remove_condition_in(&mut self.conditions, type_)
    }
}

/// What the condition-list bookkeeping needs from VM and VMI conditions alike.
trait ConditionEntry {
    fn type_(&self) -> &str;
    fn status(&self) -> &ConditionStatus;
    fn last_transition_time(&mut self) -> &mut Option<Time>;
}

macro_rules! condition_entry {
    ($t:ty) => {
        impl ConditionEntry for $t {
            fn type_(&self) -> &str {
                &self.type_
            }
            fn status(&self) -> &ConditionStatus {
                &self.status
            }
            fn last_transition_time(&mut self) -> &mut Option<Time> {
                &mut self.last_transition_time
            }
        }
    };
}
condition_entry!(VirtualMachineCondition);
condition_entry!(VirtualMachineInstanceCondition);

fn set_condition_in<C: ConditionEntry>(conds: &mut Option<Vec<C>>, mut cond: C, now: Time) {
    let conds = conds.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|c| c.type_() == cond.type_()) {
        Some(existing) => {
            *cond.last_transition_time() = if existing.status() == cond.status() {
                existing.last_transition_time().clone()
            } else {
                Some(now)
            };
            *existing = cond;
        }
        None => {
            cond.last_transition_time().get_or_insert(now);
            conds.push(cond);
        }
    }
}

fn remove_condition_in<C: ConditionEntry>(conds: &mut Option<Vec<C>>, type_: &str) -> bool {
    let Some(conds) = conds.as_mut() else {
        return false;
    };
    let before = conds.len();
    conds.retain(|c| c.type_() != type_);
    before != conds.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        serde_json::from_value(serde_json::Value::String(s.into())).unwrap()
    }

    fn cond(type_: &str, status: ConditionStatus) -> VirtualMachineInstanceCondition {
        VirtualMachineInstanceCondition {
            type_: type_.into(),
            status,
            ..Default::default()
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_unchanged() {
        let mut st = VirtualMachineInstanceStatus::default();
        st.set_condition(
            cond("Ready", ConditionStatus::False),
            t("2026-01-01T00:00:00Z"),
        );
        st.set_condition(
            cond("Ready", ConditionStatus::False),
            t("2026-01-01T00:00:05Z"),
        );
        let c = &st.conditions.as_ref().unwrap()[0];
        assert_eq!(c.last_transition_time, Some(t("2026-01-01T00:00:00Z")));
        st.set_condition(
            cond("Ready", ConditionStatus::True),
            t("2026-01-01T00:00:09Z"),
        );
        let c = &st.conditions.as_ref().unwrap()[0];
        assert_eq!(c.status, ConditionStatus::True);
        assert_eq!(c.last_transition_time, Some(t("2026-01-01T00:00:09Z")));
        assert_eq!(st.conditions.as_ref().unwrap().len(), 1);
        assert!(st.remove_condition("Ready"));
        assert!(!st.remove_condition("Ready"));
    }

    #[test]
    fn vmi_accessors() {
        let mut vmi = VirtualMachineInstance::default();
        assert_eq!(vmi.phase(), VirtualMachineInstancePhase::Unset);
        let mut st = VirtualMachineInstanceStatus {
            phase: Some(VirtualMachineInstancePhase::Failed),
            ..Default::default()
        };
        st.set_condition(
            cond("Ready", ConditionStatus::True),
            t("2026-01-01T00:00:00Z"),
        );
        vmi.status = Some(st);
        assert!(vmi.is_final());
        assert!(vmi.condition_true("Ready"));
        assert!(!vmi.condition_true("Paused"));
    }
}
