//! The VirtualMachine lifecycle subresources (`start`, `stop`, `restart`) as virt-api decides
//! them: pure functions from the VM and its VMI to the JSON patch that carries the request.
//!
//! VMs whose strategy keeps them running (Always) or stopped (Halted) are started and stopped
//! by changing `spec.runStrategy` (or the deprecated `spec.running`); Manual and
//! RerunOnFailure VMs get a request appended to `status.stateChangeRequests`, which the VM
//! controller serves. Every patch tests the field it changes, as virt-api's do, so a
//! concurrent change of that field makes it fail (409) instead of being overwritten, while
//! the controllers' status writes in between do not. A refusal carries upstream's message.

use serde_json::{json, Value};

use crate::v1::{
    RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase,
    VirtualMachineStateChangeRequest,
};

/// `status.stateChangeRequests[].action` values.
pub const START_REQUEST: &str = "Start";
pub const STOP_REQUEST: &str = "Stop";

/// What to write to honour a request.
#[derive(Clone, Debug, PartialEq)]
pub enum VmUpdate {
    /// A JSON patch (RFC 6902) on the VM itself.
    Spec(Value),
    /// A JSON patch on the VM's `status` subresource.
    Status(Value),
}

/// Why a request is refused; the API answers with a Status of this code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 409: not possible in the VM's current state.
    Conflict(String),
    /// 500, as upstream answers a request while another one is underway.
    Internal(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Conflict(m) | Refusal::Internal(m) => m,
        }
    }
}

fn conflict<T>(message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::Conflict(message.into()))
}

/// A request to start the VM.
pub fn start_request() -> VirtualMachineStateChangeRequest {
    VirtualMachineStateChangeRequest {
        action: START_REQUEST.into(),
        ..Default::default()
    }
}

/// A request to stop the VMI with `vmi_uid` (a request naming an older VMI is stale).
pub fn stop_request(vmi_uid: Option<String>) -> VirtualMachineStateChangeRequest {
    VirtualMachineStateChangeRequest {
        action: STOP_REQUEST.into(),
        uid: vmi_uid,
        ..Default::default()
    }
}

fn uid(vmi: &VirtualMachineInstance) -> Option<String> {
    vmi.metadata.uid.clone()
}

/// The VMI counts as running for start: it exists, is not final and has a known phase.
fn vmi_active(vmi: Option<&VirtualMachineInstance>) -> bool {
    vmi.is_some_and(|v| {
        !v.is_final()
            && !matches!(
                v.phase(),
                VirtualMachineInstancePhase::Unknown | VirtualMachineInstancePhase::Unset
            )
    })
}

/// The `test` guarding a change of `path`: it still holds what was read.
fn unchanged(path: &str, value: impl serde::Serialize) -> Value {
    json!({"op": "test", "path": path, "value": value})
}

/// The patch switching the VM between Always and Halted, on whichever field it uses.
fn running_patch(vm: &VirtualMachine, running: bool) -> VmUpdate {
    let strategy = if running {
        RunStrategy::Always
    } else {
        RunStrategy::Halted
    };
    VmUpdate::Spec(match (vm.spec.run_strategy, vm.spec.running) {
        (Some(current), _) => json!([
            unchanged("/spec/runStrategy", current),
            {"op": "replace", "path": "/spec/runStrategy", "value": strategy},
        ]),
        (None, Some(current)) => json!([
            unchanged("/spec/running", current),
            {"op": "replace", "path": "/spec/running", "value": running},
        ]),
        (None, None) => json!([
            {"op": "add", "path": "/spec/running", "value": running},
        ]),
    })
}

/// The status patch adding `changes` to the VM's state change requests: refused while other
/// requests are pending, except that a lone Stop replaces them. Clears `startFailure`.
fn change_requests(
    vm: &VirtualMachine,
    changes: Vec<VirtualMachineStateChangeRequest>,
) -> Result<VmUpdate, Refusal> {
    let status = vm.status.clone().unwrap_or_default();
    let mut ops = Vec::new();
    if status == Default::default() {
        ops.push(json!({"op": "add", "path": "/status",
            "value": {"stateChangeRequests": changes}}));
        return Ok(VmUpdate::Status(Value::Array(ops)));
    }
    if let Some(current) = &status.state_change_requests {
        ops.push(unchanged("/status/stateChangeRequests", current));
    }
    let pending = status.state_change_requests.clone().unwrap_or_default();
    if pending.is_empty() {
        ops.push(json!({"op": "add", "path": "/status/stateChangeRequests", "value": changes}));
    } else if changes.len() == 1 && changes[0].action == STOP_REQUEST {
        ops.push(json!({"op": "replace", "path": "/status/stateChangeRequests", "value": changes}));
    } else {
        return Err(Refusal::Internal(
            "unable to complete request: stop/start already underway".into(),
        ));
    }
    if status.start_failure.is_some() {
        ops.push(json!({"op": "remove", "path": "/status/startFailure"}));
    }
    Ok(VmUpdate::Status(Value::Array(ops)))
}

/// `PUT .../virtualmachines/NAME/start`.
pub fn start(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
) -> Result<VmUpdate, Refusal> {
    if vmi_active(vmi) {
        return conflict("VM is already running");
    }
    let strategy = vm.run_strategy();
    match strategy {
        RunStrategy::Halted => Ok(running_patch(vm, true)),
        RunStrategy::Manual | RunStrategy::RerunOnFailure => {
            let phase = vmi.map(VirtualMachineInstance::phase);
            if strategy == RunStrategy::RerunOnFailure
                && phase == Some(VirtualMachineInstancePhase::Failed)
            {
                return conflict("RerunOnFailure does not support starting VM from failed state");
            }
            let restart = match strategy {
                RunStrategy::RerunOnFailure => {
                    phase == Some(VirtualMachineInstancePhase::Succeeded)
                }
                _ => vmi.is_some_and(VirtualMachineInstance::is_final),
            };
            let changes = match (restart, vmi) {
                (true, Some(v)) => vec![stop_request(uid(v)), start_request()],
                _ => vec![start_request()],
            };
            change_requests(vm, changes)
        }
        RunStrategy::Always | RunStrategy::Once | RunStrategy::WaitAsReceiver => {
            conflict(format!("{strategy} does not support manual start requests"))
        }
    }
}

/// `PUT .../virtualmachines/NAME/stop`; `shorter_grace` is true when the request carries a
/// grace period shorter than the VMI's (the only way to stop a VM that is already Halted
/// but still shutting down). None: nothing to write (the grace period alone was the change).
pub fn stop(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    shorter_grace: bool,
) -> Result<VmUpdate, Refusal> {
    let running = vmi.filter(|v| !v.is_final());
    match vm.run_strategy() {
        RunStrategy::Halted => {
            let Some(v) = running else {
                return conflict("VM is not running");
            };
            if !shorter_grace {
                return conflict(
                    "Halted only supports manual stop requests with a shorter graceperiod",
                );
            }
            change_requests(vm, vec![stop_request(uid(v))])
        }
        RunStrategy::Manual | RunStrategy::RerunOnFailure => match running {
            None => conflict("VM is not running"),
            Some(v) => change_requests(vm, vec![stop_request(uid(v))]),
        },
        RunStrategy::Always | RunStrategy::Once | RunStrategy::WaitAsReceiver => {
            Ok(running_patch(vm, false))
        }
    }
}

/// `PUT .../virtualmachines/NAME/restart`.
pub fn restart(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
) -> Result<VmUpdate, Refusal> {
    let strategy = vm.run_strategy();
    if matches!(strategy, RunStrategy::Halted | RunStrategy::Once) {
        // Upstream's message, typo included.
        return conflict(format!(
            "RunStategy {strategy} does not support manual restart requests"
        ));
    }
    let Some(v) = vmi else {
        return conflict("VM is not running: Halted");
    };
    change_requests(vm, vec![stop_request(uid(v)), start_request()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{VirtualMachineStartFailure, VirtualMachineStatus};

    fn vm(strategy: RunStrategy) -> VirtualMachine {
        let mut vm = VirtualMachine::test("vm").with_run_strategy(strategy);
        vm.metadata.resource_version = Some("7".into());
        vm
    }

    fn vmi(phase: VirtualMachineInstancePhase) -> VirtualMachineInstance {
        VirtualMachineInstance::test("vm").with_phase(phase)
    }

    fn apply(vm: &VirtualMachine, update: VmUpdate) -> Result<VirtualMachine, String> {
        let mut doc = serde_json::to_value(vm).unwrap();
        let (VmUpdate::Spec(p) | VmUpdate::Status(p)) = update;
        let p: json_patch::Patch = serde_json::from_value(p).unwrap();
        json_patch::patch(&mut doc, &p).map_err(|e| e.to_string())?;
        Ok(serde_json::from_value(doc).unwrap())
    }

    use VirtualMachineInstancePhase::*;

    #[test]
    fn start_switches_halted_vms_on_the_field_they_use() {
        let started = apply(
            &vm(RunStrategy::Halted),
            start(&vm(RunStrategy::Halted), None).unwrap(),
        )
        .unwrap();
        assert_eq!(started.spec.run_strategy, Some(RunStrategy::Always));
        let mut legacy = vm(RunStrategy::Halted);
        legacy.spec.run_strategy = None;
        legacy.spec.running = None;
        let started = apply(&legacy, start(&legacy, None).unwrap()).unwrap();
        assert_eq!(started.spec.running, Some(true));
        assert_eq!(started.spec.run_strategy, None);
    }

    #[test]
    fn start_refusals_use_upstream_messages() {
        let running = vmi(Running);
        assert_eq!(
            start(&vm(RunStrategy::Manual), Some(&running)),
            Err(Refusal::Conflict("VM is already running".into()))
        );
        assert_eq!(
            start(&vm(RunStrategy::Always), None),
            Err(Refusal::Conflict(
                "Always does not support manual start requests".into()
            ))
        );
        assert_eq!(
            start(&vm(RunStrategy::RerunOnFailure), Some(&vmi(Failed)))
                .unwrap_err()
                .message(),
            "RerunOnFailure does not support starting VM from failed state"
        );
    }

    #[test]
    fn manual_start_queues_requests_and_restarts_a_finished_vmi() {
        let manual = vm(RunStrategy::Manual);
        let st = apply(&manual, start(&manual, None).unwrap()).unwrap();
        let reqs = st.status.unwrap().state_change_requests.unwrap();
        assert_eq!(reqs, vec![start_request()]);
        let done = vmi(Succeeded);
        let st = apply(&manual, start(&manual, Some(&done)).unwrap()).unwrap();
        let reqs = st.status.unwrap().state_change_requests.unwrap();
        assert_eq!(reqs[0].action, STOP_REQUEST);
        assert_eq!(reqs[0].uid, done.metadata.uid);
        assert_eq!(reqs[1].action, START_REQUEST);
    }

    #[test]
    fn pending_requests_refuse_all_but_a_stop_which_replaces_them() {
        let manual = vm(RunStrategy::Manual).with_status(VirtualMachineStatus {
            state_change_requests: Some(vec![start_request()]),
            start_failure: Some(VirtualMachineStartFailure::default()),
            ..Default::default()
        });
        assert_eq!(
            start(&manual, None).unwrap_err(),
            Refusal::Internal("unable to complete request: stop/start already underway".into())
        );
        let running = vmi(Running);
        let st = apply(&manual, stop(&manual, Some(&running), false).unwrap()).unwrap();
        let status = st.status.unwrap();
        assert_eq!(
            status.state_change_requests.unwrap()[0].action,
            STOP_REQUEST
        );
        assert_eq!(status.start_failure, None, "a request clears startFailure");
    }

    #[test]
    fn stop_rules() {
        assert_eq!(
            stop(&vm(RunStrategy::Halted), None, false)
                .unwrap_err()
                .message(),
            "VM is not running"
        );
        let running = vmi(Running);
        assert_eq!(
            stop(&vm(RunStrategy::Halted), Some(&running), false)
                .unwrap_err()
                .message(),
            "Halted only supports manual stop requests with a shorter graceperiod"
        );
        assert!(stop(&vm(RunStrategy::Halted), Some(&running), true).is_ok());
        let always = vm(RunStrategy::Always);
        let stopped = apply(&always, stop(&always, Some(&running), false).unwrap()).unwrap();
        assert_eq!(stopped.spec.run_strategy, Some(RunStrategy::Halted));
        assert_eq!(
            stop(&vm(RunStrategy::Manual), Some(&vmi(Succeeded)), false)
                .unwrap_err()
                .message(),
            "VM is not running"
        );
    }

    #[test]
    fn restart_rules() {
        assert_eq!(
            restart(&vm(RunStrategy::Halted), None)
                .unwrap_err()
                .message(),
            "RunStategy Halted does not support manual restart requests"
        );
        assert_eq!(
            restart(&vm(RunStrategy::Always), None)
                .unwrap_err()
                .message(),
            "VM is not running: Halted"
        );
        let always = vm(RunStrategy::Always);
        let running = vmi(Running);
        let st = apply(&always, restart(&always, Some(&running)).unwrap()).unwrap();
        let reqs = st.status.unwrap().state_change_requests.unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].uid, running.metadata.uid);
    }

    #[test]
    fn a_concurrent_change_fails_the_patch() {
        let always = vm(RunStrategy::Always);
        let update = stop(&always, None, false).unwrap();
        let mut changed = vm(RunStrategy::Manual);
        changed.metadata.resource_version = Some("8".into());
        assert!(apply(&changed, update).is_err());
    }
}
