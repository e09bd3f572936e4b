//! Volumes of a running VM, as virt-handler keeps them: the VMI's hot-pluggable volumes
//! (claims or DataVolumes marked `hotpluggable`, never on the QEMU command line) are attached
//! through the launcher once their claim is bound and filled, and detached when the spec no
//! longer names them; a hot-pluggable volume of a cdrom is inserted into its tray instead,
//! and ejected when it goes; a claim that grew grows the disk the guest sees. The VMI's
//! `status.volumeStatus` says where each claim volume is, with upstream's phases, reasons and
//! messages.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::{Api, Client, ResourceExt};
use kubevirt_api::v1::{VirtualMachineInstance, VolumeStatus};
use kubevirt_launcher::{HotplugBus, HotplugVolumeRequest, LauncherClient, LauncherStatus};
use serde_json::{json, Value};

/// Where a claim volume's data is: its file on this node, or why it is not usable yet.
enum ClaimDisk {
    Ready {
        file: std::path::PathBuf,
        info: Value,
        capacity: Option<String>,
    },
    NotReady(String),
}

async fn claim_disk(client: &Client, ns: &str, claim: &str) -> ClaimDisk {
    use kubevirt_api::cdi::annotations::{IMPORT_SOURCE, POD_PHASE, UPLOAD_REQUEST};
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = match claims.get_opt(claim).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return ClaimDisk::NotReady(format!("persistentvolumeclaim \"{claim}\" not found"))
        }
        Err(e) => return ClaimDisk::NotReady(e.to_string()),
    };
    let a = pvc.annotations();
    let filling = (a.contains_key(IMPORT_SOURCE) || a.contains_key(UPLOAD_REQUEST))
        && a.get(POD_PHASE).map(String::as_str) != Some("Succeeded");
    if filling {
        return ClaimDisk::NotReady(format!(
            "persistentvolumeclaim \"{claim}\" is still being populated"
        ));
    }
    let Some(volume) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
    else {
        return ClaimDisk::NotReady(format!("persistentvolumeclaim \"{claim}\" is not bound"));
    };
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = match volumes.get(&volume).await {
        Ok(pv) => pv,
        Err(e) => return ClaimDisk::NotReady(e.to_string()),
    };
    let file = match kubevirt_storage::local::ensure_disk(&pv) {
        Ok(f) => f,
        Err(e) => {
            return ClaimDisk::NotReady(format!(
                "MountVolume.SetUp failed for volume \"{volume}\" : {e}"
            ))
        }
    };
    let spec = pvc.spec.clone().unwrap_or_default();
    let capacity = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone());
    let info = json!({
        "claimName": claim,
        "accessModes": spec.access_modes,
        "volumeMode": spec.volume_mode,
        "capacity": {"storage": capacity},
        "requests": spec.resources.and_then(|r| r.requests),
    });
    ClaimDisk::Ready {
        file,
        info,
        capacity,
    }
}

/// The capacity a volume status last recorded for its claim.
fn recorded_capacity(st: &VolumeStatus) -> Option<String> {
    st.persistent_volume_claim_info
        .as_ref()?
        .pointer("/capacity/storage")?
        .as_str()
        .map(str::to_string)
}

fn bytes(q: &str) -> u64 {
    kubevirt_api::Quantity::parse(q).map_or(0, |q| q.to_bytes())
}

/// Brings the running VM's volumes in line with the VMI's spec and returns the VMI's
/// `volumeStatus` (claim volumes, in spec order; hot-plugged ones with their phase).
pub async fn sync(
    client: &Client,
    vmi: &VirtualMachineInstance,
    launcher: &LauncherClient,
    status: &LauncherStatus,
) -> Vec<VolumeStatus> {
    let ns = vmi.namespace().unwrap_or_default();
    let previous: BTreeMap<String, VolumeStatus> = vmi
        .status
        .as_ref()
        .and_then(|s| s.volume_status.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let disks = vmi.spec.domain.devices.disks.clone().unwrap_or_default();
    let attached: BTreeMap<&str, &kubevirt_launcher::HotplugVolumeStatus> = status
        .hotplug_volumes
        .iter()
        .map(|h| (h.name.as_str(), h))
        .collect();
    let mut out = Vec::new();
    let volumes = vmi.spec.volumes.clone().unwrap_or_default();
    for volume in &volumes {
        let Some(claim) = volume.claim_name() else {
            continue;
        };
        let Some(disk) = disks.iter().find(|d| d.name == volume.name) else {
            continue;
        };
        let mut st = previous.get(&volume.name).cloned().unwrap_or(VolumeStatus {
            name: volume.name.clone(),
            ..Default::default()
        });
        let (file, info, capacity) = match claim_disk(client, &ns, claim).await {
            ClaimDisk::Ready {
                file,
                info,
                capacity,
            } => (file, info, capacity),
            ClaimDisk::NotReady(why) => {
                if volume.hotpluggable() {
                    st.phase = Some("Pending".into());
                    st.reason = Some("PVCNotReady".into());
                    st.message = Some(why);
                }
                out.push(st);
                continue;
            }
        };
        let cdrom = disk.cdrom.is_some();
        let grown = !cdrom
            && capacity.as_deref().map(bytes).unwrap_or(0)
                > recorded_capacity(&st)
                    .as_deref()
                    .map(bytes)
                    .unwrap_or(u64::MAX);
        if volume.hotpluggable() {
            let inserted = status.inserted_media.iter().find(|m| m.name == volume.name);
            let outcome = match (attached.get(volume.name.as_str()), inserted) {
                (Some(h), _) => Ok(Some(h.target.clone())),
                (None, Some(m)) if cdrom && m.path == file => Ok(Some(m.target.clone())),
                // The cdrom's medium; the target shows in the launcher's next status.
                (None, _) if cdrom => launcher
                    .insert_medium(&volume.name, &file)
                    .await
                    .map(|()| {
                        tracing::info!(vmi = %vmi.name_any(), volume = %volume.name, "cdrom medium inserted");
                        None
                    }),
                (None, _) => {
                    let bus = disk
                        .disk
                        .as_ref()
                        .and_then(|d| d.bus.clone())
                        .or(disk.cdrom.as_ref().and_then(|c| c.bus.clone()));
                    let request = HotplugVolumeRequest {
                        name: volume.name.clone(),
                        path: file,
                        bus: if bus.as_deref() == Some("virtio") {
                            HotplugBus::Virtio
                        } else {
                            HotplugBus::Scsi
                        },
                        serial: disk.serial.clone(),
                        read_only: disk.disk.as_ref().and_then(|d| d.readonly) == Some(true),
                        cdrom: false,
                        format: None,
                    };
                    launcher.hotplug_volume(&request).await.map(|h| {
                        tracing::info!(vmi = %vmi.name_any(), volume = %volume.name, target = %h.target, "volume hot-plugged");
                        Some(h.target)
                    })
                }
            };
            match outcome {
                Ok(target) => {
                    st.target = target.or(st.target);
                    st.phase = Some("Ready".into());
                }
                Err(e) => {
                    st.phase = Some("Pending".into());
                    st.reason = Some("FailedAttachVolume".into());
                    st.message = Some(e.to_string());
                    out.push(st);
                    continue;
                }
            }
            st.reason = Some("VolumeReady".into());
            st.message = Some(format!(
                "Successfully attach hotplugged volume {} to VM",
                volume.name
            ));
            st.hotplug_volume = Some(json!({}));
        }
        if grown {
            match launcher.resize_volume(&volume.name).await {
                Ok(()) => {
                    tracing::info!(vmi = %vmi.name_any(), volume = %volume.name, capacity = ?capacity, "disk grown")
                }
                Err(e) => {
                    tracing::warn!(vmi = %vmi.name_any(), volume = %volume.name, error = %e, "could not grow the disk");
                    // Keep the old capacity: the next look tries again.
                    out.push(st);
                    continue;
                }
            }
        }
        st.persistent_volume_claim_info = Some(info);
        out.push(st);
    }
    // Attached volumes and inserted media the spec no longer names go.
    let wanted = |name: &str| volumes.iter().any(|v| v.name == name && v.hotpluggable());
    for m in &status.inserted_media {
        if wanted(&m.name) {
            continue;
        }
        match launcher.eject_medium(&m.name).await {
            Ok(()) => {
                tracing::info!(vmi = %vmi.name_any(), volume = %m.name, "cdrom medium ejected");
            }
            Err(e) => out.push(detaching(&m.name, &m.target, e)),
        }
    }
    for h in &status.hotplug_volumes {
        if wanted(&h.name) {
            continue;
        }
        match launcher.unplug_volume(&h.name).await {
            Ok(()) => {
                tracing::info!(vmi = %vmi.name_any(), volume = %h.name, "volume unplugged");
            }
            Err(e) => out.push(detaching(&h.name, &h.target, e)),
        }
    }
    out
}

/// The status of a volume the launcher has not let go of yet.
fn detaching(name: &str, target: &str, error: impl std::fmt::Display) -> VolumeStatus {
    VolumeStatus {
        name: name.to_string(),
        target: Some(target.to_string()),
        phase: Some("Detaching".into()),
        message: Some(error.to_string()),
        hotplug_volume: Some(json!({})),
        ..Default::default()
    }
}
