//! Block migration: disks only the source's node has (files its launcher made) are copied to
//! the target's VMM over NBD while the guest runs, as libvirt's storage migration does.
//!
//! - The target VMM (started with `-incoming defer`) serves each such disk's top node as a
//!   writable NBD export named after the disk, on a unix socket.
//! - The source VMM gets one connected stream per disk (the caller connected it, so the
//!   VMM's user never needs to reach the socket), adds an NBD client node on it and starts a
//!   `blockdev-mirror` of the disk onto it: `sync: full` (all the guest sees, whatever image
//!   it comes from, so the target's base image may differ) and `copy-mode: write-blocking`
//!   (once ready, a guest write completes only when the target has it too).
//! - The RAM migration starts once every mirror is ready and stops in `pre-switchover`
//!   (the source paused, no device state sent): the mirrors are cancelled there, which for a
//!   ready mirror means "stop with the target a consistent copy", and only then may the
//!   target run the guest.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use serde_json::json;

use super::hotplug::no_such_disk;
use crate::qmp::{self, QmpClient};
use crate::{DomainConfig, HypervisorError, Result};

/// The node and job of disk `i`'s mirror on the source.
fn mirror_id(i: usize) -> String {
    format!("mirror-ua-{i}")
}

fn disk_index(cfg: &DomainConfig, name: &str) -> Result<usize> {
    cfg.disks
        .iter()
        .position(|d| d.name == name && d.path.is_some())
        .ok_or_else(|| no_such_disk(cfg, name))
}

/// Target: serves `disks` (by name) as writable NBD exports on unix socket `socket`.
pub(super) fn export(
    qmp: &QmpClient,
    cfg: &DomainConfig,
    socket: &std::path::Path,
    disks: &[String],
) -> Result<()> {
    let indexes = disks
        .iter()
        .map(|d| disk_index(cfg, d))
        .collect::<Result<Vec<_>>>()?;
    qmp.execute(&qmp::NbdServerStart {
        // The legacy socket address form this command takes.
        addr: json!({"type": "unix", "data": {"path": socket}}),
    })?;
    for (name, i) in disks.iter().zip(indexes) {
        // The node is inactive while the guest has not arrived; exporting activates it
        // (nothing else writes it before the migration ends).
        qmp.execute(&qmp::BlockExportAdd(json!({
            "type": "nbd",
            "id": format!("export-ua-{i}"),
            "node-name": format!("drive-ua-{i}"),
            "name": name,
            "writable": true,
        })))?;
    }
    Ok(())
}

/// Target: stops serving the disks.
pub(super) fn stop_exports(qmp: &QmpClient) -> Result<()> {
    qmp.execute(&qmp::NbdServerStop).map(|_| ())
}

/// Source: mirrors each disk onto the export of its name behind its stream; returns once
/// every mirror is ready (everything copied), or fails (dropping what it started) when one
/// fails or `timeout` passes first.
pub(super) fn mirror(
    qmp: &QmpClient,
    cfg: &DomainConfig,
    targets: Vec<(String, OwnedFd)>,
    timeout: Duration,
) -> Result<Vec<usize>> {
    let mut started = Vec::new();
    let result = (|| {
        for (name, stream) in &targets {
            let i = disk_index(cfg, name)?;
            let id = mirror_id(i);
            qmp.execute_with_fd(&qmp::GetFd { fdname: id.clone() }, stream.as_fd())?;
            qmp.execute(&qmp::BlockdevAdd(json!({
                "driver": "nbd",
                "node-name": id,
                "server": {"type": "fd", "str": id},
                "export": name,
            })))?;
            started.push(i);
            qmp.execute(&qmp::BlockdevMirror {
                job_id: id.clone(),
                device: format!("drive-ua-{i}"),
                target: id,
                sync: "full".into(),
                copy_mode: "write-blocking".into(),
            })?;
        }
        wait_ready(qmp, cfg, &started, timeout)
    })();
    match result {
        Ok(()) => Ok(started),
        Err(e) => {
            abort(qmp, &started);
            Err(e)
        }
    }
}

fn wait_ready(
    qmp: &QmpClient,
    cfg: &DomainConfig,
    disks: &[usize],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let jobs = qmp.execute(&qmp::QueryBlockJobs)?;
        let mut all_ready = true;
        for &i in disks {
            let id = mirror_id(i);
            match jobs.iter().find(|j| j.device == id) {
                Some(j) if j.error.is_some() => {
                    return Err(mirror_failed(cfg, i, j.error.clone().unwrap_or_default()))
                }
                Some(j) => all_ready &= j.ready,
                None => return Err(mirror_failed(cfg, i, "the mirror job ended".into())),
            }
        }
        if all_ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(HypervisorError::InvalidState {
                name: cfg.name.clone(),
                reason: format!(
                    "the disks were not copied to the migration target within {}s",
                    timeout.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mirror_failed(cfg: &DomainConfig, i: usize, why: String) -> HypervisorError {
    HypervisorError::InvalidState {
        name: cfg.name.clone(),
        reason: format!(
            "copying disk {} to the migration target failed: {why}",
            cfg.disks[i].name
        ),
    }
}

/// Source, guest paused before the switch-over: completes each mirror (the target holds
/// the disk as the guest left it) and drops its client node.
pub(super) fn finish(
    qmp: &QmpClient,
    cfg: &DomainConfig,
    disks: &[usize],
    timeout: Duration,
) -> Result<()> {
    for &i in disks {
        qmp.execute(&qmp::BlockJobCancel {
            device: mirror_id(i),
            force: false,
        })?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let jobs = qmp.execute(&qmp::QueryBlockJobs)?;
        if !jobs
            .iter()
            .any(|j| disks.iter().any(|&i| j.device == mirror_id(i)))
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(HypervisorError::InvalidState {
                name: cfg.name.clone(),
                reason: "the disk mirrors did not complete".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for &i in disks {
        qmp.execute(&qmp::BlockdevDel {
            node_name: mirror_id(i),
        })?;
    }
    Ok(())
}

/// Source, after a failure: stops the mirrors at once and drops their nodes (best effort:
/// what is not there any more is fine).
pub(super) fn abort(qmp: &QmpClient, disks: &[usize]) {
    for &i in disks {
        let _ = qmp.execute(&qmp::BlockJobCancel {
            device: mirror_id(i),
            force: true,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && qmp.execute(&qmp::QueryBlockJobs).is_ok_and(|jobs| {
            jobs.iter()
                .any(|j| disks.iter().any(|&i| j.device == mirror_id(i)))
        })
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &i in disks {
        if let Err(error) = qmp.execute(&qmp::BlockdevDel {
            node_name: mirror_id(i),
        }) {
            tracing::debug!(%error, node = mirror_id(i), "dropping a mirror's node");
        }
    }
}
