//! Live migration between two launchers of one VMI, on one node or two.
//!
//! The target is a launcher synced with an [`crate::protocol::IncomingMigration`]: it
//! prepares the VM from the same VMI, joins the pod network on a tap of its own (`network`),
//! and starts QEMU waiting for the guest on a unix socket in its own `vmm/` directory: the
//! status's `incomingUri`. The source is told that URI (`POST /v1/migrate`). Each VM's QEMU
//! runs as a user of its own, so the source's QEMU could not reach the target's socket:
//! the source launcher (root) connects and hands QEMU the stream.
//!
//! The disks only the source's node has ([`local_disks`]: overlays, emptyDisks, cloud-init
//! disks in its run directory) reach the target in one of two ways:
//! - same node: the target takes over by hard link the files its source made (`prepare`);
//! - another node (the node agents carry both streams between the nodes): the target makes
//!   its own and serves them over NBD (`incomingStorageUri`); the source mirrors each onto
//!   them while the guest runs, starts the RAM migration once all are copied, and completes
//!   the mirrors in `pre-switchover`, with the guest paused, before it may run on the target
//!   (`kubevirt_hypervisor::qemu` block migration).
//!
//! Both follow QEMU's `MIGRATION` events into the status. When the guest arrived, the
//! target starts its DHCP server and is the VM's launcher from then on; the source stops
//! its QEMU and exits 0 with `migratedOut`. A failed or cancelled migration leaves the
//! guest running on the source, and the target exits with a failure.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kubevirt_api::v1::VirtualMachineInstance;
use kubevirt_hypervisor::{
    DiskDevice, DomainConfig, MigrationParams, MigrationStatus, MigrationTarget,
};

use crate::protocol::{FailedStep, MigrateRequest, StartFailure};
use crate::rundir::RunDir;
use crate::translate::FieldIssue;
use crate::vm::{Vm, VmError};

/// What keeps this VMI from being live-migrated to this launcher (`scope`: from this node,
/// or from another, which also needs storage both nodes reach), one issue per field:
/// `kubevirt_api::migration::blockers`, the rule the VMI's `LiveMigratable` condition
/// reports.
pub(crate) fn migration_blockers(
    vmi: &VirtualMachineInstance,
    scope: kubevirt_api::migration::Scope,
) -> Vec<FieldIssue> {
    kubevirt_api::migration::blockers(vmi, scope)
        .into_iter()
        .map(|b| FieldIssue {
            field: b.field,
            reason: b.message,
        })
        .collect()
}

/// The source's run directory, checked: it must exist beside this launcher's (the same run
/// root) and not be this launcher's own.
pub(crate) fn source_run_dir(own: &RunDir, source: &Path) -> Result<RunDir, String> {
    let field = "incoming.sourceRunDir";
    let src = source
        .canonicalize()
        .map_err(|e| format!("{field} {}: {e}", source.display()))?;
    let mine = own
        .path()
        .canonicalize()
        .map_err(|e| format!("{}: {e}", own.path().display()))?;
    if src == mine {
        return Err(format!(
            "{field} {} is this launcher's own run directory",
            source.display()
        ));
    }
    if !src.is_dir() || src.parent() != mine.parent() {
        return Err(format!(
            "{field} {} is not a run directory beside this launcher's ({})",
            source.display(),
            mine.parent().unwrap_or(&mine).display()
        ));
    }
    Ok(RunDir::new(src))
}

/// The disks only this node has that the guest writes: writable disks on files the launcher
/// made in its run directory (overlays of containerDisks and ephemeral claims, emptyDisks,
/// cloud-init disks). Claims and hostDisks are storage both nodes reach.
pub(crate) fn local_disks(cfg: &DomainConfig, run_dir: &Path) -> Vec<String> {
    cfg.disks
        .iter()
        .filter(|d| !d.readonly && d.device == DiskDevice::Disk)
        .filter(|d| d.path.as_deref().is_some_and(|p| p.starts_with(run_dir)))
        .map(|d| d.name.clone())
        .collect()
}

/// A stream to the target's socket `path` (of `uri`), connected by this launcher (root) for
/// its QEMU, whose user could not reach it.
async fn connect(uri: &str, path: &str) -> Result<std::os::fd::OwnedFd, VmError> {
    tokio::net::UnixStream::connect(path)
        .await
        .and_then(|s| s.into_std())
        .map(Into::into)
        .map_err(|e| VmError::TargetUnreachable {
            uri: uri.to_string(),
            reason: e.to_string(),
        })
}

/// How long the copy of the local disks to another node may take before the migration
/// gives up (unless the migration's own completion timeout is given).
const DISK_COPY_TIMEOUT: Duration = Duration::from_secs(600);

/// Bookkeeping of the outgoing migration beyond QEMU's status word.
#[derive(Default)]
pub(crate) struct Outgoing {
    /// Bumped by every migration: a deadline acts on its own migration only.
    generation: u64,
    /// Set when the deadline cancelled the migration: the error its `cancelled` reports.
    timed_out: Option<String>,
    /// The downtime limit QEMU plans the switch-over with, raised as passes go by.
    downtime: DowntimeRamp,
}

/// The pause the switch-over may cost the guest starts short and grows only when the
/// migration does not get there. QEMU switches over once it expects to send what is still
/// dirty within its downtime limit; with QEMU's default (300 ms) it does so after the first
/// pass over memory unless the guest dirties a lot, and the guest then pauses for about
/// as long as that rest takes to send. Starting at [`INITIAL_DOWNTIME_MS`] makes QEMU
/// send more passes while the guest runs, each leaving less behind; a guest dirtying
/// memory faster than that would never let it finish, so from pass
/// [`RAMP_FROM_PASS`] on every pass doubles the limit, up to the migration's own
/// (`MigrationOptions::downtime_limit_ms`, by default QEMU's 300 ms). Each pass takes about as
/// long as sending its rest would, so the ramp costs a non-converging guest a few of its
/// own passes. (Upstream's `DowntimeTuning` ramps the same way in steps of seconds.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DowntimeRamp {
    /// The limit QEMU has now, ms.
    limit_ms: u64,
    /// The most it may grow to, ms.
    ceiling_ms: u64,
}

/// The downtime limit a migration starts with (unless its own limit is lower), ms.
const INITIAL_DOWNTIME_MS: u64 = 20;
/// The first `MIGRATION_PASS` (QEMU's count of dirty-memory syncs: 1 at the start, 2 after
/// the first full pass) that raises the limit.
const RAMP_FROM_PASS: u64 = 3;

impl DowntimeRamp {
    fn new(ceiling_ms: Option<u64>) -> Self {
        let ceiling_ms = ceiling_ms
            .unwrap_or(MigrationParams::DEFAULT_DOWNTIME_LIMIT_MS)
            .max(1);
        Self {
            limit_ms: INITIAL_DOWNTIME_MS.min(ceiling_ms),
            ceiling_ms,
        }
    }

    /// The limit after pass `pass`, if it changes.
    fn after_pass(&mut self, pass: u64) -> Option<u64> {
        if pass < RAMP_FROM_PASS || self.limit_ms >= self.ceiling_ms {
            return None;
        }
        self.limit_ms = self.limit_ms.saturating_mul(2).min(self.ceiling_ms);
        Some(self.limit_ms)
    }
}

/// QEMU's status words of a migration that has not ended.
pub fn in_progress(status: &str) -> bool {
    !matches!(status, "none" | "completed" | "failed" | "cancelled")
}

/// Post-copy started: the guest runs on the target, there is no going back.
fn in_post_copy(status: &str) -> bool {
    status.starts_with("postcopy")
}

impl Vm {
    async fn query_migration(self: &Arc<Self>) -> Result<MigrationStatus, VmError> {
        let vm = self.clone();
        tokio::task::spawn_blocking(move || vm.migration_status())
            .await
            .map_err(|e| VmError::Task {
                reason: e.to_string(),
            })?
    }

    /// Starts an outgoing live migration (the URI is validated by the caller); progress
    /// and the end come as `MIGRATION` events ([`Vm::on_migration_event`]).
    pub async fn migrate(self: &Arc<Self>, req: MigrateRequest) -> Result<(), VmError> {
        self.require_live("migrate")?;
        // The target starts from the VMI: it would lack what was plugged since.
        let status = self.status.get();
        if let Some(v) = status.hotplug_volumes.first() {
            return Err(crate::hotplug::HotplugError::Conflict {
                name: v.name.clone(),
                reason: "hot-plugged volumes do not migrate: unplug them first".into(),
            }
            .into());
        }
        if let Some(m) = status.inserted_media.first() {
            return Err(crate::hotplug::HotplugError::Conflict {
                name: m.name.clone(),
                reason: "inserted cdrom media do not migrate: eject them first".into(),
            }
            .into());
        }
        let current = self.query_migration().await?;
        if in_progress(&current.status) {
            return Err(VmError::Conflict(format!(
                "a migration is in progress ({})",
                current.status
            )));
        }
        let to = match req.uri.strip_prefix("unix:") {
            Some(path) => MigrationTarget::Connected(connect(&req.uri, path).await?),
            None => MigrationTarget::Uri(req.uri.clone()),
        };
        let opts = &req.options;
        // The target's QEMU runs as a VM user like ours: if ours may not use userfaultfd,
        // neither may it, and a post-copy-enabled migration would fail at once.
        let no_post_copy = opts
            .allow_post_copy
            .then(|| {
                kubevirt_hypervisor::qemu::postcopy_possible(
                    self.domain.config().confinement.as_ref(),
                )
                .err()
            })
            .flatten();
        if let Some(reason) = &no_post_copy {
            tracing::warn!(
                reason,
                "post-copy is not available on this node; pre-copy only"
            );
        }
        // A target on another node: the disks only this node has are copied first.
        let copy_disks = req.storage_uri.is_some() && !self.local_disks.is_empty();
        if let Some(uri) = req.storage_uri.as_ref().filter(|_| copy_disks) {
            let path = uri.strip_prefix("unix:").ok_or_else(|| {
                VmError::Conflict(format!("storageUri {uri}: a unix: URI is expected"))
            })?;
            let mut targets = Vec::new();
            for disk in &self.local_disks {
                targets.push((disk.clone(), connect(uri, path).await?));
            }
            let timeout = opts
                .completion_timeout_seconds
                .map_or(DISK_COPY_TIMEOUT, Duration::from_secs);
            let vm = self.clone();
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || vm.domain.mirror_disks(targets, timeout))
                .await
                .map_err(|e| VmError::Task {
                    reason: e.to_string(),
                })??;
            tracing::info!(disks = ?self.local_disks, took = ?started.elapsed(), "disks copied to the migration target; following their writes");
        }
        let downtime = DowntimeRamp::new(opts.downtime_limit_ms);
        let params = MigrationParams {
            max_bandwidth: opts.bandwidth_bytes_per_second,
            downtime_limit_ms: Some(downtime.limit_ms),
            auto_converge: opts.auto_converge,
            post_copy: opts.allow_post_copy && no_post_copy.is_none(),
            pause_before_switchover: copy_disks,
        };
        let generation = {
            let mut o = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
            o.generation += 1;
            o.timed_out = None;
            o.downtime = downtime;
            o.generation
        };
        let vm = self.clone();
        let post_copy = params.post_copy;
        let started = tokio::task::spawn_blocking(move || vm.domain.migrate_out(to, &params))
            .await
            .map_err(|e| VmError::Task {
                reason: e.to_string(),
            })?;
        if let Err(e) = started {
            self.domain.abort_disk_mirrors();
            return Err(e.into());
        }
        tracing::info!(uri = req.uri, options = ?req.options, "outgoing migration started");
        if let Some(secs) = opts.completion_timeout_seconds {
            let vm = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                vm.migration_deadline(generation, secs, post_copy, no_post_copy)
                    .await;
            });
        }
        Ok(())
    }

    /// QEMU finished pass `pass` over the guest's memory (`MIGRATION_PASS`) of an outgoing
    /// migration: the next step of its [`DowntimeRamp`], while pre-copy goes on. The last
    /// pass comes after the switch-over began (status `device`, guest paused): nothing to
    /// raise then, nor to ask QEMU. A raised limit is published with the progress.
    pub(crate) async fn on_migration_pass(self: &Arc<Self>, pass: u64) {
        let status = self.status.get();
        let copying = status
            .migration
            .as_ref()
            .is_some_and(|m| m.status == "active");
        if status.incoming_uri.is_some() || !copying {
            return;
        }
        let Some(limit) = self
            .outgoing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .downtime
            .after_pass(pass)
        else {
            return;
        };
        let vm = self.clone();
        match tokio::task::spawn_blocking(move || vm.domain.set_migration_downtime_limit(limit))
            .await
        {
            Ok(Ok(())) => tracing::info!(
                pass,
                limit_ms = limit,
                "migration has not converged: downtime limit raised"
            ),
            Ok(Err(error)) => tracing::warn!(%error, "raising the migration's downtime limit"),
            Err(error) => tracing::warn!(%error, "raising the migration's downtime limit"),
        }
        let Ok(mut m) = self.query_migration().await else {
            return;
        };
        // The status word stays the last event's, so every change is reported in order.
        self.status.update(|s| {
            if let Some(word) = s.migration.as_ref().map(|c| c.status.clone()) {
                if in_progress(&word) {
                    m.status = word;
                    s.migration = Some(m);
                }
            }
        });
    }

    /// The completion timeout of migration `generation` passed: switch to post-copy if
    /// allowed, else cancel (the guest stays here).
    async fn migration_deadline(
        self: &Arc<Self>,
        generation: u64,
        secs: u64,
        post_copy: bool,
        no_post_copy: Option<String>,
    ) {
        if self
            .outgoing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation
            != generation
        {
            return;
        }
        let Ok(current) = self.query_migration().await else {
            return;
        };
        if !in_progress(&current.status) || in_post_copy(&current.status) {
            return;
        }
        let vm = self.clone();
        let result = if post_copy {
            tracing::info!(secs, "migration not complete at its deadline: post-copy");
            tokio::task::spawn_blocking(move || vm.domain.migrate_start_postcopy()).await
        } else {
            let mut error = format!("migration did not complete within {secs} seconds");
            if let Some(reason) = no_post_copy {
                error.push_str(&format!(" (post-copy is not available: {reason})"));
            }
            tracing::warn!(error, "cancelling the migration");
            self.outgoing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .timed_out = Some(error);
            tokio::task::spawn_blocking(move || vm.domain.migrate_cancel()).await
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "acting on the migration deadline"),
            Err(error) => tracing::error!(%error, "acting on the migration deadline"),
        }
    }

    /// Aborts the outgoing migration; the guest keeps running here.
    pub async fn migrate_cancel(self: &Arc<Self>) -> Result<(), VmError> {
        self.require_live("cancel a migration")?;
        let current = self.query_migration().await?;
        if !in_progress(&current.status) {
            return Err(VmError::Conflict("no migration is in progress".into()));
        }
        if in_post_copy(&current.status) {
            return Err(VmError::Conflict(
                "the migration is in post-copy: the guest already runs on the target".into(),
            ));
        }
        let vm = self.clone();
        tokio::task::spawn_blocking(move || vm.domain.migrate_cancel())
            .await
            .map_err(|e| VmError::Task {
                reason: e.to_string(),
            })??;
        tracing::info!("outgoing migration cancelled");
        Ok(())
    }

    /// Cancels an outgoing migration still in pre-copy (blocking): a VM asked to stop must
    /// not go on running elsewhere. In post-copy the guest already runs on the target.
    pub(crate) fn call_off_outgoing_migration(&self) {
        if self.status.get().incoming_uri.is_some() {
            return;
        }
        let Ok(current) = self.migration_status() else {
            return;
        };
        if in_progress(&current.status) && !in_post_copy(&current.status) {
            tracing::info!("stop requested: cancelling the outgoing migration");
            if let Err(error) = self.domain.migrate_cancel() {
                tracing::warn!(%error, "cancelling the migration");
            }
        }
    }

    /// Follows QEMU's `MIGRATION` event with status `word` into the status, and acts on
    /// the end: a source whose guest left stops QEMU (`migratedOut`), a target whose
    /// migration failed records why and stops QEMU. Returns true when an incoming
    /// migration just completed: the guest runs here now.
    pub(crate) async fn on_migration_event(self: &Arc<Self>, word: &str) -> bool {
        // Totals, downtime and errors come with the query; the word is the event's, so
        // every change is reported in order.
        let mut m = self.query_migration().await.unwrap_or_default();
        m.status = word.to_string();
        let incoming = self.status.get().incoming_uri.is_some();
        let mut stop = false;
        match (incoming, word) {
            (true, "completed") => {
                tracing::info!("incoming migration completed: the guest runs here");
                if self.status.get().incoming_storage_uri.is_some() {
                    if let Err(error) = self.domain.stop_disk_exports() {
                        tracing::warn!(%error, "closing the disks served to the source");
                    }
                }
                // QEMU resumed the guest (unless it was paused) before saying so.
                let state = self.current_state().await;
                self.status.update(|s| {
                    s.migration = Some(m);
                    s.incoming_uri = None;
                    s.incoming_storage_uri = None;
                    s.domain = state.or(s.domain);
                });
                return true;
            }
            (true, "failed" | "cancelled") => {
                let why = m
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("the migration was {word}"));
                tracing::error!(error = why, "incoming migration failed");
                self.status.update(|s| {
                    s.migration = Some(m);
                    s.failure = Some(StartFailure {
                        step: FailedStep::Hypervisor,
                        message: format!("incoming live migration failed: {why}"),
                        fields: Vec::new(),
                    });
                });
                stop = true;
            }
            (false, "pre-switchover") => {
                // The guest is paused: the target gets the disks as they are, then the rest.
                let vm = self.clone();
                tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    match vm.domain.finish_disk_mirrors() {
                        Ok(()) => {
                            tracing::info!(took = ?started.elapsed(), "disk copies complete; switching over")
                        }
                        Err(error) => {
                            tracing::error!(%error, "completing the disk copies; cancelling the migration");
                            if let Err(error) = vm.domain.migrate_cancel() {
                                tracing::error!(%error, "cancelling the migration");
                            }
                        }
                    }
                });
                self.status.update(|s| s.migration = Some(m));
            }
            (false, _) => {
                if matches!(word, "failed" | "cancelled") {
                    let vm = self.clone();
                    tokio::task::spawn_blocking(move || vm.domain.abort_disk_mirrors());
                }
                if word == "cancelled" {
                    let timed_out = self
                        .outgoing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .timed_out
                        .take();
                    if timed_out.is_some() {
                        m.error = timed_out;
                    }
                }
                let left = word == "completed";
                if left {
                    tracing::info!(total_ms = ?m.total_time_ms, downtime_ms = ?m.downtime_ms, "the guest migrated out; stopping QEMU");
                }
                self.status.update(|s| {
                    s.migration = Some(m);
                    s.migrated_out |= left;
                });
                stop = left;
            }
            (true, _) => self.status.update(|s| s.migration = Some(m)),
        }
        if stop {
            let vm = self.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(error) = vm.domain.stop() {
                    tracing::error!(%error, "stopping QEMU after the migration");
                }
            });
        } else {
            self.refresh_state().await;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(spec: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": spec
        }))
        .unwrap()
    }

    use kubevirt_api::migration::Scope;

    #[test]
    fn the_downtime_limit_starts_short_and_doubles_from_the_third_pass_to_the_ceiling() {
        let mut ramp = DowntimeRamp::new(None);
        assert_eq!(ramp.limit_ms, 20);
        assert_eq!(ramp.after_pass(1), None, "setup");
        assert_eq!(ramp.after_pass(2), None, "after the first full pass");
        let raised: Vec<_> = (3..10).map_while(|p| ramp.after_pass(p)).collect();
        assert_eq!(raised, [40, 80, 160, 300], "up to QEMU's default");
        assert_eq!(ramp.after_pass(11), None);

        let mut ramp = DowntimeRamp::new(Some(1000));
        let raised: Vec<_> = (3..20).map_while(|p| ramp.after_pass(p)).collect();
        assert_eq!(raised, [40, 80, 160, 320, 640, 1000]);

        // A migration asking for less than the start gets what it asked for, at once.
        let mut ramp = DowntimeRamp::new(Some(5));
        assert_eq!((ramp.limit_ms, ramp.after_pass(3)), (5, None));
        assert_eq!(
            DowntimeRamp::new(Some(0)).limit_ms,
            1,
            "never none: nothing would switch over"
        );
    }

    #[test]
    fn persistent_state_and_passt_block_migration() {
        let plain = vmi(json!({"domain": {
            "devices": {"tpm": {}, "interfaces": [{"name": "default", "masquerade": {}}]},
            "firmware": {"bootloader": {"efi": {"secureBoot": false}}}
        }}));
        assert_eq!(migration_blockers(&plain, Scope::SameNode), vec![]);
        let blocked = vmi(json!({"domain": {
            "devices": {
                "tpm": {"persistent": true},
                "interfaces": [{"name": "default", "passt": {}}]
            },
            "firmware": {"bootloader": {"efi": {"persistent": true}}}
        }}));
        let fields: Vec<String> = migration_blockers(&blocked, Scope::SameNode)
            .into_iter()
            .map(|i| i.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.domain.devices.interfaces[0].passt",
                "spec.domain.devices.tpm.persistent",
                "spec.domain.firmware.bootloader.efi.persistent",
            ]
        );
        let disabled = vmi(json!({"domain": {"devices": {
            "tpm": {"enabled": false, "persistent": true}
        }}}));
        assert_eq!(migration_blockers(&disabled, Scope::SameNode), vec![]);
        // From another node, a disk only the source's node has cannot come along.
        let host_disk = vmi(json!({
            "domain": {"devices": {"disks": [{"name": "d", "disk": {}}]}},
            "volumes": [{"name": "d", "hostDisk": {"path": "/srv/d.img", "type": "Disk"}}]
        }));
        assert_eq!(migration_blockers(&host_disk, Scope::SameNode), vec![]);
        let issues = migration_blockers(&host_disk, Scope::Cluster);
        assert_eq!(issues[0].field, "spec.volumes[0]");
        assert_eq!(
            issues[0].reason,
            "cannot migrate VMI with non-shared HostDisk"
        );
    }

    #[test]
    fn the_source_run_dir_is_a_sibling() {
        let root = tempfile::tempdir().unwrap();
        let own = RunDir::for_uid(root.path(), "pod-b");
        let src = root.path().join("pod-a");
        std::fs::create_dir_all(own.path()).unwrap();
        let err = source_run_dir(&own, &src).unwrap_err();
        assert!(err.starts_with("incoming.sourceRunDir"), "{err}");
        std::fs::create_dir_all(&src).unwrap();
        assert_eq!(
            source_run_dir(&own, &src).unwrap().path(),
            src.canonicalize().unwrap()
        );
        let err = source_run_dir(&own, own.path()).unwrap_err();
        assert!(err.contains("own run directory"), "{err}");
        let elsewhere = tempfile::tempdir().unwrap();
        let err = source_run_dir(&own, elsewhere.path()).unwrap_err();
        assert!(err.contains("not a run directory beside"), "{err}");
        std::fs::write(root.path().join("file"), "").unwrap();
        let err = source_run_dir(&own, &root.path().join("file")).unwrap_err();
        assert!(err.contains("not a run directory beside"), "{err}");
    }
}
