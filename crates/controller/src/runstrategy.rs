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
//! stopped RerunOnFailure VM stays stopped. (`WaitAsReceiver` is refused by admission.)

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubevirt_api::statechange::{start_request, START_REQUEST, STOP_REQUEST};
use kubevirt_api::v1::{
    RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase,
    VirtualMachineStartFailure, VirtualMachineStateChangeRequest,
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
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub action: VmiAction,
    /// The state change requests left after this step.
    pub requests: Vec<VirtualMachineStateChangeRequest>,
    pub start_failure: Option<VirtualMachineStartFailure>,
    /// Set while a crash-loop back-off holds a (re)start back: come back after it.
    pub backoff_remaining: Option<SignedDuration>,
}

/// Delay before the next start after `failures` consecutive failed runs.
pub fn backoff_delay(failures: u32) -> SignedDuration {
    if failures == 0 {
        return SignedDuration::ZERO;
    }
    let exp = failures.saturating_sub(1).min(16);
    let secs = BACKOFF_BASE_SECONDS.saturating_mul(1i64 << exp);
    SignedDuration::from_secs(secs.min(BACKOFF_MAX_SECONDS))
}

/// Updates the start-failure record for a VMI that has finished: a Failed run counts once
/// (per VMI uid), a Succeeded one resets the count.
pub fn account_start_failure(
    previous: Option<&VirtualMachineStartFailure>,
    vmi: Option<&VirtualMachineInstance>,
    now: Timestamp,
) -> Option<VirtualMachineStartFailure> {
    let Some(vmi) = vmi else {
        return previous.cloned();
    };
    match vmi.phase() {
        VirtualMachineInstancePhase::Failed => {
            let uid = vmi.metadata.uid.clone();
            if previous.and_then(|p| p.last_failed_vmi_uid.as_ref()) == uid.as_ref() {
                return previous.cloned();
            }
            let count = previous
                .and_then(|p| p.consecutive_fail_count)
                .unwrap_or(0)
                .max(0) as u32
                + 1;
            let retry = now
                .checked_add(backoff_delay(count))
                .unwrap_or(now)
                .round(jiff::Unit::Second)
                .unwrap_or(now);
            Some(VirtualMachineStartFailure {
                consecutive_fail_count: Some(count as i32),
                last_failed_vmi_uid: uid,
                retry_after_timestamp: Some(Time(retry)),
            })
        }
        VirtualMachineInstancePhase::Succeeded => None,
        _ => previous.cloned(),
    }
}

fn backoff_remaining(
    failure: Option<&VirtualMachineStartFailure>,
    now: Timestamp,
) -> Option<SignedDuration> {
    let retry = failure?.retry_after_timestamp.as_ref()?.0;
    (retry > now).then(|| retry.duration_since(now))
}

fn is_stop(r: &VirtualMachineStateChangeRequest) -> bool {
    r.action == STOP_REQUEST
}

fn is_start(r: &VirtualMachineStateChangeRequest) -> bool {
    r.action == START_REQUEST
}

/// Decides the next step for `vm` given its current VMI (if any).
pub fn decide(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    now: Timestamp,
) -> Decision {
    let status = vm.status.clone().unwrap_or_default();
    let start_failure = account_start_failure(status.start_failure.as_ref(), vmi, now);
    let mut requests = status.state_change_requests.clone().unwrap_or_default();
    let decision = |action, requests, backoff| Decision {
        action,
        requests,
        start_failure: start_failure.clone(),
        backoff_remaining: backoff,
    };
    let strategy = vm.run_strategy();

    if vm.metadata.deletion_timestamp.is_some() {
        let action = match vmi {
            Some(v) if v.metadata.deletion_timestamp.is_none() => VmiAction::Delete {
                reason: "VirtualMachineDeleted",
            },
            _ => VmiAction::None,
        };
        return decision(action, Vec::new(), None);
    }

    match vmi {
        Some(v) if v.metadata.deletion_timestamp.is_some() => {
            decision(VmiAction::None, requests, None)
        }
        Some(v) => {
            // A Stop naming another (older) VMI is stale; a Start while this VMI is active
            // has been served already.
            loop {
                match requests.first() {
                    Some(r) if is_stop(r) => {
                        if r.uid.is_none() || r.uid == v.metadata.uid {
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
                    Some(r) if is_start(r) && !v.is_final() => {
                        requests.remove(0);
                    }
                    _ => break,
                }
            }
            let start_requested = requests.first().is_some_and(is_start);
            let action = match strategy {
                RunStrategy::Halted => VmiAction::Delete {
                    reason: "RunStrategyHalted",
                },
                RunStrategy::Always if v.is_final() => VmiAction::Delete {
                    reason: "VMIFinished",
                },
                RunStrategy::RerunOnFailure if v.phase() == VirtualMachineInstancePhase::Failed => {
                    if !start_requested {
                        requests.insert(0, start_request());
                    }
                    VmiAction::Delete {
                        reason: "VMIFailed",
                    }
                }
                RunStrategy::Manual | RunStrategy::RerunOnFailure
                    if v.is_final() && start_requested =>
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
            while requests.first().is_some_and(is_stop) {
                requests.remove(0);
            }
            let start_requested = requests.first().is_some_and(is_start);
            let first_time = status.run_strategy != Some(strategy);
            let wants_running = match strategy {
                RunStrategy::Always => true,
                RunStrategy::RerunOnFailure | RunStrategy::Once => first_time || start_requested,
                RunStrategy::Manual => start_requested,
                RunStrategy::Halted | RunStrategy::WaitAsReceiver => false,
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
    use kubevirt_api::statechange::stop_request;
    use kubevirt_api::v1::{ConditionStatus, VirtualMachineStatus};
    use VirtualMachineInstancePhase::*;

    pub fn vm(strategy: RunStrategy) -> VirtualMachine {
        VirtualMachine::test("testvm").with_run_strategy(strategy)
    }

    pub fn with_status(
        vm: VirtualMachine,
        f: impl FnOnce(&mut VirtualMachineStatus),
    ) -> VirtualMachine {
        let mut st = vm.status.clone().unwrap_or_default();
        f(&mut st);
        vm.with_status(st)
    }

    pub fn vmi(uid: &str, phase: VirtualMachineInstancePhase) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::test("testvm")
            .with_phase(phase)
            .with_condition("Ready", ConditionStatus::from_bool(phase == Running));
        v.metadata.uid = Some(uid.into());
        v
    }

    pub fn deleting<T: kube::Resource>(mut o: T) -> T {
        o.meta_mut().deletion_timestamp = Some(Time(now()));
        o
    }

    pub fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn always_creates_and_recreates_finished_vmis() {
        let vm = vm(RunStrategy::Always);
        assert_eq!(decide(&vm, None, now()).action, VmiAction::Create);
        assert_eq!(
            decide(&vm, Some(&vmi("a", Running)), now()).action,
            VmiAction::None
        );
        assert!(matches!(
            decide(&vm, Some(&vmi("a", Succeeded)), now()).action,
            VmiAction::Delete { .. }
        ));
    }

    #[test]
    fn halted_deletes_and_never_creates() {
        let halted = vm(RunStrategy::Halted);
        assert_eq!(decide(&halted, None, now()).action, VmiAction::None);
        assert!(matches!(
            decide(&halted, Some(&vmi("a", Running)), now()).action,
            VmiAction::Delete { .. }
        ));
        let with_start = with_status(halted, |s| {
            s.state_change_requests = Some(vec![start_request()])
        });
        let d = decide(&with_start, None, now());
        assert_eq!(d.action, VmiAction::None);
        assert!(d.requests.is_empty(), "stale requests are dropped");
    }

    #[test]
    fn manual_follows_requests_only() {
        let manual = vm(RunStrategy::Manual);
        assert_eq!(decide(&manual, None, now()).action, VmiAction::None);
        let started = with_status(manual.clone(), |s| {
            s.state_change_requests = Some(vec![start_request()])
        });
        let d = decide(&started, None, now());
        assert_eq!(d.action, VmiAction::Create);
        assert!(d.requests.is_empty(), "Start is consumed by the creation");
        // A finished VMI stays until someone asks to start again.
        let done = vmi("a", Failed);
        assert_eq!(decide(&manual, Some(&done), now()).action, VmiAction::None);
        assert!(matches!(
            decide(&started, Some(&done), now()).action,
            VmiAction::Delete { .. }
        ));
    }

    #[test]
    fn rerun_on_failure_reruns_only_failures_with_backoff() {
        let vm0 = vm(RunStrategy::RerunOnFailure);
        let d = decide(&vm0, Some(&vmi("a", Succeeded)), now());
        assert_eq!(d.action, VmiAction::None);
        assert_eq!(d.start_failure, None);
        // Stopped (VMI deleted by a stop request): stays stopped.
        let acted = with_status(vm0.clone(), |s| {
            s.run_strategy = Some(RunStrategy::RerunOnFailure)
        });
        assert_eq!(decide(&acted, None, now()).action, VmiAction::None);

        let failed = vmi("b", Failed);
        let d = decide(&vm0, Some(&failed), now());
        assert!(matches!(d.action, VmiAction::Delete { .. }));
        let sf = d.start_failure.clone().unwrap();
        assert_eq!(sf.consecutive_fail_count, Some(1));
        assert_eq!(sf.last_failed_vmi_uid.as_deref(), Some("b"));
        assert_eq!(
            sf.retry_after_timestamp.unwrap().0,
            "2026-01-01T00:00:10Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(d.requests, vec![start_request()]);

        // The VMI is gone; the restart waits for the back-off.
        let vm1 = with_status(acted, |s| {
            s.state_change_requests = Some(d.requests.clone());
            s.start_failure = d.start_failure.clone();
        });
        let d = decide(&vm1, None, now());
        assert_eq!(d.action, VmiAction::None);
        assert_eq!(d.backoff_remaining, Some(SignedDuration::from_secs(10)));
        let later = now().checked_add(SignedDuration::from_secs(11)).unwrap();
        assert_eq!(decide(&vm1, None, later).action, VmiAction::Create);

        // Seeing the same failed VMI again does not count twice.
        let d = decide(&vm1, Some(&failed), now());
        assert_eq!(d.start_failure.unwrap().consecutive_fail_count, Some(1));
    }

    #[test]
    fn once_runs_once() {
        let once = vm(RunStrategy::Once);
        assert_eq!(decide(&once, None, now()).action, VmiAction::Create);
        let acted = with_status(once, |s| s.run_strategy = Some(RunStrategy::Once));
        assert_eq!(decide(&acted, None, now()).action, VmiAction::None);
        for phase in [Succeeded, Failed] {
            assert_eq!(
                decide(&acted, Some(&vmi("a", phase)), now()).action,
                VmiAction::None
            );
        }
    }

    #[test]
    fn restart_stops_the_named_vmi_then_starts_a_new_one() {
        let restarting = with_status(vm(RunStrategy::Always), |s| {
            s.state_change_requests = Some(vec![stop_request(Some("a".into())), start_request()])
        });
        let a = vmi("a", Running);
        let d = decide(&restarting, Some(&a), now());
        assert_eq!(
            d.action,
            VmiAction::Delete {
                reason: "StopRequested"
            }
        );
        assert_eq!(d.requests.len(), 2, "kept until the VMI is gone");
        assert_eq!(
            decide(&restarting, Some(&deleting(a)), now()).action,
            VmiAction::None
        );
        let d = decide(&restarting, None, now());
        assert_eq!(d.action, VmiAction::Create);
        assert!(d.requests.is_empty());
        // A stale Stop naming the old VMI does not stop the new one.
        let stale = with_status(vm(RunStrategy::Always), |s| {
            s.state_change_requests = Some(vec![stop_request(Some("a".into()))])
        });
        let d = decide(&stale, Some(&vmi("b", Running)), now());
        assert_eq!(d.action, VmiAction::None);
        assert!(d.requests.is_empty());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_delay(1), SignedDuration::from_secs(10));
        assert_eq!(backoff_delay(2), SignedDuration::from_secs(20));
        assert_eq!(backoff_delay(4), SignedDuration::from_secs(80));
        assert_eq!(backoff_delay(10), SignedDuration::from_secs(300));
        assert_eq!(backoff_delay(u32::MAX), SignedDuration::from_secs(300));
    }

    #[test]
    fn deleting_vm_deletes_its_vmi() {
        let vm = deleting(vm(RunStrategy::Always));
        assert!(matches!(
            decide(&vm, Some(&vmi("a", Running)), now()).action,
            VmiAction::Delete { .. }
        ));
        assert_eq!(decide(&vm, None, now()).action, VmiAction::None);
    }
}
