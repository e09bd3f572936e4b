//! VirtualMachine status from the VM, its VMI and the controller's decision: `printableStatus`,
//! conditions, `created`/`ready`, as upstream's VM controller writes them. Pure: `now` is an
//! argument.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubevirt_api::statechange::{START_REQUEST, STOP_REQUEST};
use kubevirt_api::v1::well_known::VM_GENERATION_ANNOTATION;
use kubevirt_api::v1::{
    vm_condition, vmi_condition, ConditionStatus, RunStrategy, VirtualMachine,
    VirtualMachineCondition, VirtualMachineInstance, VirtualMachineInstanceCondition,
    VirtualMachineInstancePhase as Phase, VirtualMachinePrintableStatus as Printable,
    VirtualMachineStatus,
};

use crate::runstrategy::{Decision, VmiAction};

/// A failure of the controller's own last step (creating the VMI), shown as the VM's
/// `Failure` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncFailure {
    pub reason: &'static str,
    pub message: String,
}

fn vmi_condition_is(
    vmi: &VirtualMachineInstance,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
) -> bool {
    vmi.condition(type_)
        .is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason))
}

fn stop_pending(vm: &VirtualMachine, vmi: &VirtualMachineInstance) -> bool {
    vm.status
        .as_ref()
        .and_then(|s| s.state_change_requests.as_ref())
        .and_then(|r| r.first())
        .is_some_and(|r| r.action == STOP_REQUEST && (r.uid.is_none() || r.uid == vmi.metadata.uid))
}

fn crash_looping(vm: &VirtualMachine, decision: &Decision) -> bool {
    decision.backoff_remaining.is_some()
        && matches!(
            vm.run_strategy(),
            RunStrategy::Always | RunStrategy::RerunOnFailure
        )
}

/// `status.printableStatus`, first match wins as upstream: Terminating, Stopping, Migrating, Paused,
/// Running, ErrorUnschedulable, ErrImagePull/ImagePullBackOff, Starting, CrashLoopBackOff,
/// Stopped, Unknown.
pub fn printable_status(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    decision: &Decision,
) -> Printable {
    if vm.metadata.deletion_timestamp.is_some() {
        return Printable::Terminating;
    }
    let Some(v) = vmi else {
        let start_pending = decision
            .requests
            .first()
            .is_some_and(|r| r.action == START_REQUEST);
        return if crash_looping(vm, decision) {
            Printable::CrashLoopBackOff
        } else if decision.action == VmiAction::Create || start_pending {
            Printable::Starting
        } else {
            Printable::Stopped
        };
    };
    let phase = v.phase();
    if !v.is_final()
        && (v.metadata.deletion_timestamp.is_some()
            || stop_pending(vm, v)
            || vm.run_strategy() == RunStrategy::Halted)
    {
        return Printable::Stopping;
    }
    if kubevirt_api::migration::migrating(v) {
        return Printable::Migrating;
    }
    if phase == Phase::Running {
        return if v.condition_true(vmi_condition::PAUSED) {
            Printable::Paused
        } else {
            Printable::Running
        };
    }
    let synchronized_false = |reason| {
        vmi_condition_is(
            v,
            vmi_condition::SYNCHRONIZED,
            ConditionStatus::False,
            reason,
        )
    };
    if synchronized_false("FailedPvcNotFound") {
        return Printable::ErrorPvcNotFound;
    }
    if vmi_condition_is(
        v,
        vmi_condition::POD_SCHEDULED,
        ConditionStatus::False,
        "Unschedulable",
    ) {
        return Printable::ErrorUnschedulable;
    }
    if synchronized_false("ErrImagePull") {
        return Printable::ErrImagePull;
    }
    if synchronized_false("ImagePullBackOff") {
        return Printable::ImagePullBackOff;
    }
    match phase {
        Phase::Unset | Phase::Pending | Phase::Scheduling | Phase::Scheduled => Printable::Starting,
        Phase::Failed if crash_looping(vm, decision) || repeated_failure(vm, v) => {
            Printable::CrashLoopBackOff
        }
        Phase::Succeeded | Phase::Failed => Printable::Stopped,
        _ => Printable::Unknown,
    }
}

/// This failed VMI is part of a series of failed starts (the back-off applies to the next).
fn repeated_failure(vm: &VirtualMachine, vmi: &VirtualMachineInstance) -> bool {
    matches!(
        vm.run_strategy(),
        RunStrategy::Always | RunStrategy::RerunOnFailure
    ) && vm
        .status
        .as_ref()
        .and_then(|s| s.start_failure.as_ref())
        .is_some_and(|f| {
            f.consecutive_fail_count.unwrap_or(0) > 1 && f.last_failed_vmi_uid == vmi.metadata.uid
        })
}

fn vm_condition(c: &VirtualMachineInstanceCondition) -> VirtualMachineCondition {
    VirtualMachineCondition {
        type_: c.type_.clone(),
        status: c.status,
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_probe_time: c.last_probe_time.clone(),
        last_transition_time: c.last_transition_time.clone(),
    }
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> VirtualMachineCondition {
    VirtualMachineCondition {
        type_: type_.into(),
        status: ConditionStatus::from_bool(status),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

/// The VM's conditions as upstream's `syncConditions`: `Ready` (always: from the VMI, or
/// `VMINotExists` / `VMIConditionMissing`), `Failure` for the controller's own failure, and
/// every other VMI condition copied (and dropped when the VMI drops it).
pub fn vm_conditions(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    failure: Option<&SyncFailure>,
    now: &Time,
) -> Vec<VirtualMachineCondition> {
    let mut status = VirtualMachineStatus {
        conditions: vm.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let vmi_conditions = vmi
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let ready = match (
        vmi,
        vmi_conditions
            .iter()
            .find(|c| c.type_ == vmi_condition::READY),
    ) {
        (None, _) => condition(
            vm_condition::READY,
            false,
            "VMINotExists",
            "VMI does not exist",
        ),
        (Some(_), None) => condition(
            vm_condition::READY,
            false,
            "VMIConditionMissing",
            "VMI is missing the Ready condition",
        ),
        (Some(_), Some(c)) => vm_condition(c),
    };
    status.set_condition(ready, now.clone());
    // Copied VMI conditions: keep theirs as they are (times included).
    let copied: Vec<_> = vmi_conditions
        .iter()
        .filter(|c| c.type_ != vmi_condition::READY)
        .collect();
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| {
        c.type_ == vm_condition::READY
            || c.type_ == vm_condition::FAILURE
            || c.type_ == vm_condition::RESTART_REQUIRED
            || copied.iter().any(|v| v.type_ == c.type_)
    });
    for c in copied {
        let new = vm_condition(c);
        match conditions.iter_mut().find(|x| x.type_ == c.type_) {
            Some(existing) => *existing = new,
            None => conditions.push(new),
        }
    }
    match failure {
        Some(f) => status.set_condition(
            condition(vm_condition::FAILURE, true, f.reason, &f.message),
            now.clone(),
        ),
        None => {
            status.remove_condition(vm_condition::FAILURE);
        }
    }
    status.conditions.unwrap_or_default()
}

/// The VM's whole status: what the controller owns is computed, the rest (snapshot and
/// volume bookkeeping of other controllers) is kept. False booleans and empty lists are
/// left out, as upstream's `omitempty`.
pub fn vm_status(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    decision: &Decision,
    failure: Option<&SyncFailure>,
    now: Timestamp,
) -> VirtualMachineStatus {
    let now = Time(now);
    let mut status = vm.status.clone().unwrap_or_default();
    let created = decision.action == VmiAction::Create
        || vmi.is_some_and(|v| !v.is_final() || v.metadata.deletion_timestamp.is_some());
    let ready =
        vmi.is_some_and(|v| v.phase() == Phase::Running && v.condition_true(vmi_condition::READY));
    let generation = vm.metadata.generation;
    let observed = vmi
        .and_then(|v| v.metadata.annotations.as_ref())
        .and_then(|a| a.get(VM_GENERATION_ANNOTATION))
        .and_then(|g| g.parse::<i64>().ok())
        .or(generation);
    status.printable_status = Some(printable_status(vm, vmi, decision));
    status.created = created.then_some(true);
    status.ready = ready.then_some(true);
    status.run_strategy = Some(vm.run_strategy());
    status.observed_generation = observed;
    status.desired_generation = generation;
    status.conditions = Some(vm_conditions(vm, vmi, failure, &now)).filter(|c| !c.is_empty());
    status.state_change_requests = Some(decision.requests.clone()).filter(|r| !r.is_empty());
    status.start_failure = decision.start_failure.clone();
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runstrategy::decide;
    use crate::runstrategy::tests::{deleting, now, vm, vmi, with_status};
    use kubevirt_api::statechange::stop_request;
    use Phase::*;

    fn printable(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> Printable {
        printable_status(vm, vmi, &decide(vm, vmi, now()))
    }

    #[test]
    fn printable_status_follows_the_vmi() {
        let always = vm(RunStrategy::Always);
        let halted = vm(RunStrategy::Halted);
        assert_eq!(printable(&halted, None), Printable::Stopped);
        assert_eq!(printable(&always, None), Printable::Starting);
        assert_eq!(
            printable(&always, Some(&vmi("a", Scheduled))),
            Printable::Starting
        );
        assert_eq!(
            printable(&always, Some(&vmi("a", Running))),
            Printable::Running
        );
        let paused = vmi("a", Running).with_condition("Paused", ConditionStatus::True);
        assert_eq!(printable(&always, Some(&paused)), Printable::Paused);
        assert_eq!(
            printable(&halted, Some(&deleting(vmi("a", Running)))),
            Printable::Stopping
        );
        assert_eq!(
            printable(&deleting(always.clone()), Some(&vmi("a", Running))),
            Printable::Terminating
        );
        assert_eq!(
            printable(&vm(RunStrategy::Manual), Some(&vmi("a", Succeeded))),
            Printable::Stopped
        );
        let unschedulable = {
            let mut v = vmi("a", Scheduling);
            v.status.as_mut().unwrap().set_condition(
                VirtualMachineInstanceCondition {
                    type_: "PodScheduled".into(),
                    status: ConditionStatus::False,
                    reason: Some("Unschedulable".into()),
                    ..Default::default()
                },
                Time(now()),
            );
            v
        };
        assert_eq!(
            printable(&always, Some(&unschedulable)),
            Printable::ErrorUnschedulable
        );
    }

    #[test]
    fn stop_request_shows_stopping() {
        let manual = with_status(vm(RunStrategy::Manual), |s| {
            s.state_change_requests = Some(vec![stop_request(Some("a".into()))])
        });
        assert_eq!(
            printable(&manual, Some(&vmi("a", Running))),
            Printable::Stopping
        );
    }

    #[test]
    fn crash_loop_shows_while_backing_off() {
        let rerun = vm(RunStrategy::RerunOnFailure);
        let d = decide(&rerun, Some(&vmi("a", Failed)), now());
        let rerun = with_status(rerun, |s| s.start_failure = d.start_failure);
        assert_eq!(printable(&rerun, None), Printable::CrashLoopBackOff);
    }

    #[test]
    fn status_omits_false_booleans_and_mirrors_conditions() {
        let always = vm(RunStrategy::Always);
        let ready = vmi("a", Running).with_condition("AgentConnected", ConditionStatus::True);
        let d = decide(&always, Some(&ready), now());
        let s = vm_status(&always, Some(&ready), &d, None, now());
        assert_eq!(s.printable_status, Some(Printable::Running));
        assert_eq!(s.created, Some(true));
        assert_eq!(s.ready, Some(true));
        let types: Vec<_> = s
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, ["Ready", "AgentConnected"]);

        let halted = vm(RunStrategy::Halted);
        let d = decide(&halted, None, now());
        let failure = SyncFailure {
            reason: "FailedCreate",
            message: "boom".into(),
        };
        let s = vm_status(&halted, None, &d, Some(&failure), now());
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("created").is_none(), "{json}");
        assert!(json.get("ready").is_none(), "{json}");
        assert!(json.get("stateChangeRequests").is_none(), "{json}");
        assert_eq!(json["printableStatus"], "Stopped");
        assert_eq!(json["conditions"][0]["reason"], "VMINotExists");
        assert_eq!(json["conditions"][1]["type"], "Failure");

        // The VMI drops AgentConnected: so does the VM. Failure goes once the error clears.
        let with_cond = halted.clone().with_status(s);
        let s = vm_status(&with_cond, None, &d, None, now());
        let types: Vec<_> = s
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, ["Ready"]);
    }

    #[test]
    fn ready_keeps_its_transition_time() {
        let always = vm(RunStrategy::Always);
        let d = decide(&always, None, now());
        let first = vm_status(&always, None, &d, None, now());
        let t0 = first.conditions.as_ref().unwrap()[0]
            .last_transition_time
            .clone();
        let later = now()
            .checked_add(jiff::SignedDuration::from_secs(5))
            .unwrap();
        let again = vm_status(&always.clone().with_status(first), None, &d, None, later);
        assert_eq!(again.conditions.unwrap()[0].last_transition_time, t0);
    }
}
