//! `spec.volumes`: where disks get their data. Each volume sets exactly one source field, as
//! upstream (`containerDisk`, `persistentVolumeClaim`, `dataVolume`, ...).

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, LocalObjectReference};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::EmptyObject;
use crate::quantity::Quantity;

/// A named data source for a disk, filesystem or cloud-init.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    /// A disk image shipped in a container image.
    pub container_disk: Option<ContainerDiskSource>,
    /// A copy-on-write layer over a PVC, discarded when the VMI stops.
    pub ephemeral: Option<EphemeralVolumeSource>,
    /// A PersistentVolumeClaim in the VMI's namespace.
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    /// A CDI DataVolume (and its PVC) in the VMI's namespace.
    pub data_volume: Option<DataVolumeSource>,
    /// Cloud-init NoCloud data, attached as a `cidata` disk.
    pub cloud_init_no_cloud: Option<CloudInitSource>,
    /// Cloud-init ConfigDrive data, attached as a `config-2` disk.
    pub cloud_init_config_drive: Option<CloudInitSource>,
    /// A blank sparse disk that lives as long as the VMI.
    pub empty_disk: Option<EmptyDiskSource>,
    /// A disk image file on the node.
    pub host_disk: Option<HostDisk>,
    /// A ConfigMap attached as a disk.
    pub config_map: Option<ConfigMapVolumeSource>,
    /// A Secret attached as a disk.
    pub secret: Option<SecretVolumeSource>,
    pub service_account: Option<ServiceAccountVolumeSource>,
    pub sysprep: Option<SysprepSource>,
    #[serde(rename = "downwardAPI")]
    pub downward_api: Option<DownwardApiVolumeSource>,
    pub downward_metrics: Option<EmptyObject>,
    pub memory_dump: Option<MemoryDumpVolumeSource>,
}

/// The typed view of a volume's source, for code that wants to `match`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VolumeSource<'a> {
    ContainerDisk(&'a ContainerDiskSource),
    Ephemeral(&'a EphemeralVolumeSource),
    PersistentVolumeClaim(&'a PersistentVolumeClaimVolumeSource),
    DataVolume(&'a DataVolumeSource),
    CloudInitNoCloud(&'a CloudInitSource),
    CloudInitConfigDrive(&'a CloudInitSource),
    EmptyDisk(&'a EmptyDiskSource),
    HostDisk(&'a HostDisk),
    ConfigMap(&'a ConfigMapVolumeSource),
    Secret(&'a SecretVolumeSource),
    ServiceAccount(&'a ServiceAccountVolumeSource),
    Sysprep(&'a SysprepSource),
    DownwardApi(&'a DownwardApiVolumeSource),
    DownwardMetrics,
    MemoryDump(&'a MemoryDumpVolumeSource),
}

impl VolumeSource<'_> {
    /// The JSON field name of this source (`containerDisk`, ...).
    pub fn field_name(&self) -> &'static str {
        match self {
            Self::ContainerDisk(_) => "containerDisk",
            Self::Ephemeral(_) => "ephemeral",
            Self::PersistentVolumeClaim(_) => "persistentVolumeClaim",
            Self::DataVolume(_) => "dataVolume",
            Self::CloudInitNoCloud(_) => "cloudInitNoCloud",
            Self::CloudInitConfigDrive(_) => "cloudInitConfigDrive",
            Self::EmptyDisk(_) => "emptyDisk",
            Self::HostDisk(_) => "hostDisk",
            Self::ConfigMap(_) => "configMap",
            Self::Secret(_) => "secret",
            Self::ServiceAccount(_) => "serviceAccount",
            Self::Sysprep(_) => "sysprep",
            Self::DownwardApi(_) => "downwardAPI",
            Self::DownwardMetrics => "downwardMetrics",
            Self::MemoryDump(_) => "memoryDump",
        }
    }
}

impl Volume {
    /// Every source set on this volume (a valid volume has exactly one).
    pub fn sources(&self) -> Vec<VolumeSource<'_>> {
        let mut out = Vec::new();
        if let Some(s) = &self.container_disk {
            out.push(VolumeSource::ContainerDisk(s));
        }
        if let Some(s) = &self.ephemeral {
            out.push(VolumeSource::Ephemeral(s));
        }
        if let Some(s) = &self.persistent_volume_claim {
            out.push(VolumeSource::PersistentVolumeClaim(s));
        }
        if let Some(s) = &self.data_volume {
            out.push(VolumeSource::DataVolume(s));
        }
        if let Some(s) = &self.cloud_init_no_cloud {
            out.push(VolumeSource::CloudInitNoCloud(s));
        }
        if let Some(s) = &self.cloud_init_config_drive {
            out.push(VolumeSource::CloudInitConfigDrive(s));
        }
        if let Some(s) = &self.empty_disk {
            out.push(VolumeSource::EmptyDisk(s));
        }
        if let Some(s) = &self.host_disk {
            out.push(VolumeSource::HostDisk(s));
        }
        if let Some(s) = &self.config_map {
            out.push(VolumeSource::ConfigMap(s));
        }
        if let Some(s) = &self.secret {
            out.push(VolumeSource::Secret(s));
        }
        if let Some(s) = &self.service_account {
            out.push(VolumeSource::ServiceAccount(s));
        }
        if let Some(s) = &self.sysprep {
            out.push(VolumeSource::Sysprep(s));
        }
        if let Some(s) = &self.downward_api {
            out.push(VolumeSource::DownwardApi(s));
        }
        if self.downward_metrics.is_some() {
            out.push(VolumeSource::DownwardMetrics);
        }
        if let Some(s) = &self.memory_dump {
            out.push(VolumeSource::MemoryDump(s));
        }
        out
    }

    /// The volume's single source, if exactly one is set.
    pub fn source(&self) -> Option<VolumeSource<'_>> {
        let s = self.sources();
        if s.len() == 1 {
            s.into_iter().next()
        } else {
            None
        }
    }
    /// The claim behind a `persistentVolumeClaim` or `dataVolume` volume.
    pub fn claim_name(&self) -> Option<&str> {
        match self.source()? {
            VolumeSource::PersistentVolumeClaim(c) => Some(&c.claim_name),
            VolumeSource::DataVolume(d) => Some(&d.name),
            _ => None,
        }
    }

    /// The volume may come and go while the VM runs (it is hot-plugged, never on the QEMU
    /// command line).
    pub fn hotpluggable(&self) -> bool {
        match self.source() {
            Some(VolumeSource::PersistentVolumeClaim(c)) => c.hotpluggable == Some(true),
            Some(VolumeSource::DataVolume(d)) => d.hotpluggable == Some(true),
            _ => false,
        }
    }
}

/// A disk image shipped in an OCI image (`/disk/*.qcow2|raw` inside it).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDiskSource {
    pub image: String,
    pub image_pull_secret: Option<String>,
    pub path: Option<String>,
    /// `Always`, `IfNotPresent`, `Never`.
    pub image_pull_policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralVolumeSource {
    pub persistent_volume_claim: Option<ClaimRef>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRef {
    pub claim_name: String,
    pub read_only: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimVolumeSource {
    pub claim_name: String,
    pub read_only: Option<bool>,
    pub hotpluggable: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    pub name: String,
    pub hotpluggable: Option<bool>,
}

/// Cloud-init data for NoCloud (`cidata` ISO) or ConfigDrive (`config-2`).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitSource {
    pub secret_ref: Option<LocalObjectReference>,
    pub user_data_base64: Option<String>,
    pub user_data: Option<String>,
    pub network_data_secret_ref: Option<LocalObjectReference>,
    pub network_data_base64: Option<String>,
    pub network_data: Option<String>,
}

/// A blank, sparse disk that lives as long as the VMI.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDiskSource {
    pub capacity: Quantity,
}

/// A disk image file on the node.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostDisk {
    pub path: String,
    /// `Disk` or `DiskOrCreate`.
    #[serde(rename = "type")]
    pub disk_type: String,
    pub capacity: Option<Quantity>,
    pub shared: Option<bool>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolumeSource {
    pub name: Option<String>,
    pub optional: Option<bool>,
    pub volume_label: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolumeSource {
    pub secret_name: Option<String>,
    pub optional: Option<bool>,
    pub volume_label: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountVolumeSource {
    pub service_account_name: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SysprepSource {
    pub secret: Option<LocalObjectReference>,
    pub config_map: Option<LocalObjectReference>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownwardApiVolumeSource {
    pub fields: Option<Vec<DownwardAPIVolumeFile>>,
    pub volume_label: Option<String>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryDumpVolumeSource {
    pub claim_name: String,
    pub read_only: Option<bool>,
    pub hotpluggable: Option<bool>,
}
