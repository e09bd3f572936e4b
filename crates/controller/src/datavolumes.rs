//! A VM's DataVolumes: the VM controller creates one per `spec.dataVolumeTemplates` entry
//! (owned by the VM, so they go with it), and a VM waits for its DataVolumes before its VMI
//! is created, as upstream's virt-controller does. What they are doing shows in the VM's
//! printableStatus (Provisioning, WaitingForVolumeBinding, DataVolumeError).

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::info;

use kubevirt_api::cdi::{DataVolume, DataVolumePhase, DataVolumeSpec};
use kubevirt_api::v1::{VirtualMachine, VirtualMachinePrintableStatus as Printable};
use kubevirt_reconcile::api_call_on;
use kubevirt_reconcile::events::{EventRecorder, EventType};

use crate::error::Result;

/// Where a VM's DataVolumes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumesState {
    /// Every DataVolume holds its data (or the VM has none).
    Ready,
    /// Some DataVolume's claim is not bound yet.
    WaitingForVolumeBinding,
    /// Some DataVolume is still being filled.
    Provisioning,
    /// Some DataVolume failed.
    Error,
}

impl VolumesState {
    /// What `printableStatus` shows while the VM waits for its volumes.
    pub fn printable(self) -> Option<Printable> {
        match self {
            VolumesState::Ready => None,
            VolumesState::WaitingForVolumeBinding => Some(Printable::WaitingForVolumeBinding),
            VolumesState::Provisioning => Some(Printable::Provisioning),
            VolumesState::Error => Some(Printable::DataVolumeError),
        }
    }
}

/// The DataVolume a template describes, owned by the VM.
pub fn data_volume_from_template(
    vm: &VirtualMachine,
    index: usize,
) -> std::result::Result<DataVolume, String> {
    let t = &vm.spec.data_volume_templates.as_deref().unwrap_or_default()[index];
    let meta = t.metadata.clone().unwrap_or_default();
    let spec: DataVolumeSpec = serde_json::from_value(t.spec.clone())
        .map_err(|e| format!("spec.dataVolumeTemplates[{index}].spec: {e}"))?;
    Ok(DataVolume {
        metadata: ObjectMeta {
            name: meta.name.clone(),
            namespace: vm.namespace(),
            labels: meta.labels.clone(),
            annotations: meta.annotations.clone(),
            owner_references: vm.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec,
        status: None,
    })
}

/// The DataVolume's last transfer attempt failed (it may be retried), which upstream shows
/// as DataVolumeError too.
fn transfer_failing(dv: &DataVolume) -> bool {
    dv.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "Running"
                && c.status == "False"
                && matches!(
                    c.reason.as_deref(),
                    Some("Error" | "ChecksumError" | "ImagePullFailed")
                )
        })
}

/// Creates the VM's missing DataVolumes and tells where they all are.
pub async fn sync(
    client: &Client,
    recorder: &EventRecorder,
    vm: &VirtualMachine,
) -> Result<VolumesState> {
    let templates = vm.spec.data_volume_templates.as_deref().unwrap_or_default();
    // DataVolumes the VM's volumes name without a template: watched, never created.
    let template_names: Vec<String> = templates
        .iter()
        .filter_map(|t| t.metadata.as_ref()?.name.clone())
        .collect();
    let named: Vec<String> = vm
        .spec
        .template
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.data_volume.as_ref().map(|d| d.name.clone()))
        .filter(|n| !template_names.contains(n))
        .collect();
    if templates.is_empty() && named.is_empty() {
        return Ok(VolumesState::Ready);
    }
    let ns = vm.namespace().unwrap_or_default();
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let mut state = VolumesState::Ready;
    let mut worse = |s: VolumesState| {
        let rank = |s| match s {
            VolumesState::Ready => 0,
            VolumesState::Provisioning => 1,
            VolumesState::WaitingForVolumeBinding => 2,
            VolumesState::Error => 3,
        };
        if rank(s) > rank(state) {
            state = s;
        }
    };
    let entries = templates
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = t.metadata.as_ref().and_then(|m| m.name.clone());
            (Some(i), name.unwrap_or_default())
        })
        .chain(named.into_iter().map(|n| (None, n)));
    for (template, name) in entries {
        let dv =
            dvs.get_opt(&name)
                .await
                .map_err(api_call_on("getting", "DataVolume", &ns, &name))?;
        let i = match (&dv, template) {
            (Some(_), _) => None,
            // Named by a volume, without a template, and not there: the VMI controller
            // reports the missing claim.
            (None, None) => continue,
            (None, Some(i)) => Some(i),
        };
        if let Some(i) = i {
            let dv = match data_volume_from_template(vm, i) {
                Ok(dv) => dv,
                Err(message) => {
                    recorder
                        .publish(vm, EventType::Warning, "FailedDataVolumeCreate", &message)
                        .await;
                    worse(VolumesState::Error);
                    continue;
                }
            };
            match dvs.create(&PostParams::default(), &dv).await {
                Ok(_) => {
                    info!(datavolume = %name, "created DataVolume");
                    recorder
                        .publish(
                            vm,
                            EventType::Normal,
                            "SuccessfulDataVolumeCreate",
                            &format!("Created DataVolume {name}"),
                        )
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(kube::Error::Api(s)) if s.code < 500 => {
                    recorder
                        .publish(
                            vm,
                            EventType::Warning,
                            "FailedDataVolumeCreate",
                            &format!("Error creating DataVolume {name}: {}", s.message),
                        )
                        .await;
                    worse(VolumesState::Error);
                    continue;
                }
                Err(e) => return Err(api_call_on("creating", "DataVolume", &ns, &name)(e).into()),
            }
            worse(VolumesState::Provisioning);
            continue;
        }
        let Some(dv) = dv else { continue };
        match dv.phase() {
            Some(DataVolumePhase::Succeeded) => {}
            Some(DataVolumePhase::Failed) => worse(VolumesState::Error),
            Some(DataVolumePhase::Pending | DataVolumePhase::WaitForFirstConsumer) | None => {
                let pending = claims
                    .get_opt(&name)
                    .await
                    .map_err(api_call_on("getting", "PersistentVolumeClaim", &ns, &name))?
                    .is_none_or(|c| c.status.and_then(|s| s.phase).as_deref() != Some("Bound"));
                worse(if pending {
                    VolumesState::WaitingForVolumeBinding
                } else {
                    VolumesState::Provisioning
                });
            }
            Some(_) if transfer_failing(&dv) => worse(VolumesState::Error),
            Some(_) => worse(VolumesState::Provisioning),
        }
    }
    Ok(state)
}
