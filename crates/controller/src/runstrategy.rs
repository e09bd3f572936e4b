//! What the VM controller does with a VM's VMI: runStrategy semantics as upstream KubeVirt.
//!
//! | runStrategy    | no VMI                    | VMI active        | VMI finished                   |
//! |----------------|---------------------------|-------------------|--------------------------------|
//! | Always         | create (after back-off)   | keep              | delete, then create again      |
//! | RerunOnFailure | create (see below)        | keep              | Failed: rerun; Succeeded: keep |
//! | Once           | create (see below)        | keep              | keep (never rerun)             |
//! | Manual         | create on a Start request | keep              | rerun on a Start request       |
//! | Halted         | nothing                   | delete            | delete                         |
//!
//! A Stop request (`status.stateChangeRequests`, written by the `stop`/`restart`
//! subresources) deletes the VMI it names; once that VMI is gone the request is dropped and
//! a following Start request (restart) creates the next one.
//!
//! RerunOnFailure and Once create a VMI when the controller first acts on that strategy
//! (`status.runStrategy` differs from the spec) or on a Start request; deleting a failed
//! RerunOnFailure VMI queues a Start so the rerun survives a controller restart, and a
//! stopped RerunOnFailure VM stays stopped.

use chrono::{DateTime, Duration, Utc};

use crate::model::{
    RunStrategy, StartFailure, StateChangeAction, StateChangeRequest, VmView, VmiPhase, VmiView,
};

/// Base and cap of the crash-loop back-off, as upstream (10 s doubling to 5 min).
pub const BACKOFF_BASE_SECONDS: i64 = 10;
pub const BACKOFF_MAX_SECONDS: i64 = 300;

/// What to do with the VMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmiAction {
    None,
    Create,
    /// Delete the VMI; the reason ends up in the event.
    Delete {
        reason: &'static str,
    },
}

/// The outcome of one decision: an action plus the status bookkeeping it implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: VmiAction,
    /// The state change requests left after this step.
    pub requests: Vec<StateChangeRequest>,
    pub start_failure: Option<StartFailure>,
    /// Set while a crash-loop back-off holds a (re)start back: come back after it.
    pub backoff_remaining: Option<Duration>,
}

/// Delay before the next start after `failures` consecutive failed runs.
pub fn backoff_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::zero();
    }
    let exp = failures.saturating_sub(1).min(16);
    let secs = BACKOFF_BASE_SECONDS.saturating_mul(1i64 << exp);
    Duration::seconds(secs.min(BACKOFF_MAX_SECONDS))
}

/// Updates the start-failure record for a VMI that has finished: a Failed run counts once
/// (per VMI uid), a Succeeded one resets the count.
pub fn account_start_failure(
    previous: Option<&StartFailure>,
    vmi: Option<&VmiView>,
    now: DateTime<Utc>,
) -> Option<StartFailure> {
    let Some(vmi) = vmi else {
        return previous.cloned();
    };
    match vmi.phase {
        VmiPhase::Failed => {
            if previous.and_then(|p| p.last_failed_vmi_uid.as_deref()) == Some(vmi.uid.as_str()) {
                return previous.cloned();
            }
            let count = previous.map_or(0, |p| p.consecutive_fail_count) + 1;
            Some(StartFailure {
                consecutive_fail_count: count,
                last_failed_vmi_uid: Some(vmi.uid.clone()),
                retry_after_timestamp: Some(
                    (now + backoff_delay(count)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
            })
        }
        VmiPhase::Succeeded => None,
        _ => previous.cloned(),
    }
}

fn backoff_remaining(failure: Option<&StartFailure>, now: DateTime<Utc>) -> Option<Duration> {
    let retry = failure?.retry_after_timestamp.as_deref()?;
    let retry = DateTime::parse_from_rfc3339(retry)
        .ok()?
        .with_timezone(&Utc);
    (retry > now).then(|| retry - now)
}

/// Decides the next step for `vm` given its current VMI (if any).
pub fn decide(vm: &VmView, vmi: Option<&VmiView>, now: DateTime<Utc>) -> Decision {
    let start_failure = account_start_failure(vm.start_failure.as_ref(), vmi, now);
    let mut requests = vm.requests.clone();
    let decision = |action, requests, backoff| Decision {
        action,
        requests,
        start_failure: start_failure.clone(),
        backoff_remaining: backoff,
    };

    if vm.deleting {
        let action = match vmi {
            Some(v) if !v.deleting => VmiAction::Delete {
                reason: "VirtualMachineDeleted",
            },
            _ => VmiAction::None,
        };
        return decision(action, Vec::new(), None);
    }

    match vmi {
        Some(v) if v.deleting => decision(VmiAction::None, requests, None),
        Some(v) => {
            // A Stop naming another (older) VMI is stale; a Start while this VMI is active
            // has been served already.
            loop {
                match requests.first() {
                    Some(r) if r.action == StateChangeAction::Stop => {
                        if r.uid.as_deref().is_none_or(|u| u == v.uid) {
                            return decision(
                                VmiAction::Delete {
                                    reason: "StopRequested",
                                },
                                requests,
                                None,
                            );
                        }
                        requests.remove(0);
                    }
                    Some(r) if r.action == StateChangeAction::Start && !v.phase.is_final() => {
                        requests.remove(0);
                    }
                    _ => break,
                }
            }
            let start_requested = requests
                .first()
                .is_some_and(|r| r.action == StateChangeAction::Start);
            let action = match vm.run_strategy {
                RunStrategy::Halted => VmiAction::Delete {
                    reason: "RunStrategyHalted",
                },
                RunStrategy::Always if v.phase.is_final() => VmiAction::Delete {
                    reason: "VMIFinished",
                },
                RunStrategy::RerunOnFailure if v.phase == VmiPhase::Failed => {
                    if !start_requested {
                        requests.insert(0, StateChangeRequest::start());
                    }
                    VmiAction::Delete {
                        reason: "VMIFailed",
                    }
                }
                RunStrategy::Manual | RunStrategy::RerunOnFailure
                    if v.phase.is_final() && start_requested =>
                {
                    VmiAction::Delete {
                        reason: "StartRequested",
                    }
                }
                _ => VmiAction::None,
            };
            decision(action, requests, None)
        }
        None => {
            while requests
                .first()
                .is_some_and(|r| r.action == StateChangeAction::Stop)
            {
                requests.remove(0);
            }
            let start_requested = requests
                .first()
                .is_some_and(|r| r.action == StateChangeAction::Start);
            let first_time = vm.status_run_strategy != Some(vm.run_strategy);
            let wants_running = match vm.run_strategy {
                RunStrategy::Always => true,
                RunStrategy::RerunOnFailure | RunStrategy::Once => first_time || start_requested,
                RunStrategy::Manual => start_requested,
                RunStrategy::Halted => false,
            };
            if !wants_running {
                return decision(VmiAction::None, Vec::new(), None);
            }
            if let Some(wait) = backoff_remaining(start_failure.as_ref(), now) {
                return decision(VmiAction::None, requests, Some(wait));
            }
            if start_requested {
                requests.remove(0);
            }
            decision(VmiAction::Create, requests, None)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Condition;

    pub fn vm(strategy: RunStrategy) -> VmView {
        VmView {
            namespace: "default".into(),
            name: "testvm".into(),
            uid: "vm-uid".into(),
            generation: 1,
            deleting: false,
            run_strategy: strategy,
            requests: vec![],
            start_failure: None,
            conditions: vec![],
            printable_status: None,
            status_run_strategy: None,
            uses_running_field: false,
        }
    }

    pub fn vmi(uid: &str, phase: VmiPhase) -> VmiView {
        VmiView {
            uid: uid.into(),
            phase,
            deleting: false,
            node_name: None,
            conditions: vec![Condition::new("Ready", phase == VmiPhase::Running, "", "")],
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn always_creates_and_recreates_finished_vmis() {
        let vm = vm(RunStrategy::Always);
        assert_eq!(decide(&vm, None, now()).action, VmiAction::Create);
        let running = vmi("a", VmiPhase::Running);
        assert_eq!(decide(&vm, Some(&running), now()).action, VmiAction::None);
        let done = vmi("a", VmiPhase::Succeeded);
        assert!(matches!(
            decide(&vm, Some(&done), now()).action,
            VmiAction::Delete { .. }
        ));
    }

    #[test]
    fn halted_deletes_and_never_creates() {
        let mut vm = vm(RunStrategy::Halted);
        assert_eq!(decide(&vm, None, now()).action, VmiAction::None);
        assert!(matches!(
            decide(&vm, Some(&vmi("a", VmiPhase::Running)), now()).action,
            VmiAction::Delete { .. }
        ));
        vm.requests = vec![StateChangeRequest::start()];
        let d = decide(&vm, None, now());
        assert_eq!(d.action, VmiAction::None);
        assert!(d.requests.is_empty(), "stale requests are dropped");
    }

    #[test]
    fn manual_follows_requests_only() {
        let mut vm = vm(RunStrategy::Manual);
        assert_eq!(decide(&vm, None, now()).action, VmiAction::None);
        vm.requests = vec![StateChangeRequest::start()];
        let d = decide(&vm, None, now());
        assert_eq!(d.action, VmiAction::Create);
        assert!(d.requests.is_empty(), "Start is consumed by the creation");
        // A finished VMI stays until someone asks to start again.
        vm.requests.clear();
        let done = vmi("a", VmiPhase::Failed);
        assert_eq!(decide(&vm, Some(&done), now()).action, VmiAction::None);
        vm.requests = vec![StateChangeRequest::start()];
        assert!(matches!(
            decide(&vm, Some(&done), now()).action,
            VmiAction::Delete { .. }
        ));
    }

    #[test]
    fn rerun_on_failure_reruns_only_failures_with_backoff() {
        let vm0 = vm(RunStrategy::RerunOnFailure);
        let ok = vmi("a", VmiPhase::Succeeded);
        let d = decide(&vm0, Some(&ok), now());
        assert_eq!(d.action, VmiAction::None);
        assert_eq!(d.start_failure, None);
        // Stopped (VMI deleted by a stop request): stays stopped.
        let mut stopped = vm0.clone();
        stopped.status_run_strategy = Some(RunStrategy::RerunOnFailure);
        assert_eq!(decide(&stopped, None, now()).action, VmiAction::None);

        let failed = vmi("b", VmiPhase::Failed);
        let d = decide(&vm0, Some(&failed), now());
        assert!(matches!(d.action, VmiAction::Delete { .. }));
        let sf = d.start_failure.clone().unwrap();
        assert_eq!(sf.consecutive_fail_count, 1);
        assert_eq!(sf.last_failed_vmi_uid.as_deref(), Some("b"));
        assert_eq!(
            sf.retry_after_timestamp.as_deref(),
            Some("2026-01-01T00:00:10Z")
        );

        assert_eq!(d.requests, vec![StateChangeRequest::start()]);

        // The VMI is gone; the restart waits for the back-off.
        let mut vm1 = vm0.clone();
        vm1.status_run_strategy = Some(RunStrategy::RerunOnFailure);
        vm1.requests = d.requests.clone();
        vm1.start_failure = Some(sf.clone());
        let d = decide(&vm1, None, now());
        assert_eq!(d.action, VmiAction::None);
        assert_eq!(d.backoff_remaining, Some(Duration::seconds(10)));
        let d = decide(&vm1, None, now() + Duration::seconds(11));
        assert_eq!(d.action, VmiAction::Create);

        // Seeing the same failed VMI again does not count twice.
        let d = decide(&vm1, Some(&failed), now());
        assert_eq!(d.start_failure.unwrap().consecutive_fail_count, 1);
    }

    #[test]
    fn once_runs_once() {
        let mut vm = vm(RunStrategy::Once);
        assert_eq!(decide(&vm, None, now()).action, VmiAction::Create);
        vm.status_run_strategy = Some(RunStrategy::Once);
        assert_eq!(decide(&vm, None, now()).action, VmiAction::None);
        for phase in [VmiPhase::Succeeded, VmiPhase::Failed] {
            assert_eq!(
                decide(&vm, Some(&vmi("a", phase)), now()).action,
                VmiAction::None
            );
        }
    }

    #[test]
    fn restart_stops_the_named_vmi_then_starts_a_new_one() {
        let mut vm = vm(RunStrategy::Always);
        vm.requests = vec![
            StateChangeRequest::stop(Some("a".into())),
            StateChangeRequest::start(),
        ];
        let a = vmi("a", VmiPhase::Running);
        let d = decide(&vm, Some(&a), now());
        assert_eq!(
            d.action,
            VmiAction::Delete {
                reason: "StopRequested"
            }
        );
        assert_eq!(d.requests.len(), 2, "kept until the VMI is gone");
        let mut deleting = a.clone();
        deleting.deleting = true;
        assert_eq!(decide(&vm, Some(&deleting), now()).action, VmiAction::None);
        let d = decide(&vm, None, now());
        assert_eq!(d.action, VmiAction::Create);
        assert!(d.requests.is_empty());
        // A stale Stop naming the old VMI does not stop the new one.
        vm.requests = vec![StateChangeRequest::stop(Some("a".into()))];
        let d = decide(&vm, Some(&vmi("b", VmiPhase::Running)), now());
        assert_eq!(d.action, VmiAction::None);
        assert!(d.requests.is_empty());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_delay(1), Duration::seconds(10));
        assert_eq!(backoff_delay(2), Duration::seconds(20));
        assert_eq!(backoff_delay(4), Duration::seconds(80));
        assert_eq!(backoff_delay(10), Duration::seconds(300));
        assert_eq!(backoff_delay(u32::MAX), Duration::seconds(300));
    }

    #[test]
    fn deleting_vm_deletes_its_vmi() {
        let mut vm = vm(RunStrategy::Always);
        vm.deleting = true;
        assert!(matches!(
            decide(&vm, Some(&vmi("a", VmiPhase::Running)), now()).action,
            VmiAction::Delete { .. }
        ));
        assert_eq!(decide(&vm, None, now()).action, VmiAction::None);
    }
}
