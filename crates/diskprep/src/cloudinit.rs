//! cloudInitNoCloud and cloudInitConfigDrive: seed ISOs built from the volume's data.
//!
//! The node agent resolves `userDataSecretRef` / `networkDataSecretRef` through the API and
//! passes the bytes in [`CloudInitSource`]; this module never talks to Kubernetes.

use std::path::Path;

use base64::Engine as _;

use crate::error::{DiskPrepError, Result};
use crate::iso9660::{build_iso, IsoFile};

/// Volume label cloud-init's NoCloud datasource looks for.
pub const NOCLOUD_LABEL: &str = "cidata";
/// Volume label cloud-init's ConfigDrive datasource looks for.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";

/// The data fields of a `cloudInitNoCloud` / `cloudInitConfigDrive` volume source, with
/// secret references already resolved to their content by the caller. At most one user-data
/// field and one network-data field may be set, and at least one of all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudInitSource {
    pub user_data: Option<String>,
    pub user_data_base64: Option<String>,
    /// Content of the secret named by `userDataSecretRef` (key `userdata` or `userData`).
    pub user_data_secret: Option<Vec<u8>>,
    pub network_data: Option<String>,
    pub network_data_base64: Option<String>,
    /// Content of the secret named by `networkDataSecretRef` (key `networkdata` or `networkData`).
    pub network_data_secret: Option<Vec<u8>>,
}

/// Which datasource layout to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudInitKind {
    NoCloud,
    ConfigDrive,
}

impl CloudInitKind {
    fn field_prefix(self) -> &'static str {
        match self {
            CloudInitKind::NoCloud => "cloudInitNoCloud",
            CloudInitKind::ConfigDrive => "cloudInitConfigDrive",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CloudInitKind::NoCloud => NOCLOUD_LABEL,
            CloudInitKind::ConfigDrive => CONFIG_DRIVE_LABEL,
        }
    }
}

/// Who the guest is: used for the instance id and host name in the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub namespace: String,
    pub name: String,
    /// The VMI's `metadata.uid`, when known.
    pub uid: Option<String>,
    /// `spec.hostname` if set, else the VMI name is used.
    pub hostname: Option<String>,
    /// SSH public keys for the metadata (`public-keys` / `public_keys`, keyed "0", "1",
    /// ...): `accessCredentials` with the noCloud or configDrive propagation method.
    pub public_keys: Vec<String>,
}

impl InstanceIdentity {
    /// The uid, else `name.namespace`. A `/` (as in `ns/name`) is avoided on purpose:
    /// cloud-init uses the instance id as a directory name under /var/lib/cloud/instances.
    pub fn instance_id(&self) -> String {
        match &self.uid {
            Some(uid) if !uid.is_empty() => uid.clone(),
            _ => format!("{}.{}", self.name, self.namespace),
        }
    }

    pub fn hostname(&self) -> &str {
        match &self.hostname {
            Some(h) if !h.is_empty() => h,
            _ => &self.name,
        }
    }
}

/// The decoded payloads of a cloud-init volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInitData {
    pub user_data: Option<Vec<u8>>,
    pub network_data: Option<Vec<u8>>,
}

impl CloudInitSource {
    /// Checks the one-of rules and decodes base64, naming the offending field on error.
    pub fn resolve(&self, volume: &str, kind: CloudInitKind) -> Result<CloudInitData> {
        let prefix = kind.field_prefix();
        let user_data = pick_one(
            volume,
            prefix,
            [
                (
                    "userData",
                    self.user_data.as_ref().map(|s| Payload::Text(s)),
                ),
                (
                    "userDataBase64",
                    self.user_data_base64.as_ref().map(|s| Payload::Base64(s)),
                ),
                (
                    "userDataSecretRef",
                    self.user_data_secret.as_ref().map(|b| Payload::Bytes(b)),
                ),
            ],
        )?;
        let network_data = pick_one(
            volume,
            prefix,
            [
                (
                    "networkData",
                    self.network_data.as_ref().map(|s| Payload::Text(s)),
                ),
                (
                    "networkDataBase64",
                    self.network_data_base64
                        .as_ref()
                        .map(|s| Payload::Base64(s)),
                ),
                (
                    "networkDataSecretRef",
                    self.network_data_secret.as_ref().map(|b| Payload::Bytes(b)),
                ),
            ],
        )?;
        if user_data.is_none() && network_data.is_none() {
            return Err(DiskPrepError::invalid(
                volume,
                prefix,
                "one of userData, userDataBase64, userDataSecretRef, networkData, networkDataBase64 or networkDataSecretRef is required",
            ));
        }
        Ok(CloudInitData {
            user_data,
            network_data,
        })
    }
}

enum Payload<'a> {
    Text(&'a str),
    Base64(&'a str),
    Bytes(&'a [u8]),
}

fn pick_one(
    volume: &str,
    prefix: &str,
    candidates: [(&str, Option<Payload<'_>>); 3],
) -> Result<Option<Vec<u8>>> {
    let set: Vec<(&str, Payload<'_>)> = candidates
        .into_iter()
        .filter_map(|(n, p)| p.map(|p| (n, p)))
        .collect();
    if set.len() > 1 {
        let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
        return Err(DiskPrepError::invalid(
            volume,
            &format!("{prefix}.{}", names[1]),
            format!("only one of {} may be set", names.join(", ")),
        ));
    }
    let Some((name, payload)) = set.into_iter().next() else {
        return Ok(None);
    };
    let bytes = match payload {
        Payload::Text(s) => s.as_bytes().to_vec(),
        Payload::Bytes(b) => b.to_vec(),
        Payload::Base64(s) => {
            // KubeVirt accepts base64 with embedded newlines (as `base64` wraps at 76).
            let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|e| {
                    DiskPrepError::invalid(
                        volume,
                        &format!("{prefix}.{name}"),
                        format!("not valid base64: {e}"),
                    )
                })?
        }
    };
    Ok(Some(bytes))
}

/// The files of a seed image, before ISO encoding (exposed for tests and for callers that
/// want to serve the same data another way).
pub fn seed_files(
    kind: CloudInitKind,
    identity: &InstanceIdentity,
    data: &CloudInitData,
) -> Vec<IsoFile> {
    match kind {
        CloudInitKind::NoCloud => {
            let mut meta = format!(
                "instance-id: {}\nlocal-hostname: {}\n",
                yaml_scalar(&identity.instance_id()),
                yaml_scalar(identity.hostname()),
            );
            if !identity.public_keys.is_empty() {
                meta.push_str("public-keys:\n");
                for (i, key) in identity.public_keys.iter().enumerate() {
                    // JSON strings are YAML strings: any byte of a key is written safely.
                    meta.push_str(&format!(
                        "  \"{i}\": {}\n",
                        serde_json::Value::String(key.clone())
                    ));
                }
            }
            let mut files = vec![
                // NoCloud wants user-data present even when empty.
                IsoFile::new("user-data", data.user_data.clone().unwrap_or_default()),
                IsoFile::new("meta-data", meta.into_bytes()),
            ];
            if let Some(net) = &data.network_data {
                files.push(IsoFile::new("network-config", net.clone()));
            }
            files
        }
        CloudInitKind::ConfigDrive => {
            let mut meta = serde_json::json!({
                "uuid": identity.instance_id(),
                "hostname": identity.hostname(),
                "name": identity.name,
                "launch_index": 0,
            });
            if !identity.public_keys.is_empty() {
                let keys: serde_json::Map<String, serde_json::Value> = identity
                    .public_keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (i.to_string(), k.clone().into()))
                    .collect();
                meta["public_keys"] = keys.into();
            }
            let mut files = vec![IsoFile::new(
                "openstack/latest/meta_data.json",
                meta.to_string().into_bytes(),
            )];
            if let Some(user) = &data.user_data {
                files.push(IsoFile::new("openstack/latest/user_data", user.clone()));
            }
            if let Some(net) = &data.network_data {
                files.push(IsoFile::new(
                    "openstack/latest/network_data.json",
                    net.clone(),
                ));
            }
            files
        }
    }
}

/// Names and uids are plain YAML scalars (simple readers, like the test guest's sed, see
/// them as is); anything else is written as a JSON string, which YAML reads the same way.
fn yaml_scalar(s: &str) -> String {
    let plain = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_owned()
    } else {
        serde_json::Value::String(s.to_owned()).to_string()
    }
}

/// Validates the source, builds the seed ISO and writes it to `out` atomically
/// (temporary file in the same directory, then rename).
pub fn write_seed_iso(
    volume: &str,
    kind: CloudInitKind,
    source: &CloudInitSource,
    identity: &InstanceIdentity,
    out: &Path,
) -> Result<()> {
    let data = source.resolve(volume, kind)?;
    let files = seed_files(kind, identity, &data);
    let image = build_iso(kind.label(), &files).map_err(|source| DiskPrepError::Iso {
        volume: volume.to_owned(),
        label: kind.label().to_owned(),
        source,
    })?;
    crate::fsutil::write_atomic(volume, out, &image)?;
    tracing::debug!(volume, path = %out.display(), bytes = image.len(), label = kind.label(), "wrote cloud-init seed ISO");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> InstanceIdentity {
        InstanceIdentity {
            namespace: "default".into(),
            name: "testvmi".into(),
            uid: None,
            hostname: None,
            public_keys: Vec::new(),
        }
    }

    #[test]
    fn one_of_rules() {
        let both = CloudInitSource {
            user_data: Some("a".into()),
            user_data_base64: Some("YQ==".into()),
            ..Default::default()
        };
        let err = both
            .resolve("cloudinitdisk", CloudInitKind::NoCloud)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cloudinitdisk"), "{msg}");
        assert!(msg.contains("cloudInitNoCloud.userDataBase64"), "{msg}");

        let none = CloudInitSource::default();
        let msg = none
            .resolve("ci", CloudInitKind::ConfigDrive)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cloudInitConfigDrive"), "{msg}");

        let bad64 = CloudInitSource {
            network_data_base64: Some("!!!".into()),
            ..Default::default()
        };
        let msg = bad64
            .resolve("ci", CloudInitKind::NoCloud)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("networkDataBase64") && msg.contains("base64"),
            "{msg}"
        );
    }

    #[test]
    fn base64_with_newlines_and_secrets() {
        let src = CloudInitSource {
            user_data_base64: Some("I2Nsb3VkLWNv\nbmZpZwo=".into()),
            network_data_secret: Some(b"version: 2\n".to_vec()),
            ..Default::default()
        };
        let data = src.resolve("ci", CloudInitKind::NoCloud).unwrap();
        assert_eq!(data.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
        assert_eq!(data.network_data.as_deref(), Some(&b"version: 2\n"[..]));
    }

    /// A ConfigDrive seed's `meta_data.json`, parsed.
    fn config_drive_meta(files: &[IsoFile]) -> serde_json::Value {
        let meta = files
            .iter()
            .find(|f| f.path == "openstack/latest/meta_data.json")
            .unwrap();
        serde_json::from_slice(&meta.data).unwrap()
    }

    #[test]
    fn metadata_contents() {
        let data = CloudInitData {
            user_data: Some(b"x".to_vec()),
            network_data: None,
        };
        let files = seed_files(CloudInitKind::NoCloud, &ident(), &data);
        let meta = files.iter().find(|f| f.path == "meta-data").unwrap();
        assert_eq!(
            String::from_utf8(meta.data.clone()).unwrap(),
            "instance-id: testvmi.default\nlocal-hostname: testvmi\n"
        );
        assert_eq!(yaml_scalar("123"), "\"123\"");
        assert_eq!(yaml_scalar("yes"), "\"yes\"");
        assert_eq!(yaml_scalar("a: b"), "\"a: b\"");
        assert_eq!(yaml_scalar("6e1c1e5c-0000-4000"), "6e1c1e5c-0000-4000");
        assert!(!files.iter().any(|f| f.path == "network-config"));

        let mut id = ident();
        id.uid = Some("6e1c1e5c-0000-4000-8000-000000000001".into());
        id.hostname = Some("myhost".into());
        let files = seed_files(CloudInitKind::ConfigDrive, &id, &data);
        let v = config_drive_meta(&files);
        assert_eq!(v["uuid"], "6e1c1e5c-0000-4000-8000-000000000001");
        assert_eq!(v["hostname"], "myhost");
        assert_eq!(v["name"], "testvmi");
        assert!(v.get("public_keys").is_none());
    }

    #[test]
    fn public_keys_in_both_layouts() {
        let data = CloudInitData {
            user_data: None,
            network_data: None,
        };
        let mut id = ident();
        id.public_keys = vec!["ssh-ed25519 AAAA a@b".into(), "ssh-rsa B \"odd\"\nx".into()];
        let files = seed_files(CloudInitKind::NoCloud, &id, &data);
        let meta = files.iter().find(|f| f.path == "meta-data").unwrap();
        assert_eq!(
            String::from_utf8(meta.data.clone()).unwrap(),
            "instance-id: testvmi.default\nlocal-hostname: testvmi\npublic-keys:\n  \"0\": \"ssh-ed25519 AAAA a@b\"\n  \"1\": \"ssh-rsa B \\\"odd\\\"\\nx\"\n"
        );
        let files = seed_files(CloudInitKind::ConfigDrive, &id, &data);
        let v = config_drive_meta(&files);
        assert_eq!(
            v["public_keys"],
            serde_json::json!({"0": "ssh-ed25519 AAAA a@b", "1": "ssh-rsa B \"odd\"\nx"})
        );
    }
}
