//! The embedded node as a pod runtime: it runs launcher pods only and refuses others with a
//! reason, and its scheduler leaves pods that fit nowhere Pending with kube-scheduler's
//! message, which a VM shows as ErrorUnschedulable.

mod common;

use common::*;

#[test]
fn other_pods_are_refused_and_unschedulable_vms_say_so() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    server.apply_yaml(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: nginx
spec:
  containers:
  - name: web
    image: nginx
"#,
    );
    server.wait_for("pod", "nginx", "{.status.phase}", "Failed");
    assert_eq!(
        server.jsonpath("pod", "nginx", "{.status.reason}"),
        "UnsupportedPod"
    );
    let message = server.jsonpath("pod", "nginx", "{.status.message}");
    assert!(
        message.contains("runs only virt-launcher pods"),
        "{message}"
    );
    assert!(
        !server
            .jsonpath("pod", "nginx", "{.spec.nodeName}")
            .is_empty(),
        "it was scheduled"
    );
    server.kubectl_ok(&["delete", "pod", "nginx", "--wait=true", "--timeout=60s"]);

    // A VM asking for a node label nobody has: the pod stays Pending, unschedulable.
    let yaml = hostdisk_vm("picky", "Always", &server.data_dir).replace(
        "    spec:\n      domain:",
        "    spec:\n      nodeSelector:\n        disktype: ssd\n      domain:",
    );
    server.apply_yaml(&yaml);
    server.wait_for(
        "vm",
        "picky",
        "{.status.printableStatus}",
        "ErrorUnschedulable",
    );
    let reason = server.jsonpath(
        "vmi",
        "picky",
        "{.status.conditions[?(@.type==\"PodScheduled\")].message}",
    );
    assert!(
        reason.starts_with(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        ),
        "{reason}"
    );
    // Labelling the node lets it run.
    let node = kubevirt_handler::node::local_node_name();
    server.kubectl_ok(&["label", "node", &node, "disktype=ssd"]);
    server.wait_for("vm", "picky", "{.status.printableStatus}", "Running");
    server.kubectl_ok(&["delete", "vm", "picky", "--wait=true", "--timeout=120s"]);
}
