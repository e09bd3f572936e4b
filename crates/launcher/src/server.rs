//! HTTP/1.1 server on the launcher's unix socket. Parses requests into calls on [`Vm`] or
//! the status; knows nothing about QEMU. See [`crate::protocol`] for the routes.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use std::time::Duration;

use crate::hotplug::HotplugError;
use crate::protocol::{
    valid_migration_uri, ApiError, FreezeRequest, HotplugVolumeRequest, InsertMediumRequest,
    MigrateRequest, StopRequest, SyncRequest,
};
use crate::status::StatusCell;
use crate::vm::{Vm, VmError};

type Body = BoxBody<Bytes, Infallible>;
type Resp = Response<Body>;

const MAX_BODY: usize = 4 << 20;

/// What the API serves from: the status, the VM once started, the one-shot sync channel.
pub struct Shared {
    pub status: Arc<StatusCell>,
    pub vm: OnceLock<Arc<Vm>>,
    /// The VMI UID this launcher was started for (its pod's), if any.
    expected_uid: Option<String>,
    sync: Mutex<Option<oneshot::Sender<SyncRequest>>>,
}

impl Shared {
    pub fn new(
        status: Arc<StatusCell>,
        expected_uid: Option<String>,
        sync: oneshot::Sender<SyncRequest>,
    ) -> Self {
        Shared {
            status,
            vm: OnceLock::new(),
            expected_uid,
            sync: Mutex::new(Some(sync)),
        }
    }

    fn vm(&self) -> Option<&Arc<Vm>> {
        self.vm.get()
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json(
        status,
        &ApiError {
            message: message.into(),
        },
    )
}

fn not_running() -> Resp {
    error(StatusCode::CONFLICT, "the VM is not running")
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn vm_error(e: VmError) -> Resp {
    use kubevirt_hypervisor::HypervisorError as H;
    let status = match &e {
        VmError::WrongStage { .. } | VmError::AgentNotConnected | VmError::Conflict(_) => {
            StatusCode::CONFLICT
        }
        VmError::TargetUnreachable { .. } => StatusCode::BAD_GATEWAY,
        VmError::Hypervisor(H::GuestAgent { .. }) => StatusCode::SERVICE_UNAVAILABLE,
        VmError::Hypervisor(
            H::NotRunning { .. }
            | H::DiskExists { .. }
            | H::NoHotplugSlot { .. }
            | H::InvalidState { .. },
        ) => StatusCode::CONFLICT,
        VmError::Hypervisor(H::NoSuchDisk { .. }) => StatusCode::NOT_FOUND,
        VmError::Hypervisor(H::InvalidConfig { .. }) => StatusCode::BAD_REQUEST,
        VmError::Hypervisor(H::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
        VmError::Hotplug(h) => match h {
            HotplugError::Invalid { .. } | HotplugError::Image(_) | HotplugError::Io { .. } => {
                StatusCode::BAD_REQUEST
            }
            HotplugError::NotFound { .. } => StatusCode::NOT_FOUND,
            HotplugError::Conflict { .. } => StatusCode::CONFLICT,
        },
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Parses a JSON body; an empty one is `T::default()` when `empty_ok`. The error is the
/// message of a 400.
fn parse<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    empty_ok: bool,
) -> Result<T, String> {
    if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("body: {e}"))
}

/// `/v1/volumes/...` routes.
async fn volumes(shared: &Shared, method: Method, rest: &str, req: Request<Incoming>) -> Resp {
    let parts: Vec<&str> = rest.split('/').collect();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(vm) = shared.vm() else {
        return not_running();
    };
    match (method, parts.as_slice()) {
        (Method::POST, [""]) => match serde_json::from_slice::<HotplugVolumeRequest>(&body) {
            Err(e) => error(StatusCode::BAD_REQUEST, format!("body: {e}")),
            Ok(r) => match vm.hotplug_volume(r).await {
                Ok(st) => json(StatusCode::OK, &st),
                Err(e) => vm_error(e),
            },
        },
        (Method::DELETE, [name]) if !name.is_empty() => done(
            vm.unplug_volume(name.to_string()).await,
            StatusCode::NO_CONTENT,
        ),
        (Method::POST, [name, "resize"]) => done(
            vm.resize_volume(name.to_string()).await,
            StatusCode::NO_CONTENT,
        ),
        (Method::POST, [name, "eject"]) => done(
            vm.change_medium(name.to_string(), None).await,
            StatusCode::NO_CONTENT,
        ),
        (Method::POST, [name, "insert"]) => {
            match serde_json::from_slice::<InsertMediumRequest>(&body) {
                Err(e) => error(StatusCode::BAD_REQUEST, format!("body: {e}")),
                Ok(m) => done(
                    vm.change_medium(name.to_string(), Some(m)).await,
                    StatusCode::NO_CONTENT,
                ),
            }
        }
        (_, [""] | [_] | [_, "resize" | "eject" | "insert"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route /v1/volumes{rest}")),
    }
}

fn done(r: Result<(), VmError>, ok: StatusCode) -> Resp {
    match r {
        Ok(()) => empty(ok),
        Err(e) => vm_error(e),
    }
}

/// Binds `path` (replacing a stale socket), readable by its owner only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Accept loop.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept on launcher socket");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await
            {
                tracing::debug!(error = %e, "launcher API connection");
            }
        });
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("cannot read body: {e}"),
        )),
    }
}

/// `GET /v1/watch`: the status now, then one line per change, until the launcher exits.
fn watch(shared: &Shared) -> Resp {
    let rx = shared.status.subscribe();
    let lines = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first {
            rx.changed().await.ok()?;
        }
        let st = rx.borrow_and_update().clone();
        let mut line = serde_json::to_vec(&st).unwrap_or_default();
        line.push(b'\n');
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
            (rx, false),
        ))
    });
    let mut r = Response::new(StreamBody::new(lines).boxed());
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/jsonl"),
    );
    r
}

fn sync(shared: &Shared, body: &[u8]) -> Resp {
    let req: SyncRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let uid = req
        .vmi
        .pointer("/metadata/uid")
        .and_then(|u| u.as_str())
        .unwrap_or("");
    if let Some(expected) = shared.expected_uid.as_deref().filter(|e| !e.is_empty()) {
        if uid != expected {
            return error(
                StatusCode::CONFLICT,
                format!("this launcher runs VMI {expected}, not {uid}"),
            );
        }
    }
    let sender = shared.sync.lock().unwrap_or_else(|p| p.into_inner()).take();
    match sender {
        Some(tx) => {
            let _ = tx.send(req);
            empty(StatusCode::ACCEPTED)
        }
        None => {
            // Already synced: the same VMI again is fine, another one is not.
            let running = shared.status.get().vmi.map(|v| v.uid).unwrap_or_default();
            if running == uid {
                empty(StatusCode::ACCEPTED)
            } else {
                error(
                    StatusCode::CONFLICT,
                    format!("this launcher already runs VMI {running}"),
                )
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let resp = match (method, path.as_str()) {
        (Method::GET, "/v1/status") => json(StatusCode::OK, &shared.status.get()),
        (Method::GET, "/v1/watch") => watch(&shared),
        (Method::POST, "/v1/sync") => match read_body(req).await {
            Err(r) => r,
            Ok(body) => sync(&shared, &body),
        },
        (Method::POST, "/v1/stop") => match read_body(req).await {
            Err(r) => r,
            Ok(body) => {
                let parsed = parse::<StopRequest>(&body, true);
                match (parsed, shared.vm()) {
                    (Err(e), _) => error(StatusCode::BAD_REQUEST, e),
                    (Ok(_), None) => not_running(),
                    (Ok(r), Some(vm)) => {
                        vm.request_stop(r.grace_seconds);
                        json(StatusCode::ACCEPTED, &shared.status.get())
                    }
                }
            }
        },
        (Method::POST, "/v1/pause") => match shared.vm() {
            Some(vm) => done(vm.pause().await, StatusCode::NO_CONTENT),
            None => not_running(),
        },
        (Method::POST, "/v1/unpause") => match shared.vm() {
            Some(vm) => done(vm.unpause().await, StatusCode::NO_CONTENT),
            None => not_running(),
        },
        (Method::POST, "/v1/freeze") => match (read_body(req).await, shared.vm()) {
            (Err(r), _) => r,
            (_, None) => not_running(),
            (Ok(body), Some(vm)) => match parse::<FreezeRequest>(&body, true) {
                Err(e) => error(StatusCode::BAD_REQUEST, e),
                Ok(f) => done(
                    vm.freeze(f.unfreeze_timeout_seconds.map(Duration::from_secs))
                        .await,
                    StatusCode::NO_CONTENT,
                ),
            },
        },
        (Method::POST, "/v1/unfreeze") => match shared.vm() {
            Some(vm) => done(vm.unfreeze().await, StatusCode::NO_CONTENT),
            None => not_running(),
        },
        (m, p) if p == "/v1/volumes" || p.starts_with("/v1/volumes/") => {
            let rest = p.strip_prefix("/v1/volumes").unwrap_or_default();
            let rest = rest.strip_prefix('/').unwrap_or(rest);
            // `/v1/volumes` itself is the collection (`[""]` below).
            volumes(&shared, m, rest, req).await
        }
        (Method::POST, "/v1/reset") => match shared.vm() {
            Some(vm) => done(vm.reset(), StatusCode::NO_CONTENT),
            None => not_running(),
        },
        (Method::POST, "/v1/soft-reboot") => match shared.vm() {
            Some(vm) => done(vm.soft_reboot().await, StatusCode::NO_CONTENT),
            None => not_running(),
        },
        (Method::POST, "/v1/migrate") => match (read_body(req).await, shared.vm()) {
            (Err(r), _) => r,
            (_, None) => not_running(),
            (Ok(body), Some(vm)) => match serde_json::from_slice::<MigrateRequest>(&body) {
                Err(e) => error(StatusCode::BAD_REQUEST, format!("body: {e}")),
                Ok(m) => match valid_migration_uri(&m.uri) {
                    Err(reason) => error(StatusCode::BAD_REQUEST, format!("uri: {reason}")),
                    Ok(()) => done(vm.migrate(m).await, StatusCode::ACCEPTED),
                },
            },
        },
        (Method::POST, "/v1/migrate/cancel") => match shared.vm() {
            Some(vm) => done(vm.migrate_cancel().await, StatusCode::NO_CONTENT),
            None => not_running(),
        },
        (Method::GET, "/v1/migration") => match shared.vm() {
            Some(vm) => match vm.migration_status() {
                Ok(m) => json(StatusCode::OK, &m),
                Err(e) => vm_error(e),
            },
            None => not_running(),
        },
        (Method::GET, "/v1/guest-osinfo") => match shared.vm() {
            Some(vm) => match vm.guest_osinfo().await {
                Ok(v) => json(StatusCode::OK, &v),
                Err(e) => vm_error(e),
            },
            None => not_running(),
        },
        (Method::GET, path @ ("/v1/guest-fsinfo" | "/v1/guest-users")) => match shared.vm() {
            Some(vm) => {
                let command = if path == "/v1/guest-fsinfo" {
                    "guest-get-fsinfo"
                } else {
                    "guest-get-users"
                };
                match vm.agent(command, None).await {
                    Ok(v) => json(StatusCode::OK, &v),
                    Err(e) => vm_error(e),
                }
            }
            None => not_running(),
        },
        (Method::GET, "/v1/guest-ping") => match shared.vm() {
            Some(vm) => match vm.agent("guest-ping", None).await {
                Ok(_) => empty(StatusCode::NO_CONTENT),
                Err(e) => vm_error(e),
            },
            None => not_running(),
        },
        (Method::POST, "/v1/guest-exec") => match (read_body(req).await, shared.vm()) {
            (Err(r), _) => r,
            (_, None) => not_running(),
            (Ok(body), Some(vm)) => {
                match parse::<crate::protocol::GuestExecRequest>(&body, false) {
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                    Ok(r) => match vm.guest_exec(r).await {
                        Ok(v) => json(StatusCode::OK, &v),
                        Err(e) => vm_error(e),
                    },
                }
            }
        },
        (Method::POST, "/v1/access-credentials") => match (read_body(req).await, shared.vm()) {
            (Err(r), _) => r,
            (_, None) => not_running(),
            (Ok(body), Some(vm)) => {
                match parse::<crate::protocol::AccessCredentialsRequest>(&body, false) {
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                    Ok(r) => json(StatusCode::OK, &vm.apply_access_credentials(r).await),
                }
            }
        },
        (Method::GET, "/v1/stats") => match shared.vm() {
            Some(vm) => match vm.stats().await {
                Ok(v) => json(StatusCode::OK, &v),
                Err(e) => vm_error(e),
            },
            None => not_running(),
        },
        (Method::GET, "/v1/console") => match shared.vm() {
            Some(vm) => {
                let target = vm.domain.config().serial.as_ref().map(|s| s.socket.clone());
                upgrade(req, target, "console")
            }
            None => not_running(),
        },
        (Method::GET, "/v1/vnc") => match shared.vm() {
            Some(vm) => upgrade(req, vm.domain.config().vnc_socket.clone(), "vnc"),
            None => not_running(),
        },
        (
            _,
            "/v1/status"
            | "/v1/watch"
            | "/v1/sync"
            | "/v1/stop"
            | "/v1/pause"
            | "/v1/unpause"
            | "/v1/reset"
            | "/v1/soft-reboot"
            | "/v1/guest-osinfo"
            | "/v1/guest-fsinfo"
            | "/v1/guest-users"
            | "/v1/guest-ping"
            | "/v1/guest-exec"
            | "/v1/access-credentials"
            | "/v1/stats"
            | "/v1/console"
            | "/v1/vnc"
            | "/v1/migrate"
            | "/v1/migrate/cancel"
            | "/v1/migration"
            | "/v1/freeze"
            | "/v1/unfreeze",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, format!("no route {path}")),
    };
    Ok(resp)
}

/// Answers 101 and splices the upgraded connection to a QEMU unix socket.
fn upgrade(mut req: Request<Incoming>, target: Option<PathBuf>, proto: &'static str) -> Resp {
    let Some(target) = target else {
        return error(
            StatusCode::NOT_FOUND,
            format!("this VM has no {proto} device"),
        );
    };
    let wants = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(proto));
    if !wants {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            format!("send Connection: Upgrade and Upgrade: {proto}"),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, proto, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        match UnixStream::connect(&target).await {
            Ok(mut qemu) => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut qemu).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %target.display(), "cannot reach QEMU socket")
            }
        }
    });
    let mut r = empty(StatusCode::SWITCHING_PROTOCOLS);
    r.headers_mut().insert(
        CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    r.headers_mut()
        .insert(UPGRADE, hyper::header::HeaderValue::from_static(proto));
    r
}
