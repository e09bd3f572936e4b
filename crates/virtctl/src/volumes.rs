//! `virtctl addvolume` and `removevolume`: hot-plug a DataVolume or claim into a running VM
//! (through the VM, so it stays in its spec; through the VMI for a VMI without a VM), as
//! upstream's commands do.

use anyhow::{anyhow, bail, Result};
use kube::Api;
use serde_json::{json, Value};

use crate::client::Session;

/// The longest disk and volume name (a DNS-1035 label).
const MAX_NAME: usize = 63;

#[derive(clap::Args, Debug)]
pub struct AddVolumeArgs {
    /// The VM (or VMI) to add the volume to.
    pub vmi: String,
    /// Name of the volume source, either DV or PVC.
    #[arg(long)]
    pub volume_name: String,
    /// Name used in the disk/volume section of spec.
    #[arg(long)]
    pub disk_name: Option<String>,
    /// Serial number you want to assign to the disk.
    #[arg(long)]
    pub serial: Option<String>,
    /// Caching options attribute control the cache mechanism.
    #[arg(long)]
    pub cache: Option<String>,
    /// [deprecated] this flag has no effect (the volume is always kept in the VM's spec).
    #[arg(long)]
    pub persist: bool,
    /// Specifies disk type to be hotplugged (disk/lun). Disk by default.
    #[arg(long, default_value = "disk")]
    pub disk_type: String,
    /// Specifies disk bus. scsi by default.
    #[arg(long, default_value = "scsi")]
    pub bus: String,
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub struct RemoveVolumeArgs {
    pub vmi: String,
    /// Name of the volume to remove.
    #[arg(long)]
    pub volume_name: String,
    /// [deprecated] this flag has no effect.
    #[arg(long)]
    pub persist: bool,
    #[arg(long)]
    pub dry_run: bool,
}

fn dry_run(on: bool) -> Vec<&'static str> {
    if on {
        vec!["All"]
    } else {
        vec![]
    }
}

/// The volume source for `name`: its DataVolume if there is one, else its claim.
async fn volume_source(s: &Session, name: &str) -> Result<Value> {
    let dvs: Api<kubevirt_api::cdi::DataVolume> = Api::namespaced(s.client.clone(), &s.namespace);
    if dvs.get_opt(name).await.ok().flatten().is_some() {
        return Ok(json!({"dataVolume": {"name": name, "hotpluggable": true}}));
    }
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(s.client.clone(), &s.namespace);
    if claims.get_opt(name).await.ok().flatten().is_some() {
        return Ok(json!({"persistentVolumeClaim": {"claimName": name, "hotpluggable": true}}));
    }
    bail!("error adding volume, Volume {name} is not a DataVolume or PersistentVolumeClaim")
}

/// PUT to the VM's subresource, falling back to the VMI's when there is no such VM.
async fn put(s: &Session, vmi: &str, action: &str, body: Value) -> Result<()> {
    match s
        .put_subresource("virtualmachines", vmi, action, body.clone())
        .await
    {
        Err(e) if e.code() == Some(404) => s
            .put_subresource("virtualmachineinstances", vmi, action, body)
            .await
            .map_err(|e| anyhow!(e.message())),
        other => other.map_err(|e| anyhow!(e.message())),
    }
}

pub async fn add(s: &Session, a: &AddVolumeArgs) -> Result<()> {
    let source = volume_source(s, &a.volume_name).await?;
    let name = a.disk_name.clone().unwrap_or_else(|| a.volume_name.clone());
    if name.len() > MAX_NAME {
        match &a.disk_name {
            Some(d) => bail!("Invalid disk name {d}, must not exceed {MAX_NAME} characters"),
            None => bail!(
                "Invalid volume name {}, must not exceed {MAX_NAME} characters. Use in conjunction with --disk-name to specify a shorter name",
                a.volume_name
            ),
        }
    }
    let mut disk = match a.disk_type.as_str() {
        "disk" => {
            if a.bus != "scsi" && a.bus != "virtio" {
                bail!(
                    "Invalid bus type '{}' for disk. Only 'scsi' and 'virtio' are supported.",
                    a.bus
                );
            }
            json!({"disk": {"bus": a.bus}})
        }
        "lun" => {
            if a.bus != "scsi" {
                bail!(
                    "Invalid bus type '{}' for LUN disk. Only 'scsi' bus is supported.",
                    a.bus
                );
            }
            json!({"lun": {"bus": a.bus}})
        }
        other => bail!("Invalid disk type '{other}'. Only LUN and Disk are supported."),
    };
    disk["serial"] = a.serial.clone().unwrap_or_else(|| name.clone()).into();
    if let Some(cache) = &a.cache {
        if !matches!(cache.as_str(), "none" | "writethrough" | "writeback") {
            bail!("error adding volume, invalid cache value {cache}");
        }
        disk["cache"] = cache.clone().into();
    }
    let body = json!({
        "name": name,
        "disk": disk,
        "volumeSource": source,
        "dryRun": dry_run(a.dry_run),
    });
    put(s, &a.vmi, "addvolume", body)
        .await
        .map_err(|e| anyhow!("error adding volume, {e}"))?;
    println!(
        "Successfully submitted add volume request to VM {} for volume {}",
        a.vmi, a.volume_name
    );
    Ok(())
}

pub async fn remove(s: &Session, a: &RemoveVolumeArgs) -> Result<()> {
    let body = json!({"name": a.volume_name, "dryRun": dry_run(a.dry_run)});
    put(s, &a.vmi, "removevolume", body)
        .await
        .map_err(|e| anyhow!("error removing volume, {e}"))?;
    println!(
        "Successfully submitted remove volume request to VM {} for volume {}",
        a.vmi, a.volume_name
    );
    Ok(())
}
