//! HTTP/1.1 server on the launcher's unix socket. Parses requests into calls on [`Vm`];
//! knows nothing about QEMU. See [`crate::api`] for the routes.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};

use crate::api::{valid_migration_uri, ApiError, MigrateRequest, StopRequest};
use crate::vm::{Vm, VmError};

type Resp = Response<Full<Bytes>>;

const MAX_BODY: usize = 64 * 1024;

fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
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

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn vm_error(e: VmError) -> Resp {
    let status = match &e {
        VmError::WrongPhase { .. } => StatusCode::CONFLICT,
        VmError::Hypervisor(kubevirt_hypervisor::HypervisorError::GuestAgent { .. }) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        VmError::Hypervisor(kubevirt_hypervisor::HypervisorError::NotRunning { .. }) => {
            StatusCode::CONFLICT
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Binds `path` (replacing a stale socket) and serves until the task is dropped.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Accept loop.
pub async fn serve(listener: UnixListener, vm: Arc<Vm>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept on launcher socket");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let vm = vm.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(vm.clone(), req));
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

async fn handle(vm: Arc<Vm>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let resp = match (method, path.as_str()) {
        (Method::GET, "/v1/state") => json(StatusCode::OK, &vm.state()),
        (Method::POST, "/v1/stop") => match read_body(req).await {
            Err(r) => r,
            Ok(body) => {
                let parsed: Result<StopRequest, _> = if body.iter().all(u8::is_ascii_whitespace) {
                    Ok(StopRequest::default())
                } else {
                    serde_json::from_slice(&body)
                };
                match parsed {
                    Ok(r) => {
                        vm.request_stop(r.grace_seconds);
                        json(StatusCode::ACCEPTED, &vm.state())
                    }
                    Err(e) => error(StatusCode::BAD_REQUEST, format!("body: {e}")),
                }
            }
        },
        (Method::POST, "/v1/pause") => match vm.pause() {
            Ok(()) => empty(StatusCode::NO_CONTENT),
            Err(e) => vm_error(e),
        },
        (Method::POST, "/v1/unpause") => match vm.unpause() {
            Ok(()) => empty(StatusCode::NO_CONTENT),
            Err(e) => vm_error(e),
        },
        (Method::POST, "/v1/reset") => match vm.reset() {
            Ok(()) => empty(StatusCode::NO_CONTENT),
            Err(e) => vm_error(e),
        },
        (Method::POST, "/v1/soft-reboot") => match vm.soft_reboot().await {
            Ok(()) => empty(StatusCode::NO_CONTENT),
            Err(e) => vm_error(e),
        },
        (Method::POST, "/v1/migrate") => match read_body(req).await {
            Err(r) => r,
            Ok(body) => match serde_json::from_slice::<MigrateRequest>(&body) {
                Err(e) => error(StatusCode::BAD_REQUEST, format!("body: {e}")),
                Ok(m) => match valid_migration_uri(&m.uri) {
                    Err(reason) => error(StatusCode::BAD_REQUEST, format!("uri: {reason}")),
                    Ok(()) => match vm.migrate(&m.uri) {
                        Ok(()) => empty(StatusCode::ACCEPTED),
                        Err(e) => vm_error(e),
                    },
                },
            },
        },
        (Method::GET, "/v1/migration") => match vm.migration_status() {
            Ok(m) => json(StatusCode::OK, &m),
            Err(e) => vm_error(e),
        },
        (Method::GET, "/v1/guest-osinfo") => match vm.guest_osinfo().await {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => vm_error(e),
        },
        (Method::GET, "/v1/console") => {
            let target = vm.domain.config().serial.as_ref().map(|s| s.socket.clone());
            upgrade(req, target, "console")
        }
        (Method::GET, "/v1/vnc") => {
            let target = vm.domain.config().vnc_socket.clone();
            upgrade(req, target, "vnc")
        }
        (
            _,
            "/v1/state" | "/v1/stop" | "/v1/pause" | "/v1/unpause" | "/v1/reset"
            | "/v1/soft-reboot" | "/v1/guest-osinfo" | "/v1/console" | "/v1/vnc",
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
