//! What the guest agent says about the guest, read into typed form.
//!
//! Its view of its network is polled while the agent is
//! connected (every 2 s at first, doubling up to every [`MAX_INTERVAL`], as upstream's
//! agent poller backs off) and published in the status only when it changes, so an idle
//! guest costs one small agent call now and then and no status traffic.
//!
//! The agent's answer is the guest's word: only well-typed fields are taken, and the
//! counts are capped so a hostile guest cannot grow the VMI's status without bound.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::protocol::{FilesystemStats, GuestInterface};
use crate::vm::Vm;

const FIRST_INTERVAL: Duration = Duration::from_secs(2);
const MAX_INTERVAL: Duration = Duration::from_secs(30);
/// More than any real guest has; the rest is dropped.
const MAX_INTERFACES: usize = 32;
const MAX_ADDRESSES: usize = 16;
const MAX_FILESYSTEMS: usize = 64;
/// Longer strings than any interface name, MAC or address are not taken.
const MAX_FIELD: usize = 64;

/// Polls until the agent session `session` ends (the agent disconnects or reconnects) or
/// the VM stops.
pub async fn poll(vm: Arc<Vm>, session: u64) {
    let mut interval = FIRST_INTERVAL;
    loop {
        tokio::time::sleep(interval).await;
        let st = vm.status.get();
        if vm.agent_session.load(Ordering::SeqCst) != session || !st.agent_connected {
            return;
        }
        if !Vm::agent_can_answer(&st) {
            continue;
        }
        match vm.agent("guest-network-get-interfaces", None).await {
            Ok(answer) => {
                let interfaces = parse(&answer);
                vm.status.update(|s| s.guest_interfaces = interfaces);
            }
            // Stopped or stopping: nothing more to learn.
            Err(crate::vm::VmError::WrongStage { .. }) => return,
            // An old agent without the command, or a busy one: try again later.
            Err(_) => {}
        }
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

fn field(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_FIELD)
        .map(str::to_owned)
}

/// `guest-network-get-interfaces`' answer as upstream's launcher reads it: loopback
/// skipped, the first IPv4 address as the interface's IP, else its first address.
pub fn parse(answer: &Value) -> Vec<GuestInterface> {
    let Some(list) = answer.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|iface| {
            let name = field(iface, "name")?;
            if name == "lo" {
                return None;
            }
            let addresses: Vec<(String, bool)> = iface
                .get("ip-addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| {
                    let addr = field(a, "ip-address")?;
                    addr.parse::<std::net::IpAddr>().ok()?;
                    let v4 = a.get("ip-address-type").and_then(Value::as_str) == Some("ipv4");
                    Some((addr, v4))
                })
                .take(MAX_ADDRESSES)
                .collect();
            let ip = addresses
                .iter()
                .find(|(_, v4)| *v4)
                .or(addresses.first())
                .map(|(a, _)| a.clone());
            Some(GuestInterface {
                interface_name: name,
                mac: field(iface, "hardware-address"),
                ip,
                ips: addresses.into_iter().map(|(a, _)| a).collect(),
            })
        })
        .take(MAX_INTERFACES)
        .collect()
}

/// `guest-get-fsinfo`'s answer as upstream's metrics read it: each filesystem with its
/// sizes (those without are skipped).
pub fn filesystems(answer: &Value) -> Vec<FilesystemStats> {
    let Some(list) = answer.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|fs| {
            Some(FilesystemStats {
                disk_name: field(fs, "name")?,
                mount_point: field(fs, "mountpoint").unwrap_or_default(),
                file_system_type: field(fs, "type").unwrap_or_default(),
                total_bytes: fs.get("total-bytes")?.as_u64()?,
                used_bytes: fs.get("used-bytes").and_then(Value::as_u64).unwrap_or(0),
            })
        })
        .take(MAX_FILESYSTEMS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn agent_answer_as_upstream_reads_it() {
        let answer = json!([
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
            {"name": "eth0", "hardware-address": "52:54:00:12:34:56",
             "ip-addresses": [
                {"ip-address-type": "ipv6", "ip-address": "fe80::5054:ff:fe12:3456", "prefix": 64},
                {"ip-address-type": "ipv4", "ip-address": "10.0.2.2", "prefix": 24}]},
            {"name": "eth1"},
            {"name": 7, "hardware-address": "x"},
            {"name": "evil", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "not an ip"},
                                              {"ip-address": 5}]}
        ]);
        assert_eq!(
            parse(&answer),
            vec![
                GuestInterface {
                    interface_name: "eth0".into(),
                    mac: Some("52:54:00:12:34:56".into()),
                    ip: Some("10.0.2.2".into()),
                    ips: vec!["fe80::5054:ff:fe12:3456".into(), "10.0.2.2".into()],
                },
                GuestInterface {
                    interface_name: "eth1".into(),
                    ..Default::default()
                },
                GuestInterface {
                    interface_name: "evil".into(),
                    ..Default::default()
                },
            ]
        );
        assert!(parse(&json!({"error": "nope"})).is_empty());
        let many: Vec<Value> = (0..100)
            .map(|i| json!({"name": format!("if{i}")}))
            .collect();
        assert_eq!(parse(&Value::Array(many)).len(), MAX_INTERFACES);
    }

    #[test]
    fn filesystems_with_sizes() {
        let answer = json!([
            {"name": "vda", "mountpoint": "/mnt", "type": "iso9660", "used-bytes": 4096,
             "total-bytes": 8192, "disk": []},
            {"name": "sysfs", "mountpoint": "/sys", "type": "sysfs"},
            {"name": "x", "total-bytes": -1}
        ]);
        assert_eq!(
            filesystems(&answer),
            vec![FilesystemStats {
                disk_name: "vda".into(),
                mount_point: "/mnt".into(),
                file_system_type: "iso9660".into(),
                total_bytes: 8192,
                used_bytes: 4096,
            }]
        );
    }
}
