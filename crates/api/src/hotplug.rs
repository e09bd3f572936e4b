//! Volume hot-plug rules, shared by the `addvolume`/`removevolume` subresources, the VM
//! controller (which carries a VM's hot-pluggable volumes to its running VMI) and VMI update
//! admission: the request bodies as upstream names them, and what a request does to a spec.
//!
//! A cdrom is never plugged or unplugged while the VM runs (upstream hot-plugs disks and
//! LUNs only): a cdrom disk with no volume is an empty tray, and a hot-pluggable volume
//! added for it inserts that medium; removing the volume ejects it and leaves the tray.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::v1::{Disk, VirtualMachineInstanceSpec, Volume};

/// Body of `PUT .../addvolume`.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddVolumeOptions {
    pub name: String,
    /// The disk, its name left out (it is `name`).
    pub disk: Option<serde_json::Value>,
    /// `persistentVolumeClaim` or `dataVolume`, as a Volume's source.
    pub volume_source: Option<serde_json::Value>,
    pub dry_run: Option<Vec<String>>,
}

/// Body of `PUT .../removevolume`.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveVolumeOptions {
    pub name: String,
    pub dry_run: Option<Vec<String>>,
}

/// `dryRun: ["All"]`.
pub fn is_dry_run(dry_run: &Option<Vec<String>>) -> bool {
    dry_run
        .as_deref()
        .is_some_and(|d| d.first().map(String::as_str) == Some("All"))
}

/// Checks an add request the way virt-api does before touching anything; the volume and
/// disk it adds, hot-pluggable.
pub fn added_volume(opts: &AddVolumeOptions) -> Result<(Volume, Disk), String> {
    if opts.name.is_empty() {
        return Err("AddVolumeOptions requires name to be set".into());
    }
    let Some(disk) = opts.disk.clone() else {
        return Err("AddVolumeOptions requires disk to not be nil".into());
    };
    let Some(source) = opts.volume_source.clone() else {
        return Err("AddVolumeOptions requires VolumeSource to not be nil".into());
    };
    let mut volume: Volume = serde_json::from_value(serde_json::json!({"name": opts.name}))
        .map_err(|e| e.to_string())?;
    let mut source = source;
    for key in ["persistentVolumeClaim", "dataVolume"] {
        if let Some(s) = source.get_mut(key).and_then(|s| s.as_object_mut()) {
            s.insert("hotpluggable".into(), true.into());
        }
    }
    let mut v = serde_json::to_value(&volume).map_err(|e| e.to_string())?;
    if let (Some(obj), Some(src)) = (v.as_object_mut(), source.as_object()) {
        for (k, val) in src {
            obj.insert(k.clone(), val.clone());
        }
    }
    volume = serde_json::from_value(v).map_err(|e| format!("volumeSource: {e}"))?;
    if volume.claim_name().is_none() {
        return Err(
            "AddVolumeOptions requires a persistentVolumeClaim or dataVolume volume source".into(),
        );
    }
    let mut disk = disk;
    if let Some(obj) = disk.as_object_mut() {
        obj.insert("name".into(), opts.name.clone().into());
    }
    let disk: Disk = serde_json::from_value(disk).map_err(|e| format!("disk: {e}"))?;
    Ok((volume, disk))
}

/// Adds a hot-pluggable volume (and its disk) to `spec`, refused with virt-api's words if
/// the name or the source is taken. A volume for an empty cdrom of `spec` is its medium:
/// the disk stays as it is.
pub fn add_volume(
    spec: &mut VirtualMachineInstanceSpec,
    volume: Volume,
    disk: Disk,
) -> Result<(), String> {
    for v in spec.volumes.iter().flatten() {
        if v.name == volume.name {
            return Err(format!(
                "Unable to add volume [{}] because volume with that name already exists",
                volume.name
            ));
        }
        if v.claim_name().is_some() && v.claim_name() == volume.claim_name() {
            return Err(format!(
                "Unable to add volume source [{}] because it already exists",
                volume.claim_name().unwrap_or_default()
            ));
        }
    }
    let existing = spec
        .domain
        .devices
        .disks
        .iter()
        .flatten()
        .find(|d| d.name == volume.name);
    let insert = match existing {
        Some(d) if d.cdrom.is_some() && disk.cdrom.is_some() => true,
        Some(_) => {
            return Err(format!(
                "Unable to add volume [{}] because disk with that name already exists",
                volume.name
            ))
        }
        None if disk.cdrom.is_some() => {
            return Err(format!(
                "AddVolume request for [{}] requires diskDevice of type 'disk' or 'lun' \
                 to be used.",
                volume.name
            ))
        }
        None => false,
    };
    spec.volumes.get_or_insert_with(Vec::new).push(volume);
    if !insert {
        spec.domain
            .devices
            .disks
            .get_or_insert_with(Vec::new)
            .push(disk);
    }
    Ok(())
}

/// Removes a hot-plugged volume (and its disk, but a cdrom: that is ejected) from `spec`.
pub fn remove_volume(spec: &mut VirtualMachineInstanceSpec, name: &str) -> Result<(), String> {
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    let Some(v) = volumes.iter().find(|v| v.name == name) else {
        return Err(format!(
            "Unable to remove volume [{name}] because it does not exist"
        ));
    };
    if !v.hotpluggable() {
        return Err(format!(
            "Unable to remove volume [{name}] because it is not hotpluggable"
        ));
    }
    volumes.retain(|v| v.name != name);
    if let Some(disks) = spec.domain.devices.disks.as_mut() {
        disks.retain(|d| d.name != name || d.cdrom.is_some());
    }
    Ok(())
}

/// Whether `spec` has a hot-pluggable volume (a hot-plugged disk or an inserted medium).
pub fn has_hotplug(spec: &VirtualMachineInstanceSpec) -> bool {
    spec.volumes.iter().flatten().any(Volume::hotpluggable)
}

/// `spec` without its hot-pluggable volumes, their disks and its empty cdroms: what must not
/// change while a VMI runs.
pub fn without_hotplug(spec: &VirtualMachineInstanceSpec) -> VirtualMachineInstanceSpec {
    let mut out = spec.clone();
    let hot: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.hotpluggable())
        .map(|v| v.name.clone())
        .collect();
    if let Some(volumes) = out.volumes.as_mut() {
        volumes.retain(|v| !hot.contains(&v.name));
    }
    let kept: Vec<String> = out
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    if let Some(disks) = out.domain.devices.disks.as_mut() {
        disks.retain(|d| !hot.contains(&d.name) && (d.cdrom.is_none() || kept.contains(&d.name)));
    }
    out
}

/// Makes the running VMI's hot-pluggable volumes those of its VM's template (declarative
/// hot-plug): added ones are appended, removed ones dropped. Returns whether `vmi` changed.
pub fn sync_from_template(
    vmi: &mut VirtualMachineInstanceSpec,
    template: &VirtualMachineInstanceSpec,
) -> bool {
    let wanted: Vec<&Volume> = template
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.hotpluggable())
        .collect();
    let mut changed = false;
    let stale: Vec<String> = vmi
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.hotpluggable() && !wanted.iter().any(|w| w.name == v.name))
        .map(|v| v.name.clone())
        .collect();
    for name in stale {
        changed |= remove_volume(vmi, &name).is_ok();
    }
    for w in wanted {
        let present = vmi.volumes.iter().flatten().any(|v| v.name == w.name);
        let disk = template
            .domain
            .devices
            .disks
            .iter()
            .flatten()
            .find(|d| d.name == w.name);
        if let (false, Some(disk)) = (present, disk) {
            changed |= add_volume(vmi, w.clone(), disk.clone()).is_ok();
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> VirtualMachineInstanceSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn add_and_remove_follow_virt_api() {
        let mut s = spec(json!({
            "domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}},
            "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "root"}}]
        }));
        let opts: AddVolumeOptions = serde_json::from_value(json!({
            "name": "data",
            "disk": {"disk": {"bus": "scsi"}, "serial": "data"},
            "volumeSource": {"persistentVolumeClaim": {"claimName": "data"}}
        }))
        .unwrap();
        let (v, d) = added_volume(&opts).unwrap();
        assert!(v.hotpluggable());
        assert_eq!(d.name, "data");
        add_volume(&mut s, v.clone(), d.clone()).unwrap();
        assert_eq!(
            add_volume(&mut s, v, d).unwrap_err(),
            "Unable to add volume [data] because volume with that name already exists"
        );
        assert_eq!(
            remove_volume(&mut s, "root").unwrap_err(),
            "Unable to remove volume [root] because it is not hotpluggable"
        );
        assert_eq!(
            remove_volume(&mut s, "nope").unwrap_err(),
            "Unable to remove volume [nope] because it does not exist"
        );
        let before = without_hotplug(&s);
        remove_volume(&mut s, "data").unwrap();
        assert_eq!(without_hotplug(&s), before);
        assert_eq!(s.volumes.as_ref().unwrap().len(), 1);
        assert_eq!(
            added_volume(&AddVolumeOptions {
                name: "x".into(),
                ..Default::default()
            })
            .unwrap_err(),
            "AddVolumeOptions requires disk to not be nil"
        );
    }

    #[test]
    fn a_vmi_follows_its_template() {
        let base = json!({
            "domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}},
            "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "root"}}]
        });
        let mut vmi = spec(base.clone());
        let mut template = spec(base);
        let (v, d) = added_volume(&AddVolumeOptions {
            name: "hp".into(),
            disk: Some(json!({"disk": {}})),
            volume_source: Some(json!({"dataVolume": {"name": "hp"}})),
            dry_run: None,
        })
        .unwrap();
        add_volume(&mut template, v, d).unwrap();
        assert!(sync_from_template(&mut vmi, &template));
        assert_eq!(vmi, template);
        assert!(!sync_from_template(&mut vmi, &template));
        remove_volume(&mut template, "hp").unwrap();
        assert!(sync_from_template(&mut vmi, &template));
        assert_eq!(vmi, template);
    }

    #[test]
    fn a_volume_for_an_empty_cdrom_inserts_and_ejects_its_medium() {
        let base = json!({
            "domain": {"devices": {"disks": [
                {"name": "root", "disk": {}},
                {"name": "cd", "cdrom": {"bus": "sata"}}
            ]}},
            "volumes": [{"name": "root", "persistentVolumeClaim": {"claimName": "root"}}]
        });
        let mut vmi = spec(base.clone());
        let mut template = spec(base);
        let iso = |disk: serde_json::Value| {
            added_volume(&AddVolumeOptions {
                name: "cd".into(),
                disk: Some(disk),
                volume_source: Some(json!({"persistentVolumeClaim": {"claimName": "iso"}})),
                dry_run: None,
            })
            .unwrap()
        };
        // A disk device is no medium, and no cdrom is plugged anew.
        let (v, d) = iso(json!({"disk": {}}));
        assert_eq!(
            add_volume(&mut template.clone(), v, d).unwrap_err(),
            "Unable to add volume [cd] because disk with that name already exists"
        );
        let (v, mut d) = iso(json!({"cdrom": {}}));
        d.name = "new".into();
        let mut other = v.clone();
        other.name = "new".into();
        assert_eq!(
            add_volume(&mut template.clone(), other, d).unwrap_err(),
            "AddVolume request for [new] requires diskDevice of type 'disk' or 'lun' to be used."
        );
        // Inserted: the volume comes, the cdrom stays as it was; the VMI follows.
        let (v, d) = iso(json!({"cdrom": {}}));
        let before = without_hotplug(&template);
        add_volume(&mut template, v, d).unwrap();
        let disks = template.domain.devices.disks.clone().unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(
            disks[1].cdrom.as_ref().unwrap().bus.as_deref(),
            Some("sata")
        );
        assert_eq!(without_hotplug(&template), before);
        assert!(has_hotplug(&template));
        assert!(sync_from_template(&mut vmi, &template));
        assert_eq!(vmi, template);
        // Ejected: the volume goes, the empty cdrom stays.
        remove_volume(&mut template, "cd").unwrap();
        assert_eq!(template.domain.devices.disks.as_ref().unwrap().len(), 2);
        assert!(!has_hotplug(&template));
        assert!(sync_from_template(&mut vmi, &template));
        assert_eq!(vmi, template);
        assert_eq!(without_hotplug(&vmi), before);
    }
}
