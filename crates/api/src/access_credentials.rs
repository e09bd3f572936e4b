//! `spec.accessCredentials`: SSH public keys and user passwords from Secrets, handed to the
//! guest through its agent (live, re-applied when the Secret changes) or, for keys, through
//! the cloud-init seed (at boot), as upstream KubeVirt does.
//!
//! The spec keeps the list as JSON (so fields this project does not know survive a round
//! trip); [`parse`] reads it into these types and [`validate`] applies virt-api's rules
//! with its wording.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::admission::{FieldError, FieldErrorKind};
use crate::v1::{VirtualMachineInstanceSpec, VolumeSource};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessCredential {
    pub ssh_public_key: Option<SshPublicKey>,
    pub user_password: Option<UserPassword>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshPublicKey {
    #[serde(default)]
    pub source: Source,
    #[serde(default)]
    pub propagation_method: SshPropagation,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserPassword {
    #[serde(default)]
    pub source: Source,
    #[serde(default)]
    pub propagation_method: PasswordPropagation,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub secret: Option<SecretSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretSource {
    #[serde(default)]
    pub secret_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SshPropagation {
    pub qemu_guest_agent: Option<GuestAgentUsers>,
    pub config_drive: Option<Value>,
    pub no_cloud: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PasswordPropagation {
    pub qemu_guest_agent: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestAgentUsers {
    #[serde(default)]
    pub users: Vec<String>,
}

/// Which cloud-init seed carries a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudInitSeed {
    NoCloud,
    ConfigDrive,
}

/// The credentials of a spec; an item that does not parse is `Err` with serde's reason
/// (validation reports it; consumers skip it).
pub fn parse(spec: &VirtualMachineInstanceSpec) -> Vec<Result<AccessCredential, String>> {
    spec.access_credentials
        .iter()
        .flatten()
        .map(|v| serde_json::from_value(v.clone()).map_err(|e| e.to_string()))
        .collect()
}

/// What the guest agent is to apply: per user, the Secrets holding their authorized keys,
/// and the Secrets whose keys are user names and values passwords.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentCredentials {
    /// (user, secret names), users in first-mention order.
    pub ssh_keys: Vec<(String, Vec<String>)>,
    pub password_secrets: Vec<String>,
}

impl AgentCredentials {
    pub fn is_empty(&self) -> bool {
        self.ssh_keys.is_empty() && self.password_secrets.is_empty()
    }

    /// Every Secret named, once.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let all = self
            .ssh_keys
            .iter()
            .flat_map(|(_, s)| s)
            .chain(&self.password_secrets);
        for n in all {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }
}

/// The credentials propagated through the guest agent.
pub fn agent_credentials(spec: &VirtualMachineInstanceSpec) -> AgentCredentials {
    let mut out = AgentCredentials::default();
    for cred in parse(spec).into_iter().flatten() {
        if let Some(k) = &cred.ssh_public_key {
            let (Some(agent), Some(secret)) =
                (&k.propagation_method.qemu_guest_agent, &k.source.secret)
            else {
                continue;
            };
            for user in &agent.users {
                match out.ssh_keys.iter_mut().find(|(u, _)| u == user) {
                    Some((_, secrets)) => secrets.push(secret.secret_name.clone()),
                    None => out
                        .ssh_keys
                        .push((user.clone(), vec![secret.secret_name.clone()])),
                }
            }
        } else if let Some(p) = &cred.user_password {
            if let (Some(_), Some(secret)) =
                (&p.propagation_method.qemu_guest_agent, &p.source.secret)
            {
                out.password_secrets.push(secret.secret_name.clone());
            }
        }
    }
    out
}

/// The Secrets whose keys go into the `seed` cloud-init volume's metadata.
pub fn cloud_init_key_secrets(
    spec: &VirtualMachineInstanceSpec,
    seed: CloudInitSeed,
) -> Vec<String> {
    parse(spec)
        .into_iter()
        .flatten()
        .filter_map(|c| c.ssh_public_key)
        .filter(|k| match seed {
            CloudInitSeed::NoCloud => k.propagation_method.no_cloud.is_some(),
            CloudInitSeed::ConfigDrive => k.propagation_method.config_drive.is_some(),
        })
        .filter_map(|k| k.source.secret.map(|s| s.secret_name))
        .collect()
}

/// The authorized keys of a key Secret's data: every non-empty line of every value, in key
/// order (as upstream reads a mounted Secret's files).
pub fn keys_of_secret<'a>(data: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
    data.into_iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// virt-api's rules for `spec.accessCredentials`, with its messages.
pub fn validate(path: &str, spec: &VirtualMachineInstanceSpec, errs: &mut Vec<FieldError>) {
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let has_no_cloud = volumes
        .iter()
        .any(|v| matches!(v.source(), Some(VolumeSource::CloudInitNoCloud(_))));
    let has_config_drive = volumes
        .iter()
        .any(|v| matches!(v.source(), Some(VolumeSource::CloudInitConfigDrive(_))));
    let invalid = |field: String, message: String| FieldError {
        field,
        kind: FieldErrorKind::InvalidMessage,
        message,
    };
    for (i, cred) in parse(spec).into_iter().enumerate() {
        let item = format!("{path}.accessCredentials[{i}]");
        let cred = match cred {
            Ok(c) => c,
            Err(e) => {
                errs.push(invalid(item, e));
                continue;
            }
        };
        let mut kinds = 0;
        if let Some(k) = &cred.ssh_public_key {
            kinds += 1;
            let m = &k.propagation_method;
            let mut methods = 0;
            if m.no_cloud.is_some() {
                methods += 1;
                if !has_no_cloud {
                    errs.push(invalid(
                        format!("{item}.sshPublicKey.propagationMethod"),
                        format!("{item} requires a noCloud volume to exist when the noCloud propagationMethod is in use."),
                    ));
                }
            }
            if m.config_drive.is_some() {
                methods += 1;
                if !has_config_drive {
                    errs.push(invalid(
                        format!("{item}.sshPublicKey.propagationMethod"),
                        format!("{item} requires a configDrive volume to exist when the configDrive propagationMethod is in use."),
                    ));
                }
            }
            if let Some(agent) = &m.qemu_guest_agent {
                methods += 1;
                if agent.users.is_empty() {
                    errs.push(invalid(
                        format!("{item}.sshPublicKey.propagationMethod.qemuGuestAgent.users"),
                        format!(
                            "{item} requires at least one user to be present in the users list"
                        ),
                    ));
                }
            }
            check_source(&item, "sshPublicKey", &k.source, errs);
            if methods != 1 {
                errs.push(invalid(
                    format!("{item}.sshPublicKey.propagationMethod"),
                    format!("{item} must have exactly one propagationMethod set"),
                ));
            }
        }
        if let Some(p) = &cred.user_password {
            kinds += 1;
            check_source(&item, "userPassword", &p.source, errs);
            if p.propagation_method.qemu_guest_agent.is_none() {
                errs.push(invalid(
                    format!("{item}.userPassword.propagationMethod"),
                    format!("{item} must have exactly one propagationMethod set"),
                ));
            }
        }
        if kinds != 1 {
            errs.push(invalid(
                item.clone(),
                format!("{item} must have exactly one access credential type set"),
            ));
        }
    }
}

fn check_source(item: &str, kind: &str, source: &Source, errs: &mut Vec<FieldError>) {
    match &source.secret {
        None => errs.push(FieldError {
            field: format!("{item}.{kind}.source"),
            kind: FieldErrorKind::InvalidMessage,
            message: format!("{item} must have exactly one source set"),
        }),
        // Not upstream's check, but an empty name can only fail later, less clearly.
        Some(s) if s.secret_name.is_empty() => errs.push(FieldError::required(
            format!("{item}.{kind}.source.secret.secretName"),
            "",
        )),
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(creds: Value, volumes: Value) -> VirtualMachineInstanceSpec {
        serde_json::from_value(json!({
            "domain": {"devices": {}},
            "accessCredentials": creds,
            "volumes": volumes,
        }))
        .unwrap()
    }

    fn messages(s: &VirtualMachineInstanceSpec) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        validate("spec", s, &mut errs);
        errs.into_iter().map(|e| (e.field, e.message)).collect()
    }

    #[test]
    fn agent_and_cloud_init_sets() {
        let s = spec(
            json!([
                {"sshPublicKey": {"source": {"secret": {"secretName": "a"}},
                    "propagationMethod": {"qemuGuestAgent": {"users": ["root", "ops"]}}}},
                {"sshPublicKey": {"source": {"secret": {"secretName": "b"}},
                    "propagationMethod": {"qemuGuestAgent": {"users": ["root"]}}}},
                {"userPassword": {"source": {"secret": {"secretName": "pw"}},
                    "propagationMethod": {"qemuGuestAgent": {}}}},
                {"sshPublicKey": {"source": {"secret": {"secretName": "c"}},
                    "propagationMethod": {"noCloud": {}}}},
            ]),
            json!([{"name": "ci", "cloudInitNoCloud": {"userData": "x"}}]),
        );
        assert!(messages(&s).is_empty(), "{:?}", messages(&s));
        let agent = agent_credentials(&s);
        assert_eq!(
            agent.ssh_keys,
            vec![
                ("root".to_string(), vec!["a".to_string(), "b".to_string()]),
                ("ops".to_string(), vec!["a".to_string()]),
            ]
        );
        assert_eq!(agent.password_secrets, vec!["pw"]);
        assert_eq!(agent.secret_names(), vec!["a", "b", "pw"]);
        assert_eq!(
            cloud_init_key_secrets(&s, CloudInitSeed::NoCloud),
            vec!["c"]
        );
        assert!(cloud_init_key_secrets(&s, CloudInitSeed::ConfigDrive).is_empty());
    }

    #[test]
    fn upstream_rules_and_wording() {
        let s = spec(
            json!([
                {"sshPublicKey": {"source": {},
                    "propagationMethod": {"qemuGuestAgent": {"users": []}, "configDrive": {}}}},
                {"userPassword": {"source": {"secret": {"secretName": "p"}}, "propagationMethod": {}}},
                {},
                {"sshPublicKey": {"source": {"secret": {"secretName": "k"}},
                    "propagationMethod": {"noCloud": {}}}},
            ]),
            json!([]),
        );
        let c = "spec.accessCredentials";
        assert_eq!(
            messages(&s),
            vec![
                (format!("{c}[0].sshPublicKey.propagationMethod"), format!("{c}[0] requires a configDrive volume to exist when the configDrive propagationMethod is in use.")),
                (format!("{c}[0].sshPublicKey.propagationMethod.qemuGuestAgent.users"), format!("{c}[0] requires at least one user to be present in the users list")),
                (format!("{c}[0].sshPublicKey.source"), format!("{c}[0] must have exactly one source set")),
                (format!("{c}[0].sshPublicKey.propagationMethod"), format!("{c}[0] must have exactly one propagationMethod set")),
                (format!("{c}[1].userPassword.propagationMethod"), format!("{c}[1] must have exactly one propagationMethod set")),
                (format!("{c}[2]"), format!("{c}[2] must have exactly one access credential type set")),
                (format!("{c}[3].sshPublicKey.propagationMethod"), format!("{c}[3] requires a noCloud volume to exist when the noCloud propagationMethod is in use.")),
            ]
        );
    }

    #[test]
    fn secret_values_become_keys() {
        let keys = keys_of_secret([
            b"ssh-ed25519 AAAA one\n\n  ssh-rsa BBBB two  \n".as_slice(),
            b"ssh-ed25519 CCCC three".as_slice(),
        ]);
        assert_eq!(
            keys,
            [
                "ssh-ed25519 AAAA one",
                "ssh-rsa BBBB two",
                "ssh-ed25519 CCCC three"
            ]
        );
    }
}
