//! The status of a launcher pod as a kubelet would report it, from what this node knows of
//! its launcher process: phase, conditions, pod IP, the `compute` container's state and
//! restart count, QoS class. Pure: `now` is an argument.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubevirt_api::v1::well_known::COMPUTE_CONTAINER;

use crate::launchers::Observed;

fn condition(
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    now: &Time,
    old: &PodStatus,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the status holds, as the kubelet does.
    let since = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// Kubernetes' QoS class of a pod: Guaranteed when every container's CPU and memory limits
/// equal its requests, BestEffort with no requests or limits at all, else Burstable.
pub fn qos_class(pod: &Pod) -> &'static str {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let r = c.resources.clone().unwrap_or_default();
        let req = r.requests.unwrap_or_default();
        let lim = r.limits.unwrap_or_default();
        for res in ["cpu", "memory"] {
            any |= req.contains_key(res) || lim.contains_key(res);
            let l = lim.get(res);
            // A missing request defaults to the limit.
            let q = req.get(res).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The pod status for `pod` given its launcher (None: not started yet) on `node_ip`;
/// `probe_ready`: the container's readiness probe passed (true without one).
pub fn pod_status(
    pod: &Pod,
    launcher: Option<&Observed>,
    node_ip: &str,
    probe_ready: bool,
    now: Timestamp,
) -> PodStatus {
    let now_t = Time(now);
    let old = pod.status.clone().unwrap_or_default();
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let gates_ok = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .all(|g| {
            old.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        });
    let started_at = launcher.map(|l| Time(l.started_at));
    let connected = launcher.is_some_and(|l| l.status.is_some());
    let exit = launcher.and_then(|l| l.exit.clone());
    let container_id = launcher
        .and_then(|l| l.pid)
        .map(|pid| format!("kubevirt-rs://{pid}"));
    let (phase, state, running) = match (&exit, connected) {
        (Some(e), _) => (
            if e.code == 0 { "Succeeded" } else { "Failed" },
            ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: e.code,
                    reason: Some(if e.code == 0 { "Completed" } else { "Error" }.into()),
                    started_at: started_at.clone(),
                    finished_at: Some(Time(e.finished_at)),
                    message: e.message.clone(),
                    container_id: container_id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            false,
        ),
        (None, true) => (
            "Running",
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: started_at.clone(),
                }),
                ..Default::default()
            },
            true,
        ),
        (None, false) => (
            "Pending",
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            false,
        ),
    };
    let ready = running && probe_ready;
    let pod_ip = launcher
        .and_then(|l| l.status.as_ref())
        .and_then(|s| s.interfaces.iter().find_map(|i| i.ip_address.clone()))
        .or_else(|| old.pod_ip.clone());
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            launcher.is_some(),
            None,
            &now_t,
            &old,
        ),
        condition("Initialized", true, None, &now_t, &old),
        condition(
            "Ready",
            ready && gates_ok,
            (!ready).then_some(if exit.is_some() {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            &now_t,
            &old,
        ),
        condition(
            "ContainersReady",
            ready,
            (!ready).then_some(if exit.is_some() {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            &now_t,
            &old,
        ),
    ];
    // Conditions others own (PodScheduled from the scheduler, readiness gates) stay.
    let ours: Vec<String> = conditions.iter().map(|c| c.type_.clone()).collect();
    conditions.extend(
        old.conditions
            .iter()
            .flatten()
            .filter(|c| !ours.contains(&c.type_))
            .cloned(),
    );
    let mut by_type: BTreeMap<String, PodCondition> = BTreeMap::new();
    for c in conditions {
        by_type.entry(c.type_.clone()).or_insert(c);
    }
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(by_type.into_values().collect()),
        host_ip: Some(node_ip.into()),
        host_ips: Some(vec![HostIP { ip: node_ip.into() }]),
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        start_time: old
            .start_time
            .clone()
            .or(started_at.clone())
            .or(Some(now_t)),
        qos_class: Some(qos_class(pod).into()),
        container_statuses: Some(vec![ContainerStatus {
            name: COMPUTE_CONTAINER.into(),
            image: image.clone(),
            image_id: String::new(),
            container_id,
            ready,
            started: Some(running),
            restart_count: 0,
            state: Some(state),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The status a kubelet gives a pod it refuses to run.
pub fn rejected(pod: &Pod, reason: &str, message: &str) -> PodStatus {
    PodStatus {
        phase: Some("Failed".into()),
        reason: Some(reason.into()),
        message: Some(message.into()),
        conditions: pod.status.as_ref().and_then(|s| s.conditions.clone()),
        start_time: pod.status.as_ref().and_then(|s| s.start_time.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launchers::Exit;
    use k8s_openapi::api::core::v1::{Container, PodReadinessGate, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kubevirt_launcher::{InterfaceStatus, LauncherStatus};

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn pod(gate: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "compute".into(),
                    image: Some("kubevirt-rs/virt-launcher:1".into()),
                    resources: Some(ResourceRequirements {
                        requests: Some([("memory".to_string(), Quantity("200Mi".into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                readiness_gates: Some(vec![PodReadinessGate {
                    condition_type: "kubevirt.io/virtual-machine-unpaused".into(),
                }]),
                ..Default::default()
            }),
            status: gate.map(|g| PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "kubevirt.io/virtual-machine-unpaused".into(),
                    status: g.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn observed(connected: bool, exit: Option<i32>) -> Observed {
        let mut st = LauncherStatus::new(None);
        st.interfaces = vec![InterfaceStatus {
            name: "default".into(),
            mac: None,
            ip_address: Some("10.244.0.7".into()),
            binding: "masquerade".into(),
        }];
        Observed {
            pid: Some(42),
            started_at: now(),
            status: connected.then_some(st),
            exit: exit.map(|code| Exit {
                code,
                finished_at: now(),
                message: None,
            }),
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn running_launcher_makes_a_ready_running_pod_once_the_gate_is_true() {
        let s = pod_status(
            &pod(Some("True")),
            Some(&observed(true, None)),
            "127.0.0.1",
            true,
            now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.0.7"));
        assert_eq!(cond(&s, "Ready").status, "True");
        let c = &s.container_statuses.unwrap()[0];
        assert!(c.ready);
        assert_eq!(c.container_id.as_deref(), Some("kubevirt-rs://42"));
        assert_eq!(s.qos_class.as_deref(), Some("Burstable"));
        // Without the gate condition the pod runs but is not Ready.
        let s = pod_status(
            &pod(None),
            Some(&observed(true, None)),
            "127.0.0.1",
            true,
            now(),
        );
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
    }

    #[test]
    fn a_failing_readiness_probe_makes_the_container_not_ready() {
        let s = pod_status(
            &pod(Some("True")),
            Some(&observed(true, None)),
            "127.0.0.1",
            false,
            now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
        assert_eq!(cond(&s, "ContainersReady").status, "False");
        assert!(!s.container_statuses.unwrap()[0].ready);
    }

    #[test]
    fn pending_then_terminated() {
        let s = pod_status(
            &pod(Some("True")),
            Some(&observed(false, None)),
            "127.0.0.1",
            true,
            now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = &s.container_statuses.unwrap()[0];
        assert_eq!(
            c.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("ContainerCreating")
        );
        let s = pod_status(
            &pod(Some("True")),
            Some(&observed(true, Some(1))),
            "127.0.0.1",
            true,
            now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let t = s.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (1, Some("Error")));
        let s = pod_status(
            &pod(Some("True")),
            Some(&observed(true, Some(0))),
            "127.0.0.1",
            true,
            now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    }
}
