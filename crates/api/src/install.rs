//! The install's KubeVirt custom resource (`kubevirt.io/v1` `KubeVirt`, upstream's
//! virt-operator object): where an administrator configures the cluster
//! (`spec.configuration`) and where clients see that the install is up
//! (`kubectl -n kubevirt wait kv kubevirt --for condition=Available`).
//!
//! Its CRD keeps `spec` and `status` as given ([`crate::crds::storage_only`]), so any
//! upstream KubeVirt object applies unchanged; the types here read the part kubevirt-rs
//! acts on (`spec.configuration.migrations`), which the CRD's schema types and admission
//! checks ([`validate_kubevirt`]). Write it back as JSON, never through these types: they
//! would drop the rest.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::admission::FieldError;
use crate::migration::MigrationConfiguration;

/// Namespace and name of the KubeVirt object an install creates (upstream's).
pub const NAMESPACE: &str = "kubevirt";
pub const NAME: &str = "kubevirt";

/// The version this build reports (`virtctl version`'s server, the KubeVirt status).
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"), "-kubevirt-rs");

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "KubeVirt",
    plural = "kubevirts",
    namespaced,
    status = "KubeVirtStatus",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<KubeVirtConfiguration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<MigrationConfiguration>,
}

/// The part of the status that says whether it is current ([`deployed_status`] writes it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_kube_virt_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl KubeVirt {
    /// `spec.configuration.migrations`, if set.
    pub fn migrations(&self) -> Option<&MigrationConfiguration> {
        self.spec.configuration.as_ref()?.migrations.as_ref()
    }
}

/// What a KubeVirt object may not say, of the part kubevirt-rs reads (its type, decoding,
/// already refuses wrong types and out-of-range numbers with their paths).
pub fn validate_kubevirt(kv: &KubeVirt) -> Vec<FieldError> {
    kv.migrations()
        .map(|m| m.validate("spec.configuration.migrations"))
        .unwrap_or_default()
}

/// The install's KubeVirt object among `all` (upstream allows one per cluster and ignores
/// later ones): the oldest, by creation time then name.
pub fn active(all: &[KubeVirt]) -> Option<&KubeVirt> {
    all.iter().min_by(|a, b| {
        let key = |k: &KubeVirt| {
            (
                k.metadata.creation_timestamp.as_ref().map(|t| t.0),
                k.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    })
}

/// The cluster's migration configuration among all KubeVirt objects: the active one's
/// `spec.configuration.migrations` over upstream's defaults.
pub fn cluster_migrations(all: &[KubeVirt]) -> MigrationConfiguration {
    MigrationConfiguration::resolved(active(all).and_then(KubeVirt::migrations))
}

/// A KubeVirt object with an empty spec, as an install creates it.
pub fn initial_object() -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {},
    })
}

/// Whether `kv`'s status says Deployed for its current generation at `version`.
pub fn deployed(kv: &KubeVirt, version: &str) -> bool {
    kv.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Deployed")
            && s.observed_kube_virt_version.as_deref() == Some(version)
            && s.observed_generation == kv.metadata.generation
    })
}

/// The status of an install whose components run (virt-operator's `Deployed`, with its
/// conditions and wording), as a merge patch for the object at `generation`. `now` is an
/// RFC 3339 time.
pub fn deployed_status(version: &str, generation: Option<i64>, now: &str) -> Value {
    let message = "All components are ready.";
    let condition = |kind: &str, status: &str| {
        json!({
            "type": kind,
            "status": status,
            "reason": "AllComponentsReady",
            "message": message,
            "lastProbeTime": now,
            "lastTransitionTime": now,
        })
    };
    json!({"status": {
        "phase": "Deployed",
        "conditions": [
            condition("Available", "True"),
            condition("Progressing", "False"),
            condition("Degraded", "False"),
        ],
        "operatorVersion": version,
        "observedKubeVirtVersion": version,
        "targetKubeVirtVersion": version,
        "observedGeneration": generation,
        "defaultArchitecture": crate::defaults::DEFAULT_ARCHITECTURE,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_migrations_of_an_upstream_object_and_ignores_the_rest() {
        let kv: KubeVirt = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
            "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
            "spec": {
                "certificateRotateStrategy": {},
                "configuration": {
                    "developerConfiguration": {"featureGates": ["Snapshot"]},
                    "migrations": {"bandwidthPerMigration": "64Mi", "parallelMigrationsPerCluster": 3,
                                   "completionTimeoutPerGiB": 20, "allowPostCopy": true}
                },
                "workloadUpdateStrategy": {"workloadUpdateMethods": ["LiveMigrate"]}
            },
            "status": {"phase": "Deployed"}
        }))
        .unwrap();
        let m = kv.migrations().unwrap();
        assert_eq!(
            m.bandwidth_per_migration.as_ref().unwrap().to_bytes(),
            64 << 20
        );
        assert_eq!(m.parallel_migrations_per_cluster, Some(3));
        assert_eq!(m.completion_timeout_per_gib, Some(20));
        assert_eq!(m.allow_post_copy, Some(true));
        assert_eq!(m.allow_auto_converge, None);
    }

    #[test]
    fn the_oldest_object_is_the_install_s() {
        let kv = |name: &str, t: &str| -> KubeVirt {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "kubevirt", "creationTimestamp": t},
                "spec": {}
            }))
            .unwrap()
        };
        let all = [
            kv("second", "2026-01-02T00:00:00Z"),
            kv("first", "2026-01-01T00:00:00Z"),
        ];
        assert_eq!(
            active(&all).unwrap().metadata.name.as_deref(),
            Some("first")
        );
        assert!(active(&[]).is_none());
        assert_eq!(
            cluster_migrations(&[]),
            MigrationConfiguration::upstream_defaults()
        );
    }

    #[test]
    fn deployed_status_has_virt_operator_s_conditions() {
        let s = deployed_status("0.1.0", Some(3), "2026-12-05T00:00:00Z");
        assert_eq!(s["status"]["phase"], "Deployed");
        let conds = s["status"]["conditions"].as_array().unwrap();
        let status_of = |t: &str| {
            conds
                .iter()
                .find(|c| c["type"] == t)
                .map(|c| c["status"].as_str().unwrap().to_string())
        };
        assert_eq!(status_of("Available").as_deref(), Some("True"));
        assert_eq!(status_of("Progressing").as_deref(), Some("False"));
        assert_eq!(status_of("Degraded").as_deref(), Some("False"));
        assert_eq!(conds[0]["message"], "All components are ready.");
        assert_eq!(s["status"]["observedGeneration"], 3);

        let mut kv: KubeVirt = serde_json::from_value(json!({
            "metadata": {"name": "kubevirt", "namespace": "kubevirt", "generation": 3},
            "spec": {}
        }))
        .unwrap();
        assert!(!deployed(&kv, "0.1.0"));
        kv.status = serde_json::from_value(s["status"].clone()).unwrap();
        assert!(deployed(&kv, "0.1.0"));
        assert!(!deployed(&kv, "0.2.0"), "another version");
        kv.metadata.generation = Some(4);
        assert!(!deployed(&kv, "0.1.0"), "a changed spec");
    }
}
