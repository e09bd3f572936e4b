//! virt-handler's HTTPS endpoint on its node: the node-level subresources (console, VNC,
//! pause, guest agent, ...) that virt-api forwards to the node running the VMI. Mutual
//! TLS: the certificate and the trusted bundle come from the Secret virt-api keeps
//! ([`crate::certs::HANDLER_CERT_SECRET`]), and only virt-api's client certificate is
//! accepted. A renewed certificate or bundle restarts the listener.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use kube::Client;

use crate::certs;

/// The port virt-handler listens on, as upstream's virt-handler console server.
pub const DEFAULT_PORT: u16 = 8186;

/// Serves `router` on `listen` until `shutdown` turns true.
pub async fn serve(
    client: Client,
    namespace: String,
    listen: SocketAddr,
    router: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut current: Option<(
        certs::Pki,
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )> = None;
    loop {
        match certs::read_handler_pki(&client, &namespace).await {
            Ok(Some(pki)) if current.as_ref().is_none_or(|(p, _, _)| *p != pki) => {
                if let Some((_, stop, task)) = current.take() {
                    let _ = stop.send(true);
                    let _ = task.await;
                }
                match start(&pki, listen, router.clone()).await {
                    Ok((stop, task)) => {
                        tracing::info!(%listen, "serving the node's subresources");
                        current = Some((pki, stop, task));
                    }
                    Err(error) => {
                        tracing::warn!(%error, %listen, "cannot serve the node's subresources")
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => tracing::info!(
                secret = certs::HANDLER_CERT_SECRET,
                "waiting for virt-api to issue this node's certificate"
            ),
            Err(error) => tracing::warn!(%error, "reading this node's certificate"),
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
    if let Some((_, stop, task)) = current {
        let _ = stop.send(true);
        let _ = task.await;
    }
}

async fn start(
    pki: &certs::Pki,
    listen: SocketAddr,
    router: Router,
) -> anyhow::Result<(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
)> {
    let tls = certs::handler_server_config(pki)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(kubevirt_apiserver::conn::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        router,
        kubevirt_apiserver::Limits::default(),
        stopped,
    ));
    Ok((stop, task))
}
