//! Typed views of the VirtualMachine / VirtualMachineInstance fields the controllers read.
//!
//! Parsed from the objects' JSON; unknown fields are ignored here and preserved in the
//! objects themselves.

use kube::api::DynamicObject;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ControllerError, Result};

/// `spec.runStrategy` of a VirtualMachine (or the deprecated `spec.running`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStrategy {
    Always,
    Halted,
    Manual,
    RerunOnFailure,
    Once,
}

impl RunStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStrategy::Always => "Always",
            RunStrategy::Halted => "Halted",
            RunStrategy::Manual => "Manual",
            RunStrategy::RerunOnFailure => "RerunOnFailure",
            RunStrategy::Once => "Once",
        }
    }

    pub fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "Always" => RunStrategy::Always,
            "Halted" => RunStrategy::Halted,
            "Manual" => RunStrategy::Manual,
            "RerunOnFailure" => RunStrategy::RerunOnFailure,
            "Once" => RunStrategy::Once,
            other => {
                return Err(ControllerError::InvalidField {
                    field: "spec.runStrategy".into(),
                    value: other.into(),
                    reason: "supported values: \"Always\", \"Halted\", \"Manual\", \
                             \"RerunOnFailure\", \"Once\""
                        .into(),
                })
            }
        })
    }

    /// The strategy a VM spec asks for: `runStrategy`, else `running` (true = Always,
    /// false = Halted), else Halted, as upstream.
    pub fn from_vm_spec(spec: &Value) -> Result<Self> {
        match (spec.get("runStrategy"), spec.get("running")) {
            (Some(Value::String(s)), None | Some(Value::Null)) => Self::parse(s),
            (Some(Value::String(_)), Some(_)) => Err(ControllerError::InvalidField {
                field: "spec.running".into(),
                value: spec["running"].to_string(),
                reason: "running and runStrategy are mutually exclusive".into(),
            }),
            (None | Some(Value::Null), Some(Value::Bool(true))) => Ok(RunStrategy::Always),
            (None | Some(Value::Null), Some(Value::Bool(false)) | Some(Value::Null) | None) => {
                Ok(RunStrategy::Halted)
            }
            (Some(other), _) => Err(ControllerError::InvalidField {
                field: "spec.runStrategy".into(),
                value: other.to_string(),
                reason: "must be a string".into(),
            }),
            (_, Some(other)) => Err(ControllerError::InvalidField {
                field: "spec.running".into(),
                value: other.to_string(),
                reason: "must be a boolean".into(),
            }),
        }
    }
}

/// Phase of a VirtualMachineInstance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmiPhase {
    Pending,
    Scheduling,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl VmiPhase {
    /// An absent or empty phase is Pending (a VMI the scheduler has not seen yet).
    pub fn parse(value: Option<&str>) -> Self {
        match value.unwrap_or("") {
            "" | "Pending" => VmiPhase::Pending,
            "Scheduling" => VmiPhase::Scheduling,
            "Scheduled" => VmiPhase::Scheduled,
            "Running" => VmiPhase::Running,
            "Succeeded" => VmiPhase::Succeeded,
            "Failed" => VmiPhase::Failed,
            _ => VmiPhase::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmiPhase::Pending => "Pending",
            VmiPhase::Scheduling => "Scheduling",
            VmiPhase::Scheduled => "Scheduled",
            VmiPhase::Running => "Running",
            VmiPhase::Succeeded => "Succeeded",
            VmiPhase::Failed => "Failed",
            VmiPhase::Unknown => "Unknown",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, VmiPhase::Succeeded | VmiPhase::Failed)
    }
}

/// A status condition as upstream KubeVirt writes it on VMs and VMIs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub last_probe_time: Option<String>,
    #[serde(default)]
    pub last_transition_time: Option<String>,
}

impl Condition {
    pub fn new(type_: &str, status: bool, reason: &str, message: &str) -> Self {
        Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: (!reason.is_empty()).then(|| reason.into()),
            message: (!message.is_empty()).then(|| message.into()),
            last_probe_time: None,
            last_transition_time: None,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Merges freshly computed conditions with the previous ones: a condition whose status did
/// not change keeps its `lastTransitionTime`; a new or flipped one gets `now`.
pub fn merge_conditions(
    previous: &[Condition],
    fresh: Vec<Condition>,
    now: &str,
) -> Vec<Condition> {
    fresh
        .into_iter()
        .map(|mut c| {
            let kept = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .and_then(|p| p.last_transition_time.clone());
            c.last_transition_time = Some(kept.unwrap_or_else(|| now.to_string()));
            c
        })
        .collect()
}

/// A pending start or stop request (`status.stateChangeRequests[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChangeRequest {
    pub action: StateChangeAction,
    /// For Stop: the VMI to stop; a request naming another VMI is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateChangeAction {
    Start,
    Stop,
}

impl StateChangeRequest {
    pub fn start() -> Self {
        StateChangeRequest {
            action: StateChangeAction::Start,
            data: None,
            uid: None,
        }
    }

    pub fn stop(vmi_uid: Option<String>) -> Self {
        StateChangeRequest {
            action: StateChangeAction::Stop,
            data: None,
            uid: vmi_uid,
        }
    }
}

/// `status.startFailure`: consecutive failed starts, for the crash-loop back-off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StartFailure {
    #[serde(default)]
    pub consecutive_fail_count: u32,
    #[serde(default, rename = "lastFailedVMIUID")]
    pub last_failed_vmi_uid: Option<String>,
    #[serde(default)]
    pub retry_after_timestamp: Option<String>,
}

/// What the VM controller reads from a VirtualMachine.
#[derive(Clone, Debug)]
pub struct VmView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub deleting: bool,
    pub run_strategy: RunStrategy,
    pub requests: Vec<StateChangeRequest>,
    pub start_failure: Option<StartFailure>,
    pub conditions: Vec<Condition>,
    pub printable_status: Option<String>,
    /// `status.runStrategy`: the strategy the controller last acted on.
    pub status_run_strategy: Option<RunStrategy>,
    /// Whether the VM is driven by the deprecated `spec.running` field.
    pub uses_running_field: bool,
}

impl VmView {
    pub fn from_object(vm: &DynamicObject) -> Result<Self> {
        let namespace = vm.metadata.namespace.clone().unwrap_or_default();
        let name = vm.metadata.name.clone().unwrap_or_default();
        let uid = vm
            .metadata
            .uid
            .clone()
            .ok_or_else(|| ControllerError::MissingField {
                kind: "VirtualMachine",
                namespace: namespace.clone(),
                name: name.clone(),
                field: "metadata.uid",
            })?;
        let spec = vm.data.get("spec").cloned().unwrap_or(Value::Null);
        let status = vm.data.get("status").cloned().unwrap_or(Value::Null);
        let requests = parse_field(&status, "stateChangeRequests", "status.stateChangeRequests")?
            .unwrap_or_default();
        let start_failure = parse_field(&status, "startFailure", "status.startFailure")?;
        let conditions =
            parse_field(&status, "conditions", "status.conditions")?.unwrap_or_default();
        Ok(VmView {
            namespace,
            name,
            uid,
            generation: vm.metadata.generation.unwrap_or(0),
            deleting: vm.metadata.deletion_timestamp.is_some(),
            run_strategy: RunStrategy::from_vm_spec(&spec)?,
            requests,
            start_failure,
            conditions,
            printable_status: status
                .get("printableStatus")
                .and_then(Value::as_str)
                .map(str::to_string),
            status_run_strategy: status
                .get("runStrategy")
                .and_then(Value::as_str)
                .and_then(|s| RunStrategy::parse(s).ok()),
            uses_running_field: spec.get("running").is_some_and(Value::is_boolean),
        })
    }
}

/// What the controllers read from a VirtualMachineInstance.
#[derive(Clone, Debug)]
pub struct VmiView {
    pub uid: String,
    pub phase: VmiPhase,
    pub deleting: bool,
    pub node_name: Option<String>,
    pub conditions: Vec<Condition>,
}

impl VmiView {
    pub fn from_object(vmi: &DynamicObject) -> Result<Self> {
        let status = vmi.data.get("status").cloned().unwrap_or(Value::Null);
        Ok(VmiView {
            uid: vmi.metadata.uid.clone().unwrap_or_default(),
            phase: VmiPhase::parse(status.get("phase").and_then(Value::as_str)),
            deleting: vmi.metadata.deletion_timestamp.is_some(),
            node_name: status
                .get("nodeName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            conditions: parse_field(&status, "conditions", "status.conditions")?
                .unwrap_or_default(),
        })
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn is_paused(&self) -> bool {
        self.condition("Paused").is_some_and(Condition::is_true)
    }

    pub fn is_ready(&self) -> bool {
        self.phase == VmiPhase::Running && self.condition("Ready").is_some_and(Condition::is_true)
    }
}

fn parse_field<T: serde::de::DeserializeOwned>(
    parent: &Value,
    key: &str,
    path: &str,
) -> Result<Option<T>> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| ControllerError::InvalidField {
                    field: path.into(),
                    value: v.to_string(),
                    reason: e.to_string(),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn run_strategy_from_running_and_run_strategy() {
        assert_eq!(
            RunStrategy::from_vm_spec(&json!({"runStrategy": "Manual"})).unwrap(),
            RunStrategy::Manual
        );
        assert_eq!(
            RunStrategy::from_vm_spec(&json!({"running": true})).unwrap(),
            RunStrategy::Always
        );
        assert_eq!(
            RunStrategy::from_vm_spec(&json!({"running": false})).unwrap(),
            RunStrategy::Halted
        );
        assert_eq!(
            RunStrategy::from_vm_spec(&json!({})).unwrap(),
            RunStrategy::Halted
        );
        let err = RunStrategy::from_vm_spec(&json!({"runStrategy": "Always", "running": true}))
            .unwrap_err();
        assert!(err.to_string().starts_with("spec.running:"), "{err}");
        let err = RunStrategy::from_vm_spec(&json!({"runStrategy": "Sometimes"})).unwrap_err();
        assert!(err.to_string().contains("spec.runStrategy"), "{err}");
    }

    #[test]
    fn conditions_keep_transition_time_while_status_holds() {
        let prev = vec![Condition {
            last_transition_time: Some("t0".into()),
            ..Condition::new("Ready", true, "", "")
        }];
        let merged = merge_conditions(
            &prev,
            vec![
                Condition::new("Ready", true, "", ""),
                Condition::new("Paused", true, "PausedByUser", ""),
            ],
            "t1",
        );
        assert_eq!(merged[0].last_transition_time.as_deref(), Some("t0"));
        assert_eq!(merged[1].last_transition_time.as_deref(), Some("t1"));
        let flipped = merge_conditions(&prev, vec![Condition::new("Ready", false, "", "")], "t2");
        assert_eq!(flipped[0].last_transition_time.as_deref(), Some("t2"));
    }

    #[test]
    fn vmi_phase_parse() {
        assert_eq!(VmiPhase::parse(None), VmiPhase::Pending);
        assert_eq!(VmiPhase::parse(Some("Running")), VmiPhase::Running);
        assert!(VmiPhase::parse(Some("Failed")).is_final());
        assert!(!VmiPhase::parse(Some("Scheduled")).is_final());
        assert_eq!(VmiPhase::parse(Some("bogus")), VmiPhase::Unknown);
    }
}
