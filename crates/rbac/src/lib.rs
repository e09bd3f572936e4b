//! Kubernetes RBAC evaluation (see README.md).
//!
//! Everything here is a pure function of the RBAC objects handed in as JSON (the
//! `rbac.authorization.k8s.io/v1` Role, ClusterRole, RoleBinding and ClusterRoleBinding an
//! API server stores), so the answers match what kube-apiserver's RBAC authorizer would
//! give for the same objects: same matching rules, same "allowed by" reasons, same
//! escalation refusal text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod aggregate;
mod covers;
pub mod defaults;
mod policy;
mod quote;
mod rule;

pub use aggregate::aggregate;
pub use covers::{breakdown_rule, compact_rules, covers, escalation_message};
pub use policy::Policy;

/// The group kube-apiserver's privileged-group authorizer lets do anything, before RBAC is
/// even asked (so `system:masters` keeps working when RBAC objects are broken or missing).
pub const PRIVILEGED_GROUP: &str = "system:masters";

/// Who is asking: the authenticated identity, as `user.Info` in kube.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a resource request touches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    /// "" for cluster-scoped requests (and for lists across all namespaces).
    pub namespace: String,
    /// "" is the core (legacy) group.
    pub api_group: String,
    pub resource: String,
    /// "" when the request is for the resource itself.
    pub subresource: String,
    /// "" when the request names no object (create, list, watch, deletecollection).
    pub name: String,
}

/// One request to authorize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A request for an API resource (`/api/...`, `/apis/...`).
    Resource {
        verb: String,
        attrs: ResourceAttributes,
    },
    /// A request for any other path (`/healthz`, `/version`, `/apis` discovery).
    NonResource { verb: String, path: String },
}

impl Request {
    /// The namespace whose RoleBindings may grant this request; "" when only
    /// ClusterRoleBindings can (cluster-scoped and non-resource requests).
    pub fn namespace(&self) -> &str {
        match self {
            Request::Resource { attrs, .. } => &attrs.namespace,
            Request::NonResource { .. } => "",
        }
    }

    pub fn verb(&self) -> &str {
        match self {
            Request::Resource { verb, .. } | Request::NonResource { verb, .. } => verb,
        }
    }
}

/// One rule of a Role or ClusterRole, with the field names of the Kubernetes JSON.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

/// The answer to one request. Denials carry no reason (kube only explains denials with
/// role-resolution errors, which this crate does not produce: a missing role grants nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Like kube's: `RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to User "z"`.
    pub reason: String,
}

impl Decision {
    pub fn allow(reason: impl Into<String>) -> Decision {
        Decision {
            allowed: true,
            reason: reason.into(),
        }
    }

    pub fn deny() -> Decision {
        Decision::default()
    }
}
