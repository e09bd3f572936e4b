//! The node agent's part of a live migration (upstream's virt-handler as source and as
//! target), driven by the VMI's `status.migrationState` that the migration controller hands
//! off, and by what the two launchers push:
//!
//! 1. target: the target pod's launcher is synced with the VMI as an incoming migration
//!    (it takes over the source's run-dir disks and joins the VMI's pod network), event
//!    `PreparingTarget`;
//! 2. once it listens (`incoming_uri`): `targetNodeAddress`, `targetNodeDomainDetected`;
//! 3. source: the migration starts (`startTimestamp`, event `Migrating`) with the options of
//!    the MigrationPolicy that selects the VMI (`migrationPolicyName`) over the cluster's
//!    (the KubeVirt object's `spec.configuration.migrations`) over upstream's defaults
//!    (unlimited bandwidth, 150 s per GiB of guest memory to complete, no auto-converge, no
//!    post-copy), recorded in `migrationConfiguration`;
//! 4. the source reports `migratedOut` and the target runs the guest: `completed`,
//!    `endTimestamp`, `targetNodeDomainReadyTimestamp`, event `Migrated`; from then on the
//!    target pod is the VMI's (`kubevirt_api::migration::guest_pod`);
//! 5. a failure or cancel on the source, or a target that ended first: `failed`,
//!    `failureReason`, `endTimestamp` (and `abortStatus: Succeeded` for a requested abort);
//!    the source keeps the guest.
//!
//! Both launchers are on this node in embedded mode. Across nodes (cluster mode, the target
//! pod on another node): the target launcher makes its own disks and serves those only its
//! node has, and the source's agent carries the source launcher's streams (RAM, and the
//! disk copies of a block migration) to the target node's agent over mutual TLS
//! ([`crate::peer`]), which advertised its endpoint (`targetNodeAddress`,
//! `targetDirectMigrationNodePorts`). The target's agent says the migration completed once
//! the guest runs there.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use kubevirt_api::install::KubeVirt;
use kubevirt_api::migration::{
    abort_status, matching_policy, MigrationConfiguration, MigrationPolicy,
};
use kubevirt_api::v1::{MigrationState, VirtualMachineInstance};
use kubevirt_hypervisor::DomainState;
use kubevirt_launcher::{IncomingMigration, MigrateRequest, MigrationOptions, Stage, SyncRequest};
use kubevirt_reconcile::events::EventType;

use crate::agent::Context;
use crate::error::{HandlerError, Result};

/// The options a migration of `vmi` runs with under `config` (resolved: every field set).
/// The completion timeout is per GiB (decimal, rounded up) of guest memory, as upstream's;
/// 0 is none.
pub fn options_for(
    vmi: &VirtualMachineInstance,
    config: &MigrationConfiguration,
) -> MigrationOptions {
    let bytes = kubevirt_api::defaults::guest_memory(&vmi.spec)
        .map(|q| q.to_bytes())
        .unwrap_or(0);
    let gb = bytes.div_ceil(1_000_000_000).max(1);
    MigrationOptions {
        bandwidth_bytes_per_second: config
            .bandwidth_per_migration
            .as_ref()
            .map(|q| q.to_bytes())
            .filter(|b| *b > 0),
        completion_timeout_seconds: config
            .completion_timeout_per_gib
            .and_then(|t| u64::try_from(t).ok())
            .filter(|per_gib| *per_gib > 0)
            .map(|per_gib| per_gib * gb),
        auto_converge: config.allow_auto_converge.unwrap_or(false),
        allow_post_copy: config.allow_post_copy.unwrap_or(false),
        ..Default::default()
    }
}

/// The cluster's migration configuration: the install's KubeVirt object's
/// `spec.configuration.migrations` over upstream's defaults.
async fn cluster_migrations(ctx: &Context) -> Result<MigrationConfiguration> {
    let all: Api<KubeVirt> = Api::all(ctx.client.clone());
    let list = all
        .list(&ListParams::default())
        .await
        .map_err(kubevirt_reconcile::api_call_on(
            "listing", "KubeVirt", "", "",
        ))?;
    Ok(kubevirt_api::install::cluster_migrations(&list.items))
}

/// The MigrationPolicy selecting `vmi` (by its labels and its namespace's), if any.
async fn policy_for(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
) -> Result<Option<MigrationPolicy>> {
    let policies: Api<MigrationPolicy> = Api::all(ctx.client.clone());
    let list = policies
        .list(&ListParams::default())
        .await
        .map_err(kubevirt_reconcile::api_call_on(
            "listing",
            "MigrationPolicy",
            "",
            "",
        ))?
        .items;
    if list.is_empty() {
        return Ok(None);
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let ns = vmi.namespace().unwrap_or_default();
    let ns_labels = namespaces
        .get_opt(&ns)
        .await
        .map_err(kubevirt_reconcile::api_call_on(
            "getting",
            "Namespace",
            "",
            &ns,
        ))?
        .map(|n| n.labels().clone())
        .unwrap_or_default();
    Ok(matching_policy(&list, vmi.labels(), &ns_labels).cloned())
}

fn launcher_error(vmi: &VirtualMachineInstance, e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Launcher {
        vmi: vmi.name_any(),
        reason: e.to_string(),
    }
}

/// Moves the VMI's migration along on this node. Returns the migration state to write, or
/// None to leave it as it is.
pub async fn sync(ctx: &Context, vmi: &VirtualMachineInstance) -> Result<Option<MigrationState>> {
    let Some(ms) = vmi.status.as_ref().and_then(|s| s.migration_state.clone()) else {
        return Ok(None);
    };
    if ms.migration_uid.is_none() || ms.completed == Some(true) || ms.failed == Some(true) {
        return Ok(None);
    }
    let me = Some(ctx.node.as_str());
    let ns = vmi.namespace().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let source = ms
        .source_pod
        .as_deref()
        .filter(|_| ms.source_node.as_deref() == me)
        .and_then(|p| ctx.launchers.by_pod(&ns, p));
    let target = ms
        .target_pod
        .as_deref()
        .filter(|_| ms.target_node.as_deref() == me)
        .and_then(|p| ctx.launchers.by_pod(&ns, p));
    let s_status = source.as_ref().and_then(|l| l.observed().status);
    let t_status = target.as_ref().and_then(|l| l.observed().status);
    let mut next = ms.clone();

    // The guest left the source and runs on the target. Across nodes each agent sees its
    // side only: the target's tells, once the guest arrived.
    let source_here = ms.source_node.as_deref() == me;
    let migrated_out = s_status.as_ref().is_some_and(|s| s.migrated_out);
    let target_runs = t_status
        .as_ref()
        .is_some_and(|t| t.stage == Stage::Started && t.domain == Some(DomainState::Running));
    let arrived = t_status.as_ref().is_some_and(|t| {
        t.incoming_uri.is_none()
            && t.migration
                .as_ref()
                .is_some_and(|m| m.status == "completed")
    });
    // The streams to another node are done once the guest left or the source gave up.
    let drop_forwarders = || {
        if let Some(uid) = &ms.migration_uid {
            ctx.drop_forwarders(uid);
        }
    };
    if migrated_out {
        drop_forwarders();
    }
    if target_runs && (migrated_out || (!source_here && arrived)) {
        next.completed = Some(true);
        next.end_timestamp = Some(now.clone());
        next.target_node_domain_detected = Some(true);
        next.target_node_domain_ready_timestamp = Some(now);
        let node = ms.target_node.clone().unwrap_or_default();
        ctx.recorder
            .publish(
                vmi,
                EventType::Normal,
                "Migrated",
                &format!("The VirtualMachineInstance migrated to node {node}."),
            )
            .await;
        return Ok(Some(next));
    }
    if migrated_out {
        // The target reports in a moment; its push wakes us.
        return Ok(None);
    }

    // The source gave up: QEMU failed, the migration timed out or was cancelled.
    let ended_on_source = s_status
        .as_ref()
        .and_then(|s| s.migration.as_ref())
        .filter(|m| {
            ms.start_timestamp.is_some() && matches!(m.status.as_str(), "failed" | "cancelled")
        });
    if let Some(m) = ended_on_source {
        drop_forwarders();
        let reason = m
            .error
            .clone()
            .unwrap_or_else(|| format!("live migration {}", m.status));
        return Ok(Some(failed(ctx, vmi, next, reason, now).await));
    }

    // The target ended before the guest arrived.
    let target_gone = target.as_ref().is_some_and(|t| t.exited())
        || t_status.as_ref().is_some_and(|t| t.stage == Stage::Exited);
    if target_gone {
        if let Some(s) = source.as_ref().filter(|_| ms.start_timestamp.is_some()) {
            // The stream broke anyway; make sure QEMU lets go of it.
            let _ = s.client.migrate_cancel().await;
        }
        let reason = t_status
            .as_ref()
            .and_then(|t| t.failure.as_ref().map(|f| f.message.clone()))
            .unwrap_or_else(|| "the migration target's launcher exited".into());
        return Ok(Some(failed(ctx, vmi, next, reason, now).await));
    }

    if ms.abort_requested == Some(true) {
        match ms.abort_status.as_deref() {
            None if ms.start_timestamp.is_some() => {
                if let Some(s) = &source {
                    s.client
                        .migrate_cancel()
                        .await
                        .map_err(|e| launcher_error(vmi, e))?;
                }
                next.abort_status = Some(abort_status::ABORTING.into());
                return Ok(Some(next));
            }
            None => {
                return Ok(Some(
                    failed(ctx, vmi, next, "Migration aborted".into(), now).await,
                ))
            }
            // Aborting: the source reports the cancel (above).
            Some(_) => return Ok(None),
        }
    }

    // Prepare the target: from the source's files on this node, or from scratch for a
    // source on another node.
    let source_run_dir = match (&source, source_here) {
        (Some(s), _) => Some(Some(s.run_dir.path().to_path_buf())),
        (None, false) if ctx.peers.is_some() => Some(None),
        // The source's launcher is not known (yet).
        (None, _) => None,
    };
    if let (Some(t), Some(ts), Some(source_run_dir)) = (&target, &t_status, source_run_dir) {
        if ts.stage == Stage::WaitingForSync && ctx.mark_target_synced(&t.key.uid) {
            let request = SyncRequest {
                vmi: serde_json::to_value(vmi).expect("VMIs serialise"),
                secrets: crate::agent::cloud_init_secrets(&ctx.client, vmi).await?,
                incoming: Some(IncomingMigration { source_run_dir }),
            };
            if let Err(e) = t.client.sync(&request).await {
                ctx.unmark_target_synced(&t.key.uid);
                return Err(launcher_error(vmi, e));
            }
            ctx.recorder
                .publish(
                    vmi,
                    EventType::Normal,
                    "PreparingTarget",
                    "VirtualMachineInstance Migration Target Prepared.",
                )
                .await;
            return Ok(None);
        }
    }
    let incoming_uri = t_status.as_ref().and_then(|t| t.incoming_uri.clone());
    if incoming_uri.is_some() && ms.target_node_address.is_none() {
        next.target_node_address = Some(ctx.node_ip.clone());
        next.target_direct_migration_node_ports = ctx
            .peers
            .as_ref()
            .map(|p| [(p.port.to_string(), 0)].into_iter().collect());
        next.target_node_domain_detected = Some(true);
        return Ok(Some(next));
    }

    // Start it on the source: straight to the target's socket on this node, or through
    // the forwarders to another node's agent.
    let streams = match (&incoming_uri, &source, &ms.target_node_address) {
        (Some(uri), _, _) => Some((uri.clone(), None)),
        (None, Some(s), Some(addr))
            if ms.start_timestamp.is_none() && ms.target_node.as_deref() != me =>
        {
            forward_to_target(ctx, vmi, &ms, s, addr)?
        }
        _ => None,
    };
    if let (Some((uri, storage_uri)), Some(s), Some(_), None) = (
        streams,
        &source,
        &ms.target_node_address,
        &ms.start_timestamp,
    ) {
        let policy = policy_for(ctx, vmi).await?;
        let mut config = cluster_migrations(ctx).await?;
        if let Some(p) = &policy {
            config = config.with_policy(&p.spec);
        }
        let options = options_for(vmi, &config);
        next.migration_policy_name = policy.as_ref().and_then(|p| p.metadata.name.clone());
        next.migration_configuration = serde_json::to_value(&config).ok();
        let request = MigrateRequest {
            uri,
            storage_uri,
            options,
        };
        // Started already, by a look whose note of it did not get written (a conflict with
        // the target node's agent writing the VMI at the same time): only the note is due.
        let running = s_status
            .as_ref()
            .and_then(|st| st.migration.as_ref())
            .is_some_and(|m| kubevirt_launcher::migration_in_progress(&m.status));
        if !running {
            let revision = s.observed().status.map_or(0, |st| st.revision);
            if let Err(e) = s.client.migrate(&request).await {
                // The target cannot be reached, or the disks could not be copied in time:
                // the guest stays here and the migration fails with why.
                drop_forwarders();
                let reason = format!("starting the migration on the source: {e}");
                return Ok(Some(failed(ctx, vmi, next, reason, now).await));
            }
            // The next look must not read an earlier migration's end (a cancelled one) as
            // this one's: wait for the launcher's push of this migration's start.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while s.observed().status.map_or(0, |st| st.revision) == revision
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        next.start_timestamp = Some(now);
        ctx.recorder
            .publish(
                vmi,
                EventType::Normal,
                "Migrating",
                "VirtualMachineInstance is migrating.",
            )
            .await;
        return Ok(Some(next));
    }
    Ok(None)
}

/// Source side of a migration to another node: unix sockets in the source launcher's run
/// directory whose connections go to the target node's agent (RAM and disk streams).
/// Returns their URIs, or None while the target node's endpoint is not known.
fn forward_to_target(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    ms: &MigrationState,
    source: &crate::launchers::Launcher,
    addr: &str,
) -> Result<Option<(String, Option<String>)>> {
    let (Some(peers), Some(uid)) = (&ctx.peers, &ms.migration_uid) else {
        return Ok(None);
    };
    let Some(port) = ms
        .target_direct_migration_node_ports
        .as_ref()
        .and_then(|p| p.keys().next())
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return Ok(None);
    };
    let target: std::net::SocketAddr = format!("{addr}:{port}")
        .parse()
        .or_else(|_| format!("[{addr}]:{port}").parse())
        .map_err(|e| launcher_error(vmi, format!("targetNodeAddress {addr}: {e}")))?;
    let vmi_uid = vmi.metadata.uid.clone().unwrap_or_default();
    let streams = [
        ("mig-ram.sock", crate::peer::STREAM_RAM),
        ("mig-disks.sock", crate::peer::STREAM_DISKS),
    ]
    .map(|(file, stream)| (source.run_dir.path().join(file), stream));
    let uri = |socket: &std::path::Path| format!("unix:{}", socket.display());
    let uris = (uri(&streams[0].0), Some(uri(&streams[1].0)));
    let mut forwarders = crate::agent::lock(&ctx.forwarders);
    if forwarders.contains_key(uid) {
        // Set up by an earlier look of this migration.
        return Ok(Some(uris));
    }
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    for (socket, stream) in streams {
        let listener = match crate::peer::listen(&socket) {
            Ok(l) => l,
            Err(e) => {
                tasks.iter().for_each(|t| t.abort());
                return Err(launcher_error(vmi, format!("{}: {e}", socket.display())));
            }
        };
        tasks.push(tokio::spawn(crate::peer::forward(
            listener,
            socket,
            peers.clone(),
            target,
            crate::peer::stream_path(&vmi_uid, stream),
        )));
    }
    forwarders.insert(uid.clone(), tasks);
    Ok(Some(uris))
}

/// The migration state of a failed (or aborted) migration, with upstream's event.
async fn failed(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    mut state: MigrationState,
    reason: String,
    now: Time,
) -> MigrationState {
    ctx.recorder
        .publish(
            vmi,
            EventType::Warning,
            "Migrated",
            &format!(
                "VirtualMachineInstance migration uid {} failed. reason:{reason}",
                state.migration_uid.as_deref().unwrap_or_default()
            ),
        )
        .await;
    if state.abort_requested == Some(true) {
        state.abort_status = Some(abort_status::SUCCEEDED.into());
    }
    state.failed = Some(true);
    state.failure_reason = Some(reason);
    state.end_timestamp = Some(now);
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_api::migration::MigrationPolicySpec;

    #[test]
    fn completion_timeout_scales_with_guest_memory() {
        let mut vmi = VirtualMachineInstance::test("v");
        let defaults = MigrationConfiguration::resolved(None);
        let t =
            |vmi: &VirtualMachineInstance| options_for(vmi, &defaults).completion_timeout_seconds;
        assert_eq!(t(&vmi), Some(150), "no memory given: one GiB's worth");
        vmi.spec.domain.memory =
            Some(serde_json::from_value(serde_json::json!({"guest": "128Mi"})).unwrap());
        assert_eq!(t(&vmi), Some(150));
        vmi.spec.domain.memory =
            Some(serde_json::from_value(serde_json::json!({"guest": "4Gi"})).unwrap());
        assert_eq!(
            t(&vmi),
            Some(150 * 5),
            "4 GiB is 4.29 GB, rounded up as upstream"
        );
        let o = options_for(&vmi, &defaults);
        assert_eq!(o.bandwidth_bytes_per_second, None);
        assert!(!o.auto_converge && !o.allow_post_copy);
        let policy: MigrationPolicySpec = serde_json::from_value(serde_json::json!({
            "bandwidthPerMigration": "1Mi", "completionTimeoutPerGiB": 10,
            "allowAutoConverge": true, "allowPostCopy": true}))
        .unwrap();
        let o = options_for(&vmi, &defaults.clone().with_policy(&policy));
        assert_eq!(o.bandwidth_bytes_per_second, Some(1 << 20));
        assert_eq!(o.completion_timeout_seconds, Some(50));
        assert!(o.auto_converge && o.allow_post_copy);
        let never: MigrationPolicySpec =
            serde_json::from_value(serde_json::json!({"completionTimeoutPerGiB": 0})).unwrap();
        let o = options_for(&vmi, &defaults.with_policy(&never));
        assert_eq!(
            o.completion_timeout_seconds, None,
            "0: no timeout, as upstream"
        );
    }
}
