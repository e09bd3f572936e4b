//! Conformance: drive the server with the real kubectl 1.32 (`/usr/bin/kubectl`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, VM_YAML};

#[test]
fn discovery_and_namespaces() {
    let s = TestServer::start();
    let ns = s.ok(&["get", "namespaces"]);
    for n in ["default", "kube-system", "kube-public"] {
        assert!(ns.contains(n), "{ns}");
    }
    assert!(ns.contains("Active"), "{ns}");
    let res = s.ok(&["api-resources"]);
    for line in [
        "virtualmachines  ",
        "vm,vms",
        "kubevirt.io/v1",
        "customresourcedefinitions",
        "configmaps",
    ] {
        assert!(res.contains(line), "missing {line:?} in\n{res}");
    }
    let crds = s.ok(&["get", "crd"]);
    assert!(crds.contains("virtualmachines.kubevirt.io"), "{crds}");
    let v = s.ok(&["version", "-o", "json"]);
    assert!(v.contains("\"serverVersion\""), "{v}");
}

#[test]
fn apply_edit_get_describe_delete_vm() {
    let s = TestServer::start();
    let out = s.apply_yaml(VM_YAML);
    assert_eq!(out.trim(), "virtualmachine.kubevirt.io/testvm created");
    // Defaults from admission are visible.
    let y = s.ok(&["get", "vm", "testvm", "-o", "yaml"]);
    assert!(y.contains("generation: 1"), "{y}");
    assert!(y.contains("uid: "), "{y}");
    assert!(
        y.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{y}"
    );
    // Apply again after an edit: configured, generation bumps.
    let edited = VM_YAML.replace("memory: 64Mi", "memory: 128Mi");
    let out = s.apply_yaml(&edited);
    assert_eq!(out.trim(), "virtualmachine.kubevirt.io/testvm configured");
    let out = s.apply_yaml(&edited);
    assert_eq!(out.trim(), "virtualmachine.kubevirt.io/testvm unchanged");
    let g = s.ok(&[
        "get",
        "vm",
        "testvm",
        "-o",
        "jsonpath={.metadata.generation} {.spec.template.spec.domain.resources.requests.memory}",
    ]);
    assert_eq!(g, "2 128Mi");
    // Status via the subresource; printer columns show it.
    s.ok(&["patch", "vm", "testvm", "--subresource", "status", "--type", "merge",
        "-p", r#"{"status":{"printableStatus":"Stopped","conditions":[{"type":"Ready","status":"False"}]}}"#]);
    let wide = s.ok(&["get", "vm", "-o", "wide"]);
    let mut lines = wide.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&header[..4], &["NAME", "AGE", "STATUS", "READY"], "{wide}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "testvm");
    assert_eq!(row[2], "Stopped");
    assert_eq!(row[3], "False");
    // Status changes do not bump generation; spec did not change.
    let g = s.ok(&[
        "get",
        "vm",
        "testvm",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    assert_eq!(g, "2");
    let d = s.ok(&["describe", "vm", "testvm"]);
    assert!(d.contains("Name:         testvm"), "{d}");
    assert!(d.contains("Run Strategy:  Halted"), "{d}");
    assert!(d.contains("Events:"), "{d}");
    let out = s.ok(&["delete", "vm", "testvm", "--wait", "--timeout=60s"]);
    assert!(out.contains("deleted"), "{out}");
    let err = s.fails(&["get", "vm", "testvm"]);
    assert!(
        err.contains("virtualmachines.kubevirt.io \"testvm\" not found"),
        "{err}"
    );
}

#[test]
fn invalid_vm_is_422_as_kubectl_prints_it() {
    let s = TestServer::start();
    let bad = VM_YAML.replace("memory: 64Mi", "memory: abc");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("The VirtualMachine \"testvm\" is invalid: spec.template.spec.domain.resources.requests.memory: Invalid value: \"abc\""),
        "{err}"
    );
    // Unknown fields: kubectl's default --validate=strict is rejected by the server...
    let unknown = VM_YAML.replace("runStrategy: Halted", "runStrategy: Halted\n  foo: bar");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &unknown);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("strict decoding error: unknown field \"spec.foo\""),
        "{err}"
    );
    // ...warned about with --validate=warn, and pruned.
    let out = s.kubectl_stdin(&["apply", "--validate=warn", "-f", "-"], &unknown);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"spec.foo\""), "{err}");
    let y = s.ok(&["get", "vm", "testvm", "-o", "yaml"]);
    assert!(!y.contains("foo: bar"), "{y}");
}

#[test]
fn patch_merge_json_and_conflict() {
    let s = TestServer::start();
    s.apply_yaml(VM_YAML);
    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"gold"}}}"#,
    ]);
    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/runStrategy","value":"Manual"}]"#,
    ]);
    let got = s.ok(&[
        "get",
        "vm",
        "testvm",
        "-o",
        "jsonpath={.metadata.labels.tier} {.spec.runStrategy}",
    ]);
    assert_eq!(got, "gold Manual");
    // A JSON patch test op that fails is a 422.
    let err = s.fails(&[
        "patch",
        "vm",
        "testvm",
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/spec/runStrategy","value":"Always"}]"#,
    ]);
    assert!(err.contains("The request is invalid"), "{err}");
    // A conflicting update: replace with a stale resourceVersion.
    let stale = s.ok(&["get", "vm", "testvm", "-o", "json"]);
    s.ok(&["label", "vm", "testvm", "bump=1"]);
    let out = s.kubectl_stdin(&["replace", "-f", "-"], &stale);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Operation cannot be fulfilled on virtualmachines.kubevirt.io \"testvm\": the object has been modified; please apply your changes to the latest version and try again"),
        "{err}"
    );
    // Label selectors.
    let sel = s.ok(&["get", "vm", "-l", "bump=1", "-o", "name"]);
    assert_eq!(sel.trim(), "virtualmachine.kubevirt.io/testvm");
    let none = s.ok(&["get", "vm", "-l", "bump=2", "-o", "name"]);
    assert_eq!(none.trim(), "");
}

#[test]
fn explain_uses_openapi() {
    let s = TestServer::start();
    let e = s.ok(&["explain", "virtualmachine.spec.runStrategy"]);
    assert!(e.contains("KIND:       VirtualMachine"), "{e}");
    assert!(e.contains("FIELD: runStrategy <string>"), "{e}");
    assert!(e.contains("DESCRIPTION:"), "{e}");
    let e = s.ok(&["explain", "configmap.data"]);
    assert!(e.contains("Data contains the configuration data"), "{e}");
}

#[test]
fn wait_for_jsonpath_and_get_watch() {
    let s = TestServer::start();
    s.apply_yaml(VM_YAML);
    let mut watch = Command::new("/usr/bin/kubectl")
        .args(["get", "vm", "-w", "--request-timeout=0"])
        .env("KUBECONFIG", &s.kubeconfig)
        .env("HOME", s.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let kc = s.kubeconfig.clone();
    let waiter = std::thread::spawn(move || {
        common::kubectl_with(
            &kc,
            &[
                "wait",
                "vm/testvm",
                "--for=jsonpath={.status.printableStatus}=Running",
                "--timeout=90s",
            ],
            None,
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"printableStatus":"Running"}}"#,
    ]);
    let w = waiter.join().unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert!(String::from_utf8_lossy(&w.stdout).contains("condition met"));
    // get -w printed the initial row and then the change.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
            seen.push(l.clone());
            if l.contains("testvm") && l.contains("Running") {
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen[0].starts_with("NAME"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("testvm") && l.contains("Running")),
        "{seen:?}"
    );
}

#[test]
fn readonly_token_is_forbidden_to_write() {
    let s = TestServer::start();
    let ro = &s.readonly_kubeconfig;
    let out = common::kubectl_with(ro, &["get", "vm"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::kubectl_with(ro, &["apply", "-f", "-"], Some(VM_YAML));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    assert!(err.contains("User \"readonly\" cannot"), "{err}");
}

#[test]
fn finalizers_and_cascading_delete() {
    let s = TestServer::start();
    s.apply_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owner\n  finalizers: [example.com/hold]\ndata: {a: b}\n",
    );
    let uid = s.ok(&["get", "cm", "owner", "-o", "jsonpath={.metadata.uid}"]);
    s.apply_yaml(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: child\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: owner\n    uid: {uid}\n"
    ));
    s.ok(&["delete", "cm", "owner", "--wait=false"]);
    // Still there with a deletionTimestamp until the finalizer goes.
    let ts = s.ok(&[
        "get",
        "cm",
        "owner",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!ts.is_empty());
    s.ok(&[
        "patch",
        "cm",
        "owner",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    s.ok(&["wait", "--for=delete", "cm/owner", "--timeout=60s"]);
    // Background GC removes the dependent.
    s.ok(&["wait", "--for=delete", "cm/child", "--timeout=60s"]);
}

#[test]
fn typed_create_commands_and_namespace_cleanup() {
    // kubectl's typed `create` commands send protobuf.
    let s = TestServer::start();
    assert_eq!(
        s.ok(&["create", "namespace", "team"]).trim(),
        "namespace/team created"
    );
    s.ok(&[
        "create",
        "configmap",
        "c1",
        "--from-literal=a=b",
        "-n",
        "team",
    ]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=p=q",
        "-n",
        "team",
    ]);
    assert_eq!(
        s.ok(&["get", "cm", "c1", "-n", "team", "-o", "jsonpath={.data.a}"]),
        "b"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "secret",
            "s1",
            "-n",
            "team",
            "-o",
            "jsonpath={.type} {.data.p}"
        ]),
        "Opaque cQ=="
    );
    let secrets = s.ok(&["get", "secrets", "-n", "team"]);
    assert!(secrets.contains("s1     Opaque   1"), "{secrets}");
    // Strict field validation covers built-in kinds too.
    let out = s.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo, namespace: team}\ndta: {a: b}\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"dta\""),
        "{err}"
    );
    s.ok(&["delete", "namespace", "team", "--wait", "--timeout=60s"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = s.ok(&["get", "cm,secret", "-n", "team", "-o", "name"]);
        if left.trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "namespace contents not cleaned: {left}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn user_crd_is_served_and_its_deletion_removes_its_objects() {
    let s = TestServer::start();
    s.apply_yaml(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: The widget's desired state.
            properties:
              size: {type: integer, description: How big the widget is.}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#,
    );
    s.apply_yaml(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n",
    );
    let out = s.ok(&["get", "wd"]);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], &["w1", "3"], "{out}");
    // Schema validation: wrong type is 422 with the field path.
    let err = s.fails(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"size":"big"}}"#,
    ]);
    assert!(err.contains("spec.size: Invalid value: \"big\": spec.size in body must be of type integer: \"string\""), "{err}");
    let e = s.ok(&["explain", "widget.spec.size"]);
    assert!(e.contains("How big the widget is."), "{e}");
    s.ok(&["delete", "crd", "widgets.example.com"]);
    let err = s.fails(&["get", "widgets.example.com"]);
    assert!(
        err.contains("the server doesn't have a resource type"),
        "{err}"
    );
    // Recreating the CRD does not bring the old objects back.
    s.apply_yaml(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {plural: widgets, singular: widget, kind: Widget}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = s.ok(&["get", "widgets.example.com", "-o", "name"]);
        if out.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "old widgets still there: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pods as kube-apiserver handles them: a pod on a node is deleted gracefully (a deletion
/// timestamp and grace period; the node deletes it with grace 0), `pods/binding` assigns a
/// node once, and `kubectl get pods` shows READY, STATUS and RESTARTS. `/metrics` counts
/// the requests.
#[test]
fn pods_bind_and_end_gracefully() {
    let s = TestServer::start();
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 40\n  containers:\n  - name: c\n    image: x\n"
        )
    };
    s.apply_yaml(&pod("p1"));
    s.apply_yaml(&pod("p2"));
    // Not on a node: deleted at once.
    s.ok(&["delete", "pod", "p2", "--wait=false"]);
    assert!(s
        .kubectl(&["get", "pod", "p2", "--ignore-not-found"])
        .stdout
        .is_empty());

    // Bind p1 to a node, once.
    let bind = |node: &str| {
        s.kubectl_stdin(
            &["create", "--raw", "/api/v1/namespaces/default/pods/p1/binding", "-f", "-"],
            &format!(
                r#"{{"apiVersion":"v1","kind":"Binding","metadata":{{"name":"p1"}},"target":{{"kind":"Node","name":"{node}"}}}}"#
            ),
        )
    };
    let out = bind("node1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        s.ok(&["get", "pod", "p1", "-o", "jsonpath={.spec.nodeName}"]),
        "node1"
    );
    let cond = s.ok(&[
        "get",
        "pod",
        "p1",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}",
    ]);
    assert_eq!(cond, "True");
    let out = bind("node2");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pod p1 is already assigned to node \"node1\""),
        "{err}"
    );

    // kubectl's columns.
    let table = s.ok(&["get", "pods", "-o", "wide"]);
    let header = table.lines().next().unwrap();
    for c in ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"] {
        assert!(header.contains(c), "{table}");
    }
    assert!(
        table.contains("0/1") && table.contains("Pending") && table.contains("node1"),
        "{table}"
    );

    // On a node: marked for deletion with its grace period, still there.
    s.ok(&["delete", "pod", "p1", "--wait=false"]);
    let meta = s.ok(&[
        "get",
        "pod",
        "p1",
        "-o",
        "jsonpath={.metadata.deletionGracePeriodSeconds} {.metadata.deletionTimestamp}",
    ]);
    assert!(meta.starts_with("40 "), "{meta}");
    assert!(s.ok(&["get", "pods"]).contains("Terminating"));
    // A shorter grace period shortens it; the node's final delete (grace 0) removes it.
    s.ok(&["delete", "pod", "p1", "--grace-period=5", "--wait=false"]);
    assert_eq!(
        s.ok(&[
            "get",
            "pod",
            "p1",
            "-o",
            "jsonpath={.metadata.deletionGracePeriodSeconds}"
        ]),
        "5"
    );
    s.ok(&[
        "delete",
        "pod",
        "p1",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    assert!(s
        .kubectl(&["get", "pod", "p1", "--ignore-not-found"])
        .stdout
        .is_empty());

    let metrics = s.ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains(r#"apiserver_request_total{verb="create",group="",version="v1",resource="pods",subresource="binding",scope="resource",code="409"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"verb="delete",group="",version="v1",resource="pods""#),
        "{metrics}"
    );
}
