//! The real control plane starts and works: the API server answers kubectl, RBAC refuses
//! a user without bindings, the controller-manager turns a Deployment into a Pod and the
//! scheduler reports that Pod unschedulable (there is no node). Skipped, with a message,
//! where `scripts/build-k8s.sh` has not run, unless `KUBEVIRT_RS_REQUIRE_K8S` is set.

use kubevirt_testenv::KubeCluster;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "20s"])
        .args(args)
        .output()
        .expect("running kubectl")
}

fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn control_plane_serves_kubectl_rbac_controllers_and_scheduler() {
    let t0 = Instant::now();
    let Some(cluster) = KubeCluster::start_or_skip().unwrap() else {
        return;
    };
    eprintln!(
        "KubeCluster::start() took {:.1} s; {} in {}",
        t0.elapsed().as_secs_f64(),
        cluster.server_url(),
        cluster.dir().display()
    );
    assert!(cluster.server_url().starts_with("https://127.0.0.1:"));
    assert!(cluster.ca_pem().is_file());
    let admin = cluster.admin_kubeconfig();

    assert_eq!(kubectl_ok(admin, &["get", "--raw", "/readyz"]).trim(), "ok");
    let version = kubectl_ok(admin, &["get", "--raw", "/version"]);
    assert!(version.contains("\"gitVersion\": \"v1.36."), "{version}");
    // kubectl reads the OpenAPI v2 document (a Go 1.27 build served one it rejects).
    let explain = kubectl_ok(
        admin,
        &[
            "explain",
            "deployment.spec.replicas",
            "--output=plaintext-openapiv2",
        ],
    );
    assert!(explain.contains("replicas"), "{explain}");
    kubectl_ok(admin, &["create", "namespace", "x"]);

    // A client-certificate user with two groups and no bindings: authenticated as such,
    // refused by RBAC.
    let nobody = cluster
        .user_kubeconfig("nobody", &["team-a", "team-b"])
        .unwrap();
    let whoami = kubectl_ok(&nobody, &["auth", "whoami", "-o", "json"]);
    let whoami: serde_json::Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["status"]["userInfo"]["username"], "nobody");
    let groups = whoami["status"]["userInfo"]["groups"].to_string();
    for g in ["team-a", "team-b", "system:authenticated"] {
        assert!(groups.contains(g), "{g} missing from {groups}");
    }
    let denied = kubectl(&nobody, &["get", "pods", "-A"]);
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success(), "nobody may list pods");
    assert!(
        stderr.contains("Forbidden") || stderr.contains("forbidden"),
        "{stderr}"
    );

    // The controller-manager creates the Deployment's Pod; the scheduler finds no node.
    kubectl_ok(
        admin,
        &[
            "-n",
            "x",
            "create",
            "deployment",
            "web",
            "--image=registry.k8s.io/pause:3.10",
            "--replicas=1",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let (pod_created, unschedulable) = loop {
        let pods = kubectl_ok(
            admin,
            &["-n", "x", "get", "pods", "-l", "app=web", "-o", "json"],
        );
        let pods: serde_json::Value = serde_json::from_str(&pods).unwrap();
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let unschedulable = items.iter().any(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "PodScheduled"
                        && c["status"] == "False"
                        && c["reason"] == "Unschedulable"
                })
        });
        if unschedulable || Instant::now() > deadline {
            break (!items.is_empty(), unschedulable);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let logs = || {
        let cm = std::fs::read_to_string(cluster.dir().join("kube-controller-manager.log"))
            .unwrap_or_default();
        let sched =
            std::fs::read_to_string(cluster.dir().join("kube-scheduler.log")).unwrap_or_default();
        format!("controller-manager log:\n{cm}\nscheduler log:\n{sched}")
    };
    assert!(pod_created, "no Pod for the Deployment\n{}", logs());
    assert!(
        unschedulable,
        "the Pod was not marked Unschedulable\n{}",
        logs()
    );

    for (name, pid) in cluster.pids() {
        eprintln!("{name}: RSS {} MiB", rss_kib(pid).unwrap_or(0) / 1024);
    }
    let pids = cluster.pids();
    let t1 = Instant::now();
    drop(cluster);
    eprintln!("stopping took {:.1} s", t1.elapsed().as_secs_f64());
    for (name, pid) in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} still running"
        );
    }
}
