//! kubevirt-apiserver: an embedded Kubernetes-compatible API server with a durable
//! revision-log store (see README.md).

pub mod auth;
pub mod conn;
pub mod convert;
pub mod decode;
pub mod error;
mod files;
mod gc;
pub mod http;
pub mod kubevirt;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod proto;
mod quota;
pub mod registry;
pub mod schema;
pub mod services;
pub mod store;
pub mod tls;
pub mod view;
mod volumes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;

pub use error::{ApiError, Cause};
pub use ops::{Admission, EvictionCheck, Operation};
pub use registry::ExtraApi;
pub use store::StoreOptions;

/// Server start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("creating data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("installing {what}: {source}")]
    Bootstrap { what: String, source: ApiError },
}

pub type Result<T> = std::result::Result<T, ServerError>;

/// How to run the embedded API server.
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Routes merged behind authentication (e.g. `/apis/subresources.kubevirt.io/...`).
    pub extra_routes: Option<axum::Router>,
    /// Routes that authenticate requests themselves (the upload proxy's tokens): served
    /// beside the API, outside its authentication and authorization.
    pub public_routes: Option<axum::Router>,
    /// API groups listed in discovery for `extra_routes`.
    pub extra_apis: Vec<ExtraApi>,
    /// CustomResourceDefinitions (JSON) installed at start-up (created or updated).
    pub crds: Vec<Value>,
    /// In-process admission run on every create/update.
    pub admission: Vec<Arc<dyn Admission>>,
    /// Checks run before a pod is evicted (`pods/eviction`).
    pub eviction_checks: Vec<Arc<dyn EvictionCheck>>,
    pub store: StoreOptions,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Connection and request limits (kube-apiserver's defaults).
    pub limits: Limits,
    /// kube-apiserver's `--authorization-mode`: RBAC, or AlwaysAllow (benchmarks compare).
    pub authorization: AuthorizationMode,
    /// Metrics of other components served on `/metrics` after the server's own.
    pub metrics_sources: Vec<Arc<dyn metrics::Source>>,
}

/// How requests are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthorizationMode {
    /// RBAC (and `system:masters`), as kube-apiserver's default `Node,RBAC`.
    #[default]
    Rbac,
    /// Every authenticated or anonymous request is allowed (`--authorization-mode=AlwaysAllow`).
    AlwaysAllow,
}

/// What one client may hold of the server: connections, time, bytes. The defaults are
/// kube-apiserver's where it has one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; one more is closed as soon as it is accepted, leaving
    /// the others alone. Keeps idle clients from using up the process' file descriptors.
    pub max_connections: usize,
    /// A TLS handshake not finished by then is dropped (Go's TLS handshake deadline, as
    /// kube-apiserver runs it, is in this range).
    pub tls_handshake_timeout: Duration,
    /// HTTP/1 request headers not complete by then close the connection; this also ends
    /// idle keep-alive connections (kube-apiserver's `ReadHeaderTimeout`: 32 s).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (kube-apiserver's
    /// `IdleTimeout`: 90 s). Covers HTTP/2 connections that never open a stream.
    pub idle_timeout: Duration,
    /// Largest request body (kube-apiserver's `MaxRequestBodyBytes`: 3 MiB).
    pub max_body_bytes: usize,
    /// kube-apiserver's `--min-request-timeout` (1800 s): watches end after a random time
    /// between this and twice this; `timeoutSeconds` is capped at twice this.
    pub min_request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(32),
            idle_timeout: Duration::from_secs(90),
            max_body_bytes: decode::MAX_BODY_BYTES,
            min_request_timeout: Duration::from_secs(1800),
        }
    }
}

/// `/var/lib/kubevirt-rs` as root, else `$XDG_DATA_HOME/kubevirt-rs`
/// (`~/.local/share/kubevirt-rs`).
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/kubevirt-rs");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("kubevirt-rs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/kubevirt-rs")
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6443";

impl ServerConfig {
    /// The embedded default: kubevirt.io CRDs installed and their admission enabled.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> ServerConfig {
        let mut cfg = ServerConfig::bare(data_dir, listen);
        cfg.crds = kubevirt::crds();
        cfg.admission = vec![Arc::new(kubevirt::KubevirtAdmission::default())];
        cfg
    }

    /// Only the built-in core kinds; no CRDs, no admission.
    pub fn bare(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            listen,
            extra_routes: None,
            public_routes: None,
            extra_apis: Vec::new(),
            crds: Vec::new(),
            admission: Vec::new(),
            eviction_checks: Vec::new(),
            store: StoreOptions::default(),
            bookmark_interval: Duration::from_secs(30),
            limits: Limits::default(),
            authorization: AuthorizationMode::default(),
            metrics_sources: Vec::new(),
        }
    }
}

/// Command-line arguments of `kubevirt-rs server` (the API-server part).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Directory for the store, certificates and kubeconfig files.
    #[arg(long, env = "KUBEVIRT_RS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
}

impl ServerArgs {
    pub fn into_config(self) -> ServerConfig {
        ServerConfig::new(self.data_dir.unwrap_or_else(default_data_dir), self.listen)
    }
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub kubeconfig_path: PathBuf,
    pub readonly_kubeconfig_path: PathBuf,
    pub admin_token: String,
    pub readonly_token: String,
    pub ca_pem: String,
    store: Arc<store::Store>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl ServerHandle {
    /// Stops accepting, ends open connections and closes the store.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }

    /// Waits until the server stops (it only stops through `shutdown`).
    pub async fn wait(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn bootstrap(ops: &ops::Ops, crds: &[Value]) -> Result<()> {
    let reg = &ops.registry;
    let crd_def = reg
        .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ServerError::Bootstrap {
            what: "the CRD resource".into(),
            source: ApiError::internal("missing built-in"),
        })?;
    for crd in crds {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let what = format!("CustomResourceDefinition {name}");
        let err = |source| ServerError::Bootstrap {
            what: what.clone(),
            source,
        };
        match ops.get(&crd_def, None, &name) {
            Ok(existing) if existing["spec"] == crd["spec"] => {}
            Ok(_) => {
                let mut upd = crd.clone();
                upd["metadata"]["resourceVersion"] = Value::Null;
                ops.patch(
                    &crd_def,
                    None,
                    &name,
                    ops::PatchType::Merge,
                    json!({"spec": null}),
                    ops::Part::Main,
                    ops::WriteOpts::default(),
                )
                .await
                .map_err(err)?;
                ops.patch(
                    &crd_def,
                    None,
                    &name,
                    ops::PatchType::Merge,
                    json!({"spec": crd["spec"]}),
                    ops::Part::Main,
                    ops::WriteOpts::default(),
                )
                .await
                .map_err(err)?;
            }
            Err(_) => {
                ops.create(&crd_def, None, crd.clone(), ops::WriteOpts::default())
                    .await
                    .map_err(err)?;
            }
        }
    }
    ops.refresh_registry();
    bootstrap_rbac(ops).await?;
    let ns_def = reg
        .find("", "v1", "namespaces")
        .ok_or_else(|| ServerError::Bootstrap {
            what: "namespaces".into(),
            source: ApiError::internal("missing built-in"),
        })?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if ops.get(&ns_def, None, ns).is_err() {
            ops.create(
                &ns_def,
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                ops::WriteOpts::default(),
            )
            .await
            .map_err(|source| ServerError::Bootstrap {
                what: format!("namespace {ns}"),
                source,
            })?;
        }
    }
    Ok(())
}

/// The default ClusterRoles and ClusterRoleBindings (Kubernetes' and KubeVirt's), created
/// when missing, and the binding that makes the read-only token a `view` user. Existing
/// ones are left as the administrator may have changed them.
async fn bootstrap_rbac(ops: &ops::Ops) -> Result<()> {
    let mut cluster_roles = kubevirt_rbac::defaults::cluster_roles();
    auth::authz::apply_aggregation(&mut cluster_roles);
    let mut bindings = kubevirt_rbac::defaults::cluster_role_bindings();
    bindings.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "kubevirt-rs:readonly"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": auth::authn::READONLY_USER}],
    }));
    for (plural, objs) in [
        ("clusterroles", cluster_roles),
        ("clusterrolebindings", bindings),
    ] {
        let def = ops
            .registry
            .find(registry::RBAC_GROUP, "v1", plural)
            .ok_or_else(|| ServerError::Bootstrap {
                what: plural.into(),
                source: ApiError::internal("missing built-in"),
            })?;
        for obj in objs {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if ops.get(&def, None, &name).is_ok() {
                continue;
            }
            ops.create(&def, None, obj, ops::WriteOpts::default())
                .await
                .map_err(|source| ServerError::Bootstrap {
                    what: format!("{plural} {name}"),
                    source,
                })?;
        }
    }
    Ok(())
}

fn kubeconfig_server(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("https://{ip}:{}", addr.port())
}

/// Starts the server: opens the store, installs CRDs and namespaces, writes the
/// kubeconfig files, and serves HTTPS until `ServerHandle::shutdown`.
pub async fn start(cfg: ServerConfig) -> Result<ServerHandle> {
    let dir = cfg.data_dir.clone();
    let data_dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ServerError::DataDir { path, source }
    };
    files::private_dir(&dir).map_err(data_dir_err(&dir))?;
    let creds = tls::load_or_create(&dir)?;
    let db = dir.join("store.db");
    files::private_file(&db).map_err(data_dir_err(&db))?;
    let store_opts = cfg.store.clone();
    let db2 = db.clone();
    let store = tokio::task::spawn_blocking(move || store::Store::open(&db2, store_opts))
        .await
        .map_err(|e| ServerError::Bootstrap {
            what: "store".into(),
            source: ApiError::internal(e.to_string()),
        })??;
    // SQLite gives `-wal`/`-shm` the database's mode; older data dirs may have wider ones.
    for suffix in ["-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            files::private_file(&p).map_err(data_dir_err(&p))?;
        }
    }
    let mut extra_apis = cfg.extra_apis.clone();
    extra_apis.extend(auth::review::discovery());
    let registry = Arc::new(registry::Registry::new(extra_apis));
    let authz = Arc::new(auth::Authorizer::new(store.clone(), cfg.authorization));
    let ops = ops::Ops {
        store: store.clone(),
        registry: registry.clone(),
        admission: cfg.admission.clone(),
        eviction_checks: cfg.eviction_checks.clone(),
        authz: authz.clone(),
        service_allocation: Default::default(),
    };
    ops.refresh_registry();
    bootstrap(&ops, &cfg.crds).await?;

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let server = kubeconfig_server(addr);
    let kubeconfig_path = dir.join("kubeconfig");
    let readonly_kubeconfig_path = dir.join("kubeconfig-readonly");
    tls::write_kubeconfig(
        &kubeconfig_path,
        &tls::kubeconfig(&server, &creds.ca_pem, "admin", &creds.admin_token),
    )?;
    tls::write_kubeconfig(
        &readonly_kubeconfig_path,
        &tls::kubeconfig(&server, &creds.ca_pem, "readonly", &creds.readonly_token),
    )?;

    let signer =
        auth::sa_tokens::Signer::new(&creds.sa_key_pem).map_err(|e| ServerError::Bootstrap {
            what: "the service-account token signer".into(),
            source: ApiError::internal(e.to_string()),
        })?;
    let metrics = Arc::new(metrics::Metrics::new(cfg.metrics_sources));
    let app = Arc::new(http::AppState {
        ops,
        metrics: metrics.clone(),
        openapi: openapi::OpenApi::new(),
        auth: auth::Authenticator::new(
            store.clone(),
            &creds.admin_token,
            &creds.readonly_token,
            signer,
        ),
        authz,
        bookmark_interval: cfg.bookmark_interval,
        max_body: cfg.limits.max_body_bytes,
        min_request_timeout: cfg.limits.min_request_timeout,
    });
    let api = axum::Router::new()
        .fallback(http::handle)
        .with_state(app.clone());
    let router = match cfg.extra_routes {
        Some(extra) => extra.merge(api),
        None => api,
    }
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        auth::middleware,
    ));
    let router = match cfg.public_routes {
        Some(public) => router.merge(public),
        None => router,
    }
    .layer(axum::middleware::from_fn_with_state(
        metrics,
        metrics::count,
    ));

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(gc::run(store.clone()));
    tasks.spawn(quota::run(store.clone()));
    tasks.spawn(auth::controllers::run(app.clone(), creds.ca_pem.clone()));
    let acceptor = tokio_rustls::TlsAcceptor::from(creds.server_config.clone());
    tasks.spawn(conn::serve(
        listener,
        acceptor,
        router,
        cfg.limits.clone(),
        shutdown_rx,
    ));
    tracing::info!(%addr, kubeconfig = %kubeconfig_path.display(), "API server listening");
    Ok(ServerHandle {
        addr,
        kubeconfig_path,
        readonly_kubeconfig_path,
        admin_token: creds.admin_token,
        readonly_token: creds.readonly_token,
        ca_pem: creds.ca_pem,
        store,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// Runs the server from command-line arguments until Ctrl-C / SIGTERM.
pub async fn run_cli(args: ServerArgs) -> Result<()> {
    let handle = start(args.into_config()).await?;
    println!(
        "kubevirt-rs API server on https://{}\nexport KUBECONFIG={}",
        handle.addr,
        handle.kubeconfig_path.display()
    );
    wait_for_signal().await;
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Path helper for tests and embedders.
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubeconfig")
}
