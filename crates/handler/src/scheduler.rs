//! The embedded scheduler: on one machine there is no kube-scheduler, so this binds pending
//! pods to the one node when they fit, and otherwise marks them `PodScheduled=False` /
//! `Unschedulable` with kube-scheduler's message, which the VMI and VM then show
//! (`ErrorUnschedulable`). Only pods for the default scheduler are taken.
//!
//! What "fits" means here: node Ready and not cordoned, `nodeSelector`, required node
//! affinity, taints, memory and extended resources (`devices.kubevirt.io/...`) within what
//! the node offers minus what its running pods requested. CPU requests are not enforced:
//! vCPUs are threads and overcommitting them is what a single machine running VMs does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Binding, Node, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolumeClaim, Pod, PodCondition, Taint,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use kubevirt_api::Quantity;
use kubevirt_reconcile::events::{EventRecorder, EventType};
use kubevirt_reconcile::{api_call, api_call_on, status::write_status};

use crate::error::{HandlerError, Result};

pub const COMPONENT: &str = "default-scheduler";

pub struct Context {
    pub client: Client,
    pub node: String,
    pub recorder: EventRecorder,
    /// Pods already on the node (the node agent's own cache of them).
    pub node_pods: Store<Pod>,
    /// The node itself (watched: scheduling reads it for every pod).
    pub nodes: Store<Node>,
    /// Pods bound here that the cache has not shown yet, with what they requested.
    assumed: Mutex<HashMap<String, BTreeMap<String, i128>>>,
}

fn quantity(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> i128 {
    Quantity::parse(&q.0).map_or(0, |q| i128::from(q.milli_value()))
}

/// What a pod asks of a node, in thousandths: requests, and extended resources' limits
/// (Kubernetes defaults their request to the limit).
pub fn requested(pod: &Pod) -> BTreeMap<String, i128> {
    let mut out = BTreeMap::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let r = c.resources.clone().unwrap_or_default();
        let mut mine: BTreeMap<String, i128> = BTreeMap::new();
        for (k, v) in r.requests.unwrap_or_default() {
            mine.insert(k, quantity(&v));
        }
        for (k, v) in r.limits.unwrap_or_default() {
            if k.contains('/') {
                mine.entry(k).or_insert(quantity(&v));
            }
        }
        for (k, v) in mine {
            *out.entry(k).or_insert(0) += v;
        }
    }
    out
}

fn active(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.name_any();
    term.match_expressions
        .iter()
        .flatten()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && term
            .match_fields
            .iter()
            .flatten()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&name)))
}

fn tolerated(pod: &Pod, taint: &Taint) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.tolerations.iter().flatten())
        .any(|t| {
            let key_ok = t
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == taint.key);
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == taint.effect);
            let value_ok = match t.operator.as_deref() {
                Some("Exists") => true,
                _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
            };
            key_ok && effect_ok && value_ok
        })
}

/// Why `pod` cannot run on `node` given what `others` already requested; None: it fits.
/// The reason is kube-scheduler's per-node wording (`node(s) didn't match ...`).
pub fn unfit(pod: &Pod, node: &Node, others: &[BTreeMap<String, i128>]) -> Option<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    if !ready {
        taints.push(Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        taints.push(Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    for t in taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
    {
        if !tolerated(pod, t) {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            ));
        }
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|req| {
            req.node_selector_terms
                .iter()
                .any(|t| term_matches(t, node))
        });
    if !selector_ok || !affinity_ok {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let allocatable = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .unwrap_or_default();
    let want = requested(pod);
    for (resource, amount) in &want {
        if resource == "cpu" || *amount == 0 {
            continue;
        }
        let has = allocatable.get(resource).map_or(0, quantity);
        let used: i128 = others.iter().filter_map(|o| o.get(resource)).sum();
        if used + amount > has {
            return Some(format!("Insufficient {resource}"));
        }
    }
    None
}

/// kube-scheduler's message for a pod no node takes (one node here).
pub fn unschedulable_message(reason: &str) -> String {
    format!(
        "0/1 nodes are available: 1 {reason}. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    )
}

impl Context {
    pub fn new(client: Client, node: String, node_pods: Store<Pod>, nodes: Store<Node>) -> Self {
        Context {
            recorder: EventRecorder::new(client.clone(), COMPONENT, None),
            client,
            node,
            node_pods,
            nodes,
            assumed: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event without holding up the next pod (the scheduler takes one at a time).
    fn publish(&self, pod: &Pod, type_: EventType, reason: &'static str, message: String) {
        let (recorder, pod) = (self.recorder.clone(), pod.clone());
        tokio::spawn(async move { recorder.publish(&pod, type_, reason, &message).await });
    }
}

/// What the pod's claims allow, as kube-scheduler's VolumeBinding plugin decides it.
enum VolumeCheck {
    Ready,
    /// A `WaitForFirstConsumer` claim is being provisioned for this node.
    Wait,
    Unschedulable(String),
}

async fn volume_check(ctx: &Context, pod: &Pod) -> Result<VolumeCheck> {
    let ns = pod.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let mut unbound_immediate = false;
    let mut wait = false;
    for name in kubevirt_storage::claims::pod_claims(pod) {
        let Some(pvc) = claims.get_opt(name).await.map_err(api_call_on(
            "getting",
            "PersistentVolumeClaim",
            &ns,
            name,
        ))?
        else {
            return Ok(VolumeCheck::Unschedulable(format!(
                "persistentvolumeclaim \"{name}\" not found"
            )));
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Ok(VolumeCheck::Unschedulable(format!(
                "persistentvolumeclaim \"{name}\" is being deleted"
            )));
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let class_name = spec.storage_class_name.unwrap_or_default();
        let class = match class_name.as_str() {
            "" => None,
            c => classes
                .get_opt(c)
                .await
                .map_err(api_call_on("getting", "StorageClass", "", c))?,
        };
        let delayed = class
            .as_ref()
            .and_then(|c| c.volume_binding_mode.as_deref())
            == Some("WaitForFirstConsumer");
        if !delayed {
            unbound_immediate = true;
            continue;
        }
        wait = true;
        if !pvc
            .annotations()
            .contains_key(kubevirt_storage::claims::SELECTED_NODE)
        {
            claims
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                        kubevirt_storage::claims::SELECTED_NODE: ctx.node,
                    }}})),
                )
                .await
                .map_err(api_call("selecting the node of", &pvc))?;
        }
    }
    Ok(if unbound_immediate {
        VolumeCheck::Unschedulable("pod has unbound immediate PersistentVolumeClaims".into())
    } else if wait {
        VolumeCheck::Wait
    } else {
        VolumeCheck::Ready
    })
}

pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action> {
    let spec = pod.spec.clone().unwrap_or_default();
    let scheduler = spec.scheduler_name.as_deref().unwrap_or("");
    let bound = spec.node_name.as_deref().is_some_and(|n| !n.is_empty());
    if bound || pod.metadata.deletion_timestamp.is_some() || !matches!(scheduler, "" | COMPONENT) {
        return Ok(Action::await_change());
    }
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let node = match ctx.nodes.get(&ObjectRef::new(&ctx.node)) {
        Some(n) => n,
        None => Arc::new(
            Api::<Node>::all(ctx.client.clone())
                .get(&ctx.node)
                .await
                .map_err(api_call_on("getting", "Node", "", &ctx.node))?,
        ),
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let volumes = match volume_check(&ctx, &pod).await? {
        VolumeCheck::Ready => None,
        // kube-scheduler holds the pod in PreBind until its claims are bound.
        VolumeCheck::Wait => return Ok(Action::requeue(Duration::from_millis(500))),
        VolumeCheck::Unschedulable(reason) => Some(reason),
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // Decided and reserved under one lock: pods are bound concurrently, and two of them must
    // never both take the last of the node's memory.
    let verdict = {
        let cached = ctx.node_pods.state();
        let mut assumed = ctx.assumed.lock().unwrap_or_else(|p| p.into_inner());
        assumed.retain(|u, _| {
            !cached
                .iter()
                .any(|p| p.metadata.uid.as_deref() == Some(u.as_str()))
        });
        let others: Vec<BTreeMap<String, i128>> = cached
            .iter()
            .filter(|p| active(p) && p.metadata.uid.as_deref() != Some(uid.as_str()))
            .map(|p| requested(p))
            .chain(
                assumed
                    .iter()
                    .filter(|(u, _)| **u != uid)
                    .map(|(_, r)| r.clone()),
            )
            .collect();
        let verdict = volumes.or_else(|| unfit(&pod, &node, &others));
        if verdict.is_none() {
            assumed.insert(uid.clone(), requested(&pod));
        }
        verdict
    };
    if let Some(reason) = verdict {
        let message = unschedulable_message(&reason);
        let mut status = pod.status.clone().unwrap_or_default();
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let changed = !conditions.iter().any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.message.as_deref() == Some(&message)
        });
        if changed {
            conditions.retain(|c| c.type_ != "PodScheduled");
            conditions.push(PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(message.clone()),
                last_transition_time: Some(Time(Timestamp::now())),
                ..Default::default()
            });
            status.phase.get_or_insert_with(|| "Pending".into());
            write_status(&pods, &*pod, pod.status.as_ref(), &status).await?;
            ctx.publish(&pod, EventType::Warning, "FailedScheduling", message);
        }
        // kube-scheduler retries unschedulable pods when the cluster changes; here a slow
        // retry covers a node freeing memory.
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some(ctx.node.clone()),
            api_version: Some("v1".into()),
            ..Default::default()
        },
    };
    let bound = pods
        .create_subresource::<Binding, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await;
    if bound.is_err() {
        ctx.assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    }
    match bound {
        Ok(_) => {}
        // Bound meanwhile (or gone): nothing to do.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
            return Ok(Action::await_change())
        }
        Err(e) => return Err(api_call("binding", &*pod)(e).into()),
    }
    ctx.publish(
        &pod,
        EventType::Normal,
        "Scheduled",
        format!("Successfully assigned {namespace}/{name} to {}", ctx.node),
    );
    Ok(Action::await_change())
}

pub fn error_policy(pod: Arc<Pod>, error: &HandlerError, _ctx: Arc<Context>) -> Action {
    kubevirt_reconcile::log_failure(
        "scheduling Pod",
        &kubevirt_reconcile::object_ref(&*pod),
        error,
        error.is_conflict(),
    );
    error.retry_after()
}

/// Runs the embedded scheduler for `node` until `shutdown` resolves.
pub async fn run(
    client: Client,
    node: String,
    node_pods: Store<Pod>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let (nodes, writer) = kube::runtime::reflector::store();
    let node_watch = kube::runtime::reflector(
        writer,
        watcher(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node}")),
        )
        .default_backoff(),
    );
    let ctx = Arc::new(Context::new(client, node, node_pods, nodes));
    let scheduler = Controller::new(pods, watcher::Config::default().fields("spec.nodeName="))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    // The node watch lives as long as the scheduler; it never ends on its own.
    futures::future::select(
        std::pin::pin!(scheduler),
        std::pin::pin!(node_watch.for_each(|_| async {})),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, NodeCondition, NodeSpec, NodeStatus, PodSpec, ResourceRequirements, Toleration,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;

    fn node() -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some([("kubevirt.io/schedulable".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(
                    [
                        ("memory".to_string(), Q("1Gi".into())),
                        ("devices.kubevirt.io/tun".to_string(), Q("1k".into())),
                    ]
                    .into(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(memory: &str, selector: &[(&str, &str)], limits: &[(&str, &str)]) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_selector: Some(
                    selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                containers: vec![Container {
                    name: "compute".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(
                            [
                                ("memory".to_string(), Q(memory.into())),
                                ("cpu".to_string(), Q("100".into())),
                            ]
                            .into(),
                        ),
                        limits: Some(
                            limits
                                .iter()
                                .map(|(k, v)| (k.to_string(), Q(v.to_string())))
                                .collect(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fits_by_selector_memory_and_devices_but_not_cpu() {
        let n = node();
        let p = pod(
            "512Mi",
            &[("kubevirt.io/schedulable", "true")],
            &[("devices.kubevirt.io/tun", "1")],
        );
        assert_eq!(
            unfit(&p, &n, &[]),
            None,
            "100 CPUs requested: CPU is not enforced"
        );
        assert_eq!(unfit(&p, &n, &[requested(&p)]), None,);
        let two = [requested(&p), requested(&p)];
        assert_eq!(unfit(&p, &n, &two).as_deref(), Some("Insufficient memory"));
        let kvm = pod("1Mi", &[], &[("devices.kubevirt.io/kvm", "1")]);
        assert_eq!(
            unfit(&kvm, &n, &[]).as_deref(),
            Some("Insufficient devices.kubevirt.io/kvm")
        );
        let gpu = pod("1Mi", &[("cpumanager", "true")], &[]);
        assert_eq!(
            unfit(&gpu, &n, &[]).as_deref(),
            Some("node(s) didn't match Pod's node affinity/selector")
        );
    }

    #[test]
    fn taints_need_tolerations() {
        let mut n = node();
        n.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        let mut p = pod("1Mi", &[], &[]);
        assert_eq!(
            unfit(&p, &n, &[]).as_deref(),
            Some("node(s) had untolerated taint {dedicated: db}")
        );
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert_eq!(unfit(&p, &n, &[]), None);
        assert_eq!(
            unschedulable_message("Insufficient memory"),
            "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        );
    }
}
