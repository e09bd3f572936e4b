//! Request-level tests of the reconcilers: each drives one reconcile against a scripted API
//! server (`kubevirt_reconcile::fake`) and checks the exact requests it makes, in order, and
//! that it makes no other.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kubevirt_api::launcher_pod::LauncherPodSettings;
use kubevirt_api::v1::{
    RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase,
};
use kubevirt_controller::{vm_controller, vmi_controller};
use kubevirt_reconcile::fake::{self, Exchange};
use serde_json::{json, Value};

const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const VMIS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";
const PODS: &str = "/api/v1/namespaces/default/pods";
const EVENTS: &str = "/api/v1/namespaces/default/events";

fn with_rv<T: serde::Serialize>(o: &T) -> Value {
    let mut v = serde_json::to_value(o).unwrap();
    v["metadata"]["resourceVersion"] = json!("1");
    v
}

/// Answers a JSON patch by applying it to `current`, as the API server would.
fn apply_patch(req: Exchange, current: &Value) -> Value {
    assert_eq!(
        req.content_type,
        "application/json-patch+json",
        "{}",
        req.line()
    );
    let patch: json_patch::Patch = serde_json::from_value(req.body()).unwrap();
    let mut next = current.clone();
    json_patch::patch(&mut next, &patch).unwrap_or_else(|e| panic!("{}: {e}", req.line()));
    req.respond(200, &next);
    next
}

fn event_reason(req: Exchange) -> (String, String) {
    assert_eq!(req.line(), format!("POST {EVENTS}"));
    let body = req.body();
    let out = (
        body["reason"].as_str().unwrap().to_string(),
        body["message"].as_str().unwrap().to_string(),
    );
    req.echo(201);
    out
}

#[tokio::test]
async fn vm_with_run_strategy_always_creates_its_vmi() {
    let (client, mut api) = fake::pair();
    let mut vm = VirtualMachine::test("testvm").with_run_strategy(RunStrategy::Always);
    vm.metadata.generation = Some(3);
    vm.metadata.resource_version = Some("1".into());
    // Free-form parts of the API (kept as they are by the schema) reach the VMI untouched.
    let template = vm.spec.template.spec.as_mut().unwrap();
    template.domain.io_threads =
        Some(json!({"supplementalPoolThreadCount": 2, "future": {"x": 1}}));
    template.access_credentials = Some(vec![
        json!({"sshPublicKey": {"source": {"secret": {"secretName": "k"}}}}),
    ]);
    let ctx = Arc::new(vm_controller::Context::new(client));
    let task = tokio::spawn(vm_controller::reconcile(Arc::new(vm.clone()), ctx));

    // 1. The VM gets the controller's finalizer.
    let req = api.next().await;
    assert_eq!(req.line(), format!("PATCH {VMS}/testvm"));
    assert_eq!(
        req.body()[1]["value"],
        json!(["kubevirt.io/virtualMachineControllerFinalize"])
    );
    let vm_json = apply_patch(req, &with_rv(&vm));

    // 2. No VMI yet.
    let req = api.next().await;
    assert_eq!(req.line(), format!("GET {VMIS}/testvm"));
    req.fail(
        404,
        "NotFound",
        "virtualmachineinstances.kubevirt.io \"testvm\" not found",
    );

    // 3. The VMI: the template, owned by the VM, with the VM's generation and finalizer.
    let req = api.next().await;
    assert_eq!(req.line(), format!("POST {VMIS}"));
    let vmi = req.body();
    assert_eq!(vmi["metadata"]["name"], "testvm");
    assert_eq!(
        vmi["metadata"]["ownerReferences"][0]["kind"],
        "VirtualMachine"
    );
    assert_eq!(vmi["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        vmi["metadata"]["annotations"]["kubevirt.io/vm-generation"],
        "3"
    );
    assert_eq!(vmi["metadata"]["labels"]["kubevirt.io/vm"], "testvm");
    assert_eq!(
        vmi["metadata"]["finalizers"],
        json!(["kubevirt.io/virtualMachineControllerFinalize"])
    );
    assert_eq!(
        vmi["spec"],
        serde_json::to_value(&vm.spec.template.spec).unwrap()
    );
    let mut created = vmi.clone();
    created["metadata"]["uid"] = json!("vmi-uid-1");
    req.respond(201, &created);

    // 4. The event `kubectl describe vm` shows.
    let (reason, message) = event_reason(api.next().await);
    assert_eq!(reason, "SuccessfulCreate");
    assert_eq!(
        message,
        "Started the virtual machine by creating the new virtual machine instance vmi-uid-1"
    );

    // 5. Status: Starting, created; no `ready: false`.
    let req = api.next().await;
    assert_eq!(req.line(), format!("PATCH {VMS}/testvm/status"));
    let next = apply_patch(req, &vm_json);
    let status = &next["status"];
    assert_eq!(status["printableStatus"], "Starting");
    assert_eq!(status["created"], true);
    assert!(status.get("ready").is_none(), "{status}");
    assert_eq!(status["conditions"][0]["reason"], "VMINotExists");

    let action = api.done(task).await.unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn halted_vm_with_a_running_vmi_deletes_it_by_uid() {
    let (client, mut api) = fake::pair();
    let mut vm = VirtualMachine::test("testvm").with_run_strategy(RunStrategy::Halted);
    vm.metadata.finalizers = Some(vec!["kubevirt.io/virtualMachineControllerFinalize".into()]);
    vm.metadata.resource_version = Some("1".into());
    let mut vmi = VirtualMachineInstance::test("testvm")
        .owned_by(&vm)
        .with_phase(VirtualMachineInstancePhase::Running);
    vmi.metadata.uid = Some("vmi-uid-1".into());
    let ctx = Arc::new(vm_controller::Context::new(client));
    let task = tokio::spawn(vm_controller::reconcile(Arc::new(vm.clone()), ctx));

    let req = api.next().await;
    assert_eq!(req.line(), format!("GET {VMIS}/testvm"));
    req.respond(200, &with_rv(&vmi));
    let req = api.next().await;
    assert_eq!(req.line(), format!("DELETE {VMIS}/testvm"));
    assert_eq!(req.body()["preconditions"]["uid"], "vmi-uid-1");
    assert_eq!(req.body()["propagationPolicy"], "Background");
    req.respond(200, &with_rv(&vmi));
    let (reason, message) = event_reason(api.next().await);
    assert_eq!(reason, "SuccessfulDelete");
    assert_eq!(
        message,
        "Stopped the virtual machine by deleting the virtual machine instance vmi-uid-1"
    );
    let req = api.next().await;
    assert_eq!(req.line(), format!("PATCH {VMS}/testvm/status"));
    let next = apply_patch(req, &with_rv(&vm));
    assert_eq!(next["status"]["printableStatus"], "Stopping");
    api.done(task).await.unwrap();
}

fn pod_settings() -> LauncherPodSettings {
    LauncherPodSettings::new(
        "kubevirt-rs/virt-launcher:test",
        vec!["kubevirt-rs".into(), "launcher".into()],
    )
}

fn pending_vmi() -> VirtualMachineInstance {
    let mut vmi =
        VirtualMachineInstance::test("testvm").with_phase(VirtualMachineInstancePhase::Pending);
    vmi.metadata.uid = Some("vmi-uid-1".into());
    vmi.metadata.resource_version = Some("1".into());
    vmi
}

#[tokio::test]
async fn pending_vmi_gets_its_launcher_pod_and_moves_to_scheduling() {
    let (client, mut api) = fake::pair();
    let vmi = pending_vmi();
    let ctx = Arc::new(vmi_controller::Context::new(client, pod_settings()));
    let task = tokio::spawn(vmi_controller::reconcile(Arc::new(vmi.clone()), ctx));

    let req = api.next().await;
    assert_eq!(req.line(), format!("GET {PODS}"));
    assert_eq!(
        req.query,
        "&labelSelector=kubevirt.io%2Fcreated-by%3Dvmi-uid-1"
    );
    req.respond(
        200,
        &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}),
    );

    let req = api.next().await;
    assert_eq!(req.line(), format!("POST {PODS}"));
    let mut pod = req.body();
    assert_eq!(pod["metadata"]["generateName"], "virt-launcher-testvm-");
    assert_eq!(
        pod["metadata"]["labels"]["kubevirt.io/created-by"],
        "vmi-uid-1"
    );
    assert_eq!(pod["spec"]["containers"][0]["name"], "compute");
    pod["metadata"]["name"] = json!("virt-launcher-testvm-x2bcd");
    pod["metadata"]["uid"] = json!("pod-uid-1");
    pod["metadata"]["resourceVersion"] = json!("2");
    pod["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    pod["status"] = json!({"phase": "Pending"});
    req.respond(201, &pod);

    let (reason, message) = event_reason(api.next().await);
    assert_eq!(
        (reason.as_str(), message.as_str()),
        (
            "SuccessfulCreate",
            "Created virtual machine pod virt-launcher-testvm-x2bcd"
        )
    );

    let req = api.next().await;
    assert_eq!(req.line(), format!("PATCH {VMIS}/testvm/status"));
    let next = apply_patch(req, &with_rv(&vmi));
    assert_eq!(next["status"]["phase"], "Scheduling");
    assert_eq!(next["status"]["activePods"]["pod-uid-1"], "");

    // The readiness gate condition on the pod.
    let req = api.next().await;
    assert_eq!(
        req.line(),
        format!("PATCH {PODS}/virt-launcher-testvm-x2bcd/status")
    );
    let pod_next = apply_patch(req, &pod);
    let cond = &pod_next["status"]["conditions"][0];
    assert_eq!(cond["type"], "kubevirt.io/virtual-machine-unpaused");
    assert_eq!(cond["status"], "True");
    api.done(task).await.unwrap();
}

fn running_pod(vmi: &VirtualMachineInstance) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "virt-launcher-testvm-x2bcd", "namespace": "default", "uid": "pod-uid-1",
            "resourceVersion": "5", "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": vmi.metadata.uid},
            "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "name": "testvm", "uid": vmi.metadata.uid, "controller": true}]},
        "spec": {"nodeName": "node1", "containers": [{"name": "compute"}]},
        "status": {"phase": "Running",
            "conditions": [{"type": "kubevirt.io/virtual-machine-unpaused", "status": "True"},
                {"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "compute", "ready": true, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn a_ready_pod_schedules_the_vmi_on_its_node() {
    let (client, mut api) = fake::pair();
    let vmi = pending_vmi().with_phase(VirtualMachineInstancePhase::Scheduling);
    let ctx = Arc::new(vmi_controller::Context::new(client, pod_settings()));
    let task = tokio::spawn(vmi_controller::reconcile(Arc::new(vmi.clone()), ctx));

    let req = api.next().await;
    assert_eq!(req.line(), format!("GET {PODS}"));
    req.respond(200, &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [running_pod(&vmi)]}));
    let req = api.next().await;
    assert_eq!(req.line(), format!("PATCH {VMIS}/testvm"));
    assert_eq!(
        req.body(),
        json!({"metadata": {"labels": {"kubevirt.io/nodeName": "node1"}}})
    );
    req.respond(200, &with_rv(&vmi));
    let req = api.next().await;
    assert_eq!(req.line(), format!("PATCH {VMIS}/testvm/status"));
    let next = apply_patch(req, &with_rv(&vmi));
    assert_eq!(next["status"]["phase"], "Scheduled");
    assert_eq!(next["status"]["nodeName"], "node1");
    api.done(task).await.unwrap();
}

#[tokio::test]
async fn deleting_a_vmi_deletes_its_pod_with_the_pods_grace_period() {
    let (client, mut api) = fake::pair();
    let mut vmi = pending_vmi()
        .with_phase(VirtualMachineInstancePhase::Running)
        .on_node("node1");
    vmi.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:05Z".parse().unwrap(),
    ));
    let ctx = Arc::new(vmi_controller::Context::new(client, pod_settings()));
    let task = tokio::spawn(vmi_controller::reconcile(Arc::new(vmi.clone()), ctx));

    let req = api.next().await;
    req.respond(200, &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [running_pod(&vmi)]}));
    let req = api.next().await;
    assert_eq!(
        req.line(),
        format!("DELETE {PODS}/virt-launcher-testvm-x2bcd")
    );
    assert!(
        req.body().get("gracePeriodSeconds").is_none(),
        "the pod's own grace period applies"
    );
    req.respond(200, &serde_json::to_value(running_pod(&vmi)).unwrap());
    let (reason, message) = event_reason(api.next().await);
    assert_eq!(
        (reason.as_str(), message.as_str()),
        (
            "SuccessfulDelete",
            "Deleted virtual machine pod virt-launcher-testvm-x2bcd"
        )
    );
    // Status: the pod is still there (terminating comes next), nothing else to write but
    // the Ready condition the controller owns.
    let req = api.next().await;
    assert_eq!(req.line(), format!("PATCH {VMIS}/testvm/status"));
    let next = apply_patch(req, &with_rv(&vmi));
    assert_eq!(next["status"]["phase"], "Running");
    assert_eq!(next["status"]["activePods"]["pod-uid-1"], "node1");
    api.done(task).await.unwrap();
}
