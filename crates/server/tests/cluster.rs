//! Cluster mode against real Kubernetes: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler built from Go modules (`scripts/build-k8s.sh`). `kubevirt-rs install
//! --apply` installs; virt-api, two virt-controllers and virt-handler run as processes with
//! their ServiceAccounts' tokens (so the install's RBAC is what the real apiserver
//! enforces on them). There is no kubelet here: the test stands in for it by running those
//! processes, and for the endpoints controller by pointing virt-api's Service at the host
//! address virt-api listens on; virt-handler runs the launcher pods kube-scheduler binds
//! to its node. On top of the install: admission through the real apiserver, CA rotation,
//! RBAC for users, an upgrade over a running VM, the console through the aggregated API,
//! an eviction that live-migrates, leader failover and uninstall.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{kubevirt_rs, tail, TIMEOUT};
use kubevirt_testenv::kube_cluster::{free_port, host_ip};
use kubevirt_testenv::KubeCluster;

const NS: &str = "kubevirt";

struct Kube<'a> {
    cluster: &'a KubeCluster,
    kubeconfig: PathBuf,
}

impl Kube<'_> {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) -> Output {
        self.kubectl(&["apply", "-f", "-"], Some(yaml))
    }

    fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let mut a = args.to_vec();
        let p = format!("jsonpath={path}");
        a.extend(["-o", &p]);
        String::from_utf8_lossy(&self.kubectl(&a, None).stdout).into_owned()
    }

    fn wait_for(&self, args: &[&str], path: &str, want: &str, logs: &Components) {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.jsonpath(args, path);
            if last == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "{args:?} {path}: wanted {want:?}, last {last:?}\n{}",
            logs.tails(self.cluster.dir())
        );
    }

    /// A kubeconfig holding a token of ServiceAccount `sa` in the install's namespace.
    fn service_account_kubeconfig(&self, sa: &str, dir: &Path) -> PathBuf {
        let token = self.ok(&["-n", NS, "create", "token", sa, "--duration", "2h"]);
        let path = dir.join(format!("{sa}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {sa}\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {sa}}}\ncurrent-context: c\n",
                self.cluster.server_url(),
                self.cluster.ca_pem().display(),
                token.trim()
            ),
        )
        .unwrap();
        path
    }
}

/// The component processes, killed on drop; their logs are in the cluster's directory.
#[derive(Default)]
struct Components {
    children: Vec<(String, Child)>,
    /// The virt-handlers' run roots: launchers still running under them are stopped on drop.
    run_roots: Vec<PathBuf>,
}

impl Components {
    fn spawn(&mut self, dir: &Path, name: &str, args: &[&str], kubeconfig: &Path) -> u32 {
        let mut args = args.to_vec();
        args.extend(["--kubeconfig", kubeconfig.to_str().unwrap()]);
        self.spawn_without_credentials(dir, name, &args)
    }

    fn spawn_without_credentials(&mut self, dir: &Path, name: &str, args: &[&str]) -> u32 {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(kubevirt_rs())
            .args(args)
            .env("RUST_LOG", "info,kube_runtime=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let pid = child.id();
        self.children.push((name.to_string(), child));
        pid
    }

    fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tails(&self, dir: &Path) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            out.push_str(&format!("--- {name}.log\n{}\n", tail(&log, 25)));
        }
        out
    }
}

impl Drop for Components {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = nix_term(c.id());
        }
        std::thread::sleep(Duration::from_millis(500));
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // virt-handler leaves VMs running by design: a run that failed before deleting its
        // VM stops the launchers it left (SIGTERM: each tears down its QEMU and network).
        for root in &self.run_roots {
            let root = root.display().to_string();
            for (pid, _) in common::pids_mentioning(&root) {
                let _ = nix_term(pid);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while !common::pids_mentioning(&root).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// `GET https://addr/metrics` (a self-signed certificate, as upstream's components serve
/// theirs) with an optional bearer token: the status code and the body.
fn scrape(addr: &str, token: Option<&str>) -> (u16, String) {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        curl.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = curl
        .arg(format!("https://{addr}/metrics"))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn nix_term(pid: u32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

fn install(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(kubevirt_rs())
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap()
}

const INVALID_VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: broken}
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices: {disks: [{name: containerdisk, disk: {bus: virtio}}]}
        resources: {requests: {memory: 64M}}
      volumes: [{name: other, containerDisk: {image: registry:5000/kubevirt/cirros-container-disk-demo:devel}}]
"#;

#[test]
fn install_and_run_a_vm_on_real_kubernetes() {
    let cluster = match KubeCluster::start() {
        Ok(c) => c,
        Err(e) if std::env::var_os("KUBEVIRT_RS_REQUIRE_K8S").is_none() => {
            eprintln!("skipping: {e:#}");
            return;
        }
        Err(e) => panic!("{e:#}"),
    };
    let dir = cluster.dir().to_path_buf();
    let admin = Kube {
        cluster: &cluster,
        kubeconfig: cluster.admin_kubeconfig().to_path_buf(),
    };
    let mut parts = Components::default();

    // Install: applied, then applied again without changing anything.
    let out = install(admin.kubeconfig.as_path(), &["install", "--apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A Deployment's status moves on its own; its generation counts spec changes.
    let rv = |kind: &str, name: &str, field: &str| {
        admin.jsonpath(
            &["-n", NS, "get", kind, name],
            &format!("{{.metadata.{field}}}"),
        )
    };
    let state = || {
        (
            rv("deployment", "virt-controller", "generation"),
            rv("clusterrole", "kubevirt.io:edit", "resourceVersion"),
            rv(
                "validatingwebhookconfiguration",
                "virt-api-validator",
                "resourceVersion",
            ),
        )
    };
    let before = state();
    let out = install(admin.kubeconfig.as_path(), &["install", "--apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(before, state(), "a second install changes nothing");
    // kube's RBAC controller aggregated KubeVirt's roles into `edit`.
    let deadline = Instant::now() + TIMEOUT;
    while !admin
        .ok(&["get", "clusterrole", "edit", "-o", "json"])
        .contains("virtualmachines")
    {
        assert!(
            Instant::now() < deadline,
            "edit does not aggregate kubevirt.io:edit"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // virt-api, reached through its Service (Endpoints: this host's address).
    let ip = host_ip().unwrap();
    let port = free_port(&ip).unwrap();
    let point_virt_api_at_host = || {
        cluster
            .serve_service_from(NS, "virt-api", &ip, port)
            .unwrap()
    };
    point_virt_api_at_host();
    let api_kc = admin.service_account_kubeconfig("kubevirt-apiserver", &dir);
    let listen = format!("{ip}:{port}");
    // virt-handler's node-level endpoint, on the address its node registers (`--node-ip`).
    let handler_port = free_port(&ip).unwrap().to_string();
    let handler_listen = format!("{ip}:{handler_port}");
    let api_args = [
        "virt-api",
        "--listen",
        &listen,
        "--handler-port",
        &handler_port,
    ];
    parts.spawn(&dir, "virt-api", &api_args, &api_kc);
    // virt-api's CA reaches every webhook of both configurations.
    for cfg in [
        "mutatingwebhookconfiguration/virt-api-mutator",
        "validatingwebhookconfiguration/virt-api-validator",
    ] {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let bundles = admin.jsonpath(&["get", cfg], "{.webhooks[*].clientConfig.caBundle}");
            let n = admin
                .jsonpath(&["get", cfg], "{.webhooks[*].name}")
                .split_whitespace()
                .count();
            if n > 0 && bundles.split_whitespace().count() == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{cfg} has no caBundle\n{}",
                parts.tails(&dir)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    // The real apiserver asks virt-api: an invalid VM is refused with its field path
    // (kubectl prints the Status's causes, as it does for upstream's virt-api) ...
    let out = admin.apply(INVALID_VM);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("The request is invalid: spec.template.spec.domain.devices.disks[0].name"),
        "{err}\n{}",
        parts.tails(&dir)
    );
    // ... and the Status itself names the webhook, as kube-apiserver words a denial.
    let status = denial_status(cluster.admin_kubeconfig(), INVALID_VM);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status.message.starts_with(
            r#"admission webhook "virtualmachine-validator.kubevirt.io" denied the request: "#
        ),
        "{}",
        status.message
    );
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    assert!(
        causes
            .iter()
            .any(|c| c.field == "spec.template.spec.domain.devices.disks[0].name"),
        "{causes:?}"
    );
    assert!(admin
        .kubectl(&["get", "vm", "broken"], None)
        .stderr
        .starts_with(b"Error from server (NotFound)"));

    // A new CA (its Secret deleted, as an administrator would to rotate it now): virt-api
    // issues it, the webhooks' caBundle follows, and admission keeps working.
    let bundle = admin.jsonpath(
        &[
            "get",
            "validatingwebhookconfiguration",
            "virt-api-validator",
        ],
        "{.webhooks[0].clientConfig.caBundle}",
    );
    admin.ok(&["-n", NS, "delete", "secret", "kubevirt-ca"]);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = admin.jsonpath(
            &[
                "get",
                "validatingwebhookconfiguration",
                "virt-api-validator",
            ],
            "{.webhooks[0].clientConfig.caBundle}",
        );
        if now != bundle
            && !now.is_empty()
            && denial_status(cluster.admin_kubeconfig(), INVALID_VM).code == 422
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new CA\n{}",
            parts.tails(&dir)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // RBAC by the real apiserver: a `view` user may read VMs, not create them.
    admin.ok(&["create", "namespace", "team-a"]);
    admin.ok(&[
        "-n",
        "team-a",
        "create",
        "rolebinding",
        "viewer",
        "--clusterrole=view",
        "--user=vera",
    ]);
    let vera = Kube {
        cluster: &cluster,
        kubeconfig: cluster.user_kubeconfig("vera", &[]).unwrap(),
    };
    assert!(vera
        .kubectl(&["-n", "team-a", "get", "vms"], None)
        .status
        .success());
    let out = vera.kubectl(
        &["-n", "team-a", "apply", "-f", "-"],
        Some(&vm_yaml("denied", "Halted")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );

    // The controllers (two replicas, one leader) and the node agent.
    let ctl_kc = admin.service_account_kubeconfig("kubevirt-controller", &dir);
    let handler_kc = admin.service_account_kubeconfig("kubevirt-handler", &dir);
    // Each component's `/metrics` on its own port of the host.
    let metrics_at = |_: &str| format!("{ip}:{}", free_port(&ip).unwrap());
    let (ctl_a_metrics, ctl_b_metrics, handler_metrics) = (
        metrics_at("ctl-a"),
        metrics_at("ctl-b"),
        metrics_at("handler"),
    );
    for (id, metrics) in [("ctl-a", &ctl_a_metrics), ("ctl-b", &ctl_b_metrics)] {
        parts.spawn(
            &dir,
            id,
            &[
                "virt-controller",
                "--use-emulation",
                "--identity",
                id,
                "--metrics-listen",
                metrics,
            ],
            &ctl_kc,
        );
        // The first one started leads (the second waits on the Lease).
        if id == "ctl-a" {
            admin.wait_for(
                &["-n", NS, "get", "lease", "virt-controller"],
                "{.spec.holderIdentity}",
                "ctl-a",
                &parts,
            );
        }
    }
    // The leader made the install's KubeVirt object (with its ServiceAccount's rights) and
    // says it is up, as upstream's install instructions wait for.
    admin.wait_for(
        &["-n", NS, "get", "kv", "kubevirt"],
        "{.status.phase}",
        "Deployed",
        &parts,
    );
    let out = admin.ok(&[
        "-n",
        NS,
        "wait",
        "kv",
        "kubevirt",
        "--for",
        "condition=Available",
        "--timeout=60s",
    ]);
    assert_eq!(out.trim(), "kubevirt.kubevirt.io/kubevirt condition met");
    // kube-apiserver refuses a wrong type in the part of it kubevirt-rs reads (the CRD's
    // schema), virt-api's webhooks what upstream's validators refuse.
    let out = admin.kubectl(
        &[
            "-n",
            NS,
            "patch",
            "kv",
            "kubevirt",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"configuration":{"migrations":{"allowPostCopy":"yes"}}}}"#,
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(
                "spec.configuration.migrations.allowPostCopy in body must be of type boolean"
            ),
        "{err}"
    );
    let out = admin.kubectl(
        &[
            "-n",
            NS,
            "patch",
            "kv",
            "kubevirt",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"configuration":{"migrations":{"completionTimeoutPerGiB":-5}}}}"#,
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(
                "spec.configuration.migrations.completionTimeoutPerGiB: must not be negative"
            ),
        "{err}"
    );
    let out = admin.apply(
        "apiVersion: migrations.kubevirt.io/v1alpha1\nkind: MigrationPolicy\nmetadata:\n  name: greedy\n\
         spec:\n  bandwidthPerMigration: -1Mi\n  maxDowntimeMs: 100\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.bandwidthPerMigration: must not be negative"),
        "{err}"
    );
    let registry = kubevirt_testenv::Registry::start().unwrap();
    registry
        .push_guest_containerdisk(kubevirt_testenv::UPSTREAM_DEMO_IMAGE)
        .unwrap();
    let mirror = format!("registry:5000=http://{}", registry.host());
    let run_root = dir.join("run");
    parts.run_roots.push(run_root.clone());
    let data = dir.join("node-data");
    let handler_args = [
        "virt-handler",
        "--node-name",
        "node-1",
        "--node-ip",
        &ip,
        "--run-root",
        run_root.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--registry-mirror",
        &mirror,
        "--listen",
        &handler_listen,
        "--metrics-listen",
        &handler_metrics,
    ];
    parts.spawn(&dir, "virt-handler", &handler_args, &handler_kc);
    admin.wait_for(
        &["get", "node", "node-1"],
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        &parts,
    );

    // A VM as a user of `edit` writes it: scheduled by kube-scheduler, run on node-1.
    admin.ok(&[
        "-n",
        "team-a",
        "create",
        "rolebinding",
        "editor",
        "--clusterrole=edit",
        "--user=eddie",
    ]);
    let eddie = Kube {
        cluster: &cluster,
        kubeconfig: cluster.user_kubeconfig("eddie", &[]).unwrap(),
    };
    let out = eddie.kubectl(
        &["-n", "team-a", "apply", "-f", "-"],
        Some(&vm_yaml("cirros", "Always")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    admin.wait_for(
        &["-n", "team-a", "get", "vmi", "cirros"],
        "{.status.phase}",
        "Running",
        &parts,
    );
    let pod = admin.jsonpath(
        &[
            "-n",
            "team-a",
            "get",
            "pods",
            "-l",
            "vm.kubevirt.io/name=cirros",
        ],
        "{.items[0].metadata.name}",
    );
    assert_eq!(
        admin.jsonpath(&["-n", "team-a", "get", "pod", &pod], "{.spec.nodeName}"),
        "node-1"
    );
    // The node and its pods carry the address given with `--node-ip`.
    assert_eq!(
        admin.jsonpath(
            &["get", "node", "node-1"],
            "{.status.addresses[?(@.type==\"InternalIP\")].address}"
        ),
        ip
    );
    assert_eq!(
        admin.jsonpath(&["-n", "team-a", "get", "pod", &pod], "{.status.hostIP}"),
        ip
    );
    let scheduled = admin.ok(&[
        "-n",
        "team-a",
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod},reason=Scheduled"),
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        scheduled.contains("Successfully assigned"),
        "kube-scheduler bound the pod: {scheduled}"
    );
    // The guest booted: its agent connected.
    admin.wait_for(
        &["-n", "team-a", "get", "vmi", "cirros"],
        "{.status.conditions[?(@.type==\"AgentConnected\")].status}",
        "True",
        &parts,
    );
    // Metrics: virt-handler's has the VM's counters, the leading virt-controller's the
    // object families (a standby serves none); a caller needs a token allowed `/metrics`.
    let out = admin.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: prometheus, namespace: kubevirt}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: nosy, namespace: kubevirt}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: metrics-reader}\nrules: [{nonResourceURLs: [/metrics], verbs: [get]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: prometheus-metrics}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: metrics-reader}\nsubjects: [{kind: ServiceAccount, name: prometheus, namespace: kubevirt}]\n",
    );
    assert!(out.status.success(), "{out:?}");
    let token = |sa: &str| {
        admin
            .ok(&["-n", NS, "create", "token", sa])
            .trim()
            .to_string()
    };
    let (reader, nosy) = (token("prometheus"), token("nosy"));
    let sel = r#"namespace="team-a",name="cirros""#;
    let mut handler_text = String::new();
    let deadline = Instant::now() + TIMEOUT;
    while !handler_text.contains(&format!(
        "kubevirt_vmi_memory_domain_bytes{{node=\"node-1\",{sel}"
    )) {
        assert!(
            Instant::now() < deadline,
            "virt-handler's metrics lack the VM: {handler_text}\n{}",
            parts.tails(&dir)
        );
        std::thread::sleep(Duration::from_millis(500));
        handler_text = scrape(&handler_metrics, Some(&reader)).1;
    }
    let (code, leader) = scrape(&ctl_a_metrics, Some(&reader));
    assert_eq!(code, 200);
    assert!(
        leader.contains(&format!("kubevirt_vmi_info{{node=\"node-1\",{sel}"))
            && leader.contains(r#"kubevirt_vm_info{name="cirros",namespace="team-a""#),
        "{leader}"
    );
    let (code, standby) = scrape(&ctl_b_metrics, Some(&reader));
    assert_eq!(code, 200);
    assert!(!standby.contains("kubevirt_"), "{standby}");
    assert_eq!(scrape(&handler_metrics, None).0, 401);
    assert_eq!(scrape(&handler_metrics, Some("made-up")).0, 401);
    let (code, body) = scrape(&ctl_a_metrics, Some(&nosy));
    assert_eq!(code, 403, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["message"],
        "forbidden: User \"system:serviceaccount:kubevirt:nosy\" cannot get path \"/metrics\""
    );

    // The defaults came from virt-api's mutating webhook (as the real apiserver stored them).
    assert_eq!(
        admin.jsonpath(
            &["-n", "team-a", "get", "vm", "cirros"],
            "{.spec.template.spec.domain.machine.type}"
        ),
        "q35"
    );

    // An upgrade: a newer install (here: other images) is applied over the running one;
    // the components' workloads change, the VMs' launcher pods do not. The components
    // restart as their rollout would (virt-handler adopts its running guests): the VM
    // keeps running in the same QEMU.
    let pod_uid = admin.jsonpath(&["-n", "team-a", "get", "pod", &pod], "{.metadata.uid}");
    let qemu = common::qemu_pids(&pod_uid);
    assert_eq!(qemu.len(), 1, "one QEMU for pod {pod_uid}");
    let out = install(
        admin.kubeconfig.as_path(),
        &[
            "install",
            "--apply",
            "--image",
            "registry.example/kubevirt-rs/kubevirt-rs:next",
            "--launcher-image",
            "registry.example/kubevirt-rs/virt-launcher:next",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (kind, name) in [("daemonset", "virt-handler"), ("deployment", "virt-api")] {
        assert_eq!(
            admin.jsonpath(
                &["-n", NS, "get", kind, name],
                "{.spec.template.spec.containers[0].image}"
            ),
            "registry.example/kubevirt-rs/kubevirt-rs:next"
        );
    }
    assert_eq!(
        admin.jsonpath(&["-n", "team-a", "get", "pod", &pod], "{.metadata.uid}"),
        pod_uid
    );
    // The install gave virt-api's Service its selector back; with no kubelet running
    // virt-api's pods, point the Service at the process again.
    point_virt_api_at_host();
    parts.kill("virt-handler");
    parts.spawn(&dir, "virt-handler", &handler_args, &handler_kc);
    parts.kill("virt-api");
    parts.spawn(&dir, "virt-api", &api_args, &api_kc);
    std::thread::sleep(Duration::from_secs(3));
    admin.wait_for(
        &["-n", "team-a", "get", "vmi", "cirros"],
        "{.status.phase}",
        "Running",
        &parts,
    );
    assert_eq!(
        common::qemu_pids(&pod_uid),
        qemu,
        "the guest was adopted, not restarted"
    );

    // virtctl through the cluster's kube-apiserver: its aggregator -> virt-api (which asks
    // the cluster whether the user may) -> virt-handler on the VMI's node -> the console.
    admin.wait_for(
        &["get", "apiservice", "v1.subresources.kubevirt.io"],
        "{.status.conditions[?(@.type==\"Available\")].status}",
        "True",
        &parts,
    );
    let out = common::virtctl_as(
        &admin.kubeconfig,
        &["guestosinfo", "cirros", "-n", "team-a"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        parts.tails(&dir)
    );
    let mut console =
        common::ConsoleCapture::start_as(&admin.kubeconfig, &["console", "cirros", "-n", "team-a"]);
    console.send("\r");
    console.send("echo through-the-aggregator-$((6*7))\r");
    console.wait_for("through-the-aggregator-42");
    drop(console);
    // `view` may not open a console: the SubjectAccessReview says no.
    let out = common::virtctl_as(&vera.kubeconfig, &["console", "cirros", "-n", "team-a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(r#"cannot get resource "virtualmachineinstances/console" in API group "subresources.kubevirt.io""#),
        "{err}"
    );
    // Port-forward takes the same path (its deeper `portforward/22/tcp` URL included): a
    // VM's port 22 answers with the guest's SSH server's banner.
    let mut forward = Command::new(common::virtctl())
        .args(["port-forward", "--stdio=true", "vm/cirros/team-a", "22"])
        .env("KUBECONFIG", &eddie.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = forward.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let banner = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let _ = forward.kill();
    let out = forward.wait_with_output().unwrap();
    assert!(
        banner.starts_with("SSH-2.0-dropbear"),
        "{banner:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The web console in front of kube-apiserver holds no credentials: a user's token
    // does what that user may, no more, and its websocket subprotocol carries the token
    // through kube-apiserver and its aggregator to the guest's console.
    let console_at = format!("127.0.0.1:{}", free_port("127.0.0.1").unwrap());
    parts.spawn_without_credentials(
        &dir,
        "virt-console",
        &[
            "virt-console",
            "--listen",
            &console_at,
            "--api-server",
            &cluster.server_url(),
            "--api-ca",
            cluster.ca_pem().to_str().unwrap(),
        ],
    );
    let console_get = |path: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "5", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(format!("https://{console_at}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().to_string(), body.to_string())
    };
    let deadline = Instant::now() + TIMEOUT;
    while console_get("/", &[]).0 != "200" {
        assert!(Instant::now() < deadline, "{}", parts.tails(&dir));
        std::thread::sleep(Duration::from_millis(200));
    }
    let token = admin.ok(&["-n", "team-a", "create", "token", "default"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let (code, body) = console_get(
        "/apis/kubevirt.io/v1/namespaces/team-a/virtualmachines",
        &["-H", &bearer],
    );
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains(r#"User \"system:serviceaccount:team-a:default\" cannot list resource \"virtualmachines\""#),
        "{body}"
    );
    admin.ok(&[
        "-n",
        "team-a",
        "create",
        "rolebinding",
        "console-user",
        "--clusterrole=kubevirt.io:edit",
        "--serviceaccount=team-a:default",
    ]);
    let (code, body) = console_get(
        "/apis/kubevirt.io/v1/namespaces/team-a/virtualmachines",
        &["-H", &bearer],
    );
    assert_eq!(code, "200", "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "cirros", "{body}");
    // curl stops at its time limit once the websocket is open; the status is what counts.
    let upgrade = common::curl_websocket_args(token.trim());
    let upgrade: Vec<&str> = upgrade.iter().map(String::as_str).collect();
    let (code, body) = console_get(
        "/apis/subresources.kubevirt.io/v1/namespaces/team-a/virtualmachineinstances/cirros/console",
        &upgrade,
    );
    assert_eq!(code, "101", "{body}\n{}", parts.tails(&dir));
    parts.kill("virt-console");

    // A second node: its own virt-handler on another address of this host (127.0.0.2: the
    // nodes' endpoints share virt-api's `--handler-port`), run root and data directory.
    let node2_ip = "127.0.0.2";
    let run_root2 = dir.join("run2");
    parts.run_roots.push(run_root2.clone());
    let (data2, node2_listen, node2_metrics) = (
        dir.join("node-2-data"),
        format!("{node2_ip}:{handler_port}"),
        format!("{node2_ip}:{}", free_port(node2_ip).unwrap()),
    );
    parts.spawn(
        &dir,
        "virt-handler-2",
        &[
            "virt-handler",
            "--node-name",
            "node-2",
            "--node-ip",
            node2_ip,
            "--run-root",
            run_root2.to_str().unwrap(),
            "--data-dir",
            data2.to_str().unwrap(),
            "--registry-mirror",
            &mirror,
            "--listen",
            &node2_listen,
            "--metrics-listen",
            &node2_metrics,
        ],
        &handler_kc,
    );
    admin.wait_for(
        &["get", "node", "node-2"],
        "{.status.conditions[?(@.type==\"Ready\")].status}",
        "True",
        &parts,
    );
    // What the guest has before it moves: a file in memory, and bytes near the end of its
    // disk, which only node-1 has (the containerDisk's overlay in the launcher's run dir).
    let mut console =
        common::ConsoleCapture::start_as(&admin.kubeconfig, &["console", "cirros", "-n", "team-a"]);
    console.send("\r");
    let end_of_disk = "n=$(( $(cat /sys/block/vda/size) - 8 ))";
    console.run(
        &format!("echo moving-$((2*21)) > /tmp/m; {end_of_disk}; echo disk-marker-$((7*11)) | dd of=/dev/vda bs=512 seek=$n conv=fsync 2>/dev/null; echo marked-$((1+1))"),
        "marked-2",
    );
    drop(console);

    // Evicting the launcher pod (what `kubectl drain` does) is refused by virt-api's
    // eviction webhook, which marks the VMI for evacuation (its evictionStrategy is
    // LiveMigrate): the controllers migrate it to a new launcher pod, which
    // kube-scheduler places on the other node (never beside the source); the disk only
    // node-1 had is copied over while the guest runs, both streams carried between the
    // virt-handlers over mutual TLS; the guest keeps running.
    let eviction = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"team-a"}}}}"#
    );
    let eviction_path = dir.join("eviction.json");
    std::fs::write(&eviction_path, eviction).unwrap();
    let evict = || {
        admin.kubectl(
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/team-a/pods/{pod}/eviction"),
                "-f",
                eviction_path.to_str().unwrap(),
            ],
            None,
        )
    };
    let out = evict();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(r#"Error from server: admission webhook "virt-launcher-eviction-interceptor.kubevirt.io" denied the request: Eviction triggered evacuation of VMI "team-a/cirros""#),
        "{err}\n{}",
        parts.tails(&dir)
    );
    admin.wait_for(
        &["-n", "team-a", "get", "vmim"],
        "{.items[0].status.phase}",
        "Succeeded",
        &parts,
    );
    assert!(admin
        .ok(&["-n", "team-a", "get", "vmim", "-o", "name"])
        .contains("kubevirt-evacuation-"));
    let moved_to = admin.jsonpath(
        &["-n", "team-a", "get", "vmi", "cirros"],
        "{.status.migrationState.targetPod}",
    );
    assert!(!moved_to.is_empty() && moved_to != pod, "{moved_to}");
    // The pod it left has finished; evicting it now goes through.
    admin.wait_for(
        &["-n", "team-a", "get", "pod", &pod],
        "{.status.phase}",
        "Succeeded",
        &parts,
    );
    let out = evict();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (what, want) in [
        ("{.status.nodeName}", "node-2"),
        ("{.status.migrationState.targetNodeAddress}", node2_ip),
        ("{.metadata.labels.kubevirt\\.io/nodeName}", "node-2"),
    ] {
        assert_eq!(
            admin.jsonpath(&["-n", "team-a", "get", "vmi", "cirros"], what),
            want,
            "{what}"
        );
    }
    assert_eq!(
        admin.jsonpath(
            &["-n", "team-a", "get", "pod", &moved_to],
            "{.spec.nodeName}"
        ),
        "node-2"
    );
    let mut console =
        common::ConsoleCapture::start_as(&admin.kubeconfig, &["console", "cirros", "-n", "team-a"]);
    console.send("\r");
    console.run(
        &format!("cat /tmp/m; echo 3 > /proc/sys/vm/drop_caches; {end_of_disk}; dd if=/dev/vda bs=512 skip=$n count=1 2>/dev/null | head -c 16; echo; echo after-the-move-$((6*7))"),
        "after-the-move-42",
    );
    let text = console.text();
    assert!(
        text.contains("moving-42") && text.contains("disk-marker-77"),
        "the guest kept its memory and its disk: {text}"
    );
    drop(console);
    // A node's migration endpoint takes only the install's certificates: without one the
    // TLS handshake fails; with virt-handler's, a stream of no migration waiting there is
    // a 404, and a request that is no upgrade a 400.
    let vmi_uid = admin.jsonpath(&["-n", "team-a", "get", "vmi", "cirros"], "{.metadata.uid}");
    let pki = dir.join("handler-pki");
    std::fs::create_dir_all(&pki).unwrap();
    for key in ["tls.crt", "tls.key"] {
        let b64 = admin.jsonpath(
            &["-n", NS, "get", "secret", "kubevirt-virt-handler-certs"],
            &format!("{{.data.{}}}", key.replace('.', "\\.")),
        );
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap();
        std::fs::write(pki.join(key), bytes).unwrap();
    }
    let stream = |uid: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(extra)
            .arg(format!("https://{node2_listen}/v1/migrations/{uid}/ram"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cert = pki.join("tls.crt").display().to_string();
    let key = pki.join("tls.key").display().to_string();
    let upgrade = [
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: kubevirt-migration",
    ];
    assert_eq!(stream(&vmi_uid, &upgrade), "000");
    let with_cert = |more: &[&str]| {
        let mut args = vec!["--cert", cert.as_str(), "--key", key.as_str()];
        args.extend_from_slice(more);
        stream(&vmi_uid, &args)
    };
    assert_eq!(with_cert(&upgrade), "404");
    assert_eq!(with_cert(&[]), "400");

    // Leader failover: the leader dies; the standby takes the Lease and acts.
    parts.kill("ctl-a");
    admin.wait_for(
        &["-n", NS, "get", "lease", "virt-controller"],
        "{.spec.holderIdentity}",
        "ctl-b",
        &parts,
    );
    let out = common::virtctl_as(&admin.kubeconfig, &["stop", "cirros", "-n", "team-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    admin.wait_for(
        &["-n", "team-a", "get", "vm", "cirros"],
        "{.status.printableStatus}",
        "Stopped",
        &parts,
    );

    // Uninstall refuses while a VMI exists; once the VM is gone it removes everything.
    admin.ok(&[
        "-n",
        "team-a",
        "patch",
        "vm",
        "cirros",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runStrategy":"Always"}}"#,
    ]);
    admin.wait_for(
        &["-n", "team-a", "get", "vmi", "cirros"],
        "{.status.phase}",
        "Running",
        &parts,
    );
    let out = install(admin.kubeconfig.as_path(), &["uninstall", "--apply"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("team-a/cirros"),
        "{out:?}"
    );
    admin.ok(&[
        "-n",
        "team-a",
        "delete",
        "vm",
        "cirros",
        "--wait=true",
        "--timeout=120s",
    ]);
    let deadline = Instant::now() + TIMEOUT;
    while !admin
        .ok(&["get", "vmi", "-A", "-o", "name"])
        .trim()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "VMIs remain\n{}",
            parts.tails(&dir)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = install(admin.kubeconfig.as_path(), &["uninstall", "--apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crds = admin.ok(&["get", "crd", "-o", "name"]);
    assert!(!crds.contains("kubevirt.io"), "{crds}");
    assert!(admin
        .kubectl(
            &[
                "get",
                "validatingwebhookconfiguration",
                "virt-api-validator"
            ],
            None
        )
        .stderr
        .starts_with(b"Error from server (NotFound)"));
}

/// The Status the API server answers a create of `yaml` with (which must fail).
fn denial_status(kubeconfig: &Path, yaml: &str) -> kube::core::Status {
    let obj: kube::api::DynamicObject = serde_yaml::from_str(yaml).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
            "virtualmachines",
        );
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(client, "default", &ar);
        match api.create(&Default::default(), &obj).await {
            Err(kube::Error::Api(status)) => *status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    })
}

/// A VM booting upstream's demo containerDisk (served by the local registry).
fn vm_yaml(name: &str, run_strategy: &str) -> String {
    format!(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: {run_strategy}
  template:
    metadata: {{labels: {{kubevirt.io/vm: {name}}}}}
    spec:
      evictionStrategy: LiveMigrate
      domain:
        devices: {{disks: [{{name: containerdisk, disk: {{bus: virtio}}}}]}}
        resources: {{requests: {{memory: 128Mi}}}}
      volumes: [{{name: containerdisk, containerDisk: {{image: "registry:5000/{image}"}}}}]
"#,
        image = kubevirt_testenv::UPSTREAM_DEMO_IMAGE
    )
}
