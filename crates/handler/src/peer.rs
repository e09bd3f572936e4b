//! Streams between the node agents of two nodes: a live migration's RAM stream and its disk
//! copies go from the source node's agent to the target node's over mutual TLS (each agent
//! presents the install's virt-handler certificate), as upstream's virt-handlers proxy them.
//! Nothing of a guest crosses the network unencrypted, and a launcher never listens on it.
//!
//! - Target: `GET /v1/migrations/{vmi uid}/{stream}` with `Upgrade: kubevirt-migration` on
//!   the node's endpoint ([`router`], cluster mode only). `stream` is `ram` (the target
//!   launcher's `incomingUri`) or `disks` (its `incomingStorageUri`); the agent connects the
//!   upgraded connection to that socket of its launcher waiting for that VMI.
//! - Source: [`forward`] listens on a unix socket in the source launcher's run directory
//!   and carries each connection the launcher makes there to the target node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixListener, UnixStream};

use crate::launchers::Launchers;

/// The `Upgrade` protocol of a migration stream.
pub const UPGRADE: &str = "kubevirt-migration";
/// The RAM (and device state) stream.
pub const STREAM_RAM: &str = "ram";
/// The disk copies of a block migration.
pub const STREAM_DISKS: &str = "disks";

/// The TLS client configuration towards another node's endpoint (read when needed: the
/// certificate is renewed in place).
pub type ClientTls =
    Arc<dyn Fn() -> BoxFuture<'static, Option<Arc<rustls::ClientConfig>>> + Send + Sync>;

/// How this node's agent reaches the others (cluster mode).
#[derive(Clone)]
pub struct Peers {
    /// The port of this node's endpoint: where the other nodes send migration streams.
    pub port: u16,
    pub client_tls: ClientTls,
    /// The name the endpoints' certificate is issued for.
    pub server_name: String,
}

/// The path of stream `stream` of the migration of VMI `vmi_uid`.
pub fn stream_path(vmi_uid: &str, stream: &str) -> String {
    format!("/v1/migrations/{vmi_uid}/{stream}")
}

/// The target node's side: the routes other nodes' agents send streams to.
pub fn router(launchers: Arc<Launchers>) -> Router {
    Router::new()
        .route("/v1/migrations/{uid}/{stream}", get(accept))
        .with_state(launchers)
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
}

async fn accept(
    State(launchers): State<Arc<Launchers>>,
    UrlPath((uid, stream)): UrlPath<(String, String)>,
    mut req: Request,
) -> Response {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE));
    if !wants_upgrade {
        return text(
            StatusCode::BAD_REQUEST,
            format!("Upgrade: {UPGRADE} expected"),
        );
    }
    // The launcher waiting for this VMI's guest, and the socket of the stream asked for.
    let waiting = launchers.all().into_iter().find_map(|l| {
        let st = l.observed().status?;
        (st.vmi.as_ref()?.uid == uid && st.incoming_uri.is_some()).then_some(st)
    });
    let Some(st) = waiting else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no migration target for VMI {uid} on this node"),
        );
    };
    let uri = match stream.as_str() {
        STREAM_RAM => st.incoming_uri,
        STREAM_DISKS => st.incoming_storage_uri,
        other => return text(StatusCode::NOT_FOUND, format!("no stream {other}")),
    };
    let Some(path) = uri.as_deref().and_then(|u| u.strip_prefix("unix:")) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("the migration target of VMI {uid} has no {stream} stream"),
        );
    };
    let mut local = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("the migration target's {stream} socket: {e}"),
            )
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(up) => {
                let mut remote = TokioIo::new(up);
                if let Err(error) = tokio::io::copy_bidirectional(&mut remote, &mut local).await {
                    tracing::debug!(%error, uid, stream, "migration stream ended");
                }
            }
            Err(error) => tracing::warn!(%error, uid, stream, "migration stream upgrade"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, UPGRADE)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Opens stream `path` on the node endpoint at `addr`.
async fn dial(
    peers: &Peers,
    addr: SocketAddr,
    path: &str,
) -> Result<TokioIo<hyper::upgrade::Upgraded>, String> {
    let tls = (peers.client_tls)()
        .await
        .ok_or("this node has no certificate yet")?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(peers.server_name.clone())
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = hyper::Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, UPGRADE)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{addr}{path}: {e}"))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!("{addr}{path}: {code}: {body}"));
    }
    let up = hyper::upgrade::on(resp)
        .await
        .map_err(|e| format!("{addr}{path}: {e}"))?;
    Ok(TokioIo::new(up))
}

/// A unix socket at `socket` (replacing a stale one) whose connections [`forward`] carries.
pub fn listen(socket: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(socket);
    UnixListener::bind(socket)
}

/// Carries each connection to `listener` to stream `path` on the node endpoint at `addr`,
/// until the task is dropped; `socket` is removed then.
pub async fn forward(
    listener: UnixListener,
    socket: PathBuf,
    peers: Peers,
    addr: SocketAddr,
    path: String,
) {
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _socket = RemoveOnDrop(socket);
    loop {
        let mut local = match listener.accept().await {
            Ok((s, _)) => s,
            Err(error) => {
                tracing::warn!(%error, "migration proxy socket");
                return;
            }
        };
        let (peers, path) = (peers.clone(), path.clone());
        tokio::spawn(async move {
            match dial(&peers, addr, &path).await {
                Ok(mut remote) => {
                    if let Err(error) = tokio::io::copy_bidirectional(&mut local, &mut remote).await
                    {
                        tracing::debug!(%error, path, "migration stream ended");
                    }
                }
                // The launcher's end closes: its migration fails with the connection.
                Err(error) => tracing::warn!(error, path, "cannot reach the migration target"),
            }
        });
    }
}
