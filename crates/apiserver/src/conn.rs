//! Accepting connections: TLS, then HTTP/1.1 or HTTP/2 as ALPN chose, under the limits
//! that keep idle and slow clients from holding the server's connections and file
//! descriptors (see `Limits`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::Limits;

/// How long a connection told to close (idle) gets to finish what it is sending.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// HTTP/2 liveness: a PING this often, and the connection is dropped when one is not
/// answered in time (a peer that vanished without closing).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Accepts until `shutdown`, one task per connection, at most `limits.max_connections`
/// at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    limits: Limits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    let mut conns = JoinSet::new();
    let mut last_warned: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closing it at once frees its descriptor; open connections are untouched.
            if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(%peer, max = limits.max_connections,
                    "connection limit reached; closing new connections");
                last_warned = Some(Instant::now());
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, router, limits) = (acceptor.clone(), router.clone(), limits.clone());
        conns.spawn(async move {
            serve_connection(tcp, peer, acceptor, router, &limits).await;
            drop(permit);
        });
    }
    conns.abort_all();
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    limits: &Limits,
) {
    let tls = match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    // ALPN decides the protocol, so no bytes are read before hyper's own timeouts run.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    // rustls verified the chain to our CA during the handshake; its subject is the user.
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|c| crate::auth::PeerCertificate::from_der(c.as_ref()));
    let activity = Activity::default();
    let svc = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let in_flight = activity.begin();
            let router = router.clone();
            if let Some(cert) = &peer_cert {
                req.extensions_mut().insert(cert.clone());
            }
            async move {
                let resp = router.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|inner| Tracked {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let io = TokioIo::new(tls);
    let result = if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_PING_INTERVAL))
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .serve_connection(io, svc);
        drive(
            conn,
            |c| c.graceful_shutdown(),
            &activity,
            limits.idle_timeout,
        )
        .await
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(io, svc)
            .with_upgrades();
        drive(
            conn,
            |c| c.graceful_shutdown(),
            &activity,
            limits.idle_timeout,
        )
        .await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with error");
    }
}

/// Runs a connection until it ends, or until it has been idle for `idle`; then asks it to
/// close gracefully and drops it if it has not within `CLOSE_GRACE`.
async fn drive<C>(
    conn: C,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    activity: &Activity,
    idle: Duration,
) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        () = activity.idle_for(idle) => {}
    }
    graceful_shutdown(conn.as_mut());
    tokio::time::timeout(CLOSE_GRACE, conn)
        .await
        .unwrap_or(Ok(()))
}

/// Requests in flight on one connection, and when the last one ended. A request counts
/// until its response body is finished or dropped, so a long watch keeps its connection.
#[derive(Clone)]
struct Activity(Arc<Mutex<ActivityState>>);

struct ActivityState {
    in_flight: usize,
    since: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(Mutex::new(ActivityState {
            in_flight: 0,
            since: Instant::now(),
        })))
    }
}

impl Activity {
    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(&self) -> InFlight {
        self.state().in_flight += 1;
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let (busy, since) = {
                let s = self.state();
                (s.in_flight > 0, s.since)
            };
            if !busy && since.elapsed() >= idle {
                return;
            }
            let wake = if busy {
                Instant::now() + idle
            } else {
                since + idle
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.since = Instant::now();
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
