//! The one mapping from what a launcher reports to the VMI's status, as virt-handler writes
//! it: phase (Scheduled until QEMU runs, Running, Succeeded or Failed when it ended), the
//! conditions the node agent owns (`Paused`, `AgentConnected`, `Synchronized`), interfaces
//! and guest OS info. `Ready`, `PodScheduled` and `activePods` are the VMI controller's and
//! are left alone. Pure: `now` is an argument.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubevirt_api::v1::{
    vmi_condition, ConditionStatus, GuestOsInfo, PhaseTransitionTimestamp, VirtualMachineInstance,
    VirtualMachineInstanceCondition, VirtualMachineInstanceNetworkInterface,
    VirtualMachineInstancePhase as Phase, VirtualMachineInstanceStatus,
};
use kubevirt_hypervisor::{DomainState, ExitReason};
use kubevirt_launcher::{GuestInterface, LauncherStatus, Stage};
use serde_json::Value;

/// Reason of `Synchronized=False` when the launcher could not start the domain (upstream's
/// wording, a sentence).
pub const SYNC_FAILED_REASON: &str = "Synchronizing with the Domain failed.";

/// The VMI phase a launcher status means; None: leave the phase as it is.
pub fn phase_for(status: &LauncherStatus) -> Option<Phase> {
    match status.stage {
        Stage::WaitingForSync | Stage::Preparing => None,
        Stage::Started => match status.domain {
            Some(DomainState::Incoming) | Some(DomainState::Defined) | None => None,
            Some(_) => Some(Phase::Running),
        },
        Stage::Exited => Some(if ended_cleanly(status) {
            Phase::Succeeded
        } else {
            Phase::Failed
        }),
    }
}

/// The VM ended as asked: the guest powered off, a stop was requested, or it never had to
/// start. A failed start or a crash is not clean.
pub fn ended_cleanly(status: &LauncherStatus) -> bool {
    if status.failure.is_some() {
        return false;
    }
    match &status.exit {
        Some(e) => {
            status.stop_requested
                || matches!(
                    e.reason,
                    ExitReason::GuestShutdown | ExitReason::HostRequest
                )
        }
        None => status.stop_requested,
    }
}

/// qemu-guest-agent's `guest-get-osinfo` keys (`kernel-release`) in the VMI's `guestOSInfo`
/// casing (`kernelRelease`).
pub fn guest_os_info(info: &Value) -> Option<GuestOsInfo> {
    let map = info.get("return").unwrap_or(info).as_object()?;
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        let mut key = String::new();
        let mut upper = false;
        for c in k.chars() {
            if c == '-' || c == '_' {
                upper = true;
            } else if upper {
                key.extend(c.to_uppercase());
                upper = false;
            } else {
                key.push(c);
            }
        }
        out.insert(key, v.clone());
    }
    serde_json::from_value(Value::Object(out)).ok()
}

/// The guest agent's `guest-get-fsinfo` answer as upstream's
/// VirtualMachineInstanceFileSystemList. The answer is the guest's word: only the known
/// fields are taken, each of its type, anything else is left out.
pub fn filesystem_list(answer: &Value) -> Value {
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let items: Vec<Value> = answer
        .as_array()
        .into_iter()
        .flatten()
        .map(|fs| {
            let mut item = serde_json::json!({
                "diskName": text(fs, "name"),
                "mountPoint": text(fs, "mountpoint"),
                "fileSystemType": text(fs, "type"),
                "usedBytes": fs["used-bytes"].as_u64().unwrap_or(0),
                "totalBytes": fs["total-bytes"].as_u64().unwrap_or(0),
            });
            let disks: Vec<Value> = fs["disk"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let mut disk = serde_json::json!({"busType": text(d, "bus-type")});
                    if let Some(serial) = d["serial"].as_str().filter(|s| !s.is_empty()) {
                        disk["serial"] = serial.into();
                    }
                    disk
                })
                .collect();
            if !disks.is_empty() {
                item["disk"] = disks.into();
            }
            item
        })
        .collect();
    serde_json::json!({"metadata": {}, "items": items})
}

/// The guest agent's `guest-get-users` answer as upstream's
/// VirtualMachineInstanceGuestOSUserList (same care as [`filesystem_list`]).
pub fn user_list(answer: &Value) -> Value {
    let items: Vec<Value> = answer
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let mut item = serde_json::json!({"userName": u["user"].as_str().unwrap_or_default()});
            if let Some(domain) = u["domain"].as_str().filter(|d| !d.is_empty()) {
                item["domain"] = domain.into();
            }
            if let Some(t) = u["login-time"].as_f64().filter(|t| *t != 0.0) {
                item["loginTime"] = t.into();
            }
            item
        })
        .collect();
    serde_json::json!({"metadata": {}, "items": items})
}

fn set(
    st: &mut VirtualMachineInstanceStatus,
    want: bool,
    type_: &str,
    reason: Option<&str>,
    message: Option<&str>,
    now: &Time,
) {
    if want {
        st.set_condition(
            VirtualMachineInstanceCondition {
                type_: type_.into(),
                status: ConditionStatus::True,
                reason: reason.map(str::to_string),
                message: message.map(str::to_string),
                ..Default::default()
            },
            now.clone(),
        );
    } else {
        st.remove_condition(type_);
    }
}

/// The failure message for `Synchronized=False`: the step's message, with each field.
pub fn failure_message(status: &LauncherStatus) -> Option<String> {
    let f = status.failure.as_ref()?;
    Some(f.message.clone())
}

/// The VMI status after `status` from its launcher.
const INFO_SOURCE_DOMAIN: &str = "domain";
const INFO_SOURCE_GUEST_AGENT: &str = "guest-agent";
/// At most this many interfaces only the guest knows are listed (upstream's limit).
const GUEST_ONLY_INTERFACES: usize = 10;

/// Merges what the guest agent reports into the interfaces the domain has, as upstream's
/// virt-handler does: matched by MAC, an interface gains the guest's name, and the guest's
/// addresses of a family the status lacks (or none of that family, when the guest has
/// none: it is not reachable by it); link-local IPv6 addresses of a masquerade interface
/// are left out (unreachable from the pod network). Interfaces only the guest has follow,
/// loopback excepted.
fn with_guest_interfaces(
    mut ifaces: Vec<VirtualMachineInstanceNetworkInterface>,
    guest: &[GuestInterface],
    vmi: &VirtualMachineInstance,
) -> Vec<VirtualMachineInstanceNetworkInterface> {
    let masquerade = |name: &str| {
        vmi.spec
            .domain
            .devices
            .interfaces
            .iter()
            .flatten()
            .any(|i| i.name == name && i.masquerade.is_some())
    };
    let is_v4 = |ip: &String| ip.parse::<std::net::Ipv4Addr>().is_ok();
    let mut guest_only = 0;
    for g in guest {
        let matched = g.mac.as_deref().and_then(|mac| {
            ifaces.iter_mut().find(|i| {
                i.mac
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(mac))
            })
        });
        match matched {
            Some(iface) => {
                let mut guest_ips = g.ips.clone();
                if masquerade(iface.name.as_deref().unwrap_or_default()) {
                    guest_ips.retain(|ip| {
                        !ip.parse::<std::net::Ipv6Addr>()
                            .is_ok_and(|a| a.is_unicast_link_local())
                    });
                }
                let have = iface.ip_addresses.clone().unwrap_or_default();
                let (have4, have6): (Vec<String>, Vec<String>) = have.into_iter().partition(is_v4);
                let (guest4, guest6): (Vec<String>, Vec<String>) =
                    guest_ips.into_iter().partition(is_v4);
                let v4 = if have4.is_empty() || guest4.is_empty() {
                    guest4
                } else {
                    have4
                };
                let v6 = if have6.is_empty() || guest6.is_empty() {
                    guest6
                } else {
                    have6
                };
                let ips: Vec<String> = v4.into_iter().chain(v6).collect();
                iface.ip_address = ips.first().cloned();
                iface.ip_addresses = Some(ips).filter(|v| !v.is_empty());
                iface.interface_name = Some(g.interface_name.clone());
                iface.info_source =
                    Some(format!("{INFO_SOURCE_DOMAIN}, {INFO_SOURCE_GUEST_AGENT}"));
            }
            None if guest_only < GUEST_ONLY_INTERFACES => {
                guest_only += 1;
                ifaces.push(VirtualMachineInstanceNetworkInterface {
                    mac: g.mac.clone(),
                    ip_address: g.ip.clone(),
                    ip_addresses: Some(g.ips.clone()).filter(|v| !v.is_empty()),
                    interface_name: Some(g.interface_name.clone()),
                    info_source: Some(INFO_SOURCE_GUEST_AGENT.into()),
                    ..Default::default()
                });
            }
            None => {}
        }
    }
    ifaces
}

pub fn vmi_status(
    vmi: &VirtualMachineInstance,
    status: &LauncherStatus,
    now: Timestamp,
) -> VirtualMachineInstanceStatus {
    let now = Time(now);
    let mut st = vmi.status.clone().unwrap_or_default();
    let old_phase = vmi.phase();
    // A finished VMI stays as it ended.
    let phase = if old_phase.is_final() {
        old_phase
    } else {
        phase_for(status).unwrap_or(old_phase)
    };
    st.phase = Some(phase);
    let live = phase == Phase::Running && status.stage == Stage::Started;
    set(
        &mut st,
        live && status.domain == Some(DomainState::Paused),
        vmi_condition::PAUSED,
        Some("PausedByUser"),
        Some("VMI was paused by user"),
        &now,
    );
    set(
        &mut st,
        live && status.agent_connected,
        vmi_condition::AGENT_CONNECTED,
        None,
        None,
        &now,
    );
    match failure_message(status) {
        Some(message) => {
            let same = vmi
                .condition(vmi_condition::SYNCHRONIZED)
                .is_some_and(|c| c.message.as_deref() == Some(message.as_str()));
            if !same {
                st.remove_condition(vmi_condition::SYNCHRONIZED);
                st.set_condition(
                    VirtualMachineInstanceCondition {
                        type_: vmi_condition::SYNCHRONIZED.into(),
                        status: ConditionStatus::False,
                        reason: Some(SYNC_FAILED_REASON.into()),
                        message: Some(message),
                        ..Default::default()
                    },
                    now.clone(),
                );
            }
        }
        None if phase == Phase::Running => {
            st.remove_condition(vmi_condition::SYNCHRONIZED);
        }
        None => {}
    }
    st.fs_freeze_status = status.fs_freeze_status.clone().filter(|_| live);
    if live {
        let ifaces: Vec<VirtualMachineInstanceNetworkInterface> = status
            .interfaces
            .iter()
            .map(|i| VirtualMachineInstanceNetworkInterface {
                name: Some(i.name.clone()),
                mac: i.mac.clone(),
                ip_address: i.ip_address.clone(),
                ip_addresses: i.ip_address.clone().map(|ip| vec![ip]),
                info_source: Some(INFO_SOURCE_DOMAIN.into()),
                queue_count: Some(1),
                link_state: Some("up".into()),
                ..Default::default()
            })
            .collect();
        let ifaces = with_guest_interfaces(ifaces, &status.guest_interfaces, vmi);
        st.interfaces = Some(ifaces).filter(|i| !i.is_empty());
        if let Some(info) = status.guest_os_info.as_ref().and_then(guest_os_info) {
            st.guest_os_info = Some(info);
        }
    }
    if phase != old_phase {
        let transitions = st.phase_transition_timestamps.get_or_insert_with(Vec::new);
        if !transitions.iter().any(|t| t.phase == Some(phase)) {
            transitions.push(PhaseTransitionTimestamp {
                phase: Some(phase),
                phase_transition_timestamp: Some(now),
            });
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_hypervisor::ExitInfo;
    use kubevirt_launcher::{FailedStep, InterfaceStatus, StartFailure};
    use serde_json::json;

    #[test]
    fn guest_filesystems_and_users_in_upstreams_shape() {
        let fs = json!([
            {"name": "vda", "mountpoint": "/mnt", "type": "iso9660", "used-bytes": 4096,
             "total-bytes": 8192, "disk": [{"bus-type": "virtio", "serial": "ROOT", "dev": "/dev/vda",
             "bus": 0, "target": 0, "unit": 0}]},
            {"name": "x", "mountpoint": 7, "type": null, "total-bytes": "big", "disk": "nope"}
        ]);
        assert_eq!(
            filesystem_list(&fs),
            json!({"metadata": {}, "items": [
                {"diskName": "vda", "mountPoint": "/mnt", "fileSystemType": "iso9660",
                 "usedBytes": 4096, "totalBytes": 8192,
                 "disk": [{"busType": "virtio", "serial": "ROOT"}]},
                {"diskName": "x", "mountPoint": "", "fileSystemType": "",
                 "usedBytes": 0, "totalBytes": 0}
            ]})
        );
        assert_eq!(
            filesystem_list(&json!({"error": 1})),
            json!({"metadata": {}, "items": []})
        );
        let users = json!([
            {"user": "root", "login-time": 1700000000.5},
            {"user": "alice", "domain": "CORP", "login-time": 0}
        ]);
        assert_eq!(
            user_list(&users),
            json!({"metadata": {}, "items": [
                {"userName": "root", "loginTime": 1700000000.5},
                {"userName": "alice", "domain": "CORP"}
            ]})
        );
    }

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn started(domain: DomainState) -> LauncherStatus {
        let mut s = LauncherStatus::new(None);
        s.stage = Stage::Started;
        s.domain = Some(domain);
        s.agent_connected = true;
        s.guest_os_info = Some(json!({"id": "kubevirt-rs-guest", "kernel-release": "6.1"}));
        s.interfaces = vec![InterfaceStatus {
            name: "default".into(),
            mac: Some("52:54:00:00:00:01".into()),
            ip_address: Some("10.244.0.7".into()),
            binding: "masquerade".into(),
        }];
        s
    }

    fn scheduled() -> VirtualMachineInstance {
        VirtualMachineInstance::test("vm")
            .with_phase(Phase::Scheduled)
            .with_condition("Ready", ConditionStatus::False)
    }

    fn types(st: &VirtualMachineInstanceStatus) -> Vec<&str> {
        st.conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect()
    }

    #[test]
    fn running_domain_makes_a_running_vmi_with_agent_facts() {
        let st = vmi_status(&scheduled(), &started(DomainState::Running), now());
        assert_eq!(st.phase, Some(Phase::Running));
        assert_eq!(
            types(&st),
            ["Ready", "AgentConnected"],
            "Ready stays the controller's"
        );
        assert_eq!(
            st.interfaces.as_ref().unwrap()[0].ip_address.as_deref(),
            Some("10.244.0.7")
        );
        let info = st.guest_os_info.clone().unwrap();
        assert_eq!(info.kernel_release.as_deref(), Some("6.1"));
        assert_eq!(
            st.phase_transition_timestamps.unwrap()[0].phase,
            Some(Phase::Running)
        );
    }

    #[test]
    fn guest_agent_interfaces_merge_as_upstream() {
        let mut vmi = scheduled();
        vmi.spec.domain.devices.interfaces = Some(vec![serde_json::from_value(
            json!({"name": "default", "masquerade": {}}),
        )
        .unwrap()]);
        let mut launcher = started(DomainState::Running);
        let guest = |ips: &[&str]| GuestInterface {
            interface_name: "eth0".into(),
            mac: Some("52:54:00:00:00:01".to_uppercase()),
            ip: ips.first().map(|s| s.to_string()),
            ips: ips.iter().map(|s| s.to_string()).collect(),
        };
        // The pod's IPv4 stays; the guest adds its IPv6 (not the link-local one) and name.
        launcher.guest_interfaces = vec![
            guest(&["10.0.2.2", "fe80::1", "fd10::2"]),
            GuestInterface {
                interface_name: "docker0".into(),
                mac: Some("02:42:00:00:00:09".into()),
                ip: Some("172.17.0.1".into()),
                ips: vec!["172.17.0.1".into()],
            },
        ];
        let st = vmi_status(&vmi, &launcher, now());
        let ifaces = st.interfaces.unwrap();
        assert_eq!(ifaces.len(), 2);
        assert_eq!(ifaces[0].name.as_deref(), Some("default"));
        assert_eq!(ifaces[0].interface_name.as_deref(), Some("eth0"));
        assert_eq!(ifaces[0].ip_address.as_deref(), Some("10.244.0.7"));
        assert_eq!(
            ifaces[0].ip_addresses,
            Some(vec!["10.244.0.7".to_string(), "fd10::2".to_string()])
        );
        assert_eq!(
            ifaces[0].info_source.as_deref(),
            Some("domain, guest-agent")
        );
        assert_eq!(ifaces[1].name, None);
        assert_eq!(ifaces[1].interface_name.as_deref(), Some("docker0"));
        assert_eq!(ifaces[1].ip_address.as_deref(), Some("172.17.0.1"));
        assert_eq!(ifaces[1].info_source.as_deref(), Some("guest-agent"));

        // A guest without an address is not reachable by one: the status says so.
        launcher.guest_interfaces = vec![guest(&[])];
        let st = vmi_status(&vmi, &launcher, now());
        let iface = &st.interfaces.unwrap()[0];
        assert_eq!(iface.ip_address, None);
        assert_eq!(iface.ip_addresses, None);

        // Without the agent's report the domain's view stands alone.
        launcher.guest_interfaces.clear();
        let st = vmi_status(&vmi, &launcher, now());
        let iface = &st.interfaces.unwrap()[0];
        assert_eq!(iface.info_source.as_deref(), Some("domain"));
        assert_eq!(iface.interface_name, None);

        // Guest-only interfaces are capped.
        launcher.guest_interfaces = (0..40)
            .map(|i| GuestInterface {
                interface_name: format!("veth{i}"),
                mac: Some(format!("02:00:00:00:00:{i:02x}")),
                ..Default::default()
            })
            .collect();
        let st = vmi_status(&vmi, &launcher, now());
        assert_eq!(st.interfaces.unwrap().len(), 1 + GUEST_ONLY_INTERFACES);
    }

    #[test]
    fn paused_domain_sets_paused_by_user() {
        let st = vmi_status(&scheduled(), &started(DomainState::Paused), now());
        let paused = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Paused")
            .unwrap();
        assert_eq!(paused.reason.as_deref(), Some("PausedByUser"));
        assert_eq!(paused.message.as_deref(), Some("VMI was paused by user"));
    }

    #[test]
    fn how_the_launcher_ended_decides_succeeded_or_failed() {
        let mut s = started(DomainState::Running);
        s.stage = Stage::Exited;
        s.exit = Some(ExitInfo {
            reason: ExitReason::GuestShutdown,
            exit_code: Some(0),
            signal: None,
        });
        assert_eq!(phase_for(&s), Some(Phase::Succeeded));
        s.exit = Some(ExitInfo {
            reason: ExitReason::Killed,
            exit_code: None,
            signal: Some(9),
        });
        assert_eq!(phase_for(&s), Some(Phase::Failed));
        s.stop_requested = true;
        assert_eq!(
            phase_for(&s),
            Some(Phase::Succeeded),
            "killed after a stop request"
        );

        let mut failed = LauncherStatus::new(None);
        failed.stage = Stage::Exited;
        failed.failure = Some(StartFailure {
            step: FailedStep::Volumes,
            message: "volume root: image not found".into(),
            fields: vec![],
        });
        let st = vmi_status(&scheduled(), &failed, now());
        assert_eq!(st.phase, Some(Phase::Failed));
        let sync = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Synchronized")
            .unwrap();
        assert_eq!(sync.status, ConditionStatus::False);
        assert_eq!(sync.reason.as_deref(), Some(SYNC_FAILED_REASON));
        assert_eq!(
            sync.message.as_deref(),
            Some("volume root: image not found")
        );
    }

    #[test]
    fn waiting_launcher_keeps_the_phase() {
        let st = vmi_status(&scheduled(), &LauncherStatus::new(None), now());
        assert_eq!(st.phase, Some(Phase::Scheduled));
        assert!(st.phase_transition_timestamps.is_none());
    }
}
