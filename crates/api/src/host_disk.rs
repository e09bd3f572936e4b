//! Which `hostDisk` volumes this host allows: none unless the operator lists directories
//! (as upstream's `HostDisk` feature gate is off by default), and then only paths beneath
//! them. Admission rejects what the launcher would refuse, with the same field paths; the
//! launcher still opens the file itself without following links out of the directory.

use std::path::{Component, Path, PathBuf};

use crate::admission::{FieldError, FieldErrorKind};
use crate::v1::{Volume, VolumeSource};

/// The operator's choice (`kubevirt-rs server --host-disk-dir DIR`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostDiskPolicy {
    /// Absolute directories hostDisk paths must be beneath; empty: hostDisk is disabled.
    pub dirs: Vec<PathBuf>,
}

impl HostDiskPolicy {
    /// What is wrong with the hostDisk volumes of `volumes` (at `field`, e.g.
    /// `spec.template.spec.volumes`).
    pub fn check(&self, field: &str, volumes: &[Volume]) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, v) in volumes.iter().enumerate() {
            let Some(VolumeSource::HostDisk(h)) = v.source() else {
                continue;
            };
            if self.dirs.is_empty() {
                errors.push(FieldError {
                    field: format!("{field}[{i}]"),
                    kind: FieldErrorKind::InvalidMessage,
                    message: "HostDisk feature gate is not enabled".into(),
                });
                continue;
            }
            if let Err(reason) = self.allows(Path::new(&h.path)) {
                errors.push(FieldError::invalid(
                    format!("{field}[{i}].hostDisk.path"),
                    h.path.clone(),
                    reason,
                ));
            }
        }
        errors
    }

    /// Whether `path` is a plain absolute path beneath one of the directories.
    pub fn allows(&self, path: &Path) -> Result<(), String> {
        let plain = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain {
            return Err("must be an absolute path without '.' or '..' components".into());
        }
        if self.dirs.iter().any(|d| path.starts_with(d) && path != d) {
            return Ok(());
        }
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        Err(format!(
            "must be beneath a host disk directory of this node ({})",
            dirs.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn volumes(paths: &[&str]) -> Vec<Volume> {
        paths
            .iter()
            .map(|p| {
                serde_json::from_value(
                    json!({"name": "d", "hostDisk": {"path": p, "type": "Disk"}}),
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn off_unless_directories_are_listed() {
        let errs =
            HostDiskPolicy::default().check("spec.volumes", &volumes(&["/var/data/disk.img"]));
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "spec.volumes[0]: HostDisk feature gate is not enabled"
        );
        assert_eq!(errs[0].reason(), "FieldValueInvalid");
    }

    #[test]
    fn only_plain_paths_beneath_the_directories() {
        let policy = HostDiskPolicy {
            dirs: vec!["/var/lib/vm-disks".into()],
        };
        assert!(policy
            .check("spec.volumes", &volumes(&["/var/lib/vm-disks/a/disk.img"]))
            .is_empty());
        let errs = policy.check(
            "spec.volumes",
            &volumes(&[
                "/etc/shadow",
                "/var/lib/vm-disks/../../etc/shadow",
                "/var/lib/vm-disks",
                "/var/lib/vm-disks-other/x.img",
                "relative.img",
            ]),
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.volumes[0].hostDisk.path",
                "spec.volumes[1].hostDisk.path",
                "spec.volumes[2].hostDisk.path",
                "spec.volumes[3].hostDisk.path",
                "spec.volumes[4].hostDisk.path"
            ]
        );
        assert_eq!(
            errs[0].to_string(),
            "spec.volumes[0].hostDisk.path: Invalid value: \"/etc/shadow\": must be beneath a host disk directory of this node (/var/lib/vm-disks)"
        );
        assert!(
            errs[1].to_string().contains("without '.' or '..'"),
            "{}",
            errs[1]
        );
    }
}
