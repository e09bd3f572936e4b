//! The resource registry: which kinds the server serves, as data. Built-in core kinds plus
//! one entry per served version of every CustomResourceDefinition in the store.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};

/// A printer column (`additionalPrinterColumns`).
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub source: ColumnSource,
}

#[derive(Debug, Clone)]
pub enum ColumnSource {
    /// A kubectl-style JSONPath (`.status.phase`).
    Path(String),
    /// Human age of `metadata.creationTimestamp`.
    Age,
    /// Number of keys in `data` plus `binaryData`.
    DataCount,
    /// An Event's last occurrence (series, lastTimestamp, eventTime or firstTimestamp), as an age.
    EventLastSeen,
    /// An Event's object as `kind/name`.
    EventObject,
    /// A pod's ready containers over all (`1/1`).
    PodReady,
    /// What `kubectl get pods` shows as STATUS: Terminating, a container's waiting or
    /// terminated reason, the pod's reason, else its phase.
    PodStatus,
    /// The sum of the pod's container restart counts.
    PodRestarts,
    /// A binding's `roleRef` as `Kind/name` (`ClusterRole/view`).
    RoleRef,
    /// A ResourceQuota's `used/hard` pairs for `requests.*`/counts (`pods: 1/10, ...`), or
    /// for `limits.*` when the flag is set, as `kubectl get quota` prints them.
    QuotaUsage { limits: bool },
    /// Access modes at this JSON pointer, abbreviated as kubectl does (`RWO,ROX`).
    AccessModes(&'static str),
    /// A PersistentVolume's `claimRef` as `namespace/name`.
    ClaimRef,
    /// The string at this path, `<unset>` when absent.
    OrUnset(&'static str),
    /// The boolean at this path, `false` when absent.
    OrFalse(&'static str),
}

/// One served resource in one version.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// `metadata.generation` bumps only on spec changes (true for CRs and most kinds).
    pub columns: Vec<Column>,
    /// OpenAPI v3 schema of the whole object (CRD `openAPIV3Schema`), if known.
    pub schema: Option<Value>,
    /// The k8s-openapi definition name for built-ins (`io.k8s.api.core.v1.ConfigMap`).
    pub builtin_definition: Option<String>,
    /// Whether unknown fields are pruned/rejected against `schema`.
    pub structural: bool,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The OpenAPI definition name (`io.kubevirt.v1.VirtualMachine`).
    pub fn definition_name(&self) -> String {
        if let Some(d) = &self.builtin_definition {
            return d.clone();
        }
        let rev: Vec<&str> = self.group.split('.').rev().collect();
        format!("{}.{}.{}", rev.join("."), self.version, self.kind)
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// The API group of Roles, ClusterRoles and their bindings.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn created_at() -> Column {
    col(
        "Created At",
        "date",
        path(".metadata.creationTimestamp"),
        0,
        "Creation time",
    )
}

fn col(name: &str, type_: &str, source: ColumnSource, priority: i64, description: &str) -> Column {
    Column {
        name: name.into(),
        type_: type_.into(),
        format: if name == "Name" {
            "name".into()
        } else {
            String::new()
        },
        description: description.into(),
        priority,
        source,
    }
}

fn age() -> Column {
    col(
        "Age",
        "date",
        ColumnSource::Age,
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    )
}

fn path(p: &str) -> ColumnSource {
    ColumnSource::Path(p.into())
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    short: &[&str],
    namespaced: bool,
    status: bool,
    definition: &str,
    columns: Vec<Column>,
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        namespaced,
        status_subresource: status,
        columns,
        schema: None,
        builtin_definition: Some(definition.into()),
        structural: false,
    }
}

/// The core kinds the system needs.
pub fn builtins() -> Vec<ResourceDef> {
    vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            &["ns"],
            false,
            true,
            "io.k8s.api.core.v1.Namespace",
            vec![
                col(
                    "Status",
                    "string",
                    path(".status.phase"),
                    0,
                    "The status of the namespace",
                ),
                age(),
            ],
        ),
        builtin(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            &["cm"],
            true,
            false,
            "io.k8s.api.core.v1.ConfigMap",
            vec![
                col(
                    "Data",
                    "string",
                    ColumnSource::DataCount,
                    0,
                    "Number of keys",
                ),
                age(),
            ],
        ),
        builtin(
            "",
            "v1",
            "Secret",
            "secrets",
            &[],
            true,
            false,
            "io.k8s.api.core.v1.Secret",
            vec![
                col("Type", "string", path(".type"), 0, "The type of the secret"),
                col(
                    "Data",
                    "string",
                    ColumnSource::DataCount,
                    0,
                    "Number of keys",
                ),
                age(),
            ],
        ),
        builtin(
            "",
            "v1",
            "Event",
            "events",
            &["ev"],
            true,
            false,
            "io.k8s.api.core.v1.Event",
            vec![
                col(
                    "Last Seen",
                    "string",
                    ColumnSource::EventLastSeen,
                    0,
                    "Time of the last occurrence",
                ),
                col("Type", "string", path(".type"), 0, "Type of this event"),
                col(
                    "Reason",
                    "string",
                    path(".reason"),
                    0,
                    "Reason for the transition",
                ),
                col(
                    "Object",
                    "string",
                    ColumnSource::EventObject,
                    0,
                    "The object this event is about",
                ),
                col(
                    "Message",
                    "string",
                    path(".message"),
                    0,
                    "A human-readable description",
                ),
            ],
        ),
        builtin(
            "",
            "v1",
            "Node",
            "nodes",
            &["no"],
            false,
            true,
            "io.k8s.api.core.v1.Node",
            vec![
                col(
                    "Status",
                    "string",
                    path(".status.conditions[?(@.type=='Ready')].status"),
                    0,
                    "Ready condition",
                ),
                age(),
                col(
                    "Version",
                    "string",
                    path(".status.nodeInfo.kubeletVersion"),
                    0,
                    "Kubelet version",
                ),
            ],
        ),
        builtin(
            "",
            "v1",
            "Pod",
            "pods",
            &["po"],
            true,
            true,
            "io.k8s.api.core.v1.Pod",
            vec![
                col(
                    "Ready",
                    "string",
                    ColumnSource::PodReady,
                    0,
                    "The aggregate readiness state of this pod for accepting traffic.",
                ),
                col(
                    "Status",
                    "string",
                    ColumnSource::PodStatus,
                    0,
                    "The aggregate status of the containers in this pod.",
                ),
                col(
                    "Restarts",
                    "string",
                    ColumnSource::PodRestarts,
                    0,
                    "The number of times the containers in this pod have been restarted.",
                ),
                age(),
                col(
                    "IP",
                    "string",
                    path(".status.podIP"),
                    1,
                    "The IP address assigned to the pod",
                ),
                col(
                    "Node",
                    "string",
                    path(".spec.nodeName"),
                    1,
                    "The name of the node assigned to the pod",
                ),
            ],
        ),
        builtin(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            &["pvc"],
            true,
            true,
            "io.k8s.api.core.v1.PersistentVolumeClaim",
            vec![
                col("Status", "string", path(".status.phase"), 0, "Phase"),
                col(
                    "Volume",
                    "string",
                    path(".spec.volumeName"),
                    0,
                    "Bound volume",
                ),
                col(
                    "Capacity",
                    "string",
                    path(".status.capacity.storage"),
                    0,
                    "Capacity",
                ),
                col(
                    "Access Modes",
                    "string",
                    ColumnSource::AccessModes("/status/accessModes"),
                    0,
                    "Access modes",
                ),
                col(
                    "StorageClass",
                    "string",
                    path(".spec.storageClassName"),
                    0,
                    "StorageClass",
                ),
                col(
                    "VolumeAttributesClass",
                    "string",
                    ColumnSource::OrUnset(".spec.volumeAttributesClassName"),
                    0,
                    "VolumeAttributesClass",
                ),
                age(),
                col(
                    "VolumeMode",
                    "string",
                    path(".spec.volumeMode"),
                    1,
                    "VolumeMode",
                ),
            ],
        ),
        builtin(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            &["pv"],
            false,
            true,
            "io.k8s.api.core.v1.PersistentVolume",
            vec![
                col(
                    "Capacity",
                    "string",
                    path(".spec.capacity.storage"),
                    0,
                    "Capacity",
                ),
                col(
                    "Access Modes",
                    "string",
                    ColumnSource::AccessModes("/spec/accessModes"),
                    0,
                    "Access modes",
                ),
                col(
                    "Reclaim Policy",
                    "string",
                    path(".spec.persistentVolumeReclaimPolicy"),
                    0,
                    "Reclaim policy",
                ),
                col("Status", "string", path(".status.phase"), 0, "Phase"),
                col("Claim", "string", ColumnSource::ClaimRef, 0, "Claim"),
                col(
                    "StorageClass",
                    "string",
                    path(".spec.storageClassName"),
                    0,
                    "StorageClass",
                ),
                col(
                    "VolumeAttributesClass",
                    "string",
                    ColumnSource::OrUnset(".spec.volumeAttributesClassName"),
                    0,
                    "VolumeAttributesClass",
                ),
                col("Reason", "string", path(".status.reason"), 0, "Reason"),
                age(),
                col(
                    "VolumeMode",
                    "string",
                    path(".spec.volumeMode"),
                    1,
                    "VolumeMode",
                ),
            ],
        ),
        builtin(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            &["sc"],
            false,
            false,
            "io.k8s.api.storage.v1.StorageClass",
            vec![
                col(
                    "Provisioner",
                    "string",
                    path(".provisioner"),
                    0,
                    "Provisioner",
                ),
                col(
                    "ReclaimPolicy",
                    "string",
                    path(".reclaimPolicy"),
                    0,
                    "ReclaimPolicy",
                ),
                col(
                    "VolumeBindingMode",
                    "string",
                    path(".volumeBindingMode"),
                    0,
                    "VolumeBindingMode",
                ),
                col(
                    "AllowVolumeExpansion",
                    "string",
                    ColumnSource::OrFalse(".allowVolumeExpansion"),
                    0,
                    "AllowVolumeExpansion",
                ),
                age(),
            ],
        ),
        builtin(
            "",
            "v1",
            "Service",
            "services",
            &["svc"],
            true,
            true,
            "io.k8s.api.core.v1.Service",
            vec![
                col("Type", "string", path(".spec.type"), 0, "Service type"),
                col(
                    "Cluster-IP",
                    "string",
                    path(".spec.clusterIP"),
                    0,
                    "Cluster IP",
                ),
                age(),
            ],
        ),
        builtin(
            "",
            "v1",
            "Endpoints",
            "endpoints",
            &["ep"],
            true,
            false,
            "io.k8s.api.core.v1.Endpoints",
            vec![age()],
        ),
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            &["sa"],
            true,
            false,
            "io.k8s.api.core.v1.ServiceAccount",
            vec![age()],
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            &["ev"],
            true,
            false,
            "io.k8s.api.events.v1.Event",
            vec![
                col("Type", "string", path(".type"), 0, "Type of this event"),
                col("Reason", "string", path(".reason"), 0, "Reason"),
                col("Note", "string", path(".note"), 0, "Note"),
                age(),
            ],
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            &[],
            true,
            false,
            "io.k8s.api.coordination.v1.Lease",
            vec![
                col(
                    "Holder",
                    "string",
                    path(".spec.holderIdentity"),
                    0,
                    "Holder",
                ),
                age(),
            ],
        ),
        builtin(
            "",
            "v1",
            "ResourceQuota",
            "resourcequotas",
            &["quota"],
            true,
            true,
            "io.k8s.api.core.v1.ResourceQuota",
            vec![
                age(),
                col(
                    "Request",
                    "string",
                    ColumnSource::QuotaUsage { limits: false },
                    0,
                    "Used and hard quota of requests and object counts",
                ),
                col(
                    "Limit",
                    "string",
                    ColumnSource::QuotaUsage { limits: true },
                    0,
                    "Used and hard quota of limits",
                ),
            ],
        ),
        builtin(
            "",
            "v1",
            "LimitRange",
            "limitranges",
            &["limits"],
            true,
            false,
            "io.k8s.api.core.v1.LimitRange",
            vec![created_at()],
        ),
        builtin(
            RBAC_GROUP,
            "v1",
            "ClusterRole",
            "clusterroles",
            &[],
            false,
            false,
            "io.k8s.api.rbac.v1.ClusterRole",
            vec![created_at()],
        ),
        builtin(
            RBAC_GROUP,
            "v1",
            "Role",
            "roles",
            &[],
            true,
            false,
            "io.k8s.api.rbac.v1.Role",
            vec![created_at()],
        ),
        builtin(
            RBAC_GROUP,
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            &[],
            false,
            false,
            "io.k8s.api.rbac.v1.ClusterRoleBinding",
            vec![
                col("Role", "string", ColumnSource::RoleRef, 0, "The role bound"),
                age(),
            ],
        ),
        builtin(
            RBAC_GROUP,
            "v1",
            "RoleBinding",
            "rolebindings",
            &[],
            true,
            false,
            "io.k8s.api.rbac.v1.RoleBinding",
            vec![
                col("Role", "string", ColumnSource::RoleRef, 0, "The role bound"),
                age(),
            ],
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            &["crd", "crds"],
            false,
            true,
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
            vec![created_at()],
        ),
    ]
}

/// Resource definitions (one per served version) from a CRD object.
pub fn from_crd(crd: &Value) -> Vec<ResourceDef> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    if kind.is_empty() || plural.is_empty() || group.is_empty() {
        return Vec::new();
    }
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let short_names = strings(&names["shortNames"]);
    let categories = strings(&names["categories"]);
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut out = Vec::new();
    for ver in spec["versions"].as_array().into_iter().flatten() {
        if ver["served"].as_bool() == Some(false) {
            continue;
        }
        let Some(version) = ver["name"].as_str() else {
            continue;
        };
        let mut columns = Vec::new();
        let cols = ver["additionalPrinterColumns"].as_array();
        for c in cols.into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            let jp = c["jsonPath"].as_str().unwrap_or_default();
            if name.is_empty() || jp.is_empty() {
                continue;
            }
            columns.push(Column {
                name: name.into(),
                type_: c["type"].as_str().unwrap_or("string").into(),
                format: c["format"].as_str().unwrap_or_default().into(),
                description: c["description"].as_str().unwrap_or_default().into(),
                priority: c["priority"].as_i64().unwrap_or(0),
                source: ColumnSource::Path(jp.into()),
            });
        }
        if cols.is_none() {
            columns.push(age());
        }
        let schema = ver["schema"]["openAPIV3Schema"].clone();
        let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
        out.push(ResourceDef {
            group: group.clone(),
            version: version.into(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            short_names: short_names.clone(),
            categories: categories.clone(),
            namespaced,
            status_subresource: ver["subresources"]["status"].is_object(),
            columns,
            structural: !schema.is_null() && !preserve,
            schema: if schema.is_null() { None } else { Some(schema) },
            builtin_definition: None,
        });
    }
    out
}

/// An API group/version registered by the embedder for discovery only (its handlers come
/// from `extra_routes`), e.g. `subresources.kubevirt.io/v1`.
#[derive(Debug, Clone)]
pub struct ExtraApi {
    pub group: String,
    pub version: String,
    /// `APIResource` objects for the resource list (name, namespaced, kind, verbs).
    pub resources: Vec<Value>,
}

/// The live registry. Cheap to read; replaced whole on CRD changes.
#[derive(Default)]
pub struct Registry {
    defs: RwLock<Arc<Vec<Arc<ResourceDef>>>>,
    extra: RwLock<Vec<ExtraApi>>,
}

impl Registry {
    pub fn new(extra: Vec<ExtraApi>) -> Registry {
        let r = Registry::default();
        *r.extra.write().unwrap_or_else(|p| p.into_inner()) = extra;
        r.rebuild(std::iter::empty());
        r
    }

    pub fn rebuild<'a>(&self, crds: impl Iterator<Item = &'a Value>) {
        let mut defs: Vec<Arc<ResourceDef>> = builtins().into_iter().map(Arc::new).collect();
        for crd in crds {
            for d in from_crd(crd) {
                if defs
                    .iter()
                    .any(|e| e.group == d.group && e.version == d.version && e.plural == d.plural)
                {
                    continue;
                }
                defs.push(Arc::new(d));
            }
        }
        *self.defs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(defs);
    }

    pub fn all(&self) -> Arc<Vec<Arc<ResourceDef>>> {
        self.defs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn extra(&self) -> Vec<ExtraApi> {
        self.extra.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.all()
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    /// Every served version of a group+plural (for GC and namespace cleanup).
    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.all()
            .iter()
            .find(|d| d.api_version() == api_version && d.kind == kind)
            .cloned()
    }

    /// Groups in discovery order: core first, then by name; versions as registered.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in self.all().iter() {
            let vs = g.entry(d.group.clone()).or_default();
            if !vs.contains(&d.version) {
                vs.push(d.version.clone());
            }
        }
        for e in self.extra() {
            let vs = g.entry(e.group.clone()).or_default();
            if !vs.contains(&e.version) {
                vs.push(e.version.clone());
            }
        }
        g
    }

    /// Storage-distinct resources (one per group+plural).
    pub fn storage_resources(&self) -> Vec<Arc<ResourceDef>> {
        let mut seen = std::collections::HashSet::new();
        self.all()
            .iter()
            .filter(|d| seen.insert((d.group.clone(), d.plural.clone())))
            .cloned()
            .collect()
    }
}

/// `APIResource` JSON for discovery.
pub fn api_resource(d: &ResourceDef) -> Value {
    let mut r = json!({
        "name": d.plural,
        "singularName": d.singular,
        "namespaced": d.namespaced,
        "kind": d.kind,
        "verbs": d.verbs(),
    });
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
    r
}
