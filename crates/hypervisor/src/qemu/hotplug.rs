//! Disks of a running QEMU: hot-plug and unplug, online resize, removable media.
//!
//! QEMU runs unprivileged and never opens a host path: the caller's descriptors travel over
//! the QMP socket (`add-fd` with `SCM_RIGHTS`) into a fresh fd set, and the block node reads
//! `/dev/fdset/N`, as the boot disks do. A writable image's set holds a read-only and a
//! read-write descriptor, because QEMU picks the one whose access mode matches each open.
//!
//! Hot-plugged SCSI disks go on the controller every machine has at boot (`scsi0`), on
//! target 0 at the lowest free LUN; virtio disks go on a spare PCIe root port (q35) or the
//! root bus (i440fx). What was plugged, and which block node each disk reads now, is kept
//! here, so callers name disks, never nodes.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::*;
use crate::error::{HypervisorError, Result};
use crate::qemu::argv::{self, Chipset, HOTPLUG_ROOT_PORTS, SCSI_CONTROLLER};
use crate::qmp::{self, QmpClient};

/// Fd sets we create at run time start here, far above the boot disks' sets (1..).
const FIRST_RUNTIME_SET: u32 = 1000;

/// A block node we added, and the fd set it reads.
#[derive(Debug, Clone)]
struct Medium {
    node: String,
    set: Option<u32>,
}

#[derive(Debug)]
struct Plugged {
    device_id: String,
    device: DiskDevice,
    lun: Option<u32>,
    port: Option<usize>,
    medium: Option<Medium>,
    /// Event index from which a `DEVICE_DELETED` answers an earlier unplug request.
    unplug_from: Option<usize>,
}

/// The run-time disk state of one domain.
#[derive(Debug, Default)]
pub(super) struct Disks {
    next_set: u32,
    next_node: u32,
    ports_used: [bool; HOTPLUG_ROOT_PORTS],
    plugged: BTreeMap<String, Plugged>,
    /// Boot disks whose medium was changed: the node they read now (None: empty).
    boot_media: HashMap<String, Option<Medium>>,
}

fn qemu_error(e: &HypervisorError, class: &str) -> bool {
    matches!(e, HypervisorError::QmpCommand { class: c, .. } if c == class)
}

impl Disks {
    fn new_set(&mut self) -> u32 {
        let set = FIRST_RUNTIME_SET + self.next_set;
        self.next_set += 1;
        set
    }

    /// Node names are at most 31 characters: numbered, not named after the disk.
    fn new_node(&mut self) -> String {
        let n = format!("hp-{}", self.next_node);
        self.next_node += 1;
        n
    }

    /// Passes `image`'s descriptors into a new fd set and adds a block node reading it.
    fn add_medium(&mut self, qmp: &QmpClient, image: &DiskImage, readonly: bool) -> Result<Medium> {
        let set = self.new_set();
        let mut fds = vec![image.read_only.as_fd()];
        if !readonly {
            let rw = image
                .read_write
                .as_ref()
                .ok_or_else(|| HypervisorError::InvalidConfig {
                    field: "image".into(),
                    reason: "a writable disk needs a read-write descriptor".into(),
                })?;
            fds.push(rw.as_fd());
        }
        for fd in fds {
            if let Err(e) = qmp.execute_with_fd(
                &qmp::AddFd {
                    fdset_id: set,
                    opaque: None,
                },
                fd,
            ) {
                let _ = qmp.execute(&qmp::RemoveFd {
                    fdset_id: set,
                    fd: None,
                });
                return Err(e);
            }
        }
        let node = self.new_node();
        let mut opts = json!({
            "driver": image.format.as_str(),
            "node-name": node,
            "read-only": readonly,
            "file": {"driver": "file", "filename": format!("/dev/fdset/{set}")},
        });
        if image.format == DiskFormat::Qcow2 {
            // Exactly this image: a backing file named in its header is never opened.
            opts["backing"] = Value::Null;
        }
        if let Err(e) = qmp.execute(&qmp::BlockdevAdd(opts)) {
            let _ = qmp.execute(&qmp::RemoveFd {
                fdset_id: set,
                fd: None,
            });
            return Err(e);
        }
        Ok(Medium {
            node,
            set: Some(set),
        })
    }

    /// Deletes a node we added and drops its fd set (QEMU then closes the descriptors).
    fn drop_medium(qmp: &QmpClient, m: &Medium) {
        if let Err(error) = qmp.execute(&qmp::BlockdevDel {
            node_name: m.node.clone(),
        }) {
            tracing::warn!(node = %m.node, %error, "cannot delete block node");
        }
        if let Some(set) = m.set {
            if let Err(error) = qmp.execute(&qmp::RemoveFd {
                fdset_id: set,
                fd: None,
            }) {
                tracing::warn!(set, %error, "cannot remove fd set");
            }
        }
    }

    /// The block node disk `name` reads now (None: an empty cdrom).
    fn current_node(&self, cfg: &DomainConfig, name: &str) -> Result<Option<String>> {
        if let Some(p) = self.plugged.get(name) {
            return Ok(p.medium.as_ref().map(|m| m.node.clone()));
        }
        if let Some(m) = self.boot_media.get(name) {
            return Ok(m.as_ref().map(|m| m.node.clone()));
        }
        match cfg.disks.iter().position(|d| d.name == name) {
            Some(i) => Ok(cfg.disks[i].path.is_some().then(|| format!("drive-ua-{i}"))),
            None => Err(no_such_disk(cfg, name)),
        }
    }

    pub(super) fn attach(
        &mut self,
        qmp: &QmpClient,
        cfg: &DomainConfig,
        disk: &HotplugDisk,
        image: &DiskImage,
    ) -> Result<AttachedDisk> {
        let invalid = |field: &str, reason: String| HypervisorError::InvalidConfig {
            field: format!("hotplug.{}.{field}", disk.name),
            reason,
        };
        if !argv::valid_id(&disk.name) {
            return Err(invalid(
                "name",
                format!("invalid device name {:?}", disk.name),
            ));
        }
        if let Some(s) = &disk.serial {
            if !argv::valid_serial(s) {
                return Err(invalid(
                    "serial",
                    "serial must be up to 20 characters [A-Za-z0-9_-]".into(),
                ));
            }
        }
        let taken = cfg.disks.iter().any(|d| d.name == disk.name)
            || cfg.nics.iter().any(|n| n.name == disk.name)
            || self.plugged.contains_key(&disk.name);
        if taken {
            return Err(HypervisorError::DiskExists {
                domain: cfg.name.clone(),
                disk: disk.name.clone(),
            });
        }
        let chip = argv::chipset(&cfg.machine)?;
        let cdrom = disk.device == DiskDevice::Cdrom;
        let readonly = disk.readonly || cdrom;
        let device_id = format!("hotplug-{}", disk.name);
        let mut dev = json!({"id": device_id});
        let (mut lun, mut port) = (None, None);
        match disk.bus {
            DiskBus::Scsi => {
                let has_controller =
                    chip != Chipset::Microvm || cfg.disks.iter().any(|d| d.bus == DiskBus::Scsi);
                if !has_controller {
                    return Err(HypervisorError::NoHotplugSlot {
                        disk: disk.name.clone(),
                        reason: "this machine has no SCSI controller".into(),
                    });
                }
                // Boot SCSI disks hold LUNs 0..n of target 0.
                let boot = cfg.disks.iter().filter(|d| d.bus == DiskBus::Scsi).count() as u32;
                let free = (boot..16384)
                    .find(|l| !self.plugged.values().any(|p| p.lun == Some(*l)))
                    .ok_or_else(|| HypervisorError::NoHotplugSlot {
                        disk: disk.name.clone(),
                        reason: "no free SCSI LUN".into(),
                    })?;
                lun = Some(free);
                dev["driver"] = if cdrom { "scsi-cd" } else { "scsi-hd" }.into();
                dev["bus"] = format!("{SCSI_CONTROLLER}.0").into();
                dev["channel"] = 0.into();
                dev["scsi-id"] = 0.into();
                dev["lun"] = free.into();
            }
            DiskBus::Virtio => {
                if cdrom {
                    return Err(invalid(
                        "bus",
                        "a cdrom cannot use the virtio bus (use scsi)".into(),
                    ));
                }
                let bus = match chip {
                    Chipset::Q35 => {
                        let i = self.ports_used.iter().position(|u| !u).ok_or_else(|| {
                            HypervisorError::NoHotplugSlot {
                                disk: disk.name.clone(),
                                reason: format!(
                                    "all {HOTPLUG_ROOT_PORTS} spare PCIe root ports are in use (use the scsi bus)"
                                ),
                            }
                        })?;
                        port = Some(i);
                        argv::hotplug_port_id(i)
                    }
                    Chipset::I440fx => "pci.0".to_string(),
                    Chipset::Microvm => {
                        return Err(HypervisorError::NoHotplugSlot {
                            disk: disk.name.clone(),
                            reason: "microvm has no hot-pluggable PCI bus".into(),
                        })
                    }
                };
                dev["driver"] = "virtio-blk-pci".into();
                dev["bus"] = bus.into();
            }
            DiskBus::Sata => {
                return Err(invalid(
                    "bus",
                    "SATA disks cannot be hot-plugged (use scsi or virtio)".into(),
                ));
            }
        }
        if let Some(s) = &disk.serial {
            dev["serial"] = s.clone().into();
        }
        let medium = self.add_medium(qmp, image, readonly)?;
        dev["drive"] = medium.node.clone().into();
        if let Err(e) = qmp.execute(&qmp::DeviceAdd(dev)) {
            Self::drop_medium(qmp, &medium);
            return Err(e);
        }
        if let Some(i) = port {
            self.ports_used[i] = true;
        }
        self.plugged.insert(
            disk.name.clone(),
            Plugged {
                device_id: device_id.clone(),
                device: disk.device,
                lun,
                port,
                medium: Some(medium),
                unplug_from: None,
            },
        );
        tracing::info!(domain = %cfg.name, disk = %disk.name, device = %device_id, "disk hot-plugged");
        Ok(AttachedDisk { device_id })
    }

    pub(super) fn detach(
        &mut self,
        qmp: &QmpClient,
        cfg: &DomainConfig,
        name: &str,
        timeout: Duration,
    ) -> Result<()> {
        let events = qmp.events();
        let p = self
            .plugged
            .get_mut(name)
            .ok_or_else(|| no_such_disk(cfg, name))?;
        let device_id = p.device_id.clone();
        let first = p.unplug_from.is_none();
        let from = *p.unplug_from.get_or_insert(events.len());
        let deleted = |ev: &DomainEvent| {
            ev.data.get("device").and_then(Value::as_str) == Some(device_id.as_str())
        };
        let gone = match qmp.execute(&qmp::DeviceDel {
            id: device_id.clone(),
        }) {
            Ok(_) => false,
            // Gone already (the guest ejected it, or an earlier request finished).
            Err(e) if qemu_error(&e, "DeviceNotFound") => true,
            // A repeated request while the guest has not answered the first.
            Err(_) if !first => false,
            Err(e) => {
                p.unplug_from = None;
                return Err(e);
            }
        };
        let gone = gone
            || events
                .wait_for_match("DEVICE_DELETED", from, timeout, deleted)
                .is_some();
        if !gone {
            return Err(HypervisorError::Timeout {
                what: format!("the guest to release device {device_id}"),
                seconds: timeout.as_secs_f64(),
            });
        }
        if let Some(p) = self.plugged.remove(name) {
            if let Some(m) = &p.medium {
                Self::drop_medium(qmp, m);
            }
            if let Some(i) = p.port {
                self.ports_used[i] = false;
            }
        }
        tracing::info!(domain = %cfg.name, disk = %name, device = %device_id, "disk unplugged");
        Ok(())
    }

    pub(super) fn resize(
        &self,
        qmp: &QmpClient,
        cfg: &DomainConfig,
        name: &str,
        size: u64,
    ) -> Result<()> {
        let node = self
            .current_node(cfg, name)?
            .ok_or_else(|| HypervisorError::InvalidState {
                name: cfg.name.clone(),
                reason: format!("disk {name} has no medium"),
            })?;
        qmp.execute(&qmp::BlockResize {
            node_name: node,
            size,
        })?;
        Ok(())
    }

    /// Ejects the medium of cdrom `name` and, with `image`, inserts that one instead.
    pub(super) fn change_medium(
        &mut self,
        qmp: &QmpClient,
        cfg: &DomainConfig,
        name: &str,
        image: Option<&DiskImage>,
    ) -> Result<()> {
        let (device_id, device) = match (
            self.plugged.get(name),
            cfg.disks.iter().find(|d| d.name == name),
        ) {
            (Some(p), _) => (p.device_id.clone(), p.device),
            (None, Some(d)) => (format!("ua-{name}"), d.device),
            (None, None) => return Err(no_such_disk(cfg, name)),
        };
        if device != DiskDevice::Cdrom {
            return Err(HypervisorError::InvalidState {
                name: cfg.name.clone(),
                reason: format!("disk {name} is not a cdrom: its medium cannot change"),
            });
        }
        let old = self.current_node(cfg, name)?;
        let new = match image {
            Some(img) => Some(self.add_medium(qmp, img, true)?),
            None => None,
        };
        let swap = || -> Result<()> {
            qmp.execute(&qmp::BlockdevOpenTray {
                id: device_id.clone(),
                force: true,
            })?;
            qmp.execute(&qmp::BlockdevRemoveMedium {
                id: device_id.clone(),
            })?;
            if let Some(m) = &new {
                qmp.execute(&qmp::BlockdevInsertMedium {
                    id: device_id.clone(),
                    node_name: m.node.clone(),
                })?;
            }
            qmp.execute(&qmp::BlockdevCloseTray {
                id: device_id.clone(),
            })?;
            Ok(())
        };
        if let Err(e) = swap() {
            if let Some(m) = &new {
                Self::drop_medium(qmp, m);
            }
            return Err(e);
        }
        // The old node is unused now; a boot disk's node came from the command line and
        // its fd set stays (QEMU closes nothing it may need after a migration).
        if let Some(node) = old {
            let set = self
                .plugged
                .get(name)
                .and_then(|p| p.medium.as_ref())
                .or_else(|| self.boot_media.get(name).and_then(Option::as_ref))
                .and_then(|m| m.set);
            Self::drop_medium(qmp, &Medium { node, set });
        }
        match self.plugged.get_mut(name) {
            Some(p) => p.medium = new,
            None => {
                self.boot_media.insert(name.to_string(), new);
            }
        }
        Ok(())
    }
}

pub(super) fn no_such_disk(cfg: &DomainConfig, name: &str) -> HypervisorError {
    HypervisorError::NoSuchDisk {
        domain: cfg.name.clone(),
        disk: name.to_string(),
    }
}
