//! VirtualMachine status: `printableStatus`, conditions, `created`/`ready`, as upstream.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::model::{
    merge_conditions, Condition, RunStrategy, StateChangeAction, VmView, VmiPhase, VmiView,
};
use crate::runstrategy::{Decision, VmiAction};

/// Values of `status.printableStatus` (upstream's `VirtualMachinePrintableStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrintableStatus {
    Stopped,
    Provisioning,
    Starting,
    Running,
    Paused,
    Stopping,
    Terminating,
    CrashLoopBackOff,
    Migrating,
    Unknown,
    ErrorUnschedulable,
}

impl PrintableStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PrintableStatus::Stopped => "Stopped",
            PrintableStatus::Provisioning => "Provisioning",
            PrintableStatus::Starting => "Starting",
            PrintableStatus::Running => "Running",
            PrintableStatus::Paused => "Paused",
            PrintableStatus::Stopping => "Stopping",
            PrintableStatus::Terminating => "Terminating",
            PrintableStatus::CrashLoopBackOff => "CrashLoopBackOff",
            PrintableStatus::Migrating => "Migrating",
            PrintableStatus::Unknown => "Unknown",
            PrintableStatus::ErrorUnschedulable => "ErrorUnschedulable",
        }
    }
}

/// The printable status of `vm` whose VMI is `vmi` after the controller's action.
pub fn printable_status(
    vm: &VmView,
    vmi: Option<&VmiView>,
    decision: &Decision,
) -> PrintableStatus {
    if vm.deleting {
        return PrintableStatus::Terminating;
    }
    let restarts_failures = matches!(
        vm.run_strategy,
        RunStrategy::Always | RunStrategy::RerunOnFailure
    );
    let crash_looping = restarts_failures && decision.backoff_remaining.is_some();
    match vmi {
        Some(v) if v.deleting => PrintableStatus::Stopping,
        Some(v) if matches!(decision.action, VmiAction::Delete { .. }) && !v.phase.is_final() => {
            PrintableStatus::Stopping
        }
        Some(v)
            if decision.requests.first().is_some_and(|r| {
                r.action == StateChangeAction::Stop && r.uid.as_deref().is_none_or(|u| u == v.uid)
            }) && !v.phase.is_final() =>
        {
            PrintableStatus::Stopping
        }
        Some(v) => match v.phase {
            VmiPhase::Pending | VmiPhase::Scheduling | VmiPhase::Scheduled => {
                let unschedulable = v
                    .condition("PodScheduled")
                    .is_some_and(|c| !c.is_true() && c.reason.as_deref() == Some("Unschedulable"));
                if unschedulable {
                    PrintableStatus::ErrorUnschedulable
                } else {
                    PrintableStatus::Starting
                }
            }
            VmiPhase::Running if v.is_paused() => PrintableStatus::Paused,
            VmiPhase::Running => PrintableStatus::Running,
            VmiPhase::Failed if crash_looping || has_recent_failure(vm, v) => {
                PrintableStatus::CrashLoopBackOff
            }
            VmiPhase::Succeeded | VmiPhase::Failed => PrintableStatus::Stopped,
            VmiPhase::Unknown => PrintableStatus::Unknown,
        },
        None if crash_looping => PrintableStatus::CrashLoopBackOff,
        None => {
            let start_pending = decision
                .requests
                .first()
                .is_some_and(|r| r.action == StateChangeAction::Start);
            if decision.action == VmiAction::Create || start_pending {
                PrintableStatus::Starting
            } else {
                PrintableStatus::Stopped
            }
        }
    }
}

fn has_recent_failure(vm: &VmView, vmi: &VmiView) -> bool {
    matches!(
        vm.run_strategy,
        RunStrategy::Always | RunStrategy::RerunOnFailure
    ) && vm.start_failure.as_ref().is_some_and(|f| {
        f.consecutive_fail_count > 1 && f.last_failed_vmi_uid.as_deref() == Some(&vmi.uid)
    })
}

/// The conditions the VM carries: Ready (from its VMI), Paused (mirrored from the VMI),
/// Failure (when creating the VMI failed).
pub fn vm_conditions(
    vm: &VmView,
    vmi: Option<&VmiView>,
    failure: Option<&str>,
    now: &str,
) -> Vec<Condition> {
    let mut fresh = Vec::new();
    match vmi {
        None => fresh.push(Condition::new(
            "Ready",
            false,
            "VMINotExists",
            "VMI does not exist",
        )),
        Some(v) => {
            let ready = v.condition("Ready").cloned().map(|mut c| {
                c.last_transition_time = None;
                c.last_probe_time = None;
                c
            });
            fresh.push(match ready {
                Some(c) if v.phase == VmiPhase::Running => c,
                _ => Condition::new("Ready", false, "VMINotRunning", "VMI is not running"),
            });
            if v.is_paused() {
                let paused = v.condition("Paused").cloned().unwrap_or_default();
                fresh.push(Condition {
                    last_transition_time: None,
                    last_probe_time: None,
                    ..paused
                });
            }
        }
    }
    if let Some(message) = failure {
        fresh.push(Condition::new("Failure", true, "FailedCreate", message));
    }
    merge_conditions(&vm.conditions, fresh, now)
}

/// The whole `status` of a VM as a JSON merge patch (nulls remove fields).
pub fn vm_status_patch(
    vm: &VmView,
    vmi: Option<&VmiView>,
    decision: &Decision,
    failure: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    let now_s = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let printable = printable_status(vm, vmi, decision);
    let created = decision.action == VmiAction::Create
        || vmi.is_some_and(|v| !v.phase.is_final() || v.deleting);
    let ready = vmi.is_some_and(VmiView::is_ready);
    json!({
        "status": {
            "printableStatus": printable.as_str(),
            "created": created,
            "ready": ready,
            "runStrategy": vm.run_strategy.as_str(),
            "observedGeneration": vm.generation,
            "desiredGeneration": vm.generation,
            "conditions": vm_conditions(vm, vmi, failure, &now_s),
            "stateChangeRequests": if decision.requests.is_empty() {
                Value::Null
            } else {
                json!(decision.requests)
            },
            "startFailure": match &decision.start_failure {
                Some(f) => json!(f),
                None => Value::Null,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StateChangeRequest;
    use crate::runstrategy::decide;
    use crate::runstrategy::tests::{vm, vmi};

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn status(vm: &VmView, vmi: Option<&VmiView>) -> PrintableStatus {
        printable_status(vm, vmi, &decide(vm, vmi, now()))
    }

    #[test]
    fn printable_status_follows_the_vmi() {
        let always = vm(RunStrategy::Always);
        let halted = vm(RunStrategy::Halted);
        assert_eq!(status(&halted, None), PrintableStatus::Stopped);
        assert_eq!(status(&always, None), PrintableStatus::Starting);
        assert_eq!(
            status(&always, Some(&vmi("a", VmiPhase::Scheduled))),
            PrintableStatus::Starting
        );
        assert_eq!(
            status(&always, Some(&vmi("a", VmiPhase::Running))),
            PrintableStatus::Running
        );
        let mut paused = vmi("a", VmiPhase::Running);
        paused
            .conditions
            .push(Condition::new("Paused", true, "PausedByUser", ""));
        assert_eq!(status(&always, Some(&paused)), PrintableStatus::Paused);
        let mut stopping = vmi("a", VmiPhase::Running);
        stopping.deleting = true;
        assert_eq!(status(&halted, Some(&stopping)), PrintableStatus::Stopping);
        let mut terminating = always.clone();
        terminating.deleting = true;
        assert_eq!(
            status(&terminating, Some(&vmi("a", VmiPhase::Running))),
            PrintableStatus::Terminating
        );
        let manual = vm(RunStrategy::Manual);
        assert_eq!(
            status(&manual, Some(&vmi("a", VmiPhase::Succeeded))),
            PrintableStatus::Stopped
        );
    }

    #[test]
    fn stop_request_shows_stopping() {
        let mut manual = vm(RunStrategy::Manual);
        manual.requests = vec![StateChangeRequest::stop(Some("a".into()))];
        assert_eq!(
            status(&manual, Some(&vmi("a", VmiPhase::Running))),
            PrintableStatus::Stopping
        );
    }

    #[test]
    fn crash_loop_shows_while_backing_off() {
        let mut rerun = vm(RunStrategy::RerunOnFailure);
        let d = decide(&rerun, Some(&vmi("a", VmiPhase::Failed)), now());
        rerun.start_failure = d.start_failure;
        assert_eq!(status(&rerun, None), PrintableStatus::CrashLoopBackOff);
    }

    #[test]
    fn status_patch_has_upstream_fields() {
        let always = vm(RunStrategy::Always);
        let running = vmi("a", VmiPhase::Running);
        let mut ready = running.clone();
        ready.conditions = vec![Condition::new("Ready", true, "", "")];
        let d = decide(&always, Some(&ready), now());
        let patch = vm_status_patch(&always, Some(&ready), &d, None, now());
        let s = &patch["status"];
        assert_eq!(s["printableStatus"], "Running");
        assert_eq!(s["created"], true);
        assert_eq!(s["ready"], true);
        assert_eq!(s["observedGeneration"], 1);
        assert_eq!(s["conditions"][0]["type"], "Ready");
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(s["stateChangeRequests"], Value::Null);

        let halted = vm(RunStrategy::Halted);
        let d = decide(&halted, None, now());
        let patch = vm_status_patch(&halted, None, &d, Some("boom"), now());
        let s = &patch["status"];
        assert_eq!(s["printableStatus"], "Stopped");
        assert_eq!(s["created"], false);
        assert_eq!(s["conditions"][0]["reason"], "VMINotExists");
        assert_eq!(s["conditions"][1]["type"], "Failure");
    }
}
