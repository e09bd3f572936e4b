//! The VMI controller's view of a VMI and its launcher pods: which pod counts, whether it is
//! ready or going down, and the VMI status that follows (phase, `activePods`, `nodeName`,
//! `Ready`, `PodScheduled`, `Synchronized`), as upstream's virt-controller computes them.
//! Pure: `now` is an argument.
//!
//! Phases this controller moves: "" -> Pending -> Scheduling (a pod exists) -> Scheduled (the
//! pod is ready on a node; the node agent takes over and moves it to Running) and -> Failed
//! when the pod fails or disappears before the VMI finished. Succeeded/Failed after Running
//! are the node agent's.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kubevirt_api::v1::well_known::COMPUTE_CONTAINER;
use kubevirt_api::v1::{
    vmi_condition, ConditionStatus, PhaseTransitionTimestamp, VirtualMachineInstance,
    VirtualMachineInstanceCondition, VirtualMachineInstancePhase as Phase,
    VirtualMachineInstanceStatus,
};

/// Why the controller's last step for a VMI failed (`Synchronized=False` reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncError {
    pub reason: &'static str,
    pub message: String,
}

/// Pods whose controlling owner is `vmi`.
pub fn controlled_pods<'a>(vmi: &VirtualMachineInstance, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let Some(uid) = vmi.metadata.uid.as_deref() else {
        return Vec::new();
    };
    pods.iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect()
}

/// The VMI's current launcher pod: the one its migration state says runs the guest (the
/// source until a migration completed, then the target), else the newest controlled one
/// that is not a migration target, on the VMI's node once it has one.
pub fn current_pod<'a>(vmi: &VirtualMachineInstance, pods: &'a [Pod]) -> Option<&'a Pod> {
    let controlled = controlled_pods(vmi, pods);
    if let Some(name) = kubevirt_api::migration::guest_pod(vmi) {
        return controlled
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(name));
    }
    let node = vmi.status.as_ref().and_then(|s| s.node_name.as_deref());
    controlled
        .into_iter()
        .filter(|p| {
            node.is_none_or(|n| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n))
        })
        .filter(|p| {
            !p.labels()
                .contains_key(kubevirt_api::migration::MIGRATION_JOB_LABEL)
        })
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn compute_terminated(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.name == COMPUTE_CONTAINER && c.state.as_ref().is_some_and(|s| s.terminated.is_some())
        })
}

/// The pod has ended or is ending: a final phase, `compute` terminated, or being deleted.
pub fn pod_down(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
        || compute_terminated(pod)
        || pod.metadata.deletion_timestamp.is_some()
}

/// Upstream's `IsPodReady`: running and not going down, every container ready except
/// `compute`, which only has to run.
pub fn pod_ready(pod: &Pod) -> bool {
    if pod_down(pod) || pod_phase(pod) != "Running" {
        return false;
    }
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    !statuses.is_empty()
        && statuses.iter().all(|c| {
            if c.name == COMPUTE_CONTAINER {
                c.state.as_ref().is_some_and(|s| s.running.is_some())
            } else {
                c.ready
            }
        })
}

fn pod_condition<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
) -> VirtualMachineInstanceCondition {
    VirtualMachineInstanceCondition {
        type_: type_.into(),
        status,
        reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
        message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        ..Default::default()
    }
}

fn status_of(s: &str) -> ConditionStatus {
    match s {
        "True" => ConditionStatus::True,
        "False" => ConditionStatus::False,
        _ => ConditionStatus::Unknown,
    }
}

/// The VMI's `Ready` condition from its pod (the controller is its only writer).
fn ready_condition(phase: Phase, pod: Option<&Pod>) -> VirtualMachineInstanceCondition {
    let not = |reason, message| {
        condition(
            vmi_condition::READY,
            ConditionStatus::False,
            reason,
            message,
        )
    };
    let Some(pod) = pod else {
        return not(
            "PodNotExists",
            "virt-launcher pod has not yet been scheduled",
        );
    };
    if pod_down(pod) {
        return not("PodTerminating", "virt-launcher pod is terminating");
    }
    if phase != Phase::Running {
        return not("GuestNotRunning", "Guest VM is not reported as running");
    }
    match pod_condition(pod, "Ready") {
        Some(c) => VirtualMachineInstanceCondition {
            type_: vmi_condition::READY.into(),
            status: status_of(&c.status),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_probe_time: c.last_probe_time.clone(),
            last_transition_time: c.last_transition_time.clone(),
        },
        None => not(
            "PodConditionMissing",
            "virt-launcher pod is missing the Ready condition",
        ),
    }
}

/// What the controller wants for a VMI besides its status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub status: VirtualMachineInstanceStatus,
    /// The node to label the VMI with (`kubevirt.io/nodeName`) once it is scheduled.
    pub node_label: Option<String>,
    /// No launcher pod is left of a finished VMI: release its finalizer.
    pub release: bool,
}

/// The next status of `vmi`, given its controlled pods and the controller's sync error.
pub fn vmi_status(
    vmi: &VirtualMachineInstance,
    pods: &[Pod],
    sync_error: Option<&SyncError>,
    now: Timestamp,
) -> Outcome {
    let now_t = Time(now);
    let old = vmi.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let controlled = controlled_pods(vmi, pods);
    let pod = current_pod(vmi, pods);
    let deleting = vmi.metadata.deletion_timestamp.is_some();
    let old_phase = vmi.phase();
    let mut out = Outcome::default();

    let active: BTreeMap<String, String> = controlled
        .iter()
        .filter_map(|p| {
            let uid = p.metadata.uid.clone()?;
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            Some((uid, node))
        })
        .collect();
    st.active_pods = Some(active).filter(|a| !a.is_empty());

    let phase = match old_phase {
        Phase::Unset | Phase::Pending => match (pod, deleting) {
            (Some(_), _) => Phase::Scheduling,
            (None, true) => Phase::Failed,
            (None, false) => Phase::Pending,
        },
        Phase::Scheduling => match pod {
            None => Phase::Failed,
            Some(p) => {
                st.remove_condition(vmi_condition::PROVISIONING);
                st.qos_class = p
                    .status
                    .as_ref()
                    .and_then(|s| s.qos_class.clone())
                    .filter(|q| !q.is_empty());
                match pod_condition(p, "PodScheduled").filter(|c| c.status == "False") {
                    Some(c) => {
                        if vmi.condition(vmi_condition::POD_SCHEDULED).is_none() {
                            st.set_condition(
                                VirtualMachineInstanceCondition {
                                    type_: vmi_condition::POD_SCHEDULED.into(),
                                    status: ConditionStatus::False,
                                    reason: c.reason.clone(),
                                    message: c.message.clone(),
                                    last_probe_time: c.last_probe_time.clone(),
                                    last_transition_time: c.last_transition_time.clone(),
                                },
                                now_t.clone(),
                            );
                        }
                    }
                    None => {
                        st.remove_condition(vmi_condition::POD_SCHEDULED);
                    }
                }
                if pod_ready(p) && !deleting {
                    let node = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    st.node_name = Some(node.clone());
                    out.node_label = Some(node);
                    Phase::Scheduled
                } else if pod_down(p) {
                    Phase::Failed
                } else {
                    Phase::Scheduling
                }
            }
        },
        Phase::Scheduled | Phase::Running if pod.is_none() => Phase::Failed,
        other => other,
    };
    st.phase = Some(phase);
    // A migration to another node completed: the VMI is on the target's node now.
    if let (Phase::Scheduled | Phase::Running, Some(node)) = (
        phase,
        pod.filter(|_| {
            old.migration_state
                .as_ref()
                .is_some_and(|m| m.completed == Some(true))
        })
        .and_then(|p| p.spec.as_ref()?.node_name.clone()),
    ) {
        if st.node_name.as_ref() != Some(&node) {
            st.node_name = Some(node.clone());
            out.node_label = Some(node);
        }
    }
    st.set_condition(ready_condition(phase, pod), now_t.clone());

    // The node agent owns Synchronized while the VMI is on its node.
    if !matches!(phase, Phase::Scheduled | Phase::Running) {
        match sync_error {
            Some(e) => {
                let keep = old.conditions.iter().flatten().any(|c| {
                    c.type_ == vmi_condition::SYNCHRONIZED && c.reason.as_deref() == Some(e.reason)
                });
                if !keep {
                    st.remove_condition(vmi_condition::SYNCHRONIZED);
                    st.set_condition(
                        condition(
                            vmi_condition::SYNCHRONIZED,
                            ConditionStatus::False,
                            e.reason,
                            &e.message,
                        ),
                        now_t.clone(),
                    );
                }
            }
            None => {
                st.remove_condition(vmi_condition::SYNCHRONIZED);
            }
        }
    }
    if phase != old_phase {
        let transitions = st.phase_transition_timestamps.get_or_insert_with(Vec::new);
        if !transitions.iter().any(|t| t.phase == Some(phase)) {
            transitions.push(PhaseTransitionTimestamp {
                phase: Some(phase),
                phase_transition_timestamp: Some(now_t),
            });
        }
    }
    out.release = phase.is_final() && controlled.is_empty();
    out.status = st;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStatus, PodCondition, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use Phase::*;

    pub fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn vmi(phase: Phase) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::test("vm").with_phase(phase);
        v.metadata.uid = Some("vmi-uid".into());
        v
    }

    fn pod(phase: &str, ready: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("virt-launcher-vm-abcde".into());
        p.metadata.uid = Some("pod-uid".into());
        p.metadata.creation_timestamp = Some(Time(now()));
        p.metadata.owner_references = Some(vec![OwnerReference {
            controller: Some(true),
            uid: "vmi-uid".into(),
            kind: "VirtualMachineInstance".into(),
            ..Default::default()
        }]);
        p.spec = Some(PodSpec {
            node_name: Some("node1".into()),
            ..Default::default()
        });
        let running = phase == "Running";
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: running.then(|| {
                vec![ContainerStatus {
                    name: "compute".into(),
                    ready,
                    state: Some(ContainerState {
                        running: Some(ContainerStateRunning::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    fn ready_reason(o: &Outcome) -> Option<String> {
        o.status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.reason.clone())
    }

    #[test]
    fn pending_vmi_without_pod_waits_and_a_pod_makes_it_scheduling() {
        let o = vmi_status(&vmi(Unset), &[], None, now());
        assert_eq!(o.status.phase, Some(Pending));
        assert_eq!(ready_reason(&o).as_deref(), Some("PodNotExists"));
        assert_eq!(o.status.active_pods, None);
        let o = vmi_status(&vmi(Pending), &[pod("Pending", false)], None, now());
        assert_eq!(o.status.phase, Some(Scheduling));
        assert_eq!(o.status.active_pods.unwrap()["pod-uid"], "node1");
        let ts = o.status.phase_transition_timestamps.unwrap();
        assert_eq!(ts[0].phase, Some(Scheduling));
    }

    #[test]
    fn a_migration_to_another_node_moves_the_vmi_once_completed() {
        let mut target = pod("Running", true);
        target.metadata.name = Some("virt-launcher-vm-target".into());
        target.metadata.uid = Some("target-uid".into());
        target.spec.as_mut().unwrap().node_name = Some("node2".into());
        let pods = [pod("Succeeded", false), target];
        let mut v = vmi(Running).on_node("node1");
        let mut state = kubevirt_api::v1::MigrationState {
            migration_uid: Some("m".into()),
            source_pod: Some("virt-launcher-vm-abcde".into()),
            target_pod: Some("virt-launcher-vm-target".into()),
            target_node: Some("node2".into()),
            ..Default::default()
        };
        v.status.as_mut().unwrap().migration_state = Some(state.clone());
        let o = vmi_status(&v, &pods, None, now());
        assert_eq!(o.status.node_name.as_deref(), Some("node1"), "not yet");
        assert_eq!(o.node_label, None);
        state.completed = Some(true);
        v.status.as_mut().unwrap().migration_state = Some(state);
        let o = vmi_status(&v, &pods, None, now());
        assert_eq!(o.status.phase, Some(Running));
        assert_eq!(o.status.node_name.as_deref(), Some("node2"));
        assert_eq!(o.node_label.as_deref(), Some("node2"));
    }

    #[test]
    fn a_ready_pod_schedules_the_vmi_on_its_node() {
        let o = vmi_status(&vmi(Scheduling), &[pod("Running", true)], None, now());
        assert_eq!(o.status.phase, Some(Scheduled));
        assert_eq!(o.status.node_name.as_deref(), Some("node1"));
        assert_eq!(o.node_label.as_deref(), Some("node1"));
        assert_eq!(ready_reason(&o).as_deref(), Some("GuestNotRunning"));
        // Ready follows the pod once the guest runs.
        let o = vmi_status(
            &vmi(Running).on_node("node1"),
            &[pod("Running", true)],
            None,
            now(),
        );
        let ready = o
            .status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, ConditionStatus::True);
    }

    #[test]
    fn unschedulable_pods_are_mirrored() {
        let mut p = pod("Pending", false);
        p.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/1 nodes are available".into()),
            ..Default::default()
        }]);
        let o = vmi_status(&vmi(Scheduling), &[p], None, now());
        let c = o
            .status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
            .unwrap();
        assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
        assert_eq!(o.status.phase, Some(Scheduling));
    }

    #[test]
    fn losing_the_pod_fails_the_vmi_and_a_final_vmi_without_pods_is_released() {
        for phase in [Scheduling, Scheduled, Running] {
            let o = vmi_status(&vmi(phase), &[], None, now());
            assert_eq!(o.status.phase, Some(Failed), "{phase:?}");
        }
        let o = vmi_status(&vmi(Scheduling), &[pod("Failed", false)], None, now());
        assert_eq!(o.status.phase, Some(Failed));
        let o = vmi_status(&vmi(Succeeded), &[pod("Succeeded", false)], None, now());
        assert!(!o.release, "the completed pod is still there");
        let o = vmi_status(&vmi(Succeeded), &[], None, now());
        assert!(o.release);
    }

    #[test]
    fn sync_errors_show_as_synchronized_false() {
        let e = SyncError {
            reason: "FailedCreate",
            message: "Error creating pod: boom".into(),
        };
        let o = vmi_status(&vmi(Pending), &[], Some(&e), now());
        let c = o
            .status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Synchronized")
            .unwrap();
        assert_eq!(c.status, ConditionStatus::False);
        assert_eq!(c.reason.as_deref(), Some("FailedCreate"));
    }
}
