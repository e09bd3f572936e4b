//! Metrics of one running VMI from its launcher's counters ([`VmStats`]): upstream
//! virt-handler's `kubevirt_vmi_*` domain families, with its names, units and labels.
//! Every sample carries `node`, `namespace` and `name`, and each VMI label as
//! `kubernetes_vmi_label_<key>` (`.`, `/` and `-` in the key become `_`).

use kubevirt_api::v1::VirtualMachineInstance;
use kubevirt_launcher::VmStats;

use crate::families::{Families, Labels};

const NS: f64 = 1e-9;

/// The labels every sample of `vmi` carries.
pub fn vmi_labels(vmi: &VirtualMachineInstance) -> Labels {
    let mut labels = vec![
        (
            "node".to_string(),
            vmi.status
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
        ),
        (
            "namespace".to_string(),
            vmi.metadata.namespace.clone().unwrap_or_default(),
        ),
        (
            "name".to_string(),
            vmi.metadata.name.clone().unwrap_or_default(),
        ),
    ];
    for (k, v) in vmi.metadata.labels.iter().flatten() {
        let key = k.replace(['.', '/', '-'], "_");
        labels.push((format!("kubernetes_vmi_label_{key}"), v.clone()));
    }
    labels
}

fn with(base: &Labels, extra: &[(&str, String)]) -> Labels {
    let mut l = base.clone();
    l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    l
}

/// Adds each gauge whose value is known: what the guest or the hypervisor did not report
/// is absent, not zero.
fn known_gauges<const N: usize>(
    f: &mut Families,
    labels: &Labels,
    gauges: [(&'static str, &'static str, Option<u64>); N],
) {
    for (name, help, v) in gauges {
        if let Some(v) = v {
            f.gauge(name, help, labels.clone(), v as f64);
        }
    }
}

/// Adds the domain families of `vmi` from `stats`.
pub fn collect(f: &mut Families, vmi: &VirtualMachineInstance, stats: &VmStats) {
    let base = vmi_labels(vmi);
    let d = &stats.domain;

    // CPU: the whole VMM process, as upstream's domain CPU time (vCPUs and emulation).
    let user = d.vmm_user_ns as f64 * NS;
    let system = d.vmm_system_ns as f64 * NS;
    f.counter(
        "kubevirt_vmi_cpu_usage_seconds",
        "Total CPU time spent in all modes (vCPUs and the hypervisor).",
        base.clone(),
        user + system,
    );
    f.counter(
        "kubevirt_vmi_cpu_user_usage_seconds",
        "Total CPU time spent in user mode.",
        base.clone(),
        user,
    );
    f.counter(
        "kubevirt_vmi_cpu_system_usage_seconds",
        "Total CPU time spent in system mode.",
        base.clone(),
        system,
    );
    for v in &d.vcpus {
        let id = v.index.to_string();
        if let Some(ns) = v.run_ns {
            f.counter(
                "kubevirt_vmi_vcpu_seconds",
                "Time each vCPU spent in each state (running: on a host CPU).",
                with(&base, &[("id", id.clone()), ("state", "running".into())]),
                ns as f64 * NS,
            );
        }
        if let Some(ns) = v.delay_ns {
            f.counter(
                "kubevirt_vmi_vcpu_delay_seconds",
                "Time each vCPU waited in the host's run queue instead of running.",
                with(&base, &[("id", id)]),
                ns as f64 * NS,
            );
        }
    }

    // Memory.
    let m = &d.memory;
    f.gauge(
        "kubevirt_vmi_memory_resident_bytes",
        "Resident set size of the process running the domain.",
        base.clone(),
        (d.vmm_rss_kib * 1024) as f64,
    );
    f.gauge(
        "kubevirt_vmi_memory_domain_bytes",
        "Memory given to the domain, in bytes.",
        base.clone(),
        m.domain_bytes as f64,
    );
    if let Some(b) = m.balloon_actual_bytes {
        f.gauge(
            "kubevirt_vmi_memory_actual_balloon_bytes",
            "Current balloon size in bytes.",
            base.clone(),
            b as f64,
        );
    }
    if let Some(g) = &m.guest {
        let gauges: [(&'static str, &'static str, Option<u64>); 6] = [
            (
                "kubevirt_vmi_memory_available_bytes",
                "Memory the guest can use, as it sees it (MemTotal).",
                g.total_bytes,
            ),
            (
                "kubevirt_vmi_memory_unused_bytes",
                "Memory the guest leaves completely unused (MemFree).",
                g.free_bytes,
            ),
            (
                "kubevirt_vmi_memory_usable_bytes",
                "Memory the guest could give back without swapping (MemAvailable).",
                g.available_bytes,
            ),
            (
                "kubevirt_vmi_memory_cached_bytes",
                "Memory the guest uses for reclaimable I/O caches.",
                g.disk_caches_bytes,
            ),
            (
                "kubevirt_vmi_memory_swap_in_traffic_bytes",
                "Bytes the guest read from its swap space.",
                g.swap_in_bytes,
            ),
            (
                "kubevirt_vmi_memory_swap_out_traffic_bytes",
                "Bytes the guest wrote to its swap space.",
                g.swap_out_bytes,
            ),
        ];
        known_gauges(f, &base, gauges);
        if let Some(v) = g.major_faults {
            f.counter(
                "kubevirt_vmi_memory_pgmajfault",
                "Page faults in the guest that needed disk I/O.",
                base.clone(),
                v as f64,
            );
        }
        if let Some(v) = g.minor_faults {
            f.counter(
                "kubevirt_vmi_memory_pgminfault",
                "Page faults in the guest served without disk I/O.",
                base.clone(),
                v as f64,
            );
        }
    }

    // Storage, per disk (`drive` is the disk's name in the VMI spec).
    for b in &d.block {
        let l = with(&base, &[("drive", b.name.clone())]);
        let counters: [(&'static str, &'static str, f64); 8] = [
            (
                "kubevirt_vmi_storage_iops_read",
                "Total number of I/O read operations.",
                b.rd_operations as f64,
            ),
            (
                "kubevirt_vmi_storage_iops_write",
                "Total number of I/O write operations.",
                b.wr_operations as f64,
            ),
            (
                "kubevirt_vmi_storage_read_traffic_bytes",
                "Total number of bytes read from storage.",
                b.rd_bytes as f64,
            ),
            (
                "kubevirt_vmi_storage_write_traffic_bytes",
                "Total number of bytes written to storage.",
                b.wr_bytes as f64,
            ),
            (
                "kubevirt_vmi_storage_read_times_seconds",
                "Total time spent on read operations.",
                b.rd_total_time_ns as f64 * NS,
            ),
            (
                "kubevirt_vmi_storage_write_times_seconds",
                "Total time spent on write operations.",
                b.wr_total_time_ns as f64 * NS,
            ),
            (
                "kubevirt_vmi_storage_flush_requests",
                "Total storage flush requests.",
                b.flush_operations as f64,
            ),
            (
                "kubevirt_vmi_storage_flush_times_seconds",
                "Total time spent on cache flushing.",
                b.flush_total_time_ns as f64 * NS,
            ),
        ];
        for (name, help, v) in counters {
            f.counter(name, help, l.clone(), v);
        }
    }

    // Network, per interface of the VMI spec, from the guest's side.
    for i in &stats.interfaces {
        let l = with(&base, &[("interface", i.name.clone())]);
        let counters: [(&'static str, &'static str, u64); 8] = [
            (
                "kubevirt_vmi_network_receive_bytes",
                "Total network traffic received in bytes.",
                i.rx_bytes,
            ),
            (
                "kubevirt_vmi_network_transmit_bytes",
                "Total network traffic transmitted in bytes.",
                i.tx_bytes,
            ),
            (
                "kubevirt_vmi_network_receive_packets",
                "Total network traffic received packets.",
                i.rx_packets,
            ),
            (
                "kubevirt_vmi_network_transmit_packets",
                "Total network traffic transmitted packets.",
                i.tx_packets,
            ),
            (
                "kubevirt_vmi_network_receive_errors",
                "Total network received error packets.",
                i.rx_errors,
            ),
            (
                "kubevirt_vmi_network_transmit_errors",
                "Total network transmitted error packets.",
                i.tx_errors,
            ),
            (
                "kubevirt_vmi_network_receive_packets_dropped",
                "Total received packets dropped on the vNIC.",
                i.rx_dropped,
            ),
            (
                "kubevirt_vmi_network_transmit_packets_dropped",
                "Total transmitted packets dropped on the vNIC.",
                i.tx_dropped,
            ),
        ];
        for (name, help, v) in counters {
            f.counter(name, help, l.clone(), v as f64);
        }
        // Upstream still serves the deprecated sum of both directions.
        for (ty, v) in [("rx", i.rx_bytes), ("tx", i.tx_bytes)] {
            f.counter(
                "kubevirt_vmi_network_traffic_bytes",
                "[Deprecated] Total number of bytes sent and received.",
                with(&base, &[("interface", i.name.clone()), ("type", ty.into())]),
                v as f64,
            );
        }
    }

    // An outgoing live migration's progress, labelled as upstream's (node, namespace and
    // name only).
    if let Some(m) = &stats.migration {
        let l: Labels = base
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "node" | "namespace" | "name"))
            .cloned()
            .collect();
        if let Some(total) = m.ram_total {
            f.counter(
                "kubevirt_vmi_migration_data_bytes",
                "The total Guest OS data to be migrated to the new VM.",
                l.clone(),
                total as f64,
            );
        }
        let gauges = [
            (
                "kubevirt_vmi_migration_data_remaining_bytes",
                "The remaining guest OS data to be migrated to the new VM.",
                m.ram_remaining,
            ),
            (
                "kubevirt_vmi_migration_data_processed_bytes",
                "The total Guest OS data processed and migrated to the new VM.",
                m.ram_transferred,
            ),
            (
                "kubevirt_vmi_migration_dirty_memory_rate_bytes",
                "The rate of memory being dirty in the Guest OS.",
                m.dirty_rate_bytes,
            ),
            (
                "kubevirt_vmi_migration_memory_transfer_rate_bytes",
                "The rate at which the memory is being transferred.",
                m.transfer_rate_bytes,
            ),
        ];
        known_gauges(f, &l, gauges);
    }

    // Filesystems, as the guest agent sees them.
    for fs in &stats.filesystems {
        let l = with(
            &base,
            &[
                ("disk_name", fs.disk_name.clone()),
                ("mount_point", fs.mount_point.clone()),
                ("file_system_type", fs.file_system_type.clone()),
            ],
        );
        f.gauge(
            "kubevirt_vmi_filesystem_capacity_bytes",
            "Total VM filesystem capacity in bytes.",
            l.clone(),
            fs.total_bytes as f64,
        );
        f.gauge(
            "kubevirt_vmi_filesystem_used_bytes",
            "Used VM filesystem capacity in bytes.",
            l,
            fs.used_bytes as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::encode_text as text;
    use kubevirt_hypervisor::{BlockStats, DomainStats, GuestMemoryStats, MemoryStats, VcpuStats};
    use kubevirt_launcher::{FilesystemStats, InterfaceStats};

    #[test]
    fn a_vmis_counters_become_upstreams_series() {
        let vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "db", "namespace": "team-a",
                         "labels": {"kubevirt.io/domain": "db", "app": "pg"}},
            "spec": {"domain": {"devices": {}}},
            "status": {"nodeName": "node1"}
        }))
        .unwrap();
        let stats = VmStats {
            domain: DomainStats {
                vcpus: vec![VcpuStats {
                    index: 0,
                    thread_id: 7,
                    run_ns: Some(2_500_000_000),
                    delay_ns: Some(500_000_000),
                }],
                block: vec![BlockStats {
                    name: "rootdisk".into(),
                    rd_bytes: 4096,
                    rd_operations: 2,
                    rd_total_time_ns: 1_000_000,
                    ..Default::default()
                }],
                memory: MemoryStats {
                    domain_bytes: 128 << 20,
                    balloon_actual_bytes: Some(128 << 20),
                    guest: Some(GuestMemoryStats {
                        total_bytes: Some(120 << 20),
                        available_bytes: Some(100 << 20),
                        major_faults: Some(3),
                        ..Default::default()
                    }),
                },
                vmm_rss_kib: 1000,
                vmm_user_ns: 1_000_000_000,
                vmm_system_ns: 500_000_000,
            },
            interfaces: vec![InterfaceStats {
                name: "default".into(),
                rx_bytes: 900,
                tx_bytes: 100,
                ..Default::default()
            }],
            filesystems: vec![FilesystemStats {
                disk_name: "vda".into(),
                mount_point: "/mnt".into(),
                file_system_type: "iso9660".into(),
                total_bytes: 8192,
                used_bytes: 4096,
            }],
            migration: Some(kubevirt_hypervisor::MigrationStatus {
                status: "active".into(),
                ram_total: Some(300),
                ram_remaining: Some(100),
                ram_transferred: Some(200),
                dirty_rate_bytes: Some(4096),
                transfer_rate_bytes: Some(125_000),
                ..Default::default()
            }),
        };
        let mut f = Families::default();
        collect(&mut f, &vmi, &stats);
        let t = text(f);
        let base = r#"node="node1",namespace="team-a",name="db",kubernetes_vmi_label_app="pg",kubernetes_vmi_label_kubevirt_io_domain="db""#;
        for line in [
            format!("kubevirt_vmi_cpu_usage_seconds_total{{{base}}} 1.5"),
            format!("kubevirt_vmi_cpu_user_usage_seconds_total{{{base}}} 1.0"),
            format!("kubevirt_vmi_vcpu_seconds_total{{{base},id=\"0\",state=\"running\"}} 2.5"),
            format!("kubevirt_vmi_vcpu_delay_seconds_total{{{base},id=\"0\"}} 0.5"),
            format!("kubevirt_vmi_memory_resident_bytes{{{base}}} 1024000.0"),
            format!("kubevirt_vmi_memory_domain_bytes{{{base}}} 134217728.0"),
            format!("kubevirt_vmi_memory_available_bytes{{{base}}} 125829120.0"),
            format!("kubevirt_vmi_memory_usable_bytes{{{base}}} 104857600.0"),
            format!("kubevirt_vmi_memory_pgmajfault_total{{{base}}} 3.0"),
            format!("kubevirt_vmi_storage_read_traffic_bytes_total{{{base},drive=\"rootdisk\"}} 4096.0"),
            format!("kubevirt_vmi_storage_iops_read_total{{{base},drive=\"rootdisk\"}} 2.0"),
            format!("kubevirt_vmi_storage_read_times_seconds_total{{{base},drive=\"rootdisk\"}} 0.001"),
            format!("kubevirt_vmi_network_receive_bytes_total{{{base},interface=\"default\"}} 900.0"),
            format!("kubevirt_vmi_network_traffic_bytes_total{{{base},interface=\"default\",type=\"tx\"}} 100.0"),
            r#"kubevirt_vmi_migration_data_bytes_total{node="node1",namespace="team-a",name="db"} 300.0"#.to_string(),
            r#"kubevirt_vmi_migration_data_remaining_bytes{node="node1",namespace="team-a",name="db"} 100.0"#.to_string(),
            r#"kubevirt_vmi_migration_data_processed_bytes{node="node1",namespace="team-a",name="db"} 200.0"#.to_string(),
            r#"kubevirt_vmi_migration_dirty_memory_rate_bytes{node="node1",namespace="team-a",name="db"} 4096.0"#.to_string(),
            r#"kubevirt_vmi_migration_memory_transfer_rate_bytes{node="node1",namespace="team-a",name="db"} 125000.0"#.to_string(),
            format!("kubevirt_vmi_filesystem_capacity_bytes{{{base},disk_name=\"vda\",mount_point=\"/mnt\",file_system_type=\"iso9660\"}} 8192.0"),
            format!("kubevirt_vmi_filesystem_used_bytes{{{base},disk_name=\"vda\",mount_point=\"/mnt\",file_system_type=\"iso9660\"}} 4096.0"),
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line} in\n{t}");
        }
        // What the guest did not report is absent, not zero.
        assert!(!t.contains("kubevirt_vmi_memory_unused_bytes{"), "{t}");
    }
}
