//! Async client of a launcher's local API, and discovery of running launchers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::api::{ApiError, FinalState, LauncherState, MigrateRequest, StopRequest, VmiRef};
use crate::rundir::RunDir;

/// Errors talking to a launcher.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to launcher socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP error talking to the launcher: {source}")]
    Http {
        #[source]
        source: hyper::Error,
    },
    #[error("launcher answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("unexpected launcher answer: {reason}")]
    Decode { reason: String },
    #[error("launcher did not answer within {seconds}s")]
    Timeout { seconds: u64 },
}

/// A bidirectional byte stream (console or VNC) proxied by the launcher.
pub type Stream = TokioIo<hyper::upgrade::Upgraded>;

/// Client for one launcher socket. Every call opens a fresh connection.
#[derive(Debug, Clone)]
pub struct LauncherClient {
    socket: PathBuf,
}

impl LauncherClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        LauncherClient {
            socket: socket.into(),
        }
    }

    /// Client for the launcher of a run dir.
    pub fn for_run_dir(run_dir: &RunDir) -> Self {
        Self::new(run_dir.launcher_socket())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Http { source })?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http { source })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Option<T>, ClientError> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "launcher");
        if body.is_some() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Decode {
                reason: e.to_string(),
            })?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http { source })?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Status {
                status: status.as_u16(),
                message,
            });
        }
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Decode {
                reason: e.to_string(),
            })
    }

    fn need<T>(v: Option<T>) -> Result<T, ClientError> {
        v.ok_or_else(|| ClientError::Decode {
            reason: "empty answer".into(),
        })
    }

    pub async fn state(&self) -> Result<LauncherState, ClientError> {
        Self::need(self.call(Method::GET, "/v1/state", None).await?)
    }

    /// Graceful stop: ACPI, then hard stop after `grace_seconds` (None: the VMI's).
    pub async fn stop(&self, grace_seconds: Option<u64>) -> Result<(), ClientError> {
        let body = serde_json::to_vec(&StopRequest { grace_seconds }).map_err(|e| {
            ClientError::Decode {
                reason: e.to_string(),
            }
        })?;
        self.call::<serde_json::Value>(Method::POST, "/v1/stop", Some(body))
            .await
            .map(|_| ())
    }

    pub async fn pause(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/pause", None)
            .await
            .map(|_| ())
    }

    pub async fn unpause(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/unpause", None)
            .await
            .map(|_| ())
    }

    pub async fn reset(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/reset", None)
            .await
            .map(|_| ())
    }

    pub async fn soft_reboot(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/soft-reboot", None)
            .await
            .map(|_| ())
    }

    /// Starts an outgoing live migration to a launcher started with `--incoming uri`.
    pub async fn migrate(&self, uri: &str) -> Result<(), ClientError> {
        let body = serde_json::to_vec(&MigrateRequest {
            uri: uri.to_string(),
        })
        .map_err(|e| ClientError::Decode {
            reason: e.to_string(),
        })?;
        self.call::<serde_json::Value>(Method::POST, "/v1/migrate", Some(body))
            .await
            .map(|_| ())
    }

    /// Progress of the current migration.
    pub async fn migration_status(
        &self,
    ) -> Result<kubevirt_hypervisor::MigrationStatus, ClientError> {
        Self::need(self.call(Method::GET, "/v1/migration", None).await?)
    }

    /// The guest agent's `guest-get-osinfo` answer.
    pub async fn guest_osinfo(&self) -> Result<serde_json::Value, ClientError> {
        Self::need(self.call(Method::GET, "/v1/guest-osinfo", None).await?)
    }

    async fn upgrade(&self, path: &str, proto: &str) -> Result<Stream, ClientError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, "launcher")
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, proto)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Decode {
                reason: e.to_string(),
            })?;
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(ClientError::Status {
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|source| ClientError::Http { source })?;
        Ok(TokioIo::new(upgraded))
    }

    /// The serial console as a byte stream.
    pub async fn console(&self) -> Result<Stream, ClientError> {
        self.upgrade("/v1/console", "console").await
    }

    /// The VNC (RFB) server as a byte stream.
    pub async fn vnc(&self) -> Result<Stream, ClientError> {
        self.upgrade("/v1/vnc", "vnc").await
    }
}

/// A launcher found in a run root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LauncherInfo {
    pub run_dir: RunDir,
    /// From `vmi.json`.
    pub vmi: Option<VmiRef>,
    /// Launcher pid from `launcher.pid`, if that process is alive.
    pub pid: Option<u32>,
    /// Answer of the launcher's API, if it answered.
    pub state: Option<LauncherState>,
    /// Present when the VM has ended (the launcher wrote it before exiting).
    pub final_state: Option<FinalState>,
}

impl LauncherInfo {
    /// A live launcher that answers: adopt it.
    pub fn is_running(&self) -> bool {
        self.pid.is_some() && self.state.is_some()
    }
}

/// Pid in `pid_file` if that process is alive and is not a zombie.
pub fn live_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    (state != "Z" && state != "X").then_some(pid)
}

/// Finds launchers (running or finished) under `run_root` (e.g. `/run/kubevirt-rs/vms`),
/// for a node agent that restarted. Each live one is asked for its state (2 s timeout).
pub async fn discover(run_root: &Path) -> Vec<LauncherInfo> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(run_root) else {
        return out;
    };
    for e in entries.flatten() {
        if !e.path().is_dir() {
            continue;
        }
        let rd = RunDir::new(e.path());
        let vmi = std::fs::read(rd.vmi_file())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| VmiRef {
                namespace: v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
                name: v["metadata"]["name"].as_str().unwrap_or("").to_string(),
                uid: v["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            });
        let final_state = std::fs::read(rd.final_state())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let pid = live_pid(&rd.pid_file());
        let state = if pid.is_some() {
            let c = LauncherClient::for_run_dir(&rd);
            tokio::time::timeout(Duration::from_secs(2), c.state())
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        if vmi.is_none() && pid.is_none() && final_state.is_none() {
            continue;
        }
        out.push(LauncherInfo {
            run_dir: rd,
            vmi,
            pid,
            state,
            final_state,
        });
    }
    out.sort_by(|a, b| a.run_dir.path().cmp(b.run_dir.path()));
    out
}
