//! Metrics with a real Prometheus: the embedded server's `/metrics`, scraped over HTTPS
//! with a ServiceAccount's token that RBAC allows `/metrics`, serves upstream KubeVirt's
//! VM series for a booted guest (CPU, vCPU, memory with the guest's balloon report, disk,
//! network, object info); PromQL finds them, the shipped recording rules evaluate on them,
//! and every query of the shipped Grafana dashboard runs.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::monitoring;
use common::*;
use serde_json::Value;

/// A Prometheus scraping the server every second, with the shipped rules loaded.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, api_url: &str, ca: &Path, token: &str) -> Prometheus {
        let binary = monitoring::prometheus()
            .expect("prometheus is installed by scripts/install-host-deps.sh");
        let host = api_url.trim_start_matches("https://");
        std::fs::write(dir.join("token"), token).unwrap();
        let config = format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
- {rules}
scrape_configs:
- job_name: kubevirt
  scheme: https
  tls_config:
    ca_file: {ca}
  authorization:
    credentials_file: {token}
  static_configs:
  - targets: ['{host}']
"#,
            rules = monitoring::rules_file().display(),
            ca = ca.display(),
            token = dir.join("token").display(),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = kubevirt_testenv::kube_cluster::free_port("127.0.0.1").unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `GET /api/v1/<path>` through curl (the one HTTP client every test here uses).
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-G"]);
        for (k, v) in query {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd
            .arg(format!("{}/api/v1/{path}", self.url))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn query(&self, promql: &str) -> Value {
        self.api("query", &[("query", promql)])
    }

    /// Waits until `promql` returns at least one series; returns them.
    fn wait_series(&self, promql: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let answer = self.query(promql);
            if let Some(result) = answer["data"]["result"].as_array() {
                if !result.is_empty() {
                    return result.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no series for {promql}: {answer}; targets: {}",
                self.api("targets", &[])
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn value(series: &Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn prometheus_scrapes_a_vms_metrics() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let name = "metered";
    let vm = hostdisk_vm(name, "Always", &server.data_dir).replace(
        "  template:\n    spec:",
        "  template:\n    metadata:\n      labels:\n        app.kubernetes.io/tier: db\n    spec:",
    );
    server.apply_yaml(&vm);
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");

    // Prometheus authenticates as a ServiceAccount that may read /metrics and nothing else.
    server.apply_yaml(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: monitoring
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: prometheus
  namespace: monitoring
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: metrics-reader
rules:
- nonResourceURLs: ["/metrics"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: prometheus-metrics
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: metrics-reader
subjects:
- kind: ServiceAccount
  name: prometheus
  namespace: monitoring
"#,
    );
    let token = server.kubectl_ok(&["create", "token", "prometheus", "-n", "monitoring"]);
    let api_url = server.kubectl_ok(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    // The read-only user (bound to `view`) may not read them: /metrics is not for everyone.
    let readonly = Command::new("kubectl")
        .args(["get", "--raw", "/metrics"])
        .env("KUBECONFIG", server.data_dir.join("kubeconfig-readonly"))
        .output()
        .unwrap();
    assert!(!readonly.status.success());
    assert!(
        String::from_utf8_lossy(&readonly.stderr).contains("Forbidden"),
        "{}",
        String::from_utf8_lossy(&readonly.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(
        dir.path(),
        &api_url,
        &server.data_dir.join("ca.crt"),
        token.trim(),
    );
    let sel = format!(r#"namespace="default",name="{name}""#);

    // Memory: what the VM was given, QEMU's resident set, and the guest's own report
    // through its balloon driver (every 10 s).
    let domain = prom.wait_series(&format!("kubevirt_vmi_memory_domain_bytes{{{sel}}}"));
    assert_eq!(value(&domain[0]), (256u64 << 20) as f64, "{domain:?}");
    let labels = &domain[0]["metric"];
    assert_eq!(
        labels["node"],
        server.jsonpath("vmi", name, "{.status.nodeName}").as_str()
    );
    assert_eq!(
        labels["kubernetes_vmi_label_app_kubernetes_io_tier"], "db",
        "{labels}"
    );
    let rss = prom.wait_series(&format!("kubevirt_vmi_memory_resident_bytes{{{sel}}}"));
    assert!(value(&rss[0]) > (10u64 << 20) as f64, "{rss:?}");
    let usable = prom.wait_series(&format!("kubevirt_vmi_memory_usable_bytes{{{sel}}}"));
    let available = prom.wait_series(&format!("kubevirt_vmi_memory_available_bytes{{{sel}}}"));
    assert!(value(&usable[0]) > 0.0 && value(&usable[0]) < value(&available[0]));
    assert!(
        value(&available[0]) <= (256u64 << 20) as f64,
        "{available:?}"
    );

    // CPU: the guest booted, so QEMU and its vCPU used CPU time, and it keeps growing.
    let cpu = prom.wait_series(&format!(
        "kubevirt_vmi_cpu_usage_seconds_total{{{sel}}} > 0"
    ));
    assert!(value(&cpu[0]) > 0.0);
    prom.wait_series(&format!(
        r#"kubevirt_vmi_vcpu_seconds_total{{{sel},id="0",state="running"}} > 0"#
    ));
    prom.wait_series(&format!(
        "rate(kubevirt_vmi_cpu_usage_seconds_total{{{sel}}}[5s]) > 0"
    ));

    // Disk: the guest read its root disk. Network: it sent and received DHCP.
    prom.wait_series(&format!(
        r#"kubevirt_vmi_storage_read_traffic_bytes_total{{{sel},drive="root"}} > 0"#
    ));
    prom.wait_series(&format!(
        r#"kubevirt_vmi_network_transmit_packets_total{{{sel},interface="default"}} > 0"#
    ));
    prom.wait_series(&format!(
        r#"kubevirt_vmi_network_receive_bytes_total{{{sel},interface="default"}} > 0"#
    ));

    // Filesystems: the guest mounts its disk and its agent reports the size.
    let mut console = ConsoleCapture::start(&server, name);
    console.wait_for_prompt();
    console.send("mount -t iso9660 -o ro /dev/vda /mnt && echo mounted-$((6*7))\r");
    console.wait_for("mounted-42");
    let capacity = prom.wait_series(&format!(
        r#"kubevirt_vmi_filesystem_capacity_bytes{{{sel},mount_point="/mnt",file_system_type="iso9660",disk_name="vda"}} > 0"#
    ));
    let used = prom.wait_series(&format!(
        r#"kubevirt_vmi_filesystem_used_bytes{{{sel},mount_point="/mnt"}}"#
    ));
    assert!(
        value(&used[0]) <= value(&capacity[0]),
        "{used:?} {capacity:?}"
    );

    // Objects: the VM's and the VMI's info and status.
    prom.wait_series(&format!(
        r#"kubevirt_vmi_info{{{sel},phase="running"}} == 1"#
    ));
    prom.wait_series(&format!(r#"kubevirt_vm_info{{{sel}}} == 1"#));
    prom.wait_series(&format!(
        "kubevirt_vm_running_status_last_transition_timestamp_seconds{{{sel}}} > 0"
    ));
    // And the API server's own requests.
    prom.wait_series(r#"apiserver_request_total{resource="virtualmachines"}"#);

    // The shipped recording rules evaluate on these series.
    prom.wait_series(&format!("kubevirt_vmi_memory_used_bytes{{{sel}}} > 0"));

    // Every query of the shipped dashboard runs against them.
    for q in monitoring::dashboard_queries(&monitoring::DashboardVars::new("default", name)) {
        let answer = prom.query(&q.expr);
        assert_eq!(
            answer["status"], "success",
            "panel {} ({}): {answer}",
            q.panel, q.expr
        );
    }

    // Every metric family the server exports unconditionally is in Prometheus.
    let names = prom.api("label/__name__/values", &[]);
    let names: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for must in [
        "kubevirt_vmi_cpu_system_usage_seconds_total",
        "kubevirt_vmi_vcpu_delay_seconds_total",
        "kubevirt_vmi_storage_iops_read_total",
        "kubevirt_vmi_storage_flush_requests_total",
        "kubevirt_vmi_network_receive_packets_dropped_total",
        "kubevirt_vmi_memory_actual_balloon_bytes",
        "kubevirt_vmi_memory_unused_bytes",
        "kubevirt_vm_create_date_timestamp_seconds",
        "kubevirt_vm_resource_requests",
    ] {
        assert!(names.contains(&must), "{must} not scraped; have {names:?}");
    }
    // And nothing under KubeVirt's prefix that the rules and dashboard do not know of.
    let recorded: Vec<String> = monitoring::rules()
        .into_iter()
        .filter(|r| !r.is_alert)
        .map(|r| r.name)
        .collect();
    let unlisted: Vec<&&str> = names
        .iter()
        .filter(|n| n.starts_with("kubevirt_"))
        .filter(|n| !monitoring::EXPORTED_METRICS.contains(n) && !recorded.iter().any(|r| r == *n))
        .collect();
    assert!(
        unlisted.is_empty(),
        "exported but not listed in tests/common/monitoring.rs: {unlisted:?}"
    );
}
