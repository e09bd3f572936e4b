//! The node agent as the runtime of launcher pods (a kubelet for one kind of pod): for each
//! pod bound to this node it starts (or adopts) the launcher process, reports the pod's
//! status from it, stops it when the pod is deleted (SIGTERM, SIGKILL after the pod's grace
//! period) and then removes the pod. Pods that are not launcher pods are refused with a
//! reason, as a kubelet refuses a pod it cannot admit.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use kubevirt_api::launcher_pod::launcher_pod_vmi;
use kubevirt_api::v1::VirtualMachineInstance;
use kubevirt_reconcile::events::{EventRecorder, EventType};
use kubevirt_reconcile::{api_call, status::write_status};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use crate::error::{HandlerError, Result};
use crate::launchers::{Launchers, PodKey};
use crate::pod_status::{pod_status, rejected};

pub const COMPONENT: &str = "kubelet";

/// Why the embedded node refuses a pod.
pub const REJECTED_REASON: &str = "UnsupportedPod";
pub const REJECTED_MESSAGE: &str = "Pod was rejected: the kubevirt-rs embedded node runs only virt-launcher pods (label kubevirt.io=virt-launcher, controlled by the VirtualMachineInstance named in kubevirt.io/created-by); run other workloads on a Kubernetes cluster";

/// How long a finished launcher's pod waits for the VMI to record how it ended before the
/// pod is removed (the VMI controller would otherwise see the pod gone first and call the
/// VMI Failed).
const FINAL_PHASE_WAIT: Duration = Duration::from_secs(5);

pub struct Context {
    pub client: Client,
    pub node: String,
    /// The node's address: the pods' `hostIP`.
    pub node_ip: String,
    pub launchers: Arc<Launchers>,
    pub recorder: EventRecorder,
    /// Pods whose launcher was sent SIGTERM.
    terminating: Mutex<HashSet<String>>,
    /// The compute containers' readiness and liveness probes.
    probes: crate::probes::Probes,
}

impl Context {
    pub fn new(client: Client, node: String, node_ip: String, launchers: Arc<Launchers>) -> Self {
        Context {
            recorder: EventRecorder::new(client.clone(), COMPONENT, Some(node.clone())),
            client,
            node,
            node_ip,
            launchers,
            terminating: Mutex::new(HashSet::new()),
            probes: crate::probes::Probes::default(),
        }
    }
}

fn key(pod: &Pod) -> Option<PodKey> {
    let (vmi_name, vmi_uid) = launcher_pod_vmi(pod)?;
    Some(PodKey {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        uid: pod.metadata.uid.clone()?,
        vmi_name,
        vmi_uid,
        migration_target: pod
            .labels()
            .contains_key(kubevirt_api::migration::MIGRATION_JOB_LABEL),
    })
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

async fn remove(pods: &Api<Pod>, pod: &Pod) -> Result<()> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods.delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(api_call("deleting", pod)(e).into()),
    }
}

/// Whether the VMI of `key` has recorded its end (or is gone), so its pod may go.
async fn vmi_settled(client: &Client, key: &PodKey) -> bool {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &key.namespace);
    match vmis.get_opt(&key.vmi_name).await {
        Ok(Some(v)) => v.metadata.uid.as_deref() != Some(key.vmi_uid.as_str()) || v.is_final(),
        Ok(None) => true,
        Err(_) => false,
    }
}

pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let deleting = pod.metadata.deletion_timestamp.clone();
    let Some(key) = key(&pod) else {
        if deleting.is_some() {
            remove(&pods, &pod).await?;
        } else if !finished(&pod) {
            let status = rejected(&pod, REJECTED_REASON, REJECTED_MESSAGE);
            write_status(&pods, &*pod, pod.status.as_ref(), &status).await?;
            ctx.recorder
                .publish(&*pod, EventType::Warning, REJECTED_REASON, REJECTED_MESSAGE)
                .await;
        }
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    let wants_launcher = deleting.is_none() && !finished(&pod);
    // A new launcher needs the pod's claims in place, as a kubelet mounts a pod's volumes
    // before starting its containers (a running one is adopted whatever its claims do).
    let claims = if wants_launcher && ctx.launchers.would_start(&key) {
        match claim_disks(&ctx.client, &pod).await {
            Ok(c) => Some(c),
            Err(reason) => {
                let message = format!("Unable to attach or mount volumes: {reason}");
                ctx.recorder
                    .publish(&*pod, EventType::Warning, "FailedMount", &message)
                    .await;
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
        }
    } else {
        None
    };
    let launcher = ctx
        .launchers
        .ensure(&key, claims.as_deref().or(wants_launcher.then_some(&[])))?;
    let observed = launcher.as_ref().map(|l| l.observed());
    if let Some(deadline) = deleting {
        ctx.probes.remove(&key.uid);
        let running = launcher.as_ref().filter(|l| !l.exited());
        if let Some(l) = running {
            let first = ctx
                .terminating
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.uid.clone());
            if first {
                tracing::info!(pod = %key.name, "stopping launcher (pod deleted)");
                l.signal(Signal::SIGTERM);
                ctx.recorder
                    .publish(
                        &*pod,
                        EventType::Normal,
                        "Killing",
                        "Stopping container compute",
                    )
                    .await;
            }
            if now >= deadline.0 {
                tracing::warn!(pod = %key.name, "grace period over; killing launcher");
                l.signal(Signal::SIGKILL);
            }
            let left = deadline.0.duration_since(now);
            return Ok(Action::requeue(
                Duration::try_from(left).unwrap_or(Duration::ZERO) + Duration::from_millis(100),
            ));
        }
        if let Some(o) = &observed {
            let status = pod_status(&pod, Some(o), &ctx.node_ip, false, now);
            write_status(&pods, &*pod, pod.status.as_ref(), &status).await?;
            let waited = o.exit.as_ref().map_or(Duration::MAX, |e| {
                Duration::try_from(now.duration_since(e.finished_at)).unwrap_or(Duration::ZERO)
            });
            if waited < FINAL_PHASE_WAIT && !vmi_settled(&ctx.client, &key).await {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
        }
        remove(&pods, &pod).await?;
        ctx.launchers.remove(&key.uid);
        ctx.terminating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key.uid);
        return Ok(Action::await_change());
    }
    match &launcher {
        Some(l) if !l.exited() && observed.as_ref().is_some_and(|o| o.status.is_some()) => {
            let wake: Arc<dyn Fn() + Send + Sync> = {
                let (launchers, key) = (ctx.launchers.clone(), key.clone());
                Arc::new(move || launchers.notify(&key))
            };
            ctx.probes.ensure(&pod, l, &ctx.recorder, wake);
        }
        _ => ctx.probes.remove(&key.uid),
    }
    let ready = ctx.probes.ready(&key.uid);
    let status = pod_status(&pod, observed.as_ref(), &ctx.node_ip, ready, now);
    let was_running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if write_status(&pods, &*pod, pod.status.as_ref(), &status).await?
        && !was_running
        && status.phase.as_deref() == Some("Running")
    {
        ctx.recorder
            .publish(
                &*pod,
                EventType::Normal,
                "Started",
                "Started container compute",
            )
            .await;
    }
    Ok(Action::await_change())
}

/// The disk file of each claim the pod uses (claim name -> file), from its bound volume on
/// this node; `Err` says which claim is not usable yet.
async fn claim_disks(
    client: &Client,
    pod: &Pod,
) -> std::result::Result<Vec<(String, PathBuf)>, String> {
    use kubevirt_api::cdi::annotations::{IMPORT_SOURCE, POD_PHASE, UPLOAD_REQUEST};
    let ns = pod.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let mut out = Vec::new();
    for claim in kubevirt_storage::claims::pod_claims(pod) {
        let pvc = claims
            .get_opt(claim)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
        let annotations = pvc.metadata.annotations.clone().unwrap_or_default();
        let filled_by_cdi =
            annotations.contains_key(IMPORT_SOURCE) || annotations.contains_key(UPLOAD_REQUEST);
        if filled_by_cdi && annotations.get(POD_PHASE).map(String::as_str) != Some("Succeeded") {
            return Err(format!(
                "persistentvolumeclaim \"{claim}\" is still being populated"
            ));
        }
        let volume = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" is not bound"))?;
        let pv = volumes.get(&volume).await.map_err(|e| e.to_string())?;
        let disk = kubevirt_storage::local::ensure_disk(&pv)
            .map_err(|e| format!("MountVolume.SetUp failed for volume \"{volume}\" : {e}"))?;
        out.push((claim.to_string(), disk));
    }
    Ok(out)
}

pub fn error_policy(pod: Arc<Pod>, error: &HandlerError, _ctx: Arc<Context>) -> Action {
    kubevirt_reconcile::log_failure(
        "syncing Pod",
        &kubevirt_reconcile::object_ref(&*pod),
        error,
        error.is_conflict(),
    );
    error.retry_after()
}

/// The pods controller for `node` and the store of this node's pods (for the scheduler).
/// `launchers_only`: other pods on the node are not ours (a kubelet's); else they are
/// rejected, as the embedded node runs nothing but launchers.
pub fn controller(client: &Client, node: &str, launchers_only: bool) -> Controller<Pod> {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    if launchers_only {
        use kubevirt_api::v1::well_known::{APP_LABEL, APP_LAUNCHER};
        config = config.labels(&format!("{APP_LABEL}={APP_LAUNCHER}"));
    }
    Controller::new(pods, config)
}

/// Runs the pod runtime until `shutdown` resolves; `changes` wakes it when a launcher
/// reports something.
pub async fn run(
    controller: Controller<Pod>,
    ctx: Arc<Context>,
    changes: mpsc::UnboundedReceiver<ObjectRef<Pod>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let pods = controller.store();
    let launchers = ctx.launchers.clone();
    tokio::spawn(async move {
        // Once the first list of this node's pods is in, what no pod accounts for is left
        // over from before. kube-runtime's readiness signal wakes only the waiter that polled
        // it last (the controller's own), so ask again until it answers.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), pods.wait_until_ready()).await {
                Ok(Ok(())) => break,
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
        let uids: HashSet<String> = pods
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        launchers.remove_orphans(|uid| uids.contains(uid));
    });
    controller
        .reconcile_on(tokio_stream_of(changes))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// An unbounded receiver as a stream.
pub fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The store of this node's pods, kept by the runtime's controller.
pub fn store(controller: &Controller<Pod>) -> Store<Pod> {
    controller.store()
}
