//! `cdi.kubevirt.io/v1beta1`: the DataVolume, CDI's "a PVC and where its data comes from".
//!
//! Field names, casing, phases and condition types are CDI's, so manifests written for CDI
//! apply unchanged. Only the kinds this project serves are here; the rules that decide what a
//! DataVolume needs (its claim, its source) are beside the types so the controller, admission
//! and the VM controller share them.

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimSpec, TypedLocalObjectReference, TypedObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::admission::{FieldError, FieldErrorKind};

/// API group of CDI's kinds.
pub const GROUP: &str = "cdi.kubevirt.io";
/// `group/version` of the DataVolume.
pub const API_VERSION: &str = "cdi.kubevirt.io/v1beta1";

/// Annotations CDI puts on the PVC it creates for a DataVolume (and reads back).
pub mod annotations {
    /// The PVC is being populated by an import from this endpoint.
    pub const IMPORT_ENDPOINT: &str = "cdi.kubevirt.io/storage.import.endpoint";
    /// The kind of import source (`http`, `registry`, `blank`, ...).
    pub const IMPORT_SOURCE: &str = "cdi.kubevirt.io/storage.import.source";
    /// The phase of the pod (or in-process job) filling the PVC.
    pub const POD_PHASE: &str = "cdi.kubevirt.io/storage.pod.phase";
    /// How many times the filling job was restarted.
    pub const POD_RESTARTS: &str = "cdi.kubevirt.io/storage.pod.restarts";
    /// The PVC is ready for an upload.
    pub const UPLOAD_REQUEST: &str = "cdi.kubevirt.io/storage.upload.target";
    /// The PVC is the target of a clone from `<namespace>/<name>`.
    pub const CLONE_REQUEST: &str = "k8s.io/CloneRequest";
    /// The content type (`kubevirt`).
    pub const CONTENT_TYPE: &str = "cdi.kubevirt.io/storage.contentType";
    /// On a DataVolume whose claim was filled by someone else (a VM restore): the claim is
    /// adopted as it is, nothing is imported.
    pub const PRE_POPULATED: &str = "cdi.kubevirt.io/storage.prePopulated";
    /// Set on the PVC once its data is in place.
    pub const POPULATED_FOR: &str = "cdi.kubevirt.io/storage.populatedFor";
}

/// A PVC and the data to fill it with.
#[skip_serializing_none]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cdi.kubevirt.io",
    version = "v1beta1",
    kind = "DataVolume",
    doc = "DataVolume is an abstraction on top of PersistentVolumeClaims to allow easy population of those PersistentVolumeClaims with relation to VirtualMachines",
    plural = "datavolumes",
    singular = "datavolume",
    namespaced,
    status = "DataVolumeStatus",
    shortname = "dv",
    shortname = "dvs",
    category = "all",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Phase","type":"string","description":"The phase the data volume is in","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","description":"Transfer progress in percentage if known, N/A otherwise","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","description":"The number of times the transfer has been restarted.","jsonPath":".status.restartCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    pub source: Option<DataVolumeSource>,
    pub source_ref: Option<DataVolumeSourceRef>,
    /// The claim to create, in the PersistentVolumeClaim's own spec form.
    pub pvc: Option<PersistentVolumeClaimSpec>,
    /// The claim to create, with defaults filled in from the storage class.
    pub storage: Option<StorageSpec>,
    pub priority_class_name: Option<String>,
    pub service_account_name: Option<String>,
    /// `kubevirt` (a disk image, the default) or `archive` (a tar of files).
    pub content_type: Option<String>,
    pub checkpoints: Option<Vec<DataVolumeCheckpoint>>,
    pub final_checkpoint: Option<bool>,
    pub preallocation: Option<bool>,
}

/// The `storage` form of the claim: like a PVC spec, every field optional.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    pub access_modes: Option<Vec<String>>,
    pub selector: Option<LabelSelector>,
    pub resources: Option<VolumeResourceRequirements>,
    pub volume_name: Option<String>,
    pub storage_class_name: Option<String>,
    pub volume_mode: Option<String>,
    pub data_source: Option<TypedLocalObjectReference>,
    pub data_source_ref: Option<TypedObjectReference>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeCheckpoint {
    pub previous: String,
    pub current: String,
}

/// Where the data comes from: exactly one member is set.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    pub http: Option<DataVolumeSourceHttp>,
    pub s3: Option<DataVolumeSourceUrl>,
    pub gcs: Option<DataVolumeSourceUrl>,
    pub registry: Option<DataVolumeSourceRegistry>,
    pub pvc: Option<DataVolumeSourcePvc>,
    pub upload: Option<Empty>,
    pub blank: Option<Empty>,
    #[serde(default)]
    #[schemars(schema_with = "crate::v1::preserved_object")]
    pub imageio: Option<serde_json::Value>,
    #[serde(default)]
    #[schemars(schema_with = "crate::v1::preserved_object")]
    pub vddk: Option<serde_json::Value>,
    pub snapshot: Option<DataVolumeSourcePvc>,
}

/// `{}`: a source with no parameters (`blank`, `upload`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceHttp {
    pub url: String,
    /// A Secret with `accessKeyId` (user name) and `secretKey` (password).
    pub secret_ref: Option<String>,
    /// A ConfigMap whose values are PEM CA certificates trusted for this endpoint.
    pub cert_config_map: Option<String>,
    /// `Name: value` headers sent with every request.
    pub extra_headers: Option<Vec<String>>,
    /// Secrets each holding more such headers.
    pub secret_extra_headers: Option<Vec<String>>,
    /// `algorithm:hash` (md5, sha1, sha256, sha512) of the file as served.
    pub checksum: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

/// The `s3` and `gcs` sources (stored, not run here).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceUrl {
    pub url: String,
    pub secret_ref: Option<String>,
    pub cert_config_map: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceRegistry {
    /// `docker://IMAGE` (or `oci-archive://`).
    pub url: Option<String>,
    pub image_stream: Option<String>,
    pub pull_method: Option<String>,
    pub secret_ref: Option<String>,
    pub cert_config_map: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "crate::v1::preserved_object")]
    pub platform: Option<serde_json::Value>,
}

/// Another claim (`pvc`) or a VolumeSnapshot (`snapshot`) to copy.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourcePvc {
    /// Defaults to the DataVolume's namespace.
    #[serde(default)]
    pub namespace: String,
    pub name: String,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    pub claim_name: Option<String>,
    pub phase: Option<DataVolumePhase>,
    /// `"45.32%"`, or `N/A`.
    pub progress: Option<String>,
    pub restart_count: Option<i32>,
    pub conditions: Option<Vec<DataVolumeCondition>>,
}

/// The phases this project's DataVolume controller moves through (CDI has more, for storage
/// it does not have).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DataVolumePhase {
    Pending,
    #[serde(rename = "PVCBound")]
    PvcBound,
    ImportScheduled,
    ImportInProgress,
    CloneScheduled,
    CloneInProgress,
    ExpansionInProgress,
    UploadScheduled,
    UploadReady,
    WaitForFirstConsumer,
    PendingPopulation,
    Succeeded,
    Failed,
    Unknown,
    Paused,
}

impl DataVolumePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::PvcBound => "PVCBound",
            Self::ImportScheduled => "ImportScheduled",
            Self::ImportInProgress => "ImportInProgress",
            Self::CloneScheduled => "CloneScheduled",
            Self::CloneInProgress => "CloneInProgress",
            Self::ExpansionInProgress => "ExpansionInProgress",
            Self::UploadScheduled => "UploadScheduled",
            Self::UploadReady => "UploadReady",
            Self::WaitForFirstConsumer => "WaitForFirstConsumer",
            Self::PendingPopulation => "PendingPopulation",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Unknown => "Unknown",
            Self::Paused => "Paused",
        }
    }
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeCondition {
    /// `Ready`, `Bound` or `Running`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub last_transition_time: Option<Time>,
    pub last_heartbeat_time: Option<Time>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// The kind of source a DataVolume names, as this project runs it.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceKind<'a> {
    Http(&'a DataVolumeSourceHttp),
    Registry(&'a DataVolumeSourceRegistry),
    Pvc(&'a DataVolumeSourcePvc),
    Upload,
    Blank,
    /// Valid for CDI, not run here (s3, gcs, imageio, vddk, snapshot, sourceRef, populators):
    /// the field path of what is set.
    Unsupported(&'static str),
    /// No source at all.
    Missing,
}

impl DataVolumeSpec {
    /// The one source this DataVolume names.
    pub fn source_kind(&self) -> SourceKind<'_> {
        if self.source_ref.is_some() {
            return SourceKind::Unsupported("spec.sourceRef");
        }
        let Some(s) = &self.source else {
            return SourceKind::Missing;
        };
        if let Some(h) = &s.http {
            SourceKind::Http(h)
        } else if let Some(r) = &s.registry {
            SourceKind::Registry(r)
        } else if let Some(p) = &s.pvc {
            SourceKind::Pvc(p)
        } else if s.upload.is_some() {
            SourceKind::Upload
        } else if s.blank.is_some() {
            SourceKind::Blank
        } else if s.s3.is_some() {
            SourceKind::Unsupported("spec.source.s3")
        } else if s.gcs.is_some() {
            SourceKind::Unsupported("spec.source.gcs")
        } else if s.imageio.is_some() {
            SourceKind::Unsupported("spec.source.imageio")
        } else if s.vddk.is_some() {
            SourceKind::Unsupported("spec.source.vddk")
        } else if s.snapshot.is_some() {
            SourceKind::Unsupported("spec.source.snapshot")
        } else {
            SourceKind::Missing
        }
    }

    /// The claim's requested size (`pvc` or `storage` form), if any.
    pub fn requested_storage(
        &self,
    ) -> Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity> {
        let resources = match (&self.pvc, &self.storage) {
            (Some(p), _) => p.resources.as_ref(),
            (None, Some(s)) => s.resources.as_ref(),
            (None, None) => None,
        };
        resources?.requests.as_ref()?.get("storage")
    }

    /// The PVC spec to create for this DataVolume: the `pvc` form as is; the `storage` form
    /// with the access mode and volume mode a local class offers when left out (CDI fills
    /// them from the StorageProfile).
    pub fn claim_spec(&self) -> PersistentVolumeClaimSpec {
        if let Some(p) = &self.pvc {
            return p.clone();
        }
        let s = self.storage.clone().unwrap_or_default();
        PersistentVolumeClaimSpec {
            access_modes: Some(
                s.access_modes
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            ),
            selector: s.selector,
            resources: s.resources,
            volume_name: s.volume_name,
            storage_class_name: s.storage_class_name,
            volume_mode: Some(
                s.volume_mode
                    .filter(|m| m != "FromStorageProfile")
                    .unwrap_or_else(|| "Filesystem".into()),
            ),
            data_source: s.data_source,
            data_source_ref: s.data_source_ref,
            ..Default::default()
        }
    }
}

impl DataVolume {
    /// The claim holding this DataVolume's data: it has the DataVolume's name.
    pub fn claim_name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn phase(&self) -> Option<DataVolumePhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    /// The data is in place and the claim can be used.
    pub fn succeeded(&self) -> bool {
        self.phase() == Some(DataVolumePhase::Succeeded)
    }
}

/// A cause worded as CDI's webhook words it: the message alone.
fn cause(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        kind: FieldErrorKind::InvalidMessage,
        message: message.into(),
    }
}

const ACCESS_MODES: [&str; 4] = [
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// CDI's DataVolume admission (its validating webhook), with its messages and its field
/// strings (which name Go fields: `spec.PVC`, `spec.source.HTTP.url`).
pub fn validate_data_volume(dv: &DataVolume) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = dv.metadata.name.as_deref().unwrap_or_default();
    if name.len() > 253 {
        errs.push(cause("", "Name cannot be longer than 253 characters"));
        return errs;
    }
    let spec = &dv.spec;
    let (form, resources, access_modes) = match (&spec.pvc, &spec.storage) {
        (Some(_), Some(_)) => {
            errs.push(cause(
                "spec.PVC.Storage",
                "Duplicate storage definition, both target storage and target pvc defined",
            ));
            return errs;
        }
        (Some(p), None) => ("PVC", p.resources.as_ref(), p.access_modes.clone()),
        (None, Some(s)) => ("Storage", s.resources.as_ref(), s.access_modes.clone()),
        (None, None) => {
            errs.push(cause("spec.PVC", "Missing Data volume PVC"));
            return errs;
        }
    };
    let is_clone = spec.source_ref.is_some()
        || spec
            .source
            .as_ref()
            .is_some_and(|s| s.pvc.is_some() || s.snapshot.is_some());
    let size_field = format!("spec.{form}.resources.requests.size");
    match resources
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
    {
        Some(q) => match crate::Quantity::parse(&q.0).map(|q| q.value()) {
            Ok(b) if b <= 0 => errs.push(cause(
                size_field,
                format!("{form} size can't be equal or less than zero"),
            )),
            Ok(b) if b < 1 << 20 => errs.push(cause(
                size_field,
                format!("{form} size should be at least 1MiB"),
            )),
            Ok(_) => {}
            Err(_) => errs.push(cause(size_field, format!("{form} size is missing"))),
        },
        None if form == "PVC" || !is_clone => {
            errs.push(cause(size_field, format!("{form} size is missing")))
        }
        None => {}
    }
    if form == "PVC" {
        let modes = access_modes.unwrap_or_default();
        if modes.is_empty() {
            errs.push(cause(
                "spec.PVC.accessModes",
                "Required value: at least 1 access mode is required",
            ));
        } else if modes.len() > 1 {
            errs.push(cause("spec.PVC.accessModes", "PVC multiple accessModes"));
        }
    }
    for m in access_modes_of(spec) {
        if !ACCESS_MODES.contains(&m.as_str()) {
            errs.push(cause(
                format!("spec.{form}.accessModes"),
                format!(
                    "Unsupported value: \"{m}\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\""
                ),
            ));
        }
    }
    if spec.source.is_none() && spec.source_ref.is_none() {
        errs.push(cause(
            "spec.source",
            "Data volume should have either Source or SourceRef, or be externally populated",
        ));
        return errs;
    }
    if let Some(r) = &spec.source_ref {
        if r.kind.is_empty() {
            errs.push(cause("spec.sourceRef.Kind", "Missing sourceRef kind"));
        } else if r.kind != "DataSource" {
            errs.push(cause(
                "spec.sourceRef.Kind",
                format!(
                    "Unsupported sourceRef kind {}, currently only DataSource is supported",
                    r.kind
                ),
            ));
        }
        if r.name.is_empty() {
            errs.push(cause("spec.sourceRef.Name", "Missing sourceRef name"));
        }
        return errs;
    }
    let Some(source) = &spec.source else {
        return errs;
    };
    let count = [
        source.http.is_some(),
        source.s3.is_some(),
        source.gcs.is_some(),
        source.registry.is_some(),
        source.pvc.is_some(),
        source.upload.is_some(),
        source.blank.is_some(),
        source.imageio.is_some(),
        source.vddk.is_some(),
        source.snapshot.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if count == 0 {
        errs.push(cause("spec.source", "Missing Data volume source"));
        return errs;
    }
    if count > 1 {
        errs.push(cause("spec.source", "Multiple Data volume sources"));
        return errs;
    }
    let content_type = spec.content_type.as_deref().unwrap_or("");
    if !["", "kubevirt", "archive"].contains(&content_type) {
        errs.push(cause(
            "spec.contentType",
            "ContentType not one of: kubevirt, archive",
        ));
    }
    if let Some(h) = &source.http {
        if let Some(problem) = source_url_problem(&h.url) {
            errs.push(cause(
                "spec.source.HTTP.url",
                format!("spec.source {problem}"),
            ));
        }
        if let Some(c) = h.checksum.as_deref().filter(|c| !c.is_empty()) {
            if let Err(e) = parse_checksum(c) {
                errs.push(cause(
                    "spec.source.HTTP.checksum",
                    format!("Invalid checksum format: {e}"),
                ));
            }
        }
    }
    if source.blank.is_some() && content_type == "archive" {
        errs.push(cause(
            "spec.contentType",
            "SourceType cannot be blank and the contentType be archive",
        ));
    }
    if let Some(r) = &source.registry {
        if content_type == "archive" {
            errs.push(cause(
                "spec.contentType",
                "ContentType must be kubevirt when Source is Registry",
            ));
        }
        match (&r.url, &r.image_stream) {
            (Some(url), None) => {
                let scheme = url.split_once("://").map(|(s, _)| s);
                match scheme {
                    None => errs.push(cause(
                        "spec.source.Registry.URL",
                        format!("Illegal registry source URL {url}"),
                    )),
                    Some("docker" | "oci-archive") => {}
                    Some(_) => errs.push(cause(
                        "spec.source.Registry.URL",
                        format!("Illegal registry source URL scheme {url}"),
                    )),
                }
            }
            _ => errs.push(cause(
                "spec.source.Registry",
                "Source registry should have either URL or ImageStream",
            )),
        }
    }
    if let Some(p) = &source.pvc {
        if p.name.is_empty() {
            errs.push(cause(
                "spec.source.PVC",
                "spec.source.PVC source PVC is not valid",
            ));
        }
    }
    errs
}

fn access_modes_of(spec: &DataVolumeSpec) -> Vec<String> {
    match (&spec.pvc, &spec.storage) {
        (Some(p), _) => p.access_modes.clone().unwrap_or_default(),
        (None, Some(s)) => s.access_modes.clone().unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// CDI's check of a source URL (Go's `url.ParseRequestURI`, then the scheme).
fn source_url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some("source URL is empty".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!("Invalid source URL: {url}"));
    };
    if rest.is_empty() || scheme.is_empty() || url.contains(char::is_whitespace) {
        return Some(format!("Invalid source URL: {url}"));
    }
    if !["http", "https", "gs"].contains(&scheme) {
        return Some(format!("Invalid source URL scheme: {url}"));
    }
    None
}

/// A checksum `algorithm:hex` (md5, sha1, sha256, sha512), checked as CDI checks it (and
/// worded the same): the algorithm and the expected digest, both lower-case.
pub fn parse_checksum(s: &str) -> Result<(String, String), String> {
    let Some((alg, hash)) = s.split_once(':') else {
        return Err(format!(
            "invalid checksum format: expected 'algorithm:hash', got '{s}'"
        ));
    };
    let alg = alg.trim().to_ascii_lowercase();
    let hash = hash.trim().to_ascii_lowercase();
    if hash.is_empty() {
        return Err("checksum hash value cannot be empty".into());
    }
    let len = match alg.as_str() {
        "md5" => 32,
        "sha1" => 40,
        "sha256" => 64,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "unsupported hash algorithm '{alg}': supported algorithms are: md5, sha1, sha256, sha512"
            ))
        }
    };
    if hash.len() != len {
        return Err(format!(
            "invalid {alg} hash length: expected {len} hex characters, got {}",
            hash.len()
        ));
    }
    if !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("checksum hash is not valid hexadecimal".into());
    }
    Ok((alg, hash))
}

/// CDI refuses every change of a DataVolume's spec.
pub fn validate_data_volume_update(new: &DataVolume, old: &DataVolume) -> Vec<FieldError> {
    if new.spec != old.spec {
        return vec![cause("DataVolume.Spec", "Cannot update DataVolume Spec")];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_in_both_claim_forms() {
        let pvc_form = serde_json::json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": {"name": "fedora-dv"},
            "spec": {
                "source": {"http": {"url": "http://example.com/disk.qcow2", "certConfigMap": "ca"}},
                "pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}
            }
        });
        let dv: DataVolume = serde_json::from_value(pvc_form.clone()).unwrap();
        assert_eq!(serde_json::to_value(&dv).unwrap(), pvc_form);
        assert!(
            matches!(dv.spec.source_kind(), SourceKind::Http(h) if h.cert_config_map.as_deref() == Some("ca"))
        );
        assert_eq!(dv.spec.requested_storage().unwrap().0, "5Gi");

        let storage_form: DataVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b"},
            "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}
        }))
        .unwrap();
        assert_eq!(storage_form.spec.source_kind(), SourceKind::Blank);
        let claim = storage_form.spec.claim_spec();
        assert_eq!(claim.access_modes.unwrap(), vec!["ReadWriteOnce"]);
        assert_eq!(claim.volume_mode.as_deref(), Some("Filesystem"));
    }

    #[test]
    fn phases_serialise_as_cdi_spells_them() {
        assert_eq!(
            serde_json::to_value(DataVolumePhase::PvcBound).unwrap(),
            "PVCBound"
        );
        for p in [
            DataVolumePhase::ImportInProgress,
            DataVolumePhase::Succeeded,
            DataVolumePhase::WaitForFirstConsumer,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }

    fn dv(spec: serde_json::Value) -> DataVolume {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "d"}, "spec": spec}))
            .unwrap()
    }

    fn messages(d: &DataVolume) -> Vec<String> {
        validate_data_volume(d)
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn admission_words_problems_as_cdi_s_webhook() {
        let size = serde_json::json!({"resources": {"requests": {"storage": "1Gi"}}});
        assert!(messages(&dv(
            serde_json::json!({"source": {"blank": {}}, "storage": size})
        ))
        .is_empty());
        assert_eq!(
            messages(&dv(serde_json::json!({"source": {"blank": {}}}))),
            ["spec.PVC: Missing Data volume PVC"]
        );
        assert_eq!(
            messages(&dv(
                serde_json::json!({"source": {"blank": {}}, "storage": {}})
            )),
            ["spec.Storage.resources.requests.size: Storage size is missing"]
        );
        // A clone may leave the size to the source.
        assert!(messages(&dv(
            serde_json::json!({"source": {"pvc": {"name": "src"}}, "storage": {}})
        ))
        .is_empty());
        assert_eq!(
            messages(&dv(
                serde_json::json!({"source": {"blank": {}, "upload": {}}, "storage": size})
            )),
            ["spec.source: Multiple Data volume sources"]
        );
        assert_eq!(
            messages(&dv(
                serde_json::json!({"source": {"http": {"url": "ftp://x/y"}}, "storage": size})
            )),
            ["spec.source.HTTP.url: spec.source Invalid source URL scheme: ftp://x/y"]
        );
        assert_eq!(
            messages(&dv(serde_json::json!({"source": {"http": {"url": "http://x/y", "checksum": "sha256:abc"}}, "storage": size}))),
            ["spec.source.HTTP.checksum: Invalid checksum format: invalid sha256 hash length: expected 64 hex characters, got 3"]
        );
        assert_eq!(
            messages(&dv(
                serde_json::json!({"source": {"registry": {"url": "quay.io/x"}}, "storage": size})
            )),
            ["spec.source.Registry.URL: Illegal registry source URL quay.io/x"]
        );
        let old = dv(serde_json::json!({"source": {"blank": {}}, "storage": size}));
        let new = dv(serde_json::json!({"source": {"upload": {}}, "storage": size}));
        assert_eq!(
            validate_data_volume_update(&new, &old)[0].to_string(),
            "DataVolume.Spec: Cannot update DataVolume Spec"
        );
    }
}
