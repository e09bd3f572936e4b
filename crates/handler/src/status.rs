//! VMI status from a launcher's report: phase, conditions, interfaces, guest OS info.

use serde_json::{json, Value};

use kubevirt_controller::model::{merge_conditions, Condition};

use crate::ops::{DomainReport, DomainState};

/// Condition types this agent owns on a VMI (others are left alone).
const OWNED: &[&str] = &[
    "Ready",
    "Paused",
    "AgentConnected",
    "SoftwareEmulation",
    "Failure",
];

/// The VMI phase a domain state maps to; None keeps the current phase (still starting).
pub fn phase_for(state: DomainState) -> Option<&'static str> {
    match state {
        DomainState::Starting => None,
        DomainState::Running | DomainState::Paused | DomainState::Stopping => Some("Running"),
        DomainState::Succeeded => Some("Succeeded"),
        DomainState::Failed => Some("Failed"),
    }
}

fn conditions(report: &DomainReport) -> Vec<Condition> {
    let mut c = Vec::new();
    let running = report.state == DomainState::Running;
    c.push(if running {
        Condition::new("Ready", true, "", "")
    } else {
        let reason = match report.state {
            DomainState::Paused => "Paused",
            DomainState::Starting => "Starting",
            _ => "NotRunning",
        };
        Condition::new("Ready", false, reason, "")
    });
    if report.state == DomainState::Paused {
        c.push(Condition::new(
            "Paused",
            true,
            "PausedByUser",
            "VMI was paused by user",
        ));
    }
    if report.agent_connected {
        c.push(Condition::new("AgentConnected", true, "", ""));
    }
    if let Some(reason) = &report.software_emulation {
        c.push(Condition::new(
            "SoftwareEmulation",
            true,
            "KVMUnavailable",
            reason,
        ));
    }
    if report.state == DomainState::Failed {
        c.push(Condition::new(
            "Failure",
            true,
            "LauncherFailed",
            report.message.as_deref().unwrap_or("the domain failed"),
        ));
    }
    c
}

/// The status merge patch for a VMI whose launcher reports `report`.
pub fn vmi_status_patch(current: &Value, report: &DomainReport, now: &str) -> Value {
    let previous: Vec<Condition> = current
        .get("conditions")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    let mut all: Vec<Condition> = previous
        .iter()
        .filter(|c| !OWNED.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    all.extend(merge_conditions(&previous, conditions(report), now));

    let mut status = json!({ "conditions": all });
    if let Some(phase) = phase_for(report.state) {
        status["phase"] = json!(phase);
        let mut transitions: Vec<Value> = current
            .get("phaseTransitionTimestamps")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !transitions.iter().any(|t| t["phase"] == phase) {
            transitions.push(json!({"phase": phase, "phaseTransitionTimestamp": now}));
        }
        status["phaseTransitionTimestamps"] = json!(transitions);
    }
    if !report.interfaces.is_empty() {
        let ifaces: Vec<Value> = report
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({
                    "name": i.name,
                    "infoSource": if report.agent_connected { "domain, guest-agent" } else { "domain" },
                    "queueCount": 1,
                    "linkState": "up",
                });
                if let Some(mac) = &i.mac {
                    v["mac"] = json!(mac);
                }
                if let Some(first) = i.ip_addresses.first() {
                    v["ipAddress"] = json!(first);
                    v["ipAddresses"] = json!(i.ip_addresses);
                }
                if let Some(n) = &i.interface_name {
                    v["interfaceName"] = json!(n);
                }
                v
            })
            .collect();
        status["interfaces"] = json!(ifaces);
    }
    if let Some(info) = &report.guest_os_info {
        status["guestOSInfo"] = info.clone();
    }
    json!({ "status": status })
}

/// True when applying `patch` would not change `current` (so no write is needed).
pub fn unchanged(current: &Value, patch: &Value) -> bool {
    let Some(fields) = patch.get("status").and_then(Value::as_object) else {
        return true;
    };
    fields
        .iter()
        .all(|(k, v)| current.get(k).unwrap_or(&Value::Null) == v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::InterfaceReport;

    fn report(state: DomainState) -> DomainReport {
        DomainReport {
            state,
            software_emulation: Some("kvm_pvm cannot run stock guests".into()),
            interfaces: vec![InterfaceReport {
                name: "default".into(),
                mac: Some("52:54:00:00:00:01".into()),
                ip_addresses: vec!["10.0.2.2".into()],
                interface_name: Some("eth0".into()),
            }],
            guest_os_info: Some(json!({"id": "kubevirt-rs-guest"})),
            agent_connected: true,
            message: None,
        }
    }

    #[test]
    fn running_report_makes_running_ready_vmi() {
        let current = json!({"phase": "Scheduled", "nodeName": "n",
            "phaseTransitionTimestamps": [{"phase": "Scheduled", "phaseTransitionTimestamp": "t0"}],
            "conditions": [{"type": "Other", "status": "True"}]});
        let p = vmi_status_patch(&current, &report(DomainState::Running), "t1");
        let s = &p["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["phaseTransitionTimestamps"][1]["phase"], "Running");
        assert_eq!(s["interfaces"][0]["ipAddress"], "10.0.2.2");
        assert_eq!(s["interfaces"][0]["interfaceName"], "eth0");
        assert_eq!(s["guestOSInfo"]["id"], "kubevirt-rs-guest");
        let types: Vec<&str> = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["Other", "Ready", "AgentConnected", "SoftwareEmulation"]
        );
        assert_eq!(s["conditions"][3]["reason"], "KVMUnavailable");
        // Applying it again changes nothing.
        let mut applied = current.clone();
        for (k, v) in s.as_object().unwrap() {
            applied[k] = v.clone();
        }
        let again = vmi_status_patch(&applied, &report(DomainState::Running), "t2");
        assert!(unchanged(&applied, &again));
    }

    #[test]
    fn paused_and_final_states() {
        let p = vmi_status_patch(&json!({}), &report(DomainState::Paused), "t");
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["conditions"][0]["status"], "False");
        assert_eq!(p["status"]["conditions"][1]["type"], "Paused");
        let p = vmi_status_patch(&json!({}), &report(DomainState::Starting), "t");
        assert!(p["status"].get("phase").is_none());
        assert_eq!(phase_for(DomainState::Succeeded), Some("Succeeded"));
        let mut failed = report(DomainState::Failed);
        failed.message = Some("qemu exited 1".into());
        let p = vmi_status_patch(&json!({}), &failed, "t");
        assert_eq!(p["status"]["phase"], "Failed");
        let failure = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Failure")
            .unwrap();
        assert_eq!(failure["message"], "qemu exited 1");
    }
}
