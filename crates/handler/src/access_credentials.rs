//! Access credentials through the guest agent (`spec.accessCredentials` with
//! `propagationMethod.qemuGuestAgent`), kept in step with their Secrets as upstream's
//! launcher does: the node agent reads the named Secrets, hands the launcher each user's
//! complete authorized keys and passwords when they differ from what it last applied, when
//! the guest's agent connects again (a rebooted guest), or every 5 minutes (upstream's
//! forced resync), and reports the outcome as the VMI's
//! `AccessCredentialsSynchronized` condition and an event.
//!
//! Secret changes are found by reading the named Secrets again every [`POLL`]: the node
//! agent may `get` a named Secret but not list or watch them (upstream's launcher polls its
//! mounted Secret files the same way).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, Client, ResourceExt};
use kubevirt_api::access_credentials::{agent_credentials, keys_of_secret, AgentCredentials};
use kubevirt_api::v1::{
    ConditionStatus, VirtualMachineInstance, VirtualMachineInstanceCondition,
    VirtualMachineInstanceStatus,
};
use kubevirt_launcher::{AccessCredentialsRequest, AccessCredentialsResult, LauncherClient};
use kubevirt_reconcile::events::{EventRecorder, EventType};

/// How often the Secrets of a running VMI with agent credentials are read again.
pub const POLL: Duration = Duration::from_secs(10);
/// Credentials are applied again this often even when nothing changed (upstream's resync):
/// someone may have edited the guest's file by hand.
const RESYNC: Duration = Duration::from_secs(300);

pub const CONDITION: &str = "AccessCredentialsSynchronized";

/// What was last applied to each VMI (by uid), and when.
#[derive(Default)]
pub struct Applied(Mutex<HashMap<String, (AccessCredentialsRequest, Instant)>>);

impl Applied {
    pub fn forget(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    fn is_current(&self, uid: &str, req: &AccessCredentialsRequest) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .is_some_and(|(last, at)| last == req && at.elapsed() < RESYNC)
    }

    fn record(&self, uid: &str, req: AccessCredentialsRequest) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string(), (req, Instant::now()));
    }
}

/// What [`sync`] works on.
pub struct Target<'a> {
    pub vmi: &'a VirtualMachineInstance,
    pub launcher: &'a LauncherClient,
    /// Whether the launcher sees the guest agent: until it does, nothing is tried (a guest
    /// still booting is not a failure worth a warning).
    pub agent_connected: bool,
}

/// Brings a running VMI's agent credentials up to date, setting the condition in `status`.
/// Returns when to look again (None: the VMI has no agent credentials).
pub async fn sync(
    client: &Client,
    recorder: &EventRecorder,
    applied: &Applied,
    target: Target<'_>,
    status: &mut VirtualMachineInstanceStatus,
) -> Option<Duration> {
    let Target {
        vmi,
        launcher,
        agent_connected,
    } = target;
    let wanted = agent_credentials(&vmi.spec);
    if wanted.is_empty() {
        return None;
    }
    let uid = vmi.uid().unwrap_or_default();
    if !agent_connected {
        // A guest that reboots loses what lived only in memory: apply again once its
        // agent is back.
        applied.forget(&uid);
        return Some(POLL);
    }
    let result = match request(client, &vmi.namespace().unwrap_or_default(), &wanted).await {
        Err(message) => AccessCredentialsResult {
            succeeded: false,
            message,
        },
        Ok(req) if applied.is_current(&uid, &req) => return Some(POLL),
        Ok(req) => match launcher.apply_access_credentials(&req).await {
            Ok(r) => {
                if r.succeeded {
                    applied.record(&uid, req);
                }
                r
            }
            Err(e) => AccessCredentialsResult {
                succeeded: false,
                message: e.to_string(),
            },
        },
    };
    if !result.succeeded {
        // Tried again at the next poll.
        applied.forget(&uid);
    }
    report(recorder, vmi, status, &result).await;
    Some(POLL)
}

/// The request for `wanted`, read from its Secrets; `Err` says which Secret is missing.
async fn request(
    client: &Client,
    namespace: &str,
    wanted: &AgentCredentials,
) -> Result<AccessCredentialsRequest, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut data: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for name in wanted.secret_names() {
        let secret = api
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading secret {namespace}/{name}: {e}"))?
            .ok_or_else(|| format!("secret \"{name}\" not found"))?;
        let values = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        data.insert(name, values);
    }
    Ok(build(wanted, &data))
}

/// Each user's keys from all their Secrets, in order; each password Secret maps user names
/// to passwords (blank values skipped, as upstream).
fn build(
    wanted: &AgentCredentials,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> AccessCredentialsRequest {
    let mut req = AccessCredentialsRequest::default();
    for (user, names) in &wanted.ssh_keys {
        let keys = names
            .iter()
            .filter_map(|n| secrets.get(n))
            .flat_map(|d| keys_of_secret(d.values().map(Vec::as_slice)))
            .collect();
        req.authorized_keys.insert(user.clone(), keys);
    }
    for name in &wanted.password_secrets {
        for (user, value) in secrets.get(name).into_iter().flatten() {
            let password = String::from_utf8_lossy(value).trim().to_string();
            if !password.is_empty() {
                req.passwords.insert(user.clone(), password);
            }
        }
    }
    req
}

/// Sets the condition as upstream's virt-handler does (status True or False, the message,
/// no reason) and records an event when it changes.
async fn report(
    recorder: &EventRecorder,
    vmi: &VirtualMachineInstance,
    status: &mut VirtualMachineInstanceStatus,
    result: &AccessCredentialsResult,
) {
    let (cond_status, message) = if result.succeeded {
        (ConditionStatus::True, None)
    } else {
        (ConditionStatus::False, Some(result.message.clone()))
    };
    let unchanged = vmi
        .condition(CONDITION)
        .is_some_and(|c| c.status == cond_status && c.message == message);
    if unchanged {
        return;
    }
    status.remove_condition(CONDITION);
    status.set_condition(
        VirtualMachineInstanceCondition {
            type_: CONDITION.into(),
            status: cond_status,
            message,
            ..Default::default()
        },
        Time(jiff::Timestamp::now()),
    );
    if result.succeeded {
        recorder
            .publish(
                vmi,
                EventType::Normal,
                "AccessCredentialsSyncSuccess",
                "Access credentials sync successful.",
            )
            .await;
    } else {
        recorder
            .publish(
                vmi,
                EventType::Warning,
                "AccessCredentialsSyncFailed",
                &format!("Access credentials sync failed: {}", result.message),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_from_secrets() {
        let wanted = AgentCredentials {
            ssh_keys: vec![
                ("root".into(), vec!["k1".into(), "k2".into()]),
                ("ops".into(), vec!["k2".into(), "gone".into()]),
            ],
            password_secrets: vec!["pw".into()],
        };
        let secret = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>()
        };
        let secrets = BTreeMap::from([
            ("k1".to_string(), secret(&[("key", "ssh-ed25519 A one\n")])),
            (
                "k2".to_string(),
                secret(&[("a", "ssh-ed25519 B two"), ("b", "ssh-rsa C three\n")]),
            ),
            (
                "pw".to_string(),
                secret(&[("root", "s3cret\n"), ("nobody", "  ")]),
            ),
        ]);
        let req = build(&wanted, &secrets);
        assert_eq!(
            req.authorized_keys["root"],
            ["ssh-ed25519 A one", "ssh-ed25519 B two", "ssh-rsa C three"]
        );
        assert_eq!(
            req.authorized_keys["ops"],
            ["ssh-ed25519 B two", "ssh-rsa C three"]
        );
        assert_eq!(
            req.passwords,
            BTreeMap::from([("root".to_string(), "s3cret".to_string())])
        );
        assert!(
            !format!("{req:?}").contains("s3cret"),
            "passwords stay out of Debug output"
        );
    }

    #[test]
    fn applied_until_changed_or_stale() {
        let applied = Applied::default();
        let mut req = AccessCredentialsRequest::default();
        req.passwords.insert("root".into(), "a".into());
        assert!(!applied.is_current("u", &req));
        applied.record("u", req.clone());
        assert!(applied.is_current("u", &req));
        let mut changed = req.clone();
        changed.passwords.insert("root".into(), "b".into());
        assert!(!applied.is_current("u", &changed));
        applied.forget("u");
        assert!(!applied.is_current("u", &req));
    }
}
