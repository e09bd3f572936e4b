//! The `subresources.kubevirt.io/v1` API at upstream's paths, as an axum Router the API
//! server mounts (`extra_routes`).
//!
//! Each handler parses the request into one typed action and hands it to either the VM
//! state-change rules (`kubevirt_api::statechange`, applied through kube-rs as JSON patches)
//! or the VMI's launcher on this node. Errors are Kubernetes `Status` bodies, so kubectl,
//! kube-rs and virtctl print them as usual.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use kubevirt_api::statechange::{self, Refusal, VmUpdate};
use kubevirt_api::v1::well_known::STOP_GRACE_ANNOTATION;
use kubevirt_api::v1::{
    vmi_condition, VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase,
};
use kubevirt_launcher::LauncherClient;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::launchers::Launchers;
use crate::portforward;

/// The websocket subprotocol upstream virtctl speaks for console and VNC.
pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";
const PREFIX: &str = "/apis/subresources.kubevirt.io/v1";

/// Shared state; the kube client is set once the API server is up.
pub struct SubresourceState {
    client: OnceLock<Client>,
    /// This node's launchers; `None` where no VM runs (virt-api on a cluster serves the
    /// VM-level subresources, which only write API objects).
    launchers: Option<Arc<Launchers>>,
}

impl SubresourceState {
    pub fn new(launchers: Arc<Launchers>) -> Arc<Self> {
        Arc::new(SubresourceState {
            client: OnceLock::new(),
            launchers: Some(launchers),
        })
    }

    /// State for serving only the VM-level subresources (start, stop, restart, migrate,
    /// add/removevolume), away from any node.
    pub fn without_node() -> Arc<Self> {
        Arc::new(SubresourceState {
            client: OnceLock::new(),
            launchers: None,
        })
    }

    /// Hands over the client the handlers use (the first call wins).
    pub fn set_client(&self, client: Client) {
        let _ = self.client.set(client);
    }

    pub fn launchers(&self) -> Result<&Launchers, ApiError> {
        self.launchers.as_deref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "this endpoint runs no VMs: ask the node's virt-handler",
            )
        })
    }

    pub(crate) fn client(&self) -> Result<Client, ApiError> {
        self.client.get().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the API is starting",
            )
        })
    }
}

/// A Kubernetes `Status` error response.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(resource: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{resource}.kubevirt.io \"{name}\" not found"),
        )
    }

    pub(crate) fn conflict(resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource}.kubevirt.io \"{name}\": {why}"),
        )
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    }

    pub fn code(&self) -> StatusCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn from_kube(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => Self::new(
                StatusCode::from_u16(s.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "InternalError",
                s.message,
            ),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "code": self.code.as_u16(),
        });
        (self.code, Json(body)).into_response()
    }
}

pub(crate) type AppState = Arc<SubresourceState>;

/// The VM-level subresources alone (`.../virtualmachines/{name}/{action}`): they write API
/// objects and need no node.
pub fn vm_router(state: AppState) -> Router {
    Router::new()
        .route(
            &format!("{PREFIX}/namespaces/{{ns}}/virtualmachines/{{name}}/{{action}}"),
            put(vm_action),
        )
        .with_state(state)
}

/// The router for `/apis/subresources.kubevirt.io/v1/...`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(PREFIX, get(resource_list))
        .route(&format!("{PREFIX}/version"), get(version))
        .route(&format!("{PREFIX}/healthz"), get(|| async { "ok" }))
        .route(
            &format!("{PREFIX}/namespaces/{{ns}}/virtualmachines/{{name}}/{{action}}"),
            put(vm_action),
        )
        .route(
            &format!("{PREFIX}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/{{action}}"),
            put(vmi_action).get(vmi_get),
        )
        .route(
            &format!(
                "{PREFIX}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/portforward/{{port}}"
            ),
            get(portforward::vmi),
        )
        .route(
            &format!("{PREFIX}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/portforward/{{port}}/{{protocol}}"),
            get(portforward::vmi_with_protocol),
        )
        .route(
            &format!("{PREFIX}/namespaces/{{ns}}/virtualmachines/{{name}}/portforward/{{port}}"),
            get(portforward::vm),
        )
        .route(
            &format!(
                "{PREFIX}/namespaces/{{ns}}/virtualmachines/{{name}}/portforward/{{port}}/{{protocol}}"
            ),
            get(portforward::vm_with_protocol),
        )
        .with_state(state)
}

async fn resource_list() -> Json<Value> {
    Json(kubevirt_api::subresources::resource_list())
}

async fn version() -> Json<Value> {
    Json(kubevirt_api::subresources::version())
}

/// The typed actions the VM subresources accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    Start,
    Stop,
    Restart,
}

impl VmAction {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => VmAction::Start,
            "stop" => VmAction::Stop,
            "restart" => VmAction::Restart,
            _ => return None,
        })
    }
}

/// Body of `stop` (upstream's StopOptions): an optional grace period override.
pub fn parse_grace_period(body: &[u8]) -> Result<Option<i64>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("invalid body: {e}"),
        )
    })?;
    match v.get("gracePeriod") {
        None | Some(Value::Null) => Ok(None),
        Some(g) => match g.as_i64() {
            Some(n) if n >= 0 => Ok(Some(n)),
            _ => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("gracePeriod: Invalid value: {g}: must be a non-negative integer"),
            )),
        },
    }
}

async fn vm_action(
    State(state): State<AppState>,
    Path((ns, name, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if matches!(action.as_str(), "addvolume" | "removevolume") {
        return volume_request(&state, Owner::Vm, &ns, &name, &action, &body).await;
    }
    if action == "migrate" {
        return migrate_vm(&state, &ns, &name, &body).await;
    }
    let action = VmAction::parse(&action).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("unknown subresource virtualmachines/{action}"),
        )
    })?;
    let grace = if action == VmAction::Stop {
        parse_grace_period(&body)?
    } else {
        None
    };
    let client = state.client()?;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, &ns);
    let vm = vms
        .get_opt(&name)
        .await
        .map_err(ApiError::from_kube)?
        .ok_or_else(|| ApiError::not_found("virtualmachines", &name))?;
    let vmi = vmis.get_opt(&name).await.map_err(ApiError::from_kube)?;
    // A stop with a grace period shortens the VMI's (upstream patches the VMI spec; here the
    // spec is immutable and an annotation carries it).
    let shorter_grace = match (grace, vmi.as_ref().filter(|v| !v.is_final())) {
        (Some(g), Some(v)) => {
            let p = json!({"metadata": {"annotations": {STOP_GRACE_ANNOTATION: g.to_string()}}});
            vmis.patch(&name, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .map_err(ApiError::from_kube)?;
            let current = v
                .spec
                .termination_grace_period_seconds
                .unwrap_or(kubevirt_api::defaults::DEFAULT_GRACE_PERIOD_SECONDS);
            g < current
        }
        _ => false,
    };
    let decision = match action {
        VmAction::Start => statechange::start(&vm, vmi.as_ref()),
        VmAction::Stop => statechange::stop(&vm, vmi.as_ref(), shorter_grace),
        VmAction::Restart => statechange::restart(&vm, vmi.as_ref()),
    };
    let update = match decision {
        Ok(u) => u,
        // A forced stop of a VM already stopping only shortened its grace period.
        Err(Refusal::Conflict(_))
            if action == VmAction::Stop && grace.is_some() && vmi.is_some() =>
        {
            return Ok(StatusCode::ACCEPTED.into_response())
        }
        Err(Refusal::Conflict(message)) => {
            return Err(ApiError::conflict("virtualmachine", &name, &message))
        }
        Err(Refusal::Internal(message)) => return Err(ApiError::internal(message)),
    };
    let (patch, status) = match update {
        VmUpdate::Spec(p) => (p, false),
        VmUpdate::Status(p) => (p, true),
    };
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(ApiError::internal)?;
    let result = if status {
        vms.patch_status(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
    } else {
        vms.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
    };
    match result {
        Ok(_) => Ok(StatusCode::ACCEPTED.into_response()),
        // A failed `test`: the VM changed under us, as upstream answers.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => {
            Err(ApiError::conflict("virtualmachine", &name, &s.message))
        }
        Err(e) => Err(ApiError::from_kube(e)),
    }
}

/// `virtualmachines/migrate`: creates a VirtualMachineInstanceMigration
/// (`kubevirt-migrate-vm-*`) for the VM's running VMI, as virt-api does.
async fn migrate_vm(
    state: &SubresourceState,
    ns: &str,
    name: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let opts: kubevirt_api::migration::MigrateOptions = if body.iter().all(u8::is_ascii_whitespace)
    {
        Default::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("Can not unmarshal Request body to struct, error: {e}"),
            )
        })?
    };
    let client = state.client()?;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    vms.get_opt(name)
        .await
        .map_err(ApiError::from_kube)?
        .ok_or_else(|| ApiError::not_found("virtualmachines", name))?;
    let vmi = vmis
        .get_opt(name)
        .await
        .map_err(ApiError::from_kube)?
        .ok_or_else(|| ApiError::not_found("virtualmachineinstances", name))?;
    if vmi.phase() != VirtualMachineInstancePhase::Running {
        return Err(ApiError::conflict(
            "virtualmachine",
            name,
            "VM is not running",
        ));
    }
    let mut migration = kubevirt_api::migration::new_migration("kubevirt-migrate-vm-", name);
    migration.spec.added_node_selector = opts.added_node_selector;
    let params = kube::api::PostParams {
        dry_run: kubevirt_api::hotplug::is_dry_run(&opts.dry_run),
        ..Default::default()
    };
    let api: Api<kubevirt_api::v1::VirtualMachineInstanceMigration> = Api::namespaced(client, ns);
    api.create(&params, &migration).await.map_err(|e| match e {
        kube::Error::Api(s) => ApiError::internal(s.message),
        other => ApiError::internal(other),
    })?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The VMI, which must be Running, and the client of its launcher on this node.
async fn running_vmi(
    state: &SubresourceState,
    ns: &str,
    name: &str,
) -> Result<(VirtualMachineInstance, LauncherClient), ApiError> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(state.client()?, ns);
    let vmi = vmis
        .get_opt(name)
        .await
        .map_err(ApiError::from_kube)?
        .ok_or_else(|| ApiError::not_found("virtualmachineinstances", name))?;
    if vmi.phase() != VirtualMachineInstancePhase::Running {
        return Err(ApiError::conflict(
            "virtualmachineinstance",
            name,
            "VMI is not running",
        ));
    }
    let launcher = state
        .launchers()?
        .guest(&vmi)
        .filter(|l| !l.exited())
        .ok_or_else(|| ApiError::conflict("virtualmachineinstance", name, "VMI is not running"))?;
    Ok((vmi, launcher.client.clone()))
}

/// The typed actions the VMI subresources accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmiAction {
    Pause,
    Unpause,
    SoftReboot,
    Reset,
}

async fn vmi_action(
    State(state): State<AppState>,
    Path((ns, name, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    match action.as_str() {
        "addvolume" | "removevolume" => {
            return volume_request(&state, Owner::Vmi, &ns, &name, &action, &body).await
        }
        "freeze" => return freeze(&state, &ns, &name, &body).await,
        "unfreeze" => {
            let (_, client) = running_vmi(&state, &ns, &name).await?;
            client
                .unfreeze()
                .await
                .map_err(|e| ApiError::conflict("virtualmachineinstance", &name, &e.to_string()))?;
            return Ok(StatusCode::OK.into_response());
        }
        _ => {}
    }
    let action = match action.as_str() {
        "pause" => VmiAction::Pause,
        "unpause" => VmiAction::Unpause,
        "softreboot" => VmiAction::SoftReboot,
        "reset" => VmiAction::Reset,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("unknown subresource virtualmachineinstances/{action}"),
            ))
        }
    };
    let (vmi, client) = running_vmi(&state, &ns, &name).await?;
    let paused = vmi.condition_true(vmi_condition::PAUSED);
    match (action, paused) {
        (VmiAction::Pause, true) => {
            return Err(ApiError::conflict("virtualmachineinstance", &name, "VMI is already paused"))
        }
        (VmiAction::Unpause, false) => {
            return Err(ApiError::conflict("virtualmachineinstance", &name, "VMI is not paused"))
        }
        (VmiAction::Pause, false) if vmi.spec.liveness_probe.is_some() => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("virtualmachineinstance.kubevirt.io \"{name}\" is forbidden: Pausing VMIs with LivenessProbe is currently not supported"),
            ))
        }
        _ => {}
    }
    match action {
        VmiAction::Pause => client.pause().await,
        VmiAction::Unpause => client.unpause().await,
        VmiAction::Reset => client.reset().await,
        VmiAction::SoftReboot => client.soft_reboot().await,
    }
    .map_err(|e| ApiError::conflict("virtualmachineinstance", &name, &e.to_string()))?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Whose spec a volume request changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The VM's template (declarative: the VM controller carries it to the running VMI).
    Vm,
    /// A VMI without a VM.
    Vmi,
}

/// What a volume request does to a VMI spec (the VM's template or the VMI's own).
type SpecChange = Box<
    dyn Fn(&mut kubevirt_api::v1::VirtualMachineInstanceSpec) -> Result<(), String> + Send + Sync,
>;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// `PUT .../addvolume` and `.../removevolume` of a VM or a VMI, as virt-api answers them.
async fn volume_request(
    state: &SubresourceState,
    owner: Owner,
    ns: &str,
    name: &str,
    action: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    use kubevirt_api::hotplug::{self, AddVolumeOptions, RemoveVolumeOptions};
    if body.is_empty() {
        return Err(bad_request(
            "Request with no body, a new name is expected as the request body",
        ));
    }
    let decode_error = |e: serde_json::Error| {
        bad_request(format!(
            "Can not unmarshal Request body to struct, error: {e}"
        ))
    };
    let (change, dry_run): (SpecChange, bool) = if action == "addvolume" {
        let opts: AddVolumeOptions = serde_json::from_slice(body).map_err(decode_error)?;
        let (volume, disk) = hotplug::added_volume(&opts).map_err(bad_request)?;
        (
            Box::new(move |spec| hotplug::add_volume(spec, volume.clone(), disk.clone())),
            hotplug::is_dry_run(&opts.dry_run),
        )
    } else {
        let opts: RemoveVolumeOptions = serde_json::from_slice(body).map_err(decode_error)?;
        if opts.name.is_empty() {
            return Err(bad_request("RemoveVolumeOptions requires name to be set"));
        }
        let dry_run = hotplug::is_dry_run(&opts.dry_run);
        (
            Box::new(move |spec| hotplug::remove_volume(spec, &opts.name)),
            dry_run,
        )
    };
    let client = state.client()?;
    let params = PatchParams {
        dry_run,
        ..Default::default()
    };
    match owner {
        Owner::Vm => {
            let vms: Api<VirtualMachine> = Api::namespaced(client, ns);
            let vm = vms
                .get_opt(name)
                .await
                .map_err(ApiError::from_kube)?
                .ok_or_else(|| ApiError::not_found("virtualmachines", name))?;
            let mut spec = vm.spec.template.spec.clone().unwrap_or_default();
            change(&mut spec).map_err(|e| ApiError::conflict("virtualmachine", name, &e))?;
            let patch = json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": vm.metadata.resource_version},
                {"op": "replace", "path": "/spec/template/spec", "value": spec},
            ]);
            let patch: json_patch::Patch =
                serde_json::from_value(patch).map_err(ApiError::internal)?;
            vms.patch(name, &params, &Patch::Json::<()>(patch))
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 422 || s.code == 409 => {
                        ApiError::conflict("virtualmachine", name, &s.message)
                    }
                    e => ApiError::from_kube(e),
                })?;
        }
        Owner::Vmi => {
            let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, ns);
            let vmi = vmis
                .get_opt(name)
                .await
                .map_err(ApiError::from_kube)?
                .ok_or_else(|| ApiError::not_found("virtualmachineinstances", name))?;
            let owned_by_vm = vmi
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "VirtualMachine" && o.controller == Some(true));
            if owned_by_vm {
                return Err(bad_request(format!("VMI {ns}/{name} is owned by a VM")));
            }
            if vmi.phase() != VirtualMachineInstancePhase::Running {
                return Err(ApiError::conflict(
                    "virtualmachineinstance",
                    name,
                    "VMI is not running",
                ));
            }
            let mut spec = vmi.spec.clone();
            change(&mut spec)
                .map_err(|e| ApiError::conflict("virtualmachineinstance", name, &e))?;
            let patch = json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": vmi.metadata.resource_version},
                {"op": "replace", "path": "/spec", "value": spec},
            ]);
            let patch: json_patch::Patch =
                serde_json::from_value(patch).map_err(ApiError::internal)?;
            vmis.patch(name, &params, &Patch::Json::<()>(patch))
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 422 || s.code == 409 => {
                        ApiError::conflict("virtualmachineinstance", name, &s.message)
                    }
                    e => ApiError::from_kube(e),
                })?;
        }
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `PUT .../freeze {"unfreezeTimeout": "5m"}`: the guest agent freezes the guest's
/// filesystems (for a snapshot); the launcher thaws them by itself after the timeout.
async fn freeze(
    state: &SubresourceState,
    ns: &str,
    name: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let timeout = if body.is_empty() {
        None
    } else {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("Can not unmarshal Request body to struct, error: {e}"),
            )
        })?;
        match v.get("unfreezeTimeout") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => {
                Some(kubevirt_api::snapshot::parse_go_duration(d).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("unfreezeTimeout: {e}"),
                    )
                })?)
            }
            Some(other) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("unfreezeTimeout: Invalid value: {other}: must be a duration"),
                ))
            }
        }
    };
    let (_, client) = running_vmi(state, ns, name).await?;
    client
        .freeze(timeout)
        .await
        .map_err(|e| ApiError::conflict("virtualmachineinstance", name, &e.to_string()))?;
    Ok(StatusCode::OK.into_response())
}

async fn vmi_get(
    State(state): State<AppState>,
    Path((ns, name, action)): Path<(String, String, String)>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    match action.as_str() {
        "guestosinfo" => {
            let (_, client) = running_vmi(&state, &ns, &name).await?;
            let info = client
                .guest_osinfo()
                .await
                .map_err(|e| ApiError::conflict("virtualmachineinstance", &name, &e.to_string()))?;
            let info = crate::vmi_status::guest_os_info(&info)
                .map(|i| serde_json::to_value(i).unwrap_or_default())
                .unwrap_or(info);
            Ok(Json(info).into_response())
        }
        "filesystemlist" | "userlist" => {
            let (_, client) = running_vmi(&state, &ns, &name).await?;
            let answer = if action == "filesystemlist" {
                client.guest_fsinfo().await
            } else {
                client.guest_users().await
            }
            .map_err(|e| ApiError::conflict("virtualmachineinstance", &name, &e.to_string()))?;
            let list = if action == "filesystemlist" {
                crate::vmi_status::filesystem_list(&answer)
            } else {
                crate::vmi_status::user_list(&answer)
            };
            Ok(Json(list).into_response())
        }
        "console" | "vnc" => {
            let ws = ws.map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "console and vnc need a websocket upgrade",
                )
            })?;
            let (_, client) = running_vmi(&state, &ns, &name).await?;
            let stream = if action == "console" {
                client.console().await
            } else {
                client.vnc().await
            }
            .map_err(|e| ApiError::conflict("virtualmachineinstance", &name, &e.to_string()))?;
            Ok(ws
                .protocols([PLAIN_PROTOCOL])
                .on_upgrade(move |socket| bridge(socket, stream)))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("unknown subresource virtualmachineinstances/{action}"),
        )),
    }
}

/// Copies bytes between a websocket (binary frames) and a byte stream (a console, VNC, a
/// port-forward's TCP connection) until either side closes.
pub(crate) async fn bridge<S>(socket: WebSocket, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let to_ws = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    let from_ws = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_str().as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = to_ws => {},
        _ = from_ws => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_body_grace_period() {
        assert_eq!(parse_grace_period(b"").unwrap(), None);
        assert_eq!(parse_grace_period(b"{}").unwrap(), None);
        assert_eq!(
            parse_grace_period(br#"{"gracePeriod": 0}"#).unwrap(),
            Some(0)
        );
        let err = parse_grace_period(br#"{"gracePeriod": -3}"#).unwrap_err();
        assert!(
            err.message.starts_with("gracePeriod: Invalid value"),
            "{}",
            err.message
        );
        assert_eq!(err.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            parse_grace_period(b"{nope").unwrap_err().code,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn vm_actions_parse() {
        assert_eq!(VmAction::parse("start"), Some(VmAction::Start));
        assert_eq!(VmAction::parse("restart"), Some(VmAction::Restart));
        assert_eq!(VmAction::parse("migrate"), None);
    }
}
