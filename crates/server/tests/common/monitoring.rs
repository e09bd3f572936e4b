//! The monitoring assets in `monitoring/` (Prometheus rules, their unit tests, the Grafana
//! dashboard) as tests need them: their paths, `promtool`, the metric names the server
//! exports, and the dashboard's queries with its template variables filled in, ready to
//! be sent to a Prometheus.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Every metric `kubevirt-rs server` exports under upstream KubeVirt's names (and the
/// kube-apiserver metric the dashboard reads). The rules and the dashboard may use only
/// these and the rules' own recorded names.
pub const EXPORTED_METRICS: &[&str] = &[
    "kubevirt_vmi_cpu_usage_seconds_total",
    "kubevirt_vmi_filesystem_capacity_bytes",
    "kubevirt_vmi_filesystem_used_bytes",
    "kubevirt_vmi_migration_data_bytes_total",
    "kubevirt_vmi_migration_data_remaining_bytes",
    "kubevirt_vmi_migration_data_processed_bytes",
    "kubevirt_vmi_migration_dirty_memory_rate_bytes",
    "kubevirt_vmi_migration_memory_transfer_rate_bytes",
    "kubevirt_vmi_migrations_in_pending_phase",
    "kubevirt_vmi_migrations_in_scheduling_phase",
    "kubevirt_vmi_migrations_in_unset_phase",
    "kubevirt_vmi_migrations_in_running_phase",
    "kubevirt_vmi_migration_succeeded",
    "kubevirt_vmi_migration_failed",
    "kubevirt_vmi_migration_start_time_seconds",
    "kubevirt_vmi_migration_end_time_seconds",
    "kubevirt_vmi_cpu_user_usage_seconds_total",
    "kubevirt_vmi_cpu_system_usage_seconds_total",
    "kubevirt_vmi_vcpu_seconds_total",
    "kubevirt_vmi_vcpu_delay_seconds_total",
    "kubevirt_vmi_network_receive_bytes_total",
    "kubevirt_vmi_network_transmit_bytes_total",
    "kubevirt_vmi_network_receive_packets_total",
    "kubevirt_vmi_network_transmit_packets_total",
    "kubevirt_vmi_network_receive_errors_total",
    "kubevirt_vmi_network_transmit_errors_total",
    "kubevirt_vmi_network_receive_packets_dropped_total",
    "kubevirt_vmi_network_transmit_packets_dropped_total",
    "kubevirt_vmi_network_traffic_bytes_total",
    "kubevirt_vmi_storage_iops_read_total",
    "kubevirt_vmi_storage_iops_write_total",
    "kubevirt_vmi_storage_read_traffic_bytes_total",
    "kubevirt_vmi_storage_write_traffic_bytes_total",
    "kubevirt_vmi_storage_read_times_seconds_total",
    "kubevirt_vmi_storage_write_times_seconds_total",
    "kubevirt_vmi_storage_flush_requests_total",
    "kubevirt_vmi_storage_flush_times_seconds_total",
    "kubevirt_vmi_memory_pgmajfault_total",
    "kubevirt_vmi_memory_pgminfault_total",
    "kubevirt_vmi_memory_resident_bytes",
    "kubevirt_vmi_memory_domain_bytes",
    "kubevirt_vmi_memory_available_bytes",
    "kubevirt_vmi_memory_unused_bytes",
    "kubevirt_vmi_memory_usable_bytes",
    "kubevirt_vmi_memory_cached_bytes",
    "kubevirt_vmi_memory_actual_balloon_bytes",
    "kubevirt_vmi_memory_swap_in_traffic_bytes",
    "kubevirt_vmi_memory_swap_out_traffic_bytes",
    "kubevirt_vmi_info",
    "kubevirt_vmi_status_addresses",
    "kubevirt_vmi_non_evictable",
    "kubevirt_vmi_vnic_info",
    "kubevirt_vmi_launcher_memory_overhead_bytes",
    "kubevirt_vm_info",
    "kubevirt_vm_labels",
    "kubevirt_vm_vnic_info",
    "kubevirt_vm_create_date_timestamp_seconds",
    "kubevirt_vm_resource_requests",
    "kubevirt_vm_resource_limits",
    "kubevirt_vm_starting_status_last_transition_timestamp_seconds",
    "kubevirt_vm_running_status_last_transition_timestamp_seconds",
    "kubevirt_vm_migrating_status_last_transition_timestamp_seconds",
    "kubevirt_vm_non_running_status_last_transition_timestamp_seconds",
    "kubevirt_vm_error_status_last_transition_timestamp_seconds",
    "apiserver_request_total",
];

pub fn monitoring_dir() -> PathBuf {
    kubevirt_testenv::repo_root().join("monitoring")
}

pub fn rules_file() -> PathBuf {
    monitoring_dir().join("prometheus-rules.yaml")
}

pub fn rules_test_file() -> PathBuf {
    monitoring_dir().join("prometheus-rules.test.yaml")
}

pub fn dashboard_file() -> PathBuf {
    monitoring_dir().join("grafana-dashboard.json")
}

/// `promtool` from `PATH` (Debian's `prometheus` package). Panics saying how to get it.
pub fn promtool() -> PathBuf {
    find_in_path("promtool").unwrap_or_else(|| {
        panic!(
            "promtool not found in PATH: install Debian's `prometheus` package \
             (scripts/install-host-deps.sh does)"
        )
    })
}

/// `prometheus` from `PATH`, for tests that run a real one (same package as `promtool`).
pub fn prometheus() -> Option<PathBuf> {
    find_in_path("prometheus")
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `promtool` with `args` in `dir` (rule files name each other relative to it).
pub fn run_promtool(dir: &Path, args: &[&str]) -> Output {
    Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool")
}

/// Panics with promtool's output unless it succeeded.
pub fn assert_promtool_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dashboard, parsed.
pub fn dashboard() -> Value {
    let path = dashboard_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Every panel of `dashboard`, rows and the panels nested in (collapsed) rows included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Values for the dashboard's template variables. `namespace` and `name` go verbatim into
/// `=~"..."` matchers: a Kubernetes name needs no escaping there.
#[derive(Debug, Clone)]
pub struct DashboardVars<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// `$__rate_interval`: at least four scrape intervals for `rate()` to see two samples.
    pub rate_interval: &'a str,
    /// `$__interval`.
    pub interval: &'a str,
}

impl<'a> DashboardVars<'a> {
    /// One VM; `rate()` over one minute (good for scrape intervals up to 15s).
    pub fn new(namespace: &'a str, name: &'a str) -> Self {
        DashboardVars {
            namespace,
            name,
            rate_interval: "1m",
            interval: "15s",
        }
    }

    fn lookup(&self, variable: &str) -> Option<&'a str> {
        match variable {
            "namespace" => Some(self.namespace),
            "name" => Some(self.name),
            "__rate_interval" => Some(self.rate_interval),
            "__interval" => Some(self.interval),
            "__range" => Some("1h"),
            // Dashboard queries never name the data source, but a value keeps them valid if
            // one ever does.
            "datasource" => Some("prometheus"),
            _ => None,
        }
    }
}

/// One query of one dashboard panel, its template variables filled in.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    /// True when the panel reads a recording rule of `prometheus-rules.yaml`: a Prometheus
    /// answers it only once it loaded that file and evaluated the rules.
    pub uses_recording_rule: bool,
    pub expr: String,
}

/// Every query of the dashboard (nested rows included), for `vars`.
pub fn dashboard_queries(vars: &DashboardVars) -> Vec<PanelQuery> {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let expr = substitute(expr, vars);
            queries.push(PanelQuery {
                panel: title.to_string(),
                ref_id: target["refId"].as_str().unwrap_or_default().to_string(),
                uses_recording_rule: metric_names(&expr).iter().any(|m| m.contains(':')),
                expr,
            });
        }
    }
    queries
}

/// Replaces Grafana's `$var`, `${var}` and `${var:format}` by their values in `vars`;
/// unknown variables (and `$1` in `label_replace`) are left as they are.
pub fn substitute(expr: &str, vars: &DashboardVars) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (variable, consumed) = match parse_variable(after) {
            Some(found) => found,
            None => {
                out.push('$');
                rest = after;
                continue;
            }
        };
        match vars.lookup(variable) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[at..at + 1 + consumed]),
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// Grafana variables still present in `expr` (`$1` is a regex group, not a variable).
pub fn unresolved_variables(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        match parse_variable(after) {
            Some((variable, consumed)) => {
                found.push(variable.to_string());
                rest = &after[consumed..];
            }
            None => rest = after,
        }
    }
    found
}

/// After a `$`: the variable's name and how many bytes its reference takes.
fn parse_variable(after: &str) -> Option<(&str, usize)> {
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if let Some(braced) = after.strip_prefix('{') {
        let end = braced.find('}')?;
        let name = braced[..end].split(':').next().unwrap_or_default();
        let valid = name.starts_with(is_start) && name.chars().all(is_part);
        return valid.then_some((name, end + 2));
    }
    if !after.starts_with(is_start) {
        return None;
    }
    let end = after.find(|c: char| !is_part(c)).unwrap_or(after.len());
    Some((&after[..end], end))
}

/// The metric and recorded names a PromQL expression reads: identifiers starting with
/// `kubevirt_` or `apiserver_`, or holding a `:` (recording rules), outside string
/// literals and `[...]` ranges. Label names are never of that form here.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, names: &mut Vec<String>| {
        let is_name = word.starts_with("kubevirt_")
            || word.starts_with("apiserver_")
            || (word.contains(':') && word.starts_with(|c: char| c.is_ascii_alphabetic()));
        if is_name && !names.contains(word) {
            names.push(word.clone());
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                flush(&mut word, &mut names);
                while let Some(s) = chars.next() {
                    if s == '\\' {
                        chars.next();
                    } else if s == c {
                        break;
                    }
                }
            }
            '[' => {
                flush(&mut word, &mut names);
                for s in chars.by_ref() {
                    if s == ']' {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => word.push(c),
            _ => flush(&mut word, &mut names),
        }
    }
    flush(&mut word, &mut names);
    names
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub group: String,
    /// The recorded name or the alert's name.
    pub name: String,
    pub is_alert: bool,
    pub expr: String,
}

/// The rules of `monitoring/prometheus-rules.yaml`, in file order.
pub fn rules() -> Vec<Rule> {
    let path = rules_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let mut rules = Vec::new();
    for group in doc["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let (name, is_alert) = match (rule["record"].as_str(), rule["alert"].as_str()) {
                (Some(record), None) => (record, false),
                (None, Some(alert)) => (alert, true),
                _ => panic!("a rule is either a recording rule or an alert: {rule}"),
            };
            rules.push(Rule {
                group: group["name"].as_str().unwrap_or_default().to_string(),
                name: name.to_string(),
                is_alert,
                expr: rule["expr"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    rules
}
