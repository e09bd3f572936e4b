//! Request-level tests of the embedded node's reconcilers (scheduler, pod runtime) against a
//! scripted API server: the exact requests one reconcile makes, in order, and no others.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::store::Writer;
use kubevirt_handler::launchers::{LauncherConfig, Launchers, Notify};
use kubevirt_handler::{pods, scheduler};
use kubevirt_reconcile::fake::{self, Exchange};
use serde_json::{json, Value};

const PODS: &str = "/api/v1/namespaces/default/pods";

fn node() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node1", "labels": {"kubevirt.io/schedulable": "true", "kubernetes.io/arch": "amd64"}},
        "status": {
            "allocatable": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "10Gi", "devices.kubevirt.io/tun": "1k"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn pod(memory: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "virt-launcher-vm-abcde", "namespace": "default", "uid": "pod-1", "resourceVersion": "3"},
        "spec": {
            "nodeSelector": {"kubevirt.io/schedulable": "true"},
            "containers": [{"name": "compute", "resources": {
                "requests": {"memory": memory, "cpu": "100m"},
                "limits": {"devices.kubevirt.io/tun": "1"}}}]
        }
    }))
    .unwrap()
}

fn scheduler_ctx(client: kube::Client) -> Arc<scheduler::Context> {
    let pods = Writer::<Pod>::default().as_reader();
    // The node is not in the cache yet: the scheduler reads it from the API.
    let nodes = Writer::<k8s_openapi::api::core::v1::Node>::default().as_reader();
    Arc::new(scheduler::Context::new(client, "node1".into(), pods, nodes))
}

fn answer_node(req: Exchange) {
    assert_eq!(req.line(), "GET /api/v1/nodes/node1");
    req.respond(200, &node());
}

#[tokio::test]
async fn a_fitting_pod_is_bound_to_the_node() {
    let (client, mut api) = fake::pair();
    let task = tokio::spawn(scheduler::reconcile(
        Arc::new(pod("512Mi")),
        scheduler_ctx(client),
    ));
    answer_node(api.next().await);
    let req = api.next().await;
    assert_eq!(
        req.line(),
        format!("POST {PODS}/virt-launcher-vm-abcde/binding")
    );
    let body = req.body();
    assert_eq!(body["kind"], "Binding");
    assert_eq!(
        body["target"],
        json!({"apiVersion": "v1", "kind": "Node", "name": "node1"})
    );
    req.respond(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
    );
    let req = api.next().await;
    assert_eq!(req.line(), "POST /api/v1/namespaces/default/events");
    assert_eq!(req.body()["reason"], "Scheduled");
    assert_eq!(
        req.body()["message"],
        "Successfully assigned default/virt-launcher-vm-abcde to node1"
    );
    assert_eq!(req.body()["source"]["component"], "default-scheduler");
    req.echo(201);
    api.done(task).await.unwrap();
}

#[tokio::test]
async fn a_pod_too_big_for_the_node_is_marked_unschedulable() {
    let (client, mut api) = fake::pair();
    let task = tokio::spawn(scheduler::reconcile(
        Arc::new(pod("2Gi")),
        scheduler_ctx(client),
    ));
    answer_node(api.next().await);
    let req = api.next().await;
    assert_eq!(
        req.line(),
        format!("PATCH {PODS}/virt-launcher-vm-abcde/status")
    );
    let patch = req.body();
    assert_eq!(
        patch[0],
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": "3"})
    );
    let status = &patch[1]["value"];
    assert_eq!(status["phase"], "Pending");
    let cond = &status["conditions"][0];
    assert_eq!(
        (
            cond["type"].as_str(),
            cond["status"].as_str(),
            cond["reason"].as_str()
        ),
        (Some("PodScheduled"), Some("False"), Some("Unschedulable"))
    );
    assert_eq!(
        cond["message"],
        "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
    req.respond(200, &serde_json::to_value(pod("2Gi")).unwrap());
    let req = api.next().await;
    assert_eq!(req.body()["reason"], "FailedScheduling");
    assert_eq!(req.body()["type"], "Warning");
    req.echo(201);
    api.done(task).await.unwrap();
}

#[tokio::test]
async fn the_node_refuses_a_pod_that_is_not_a_launcher_pod() {
    let (client, mut api) = fake::pair();
    let (pods_tx, _p) = tokio::sync::mpsc::unbounded_channel();
    let (vmis_tx, _v) = tokio::sync::mpsc::unbounded_channel();
    let launchers = Arc::new(Launchers::new(
        LauncherConfig {
            run_root: "/nonexistent/run".into(),
            persistent_root: "/nonexistent/vms".into(),
            command: vec!["/nonexistent/kubevirt-launcher".into()],
            extra_args: vec![],
        },
        Notify {
            pods: pods_tx,
            vmis: vmis_tx,
        },
    ));
    let ctx = Arc::new(pods::Context::new(
        client,
        "node1".into(),
        "127.0.0.1".into(),
        launchers,
    ));
    let mut nginx = pod("64Mi");
    nginx.metadata.name = Some("nginx".into());
    nginx.spec.as_mut().unwrap().node_name = Some("node1".into());
    let task = tokio::spawn(pods::reconcile(Arc::new(nginx), ctx));
    let req = api.next().await;
    assert_eq!(req.line(), format!("PATCH {PODS}/nginx/status"));
    let status = &req.body()[1]["value"];
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["reason"], "UnsupportedPod");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .starts_with("Pod was rejected: "));
    req.respond(200, &json!({}));
    let req = api.next().await;
    assert_eq!(req.body()["reason"], "UnsupportedPod");
    assert_eq!(req.body()["source"]["component"], "kubelet");
    req.echo(201);
    api.done(task).await.unwrap();
}
