//! Async client of a launcher's local API (what the node agent and the tests use), beside
//! the protocol it speaks ([`crate::protocol`]).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use std::time::Duration;

use crate::protocol::{
    ApiError, FreezeRequest, HotplugVolumeRequest, HotplugVolumeStatus, InsertMediumRequest,
    LauncherStatus, MigrateRequest, StopRequest, SyncRequest,
};
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
    #[error("invalid request: {reason}")]
    InvalidArgument { reason: String },
}

/// A bidirectional byte stream (console or VNC) proxied by the launcher.
pub type ByteStream = TokioIo<hyper::upgrade::Upgraded>;

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

    fn request(
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "launcher");
        if body.is_some() {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        b.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Decode {
                reason: e.to_string(),
            })
    }

    async fn error_of(resp: hyper::Response<hyper::body::Incoming>) -> ClientError {
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        ClientError::Status { status, message }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Option<T>, ClientError> {
        let resp = self.send(Self::request(method, path, body)?).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Self::error_of(resp).await);
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http { source })?
            .to_bytes();
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Decode {
                reason: e.to_string(),
            })
    }

    async fn post(&self, path: &str, body: Option<Vec<u8>>) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, path, body)
            .await
            .map(|_| ())
    }

    fn need<T>(v: Option<T>) -> Result<T, ClientError> {
        v.ok_or_else(|| ClientError::Decode {
            reason: "empty answer".into(),
        })
    }

    fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(v).map_err(|e| ClientError::Decode {
            reason: e.to_string(),
        })
    }

    pub async fn status(&self) -> Result<LauncherStatus, ClientError> {
        Self::need(self.call(Method::GET, "/v1/status", None).await?)
    }

    /// The launcher's status now and after every change, until it exits (the stream ends).
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<LauncherStatus, ClientError>> + Send + use<>, ClientError>
    {
        let resp = self
            .send(Self::request(Method::GET, "/v1/watch", None)?)
            .await?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp).await);
        }
        let body = resp.into_body();
        Ok(futures::stream::unfold(
            (body, Vec::<u8>::new()),
            |(mut body, mut buf)| async move {
                loop {
                    if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        let item = serde_json::from_slice(&line).map_err(|e| ClientError::Decode {
                            reason: e.to_string(),
                        });
                        return Some((item, (body, buf)));
                    }
                    match body.frame().await? {
                        Ok(frame) => {
                            if let Ok(data) = frame.into_data() {
                                buf.extend_from_slice(&data);
                            }
                        }
                        Err(source) => {
                            return Some((Err(ClientError::Http { source }), (body, buf)))
                        }
                    }
                }
            },
        ))
    }

    /// Hands the launcher the VMI to run (it starts it once).
    pub async fn sync(&self, request: &SyncRequest) -> Result<(), ClientError> {
        self.post("/v1/sync", Some(Self::encode(request)?)).await
    }

    /// Graceful stop: ACPI, then hard stop after `grace_seconds` (None: the VMI's).
    pub async fn stop(&self, grace_seconds: Option<u64>) -> Result<(), ClientError> {
        self.post(
            "/v1/stop",
            Some(Self::encode(&StopRequest { grace_seconds })?),
        )
        .await
    }

    pub async fn pause(&self) -> Result<(), ClientError> {
        self.post("/v1/pause", None).await
    }

    pub async fn unpause(&self) -> Result<(), ClientError> {
        self.post("/v1/unpause", None).await
    }

    pub async fn reset(&self) -> Result<(), ClientError> {
        self.post("/v1/reset", None).await
    }

    pub async fn soft_reboot(&self) -> Result<(), ClientError> {
        self.post("/v1/soft-reboot", None).await
    }

    /// Starts an outgoing live migration to a launcher waiting for it (`--incoming uri`, or
    /// a sync with [`crate::IncomingMigration`] whose status names `incoming_uri`).
    pub async fn migrate(&self, request: &MigrateRequest) -> Result<(), ClientError> {
        let body = Self::encode(request)?;
        self.post("/v1/migrate", Some(body)).await
    }

    /// Aborts the outgoing migration; the guest keeps running here.
    pub async fn migrate_cancel(&self) -> Result<(), ClientError> {
        self.post("/v1/migrate/cancel", None).await
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

    /// The guest agent's `guest-get-fsinfo` answer: mounted filesystems and their disks.
    pub async fn guest_fsinfo(&self) -> Result<serde_json::Value, ClientError> {
        Self::need(self.call(Method::GET, "/v1/guest-fsinfo", None).await?)
    }

    /// The guest agent's `guest-get-users` answer: users logged in.
    pub async fn guest_users(&self) -> Result<serde_json::Value, ClientError> {
        Self::need(self.call(Method::GET, "/v1/guest-users", None).await?)
    }

    /// Whether the guest agent answers a ping.
    pub async fn guest_ping(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::GET, "/v1/guest-ping", None)
            .await
            .map(|_| ())
    }

    /// Runs a command in the guest through its agent (see [`crate::GuestExecRequest`]).
    pub async fn guest_exec(
        &self,
        req: &crate::protocol::GuestExecRequest,
    ) -> Result<crate::protocol::GuestExecResult, ClientError> {
        let body = Self::encode(req)?;
        Self::need(
            self.call(Method::POST, "/v1/guest-exec", Some(body))
                .await?,
        )
    }

    /// Has the guest agent apply access credentials; the answer says whether it could.
    pub async fn apply_access_credentials(
        &self,
        req: &crate::protocol::AccessCredentialsRequest,
    ) -> Result<crate::protocol::AccessCredentialsResult, ClientError> {
        let body = Self::encode(req)?;
        Self::need(
            self.call(Method::POST, "/v1/access-credentials", Some(body))
                .await?,
        )
    }

    /// The running VM's counters.
    pub async fn stats(&self) -> Result<crate::protocol::VmStats, ClientError> {
        Self::need(self.call(Method::GET, "/v1/stats", None).await?)
    }

    /// Freezes the guest's filesystems through its agent (for a snapshot); the launcher
    /// thaws them by itself after `unfreeze_timeout` (default 5 minutes) without an
    /// [`LauncherClient::unfreeze`]. Fails with 409 `guest agent is not connected`.
    pub async fn freeze(&self, unfreeze_timeout: Option<Duration>) -> Result<(), ClientError> {
        let body = Self::encode(&FreezeRequest {
            unfreeze_timeout_seconds: unfreeze_timeout.map(|t| t.as_secs()),
        })?;
        self.post("/v1/freeze", Some(body)).await
    }

    /// Thaws the guest's filesystems (fine when they are not frozen).
    pub async fn unfreeze(&self) -> Result<(), ClientError> {
        self.post("/v1/unfreeze", None).await
    }

    /// Hot-plugs a volume into the running VM.
    pub async fn hotplug_volume(
        &self,
        request: &HotplugVolumeRequest,
    ) -> Result<HotplugVolumeStatus, ClientError> {
        let body = Self::encode(request)?;
        Self::need(self.call(Method::POST, "/v1/volumes", Some(body)).await?)
    }

    /// Unplugs a hot-plugged volume; returns once the guest released it.
    pub async fn unplug_volume(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/volumes/{}", Self::segment(name)?);
        self.call::<serde_json::Value>(Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }

    /// Makes volume `name` take its raw image's current size (grow the file first).
    pub async fn resize_volume(&self, name: &str) -> Result<(), ClientError> {
        self.post(
            &format!("/v1/volumes/{}/resize", Self::segment(name)?),
            None,
        )
        .await
    }

    /// Puts the image at `path` (raw) into cdrom `name`.
    pub async fn insert_medium(&self, name: &str, path: &Path) -> Result<(), ClientError> {
        let body = Self::encode(&InsertMediumRequest {
            path: path.to_path_buf(),
            format: None,
        })?;
        self.post(
            &format!("/v1/volumes/{}/insert", Self::segment(name)?),
            Some(body),
        )
        .await
    }

    /// Ejects the medium of cdrom `name`.
    pub async fn eject_medium(&self, name: &str) -> Result<(), ClientError> {
        self.post(&format!("/v1/volumes/{}/eject", Self::segment(name)?), None)
            .await
    }

    /// A volume name as a path segment (names never need escaping; others are refused).
    fn segment(name: &str) -> Result<&str, ClientError> {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(name)
        } else {
            Err(ClientError::InvalidArgument {
                reason: format!("{name:?} is not a volume name"),
            })
        }
    }

    async fn upgrade(&self, path: &str, proto: &str) -> Result<ByteStream, ClientError> {
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
            return Err(Self::error_of(resp).await);
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|source| ClientError::Http { source })?;
        Ok(TokioIo::new(upgraded))
    }

    /// The serial console as a byte stream.
    pub async fn console(&self) -> Result<ByteStream, ClientError> {
        self.upgrade("/v1/console", "console").await
    }

    /// The VNC (RFB) server as a byte stream.
    pub async fn vnc(&self) -> Result<ByteStream, ClientError> {
        self.upgrade("/v1/vnc", "vnc").await
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

/// The status a launcher left in `final-state.json` when it exited.
pub fn final_status(run_dir: &RunDir) -> Option<LauncherStatus> {
    let bytes = std::fs::read(run_dir.final_state()).ok()?;
    serde_json::from_slice(&bytes).ok()
}
