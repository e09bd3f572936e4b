//! Which quota names an object kind is tracked under, and how much of each it uses: one
//! evaluator per kind, as in upstream's quota registry.

use std::time::SystemTime;

use serde_json::Value;

use crate::resources::{one, ResourceList};
use crate::scope::ScopeSelector;
use crate::{pod, pvc, service};

/// Core kinds whose object count also has a short legacy name (`configmaps` besides
/// `count/configmaps`).
const LEGACY_COUNT_ALIASES: &[&str] = &[
    "configmaps",
    "resourcequotas",
    "replicationcontrollers",
    "secrets",
];

/// The object-count quota name of a resource: `count/<resource>` for the core group,
/// `count/<resource>.<group>` otherwise.
pub fn object_count_name(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

/// The quota evaluator for one group/resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Evaluator {
    Pods,
    Services,
    PersistentVolumeClaims,
    /// Everything else: one per object, under these names.
    ObjectCount {
        group: String,
        resource: String,
        names: Vec<String>,
    },
}

impl Evaluator {
    pub(crate) fn for_resource(group: &str, resource: &str) -> Self {
        match (group, resource) {
            ("", "pods") => Self::Pods,
            ("", "services") => Self::Services,
            ("", "persistentvolumeclaims") => Self::PersistentVolumeClaims,
            _ => {
                let mut names = vec![object_count_name(group, resource)];
                if group.is_empty() && LEGACY_COUNT_ALIASES.contains(&resource) {
                    names.push(resource.to_string());
                }
                Self::ObjectCount {
                    group: group.to_string(),
                    resource: resource.to_string(),
                    names,
                }
            }
        }
    }

    /// The group and resource this evaluator counts.
    pub(crate) fn group_resource(&self) -> (&str, &str) {
        match self {
            Self::Pods => ("", "pods"),
            Self::Services => ("", "services"),
            Self::PersistentVolumeClaims => ("", "persistentvolumeclaims"),
            Self::ObjectCount {
                group, resource, ..
            } => (group, resource),
        }
    }

    /// The names among a quota's `input` names that this evaluator tracks (sorted, deduplicated).
    pub(crate) fn matching_resources(&self, input: &[String]) -> Vec<String> {
        let fixed = |known: &[&str]| {
            let mut v: Vec<String> = input
                .iter()
                .filter(|n| known.contains(&n.as_str()))
                .cloned()
                .collect();
            v.sort();
            v.dedup();
            v
        };
        match self {
            Self::Pods => pod::matching_resources(input),
            Self::Services => fixed(service::SERVICE_RESOURCES),
            Self::PersistentVolumeClaims => pvc::matching_resources(input),
            Self::ObjectCount { names, .. } => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                fixed(&names)
            }
        }
    }

    /// What one object uses. `now` decides whether a deleted pod's grace period has run out.
    pub(crate) fn usage(&self, object: &Value, now: SystemTime) -> ResourceList {
        match self {
            Self::Pods => pod::usage(object, now),
            Self::Services => service::usage(object),
            Self::PersistentVolumeClaims => pvc::usage(object),
            Self::ObjectCount { names, .. } => names.iter().map(|n| (n.clone(), one())).collect(),
        }
    }

    /// Whether the object falls in a scope; kinds without scopes never do, so a scoped quota
    /// tracks nothing of theirs.
    pub(crate) fn matches_scope(&self, selector: &ScopeSelector, object: &Value) -> bool {
        match self {
            Self::Pods => pod::matches_scope(selector, object),
            Self::PersistentVolumeClaims => pvc::matches_scope(selector, object),
            Self::Services | Self::ObjectCount { .. } => false,
        }
    }

    /// Whether the object falls in every scope of a quota (no scopes: everything does).
    pub(crate) fn matches_scopes(&self, selectors: &[ScopeSelector], object: &Value) -> bool {
        selectors.iter().all(|s| self.matches_scope(s, object))
    }

    /// Whether an update can change usage. Pods cannot (their resources are immutable outside
    /// the `resize` subresource), and an object count only changes on create.
    pub(crate) fn tracks_updates(&self) -> bool {
        matches!(self, Self::Services | Self::PersistentVolumeClaims)
    }

    /// Requirements on the object itself before a quota limiting `required` admits it.
    pub(crate) fn constraints(&self, required: &[String], object: &Value) -> Result<(), String> {
        match self {
            Self::Pods => pod::constraints(required, object),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_counts() {
        let now = SystemTime::UNIX_EPOCH;
        let vm = Evaluator::for_resource("kubevirt.io", "virtualmachines");
        let got = vm.usage(&json!({}), now);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["count/virtualmachines.kubevirt.io"]
        );
        let cm = Evaluator::for_resource("", "configmaps");
        let got = cm.usage(&json!({}), now);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["configmaps", "count/configmaps"]
        );
        assert_eq!(
            cm.matching_resources(&["configmaps".into(), "pods".into()]),
            ["configmaps"]
        );
    }
}
