//! The `start`, `stop` and `restart` subresources of a VirtualMachine, as pure decisions.
//!
//! As upstream virt-api: VMs whose strategy keeps them running (Always, Once) or stopped
//! (Halted) are started/stopped by changing `spec.runStrategy` (or the deprecated
//! `spec.running`); Manual and RerunOnFailure VMs get a request appended to
//! `status.stateChangeRequests`, which the VM controller serves. Requests that cannot be
//! honoured are refused with the reason (the HTTP layer answers 409 Conflict).

use serde_json::{json, Value};

use crate::error::{ControllerError, Result};
use crate::model::{RunStrategy, StateChangeRequest, VmView, VmiView};

/// How the API must change the VM to honour a request.
#[derive(Clone, Debug, PartialEq)]
pub enum StateChange {
    /// A JSON merge patch on the VM's spec.
    PatchSpec(Value),
    /// Requests to append to `status.stateChangeRequests`.
    AppendRequests(Vec<StateChangeRequest>),
}

fn conflict(message: impl Into<String>) -> ControllerError {
    ControllerError::Conflict {
        message: message.into(),
    }
}

fn strategy_patch(vm: &VmView, to: RunStrategy) -> StateChange {
    if vm.uses_running_field {
        StateChange::PatchSpec(json!({"spec": {"running": to == RunStrategy::Always}}))
    } else {
        StateChange::PatchSpec(json!({"spec": {"runStrategy": to.as_str()}}))
    }
}

fn active(vmi: Option<&VmiView>) -> Option<&VmiView> {
    vmi.filter(|v| !v.phase.is_final() && !v.deleting)
}

pub fn start(vm: &VmView, vmi: Option<&VmiView>) -> Result<StateChange> {
    if active(vmi).is_some() {
        return Err(conflict("VM is already running"));
    }
    match vm.run_strategy {
        RunStrategy::Halted => Ok(strategy_patch(vm, RunStrategy::Always)),
        RunStrategy::Always => Err(conflict(
            "VM is starting: runStrategy Always restarts it by itself",
        )),
        RunStrategy::Once => Err(conflict("Once does not support manual start requests")),
        RunStrategy::Manual | RunStrategy::RerunOnFailure => Ok(StateChange::AppendRequests(vec![
            StateChangeRequest::start(),
        ])),
    }
}

pub fn stop(vm: &VmView, vmi: Option<&VmiView>) -> Result<StateChange> {
    let running = active(vmi);
    match vm.run_strategy {
        RunStrategy::Halted => Err(conflict("VM is not running")),
        RunStrategy::Always | RunStrategy::Once => Ok(strategy_patch(vm, RunStrategy::Halted)),
        RunStrategy::Manual | RunStrategy::RerunOnFailure => match running {
            None => Err(conflict("VM is not running")),
            Some(v) => Ok(StateChange::AppendRequests(vec![StateChangeRequest::stop(
                Some(v.uid.clone()),
            )])),
        },
    }
}

pub fn restart(vm: &VmView, vmi: Option<&VmiView>) -> Result<StateChange> {
    match vm.run_strategy {
        RunStrategy::Halted => Err(conflict("Halted does not support manual restart requests")),
        RunStrategy::Once => Err(conflict("Once does not support manual restart requests")),
        _ => match active(vmi) {
            None => Err(conflict("VM is not running")),
            Some(v) => Ok(StateChange::AppendRequests(vec![
                StateChangeRequest::stop(Some(v.uid.clone())),
                StateChangeRequest::start(),
            ])),
        },
    }
}

/// Appends `new` to the VM's status (as JSON), refusing when a request is still pending.
pub fn append_requests(
    vm_status: &mut Value,
    pending: &[StateChangeRequest],
    new: Vec<StateChangeRequest>,
) -> Result<()> {
    if !pending.is_empty() {
        return Err(conflict(
            "VM has pending state change requests; retry when they are served",
        ));
    }
    if !vm_status.is_object() {
        *vm_status = json!({});
    }
    vm_status["stateChangeRequests"] = json!(new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{StateChangeAction, VmiPhase};
    use crate::runstrategy::tests::{vm, vmi};

    #[test]
    fn start_changes_strategy_or_queues_a_request() {
        assert_eq!(
            start(&vm(RunStrategy::Halted), None).unwrap(),
            StateChange::PatchSpec(json!({"spec": {"runStrategy": "Always"}}))
        );
        let mut legacy = vm(RunStrategy::Halted);
        legacy.uses_running_field = true;
        assert_eq!(
            start(&legacy, None).unwrap(),
            StateChange::PatchSpec(json!({"spec": {"running": true}}))
        );
        match start(&vm(RunStrategy::Manual), None).unwrap() {
            StateChange::AppendRequests(r) => assert_eq!(r[0].action, StateChangeAction::Start),
            other => panic!("{other:?}"),
        }
        let err = start(&vm(RunStrategy::Manual), Some(&vmi("a", VmiPhase::Running))).unwrap_err();
        assert_eq!(err.to_string(), "VM is already running");
        assert!(start(&vm(RunStrategy::Once), None).is_err());
    }

    #[test]
    fn stop_refuses_a_stopped_vm() {
        assert_eq!(
            stop(&vm(RunStrategy::Halted), None)
                .unwrap_err()
                .to_string(),
            "VM is not running"
        );
        assert_eq!(
            stop(&vm(RunStrategy::Always), Some(&vmi("a", VmiPhase::Running))).unwrap(),
            StateChange::PatchSpec(json!({"spec": {"runStrategy": "Halted"}}))
        );
        match stop(&vm(RunStrategy::Manual), Some(&vmi("a", VmiPhase::Running))).unwrap() {
            StateChange::AppendRequests(r) => {
                assert_eq!(r, vec![StateChangeRequest::stop(Some("a".into()))])
            }
            other => panic!("{other:?}"),
        }
        assert!(stop(
            &vm(RunStrategy::Manual),
            Some(&vmi("a", VmiPhase::Succeeded))
        )
        .is_err());
    }

    #[test]
    fn restart_needs_a_running_vmi() {
        assert!(restart(&vm(RunStrategy::Always), None).is_err());
        assert!(restart(&vm(RunStrategy::Halted), None).is_err());
        match restart(&vm(RunStrategy::Always), Some(&vmi("a", VmiPhase::Running))).unwrap() {
            StateChange::AppendRequests(r) => {
                assert_eq!(r.len(), 2);
                assert_eq!(r[0].uid.as_deref(), Some("a"));
                assert_eq!(r[1].action, StateChangeAction::Start);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn append_refuses_while_pending() {
        let mut status = json!(null);
        append_requests(&mut status, &[], vec![StateChangeRequest::start()]).unwrap();
        assert_eq!(status["stateChangeRequests"][0]["action"], "Start");
        assert!(append_requests(
            &mut status,
            &[StateChangeRequest::start()],
            vec![StateChangeRequest::start()]
        )
        .is_err());
    }
}
