//! kubevirt-storage: persistent disks for VMs.
//!
//! - [`local`]: the built-in class's volumes on disk (one directory per volume, `disk.img`).
//! - [`claims`]: the controllers of claims and volumes for the built-in class (provision,
//!   bind, resize, reclaim, protection), what a cluster's volume binder and provisioner do.
//! - [`datavolume`]: CDI's DataVolume controller: a claim, then its data (import over
//!   http(s), from a registry, upload, clone, blank) through `kubevirt-importer`.
//! - [`snapshots`]: VolumeSnapshots of the built-in class's volumes (a reflink or sparse
//!   copy), and claims provisioned from them.
//! - [`upload`]: upload tokens and the upload proxy (`virtctl image-upload`).
//! - [`export`]: VM exports: their controller, and the downloads they allow
//!   (`virtctl vmexport`).
//!
//! In embedded mode all of it runs in the server ([`run`]); on a cluster the DataVolume
//! controller runs against the cluster's classes (see README.md).

pub mod claims;
pub mod datavolume;
pub mod export;
pub mod local;
pub mod snapshots;
pub mod upload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use kubevirt_reconcile::events::EventRecorder;
use kubevirt_reconcile::ApiCallError;

pub use local::LocalVolumes;

/// The provisioner name of the built-in class.
pub const PROVISIONER: &str = "kubevirt-rs.io/local";
/// The built-in class, the default one.
pub const DEFAULT_CLASS: &str = "local";

/// Why a storage reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Api(#[from] ApiCallError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    pub(crate) fn api(action: &'static str, name: &str, e: kube::Error) -> Self {
        StorageError::Api(kubevirt_reconcile::api_call_on(action, "object", "", name)(
            e,
        ))
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, StorageError::Api(e) if e.is_conflict())
    }
}

/// The time now, as object timestamps take it.
pub(crate) fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
}

/// The storage controllers' error policy: a lost race is retried at once, anything else
/// after 2 s.
pub(crate) fn error_policy<K: kube::Resource, C>(
    obj: Arc<K>,
    error: &StorageError,
    _ctx: Arc<C>,
) -> kube::runtime::controller::Action {
    kubevirt_reconcile::log_failure(
        "syncing storage",
        &kubevirt_reconcile::object_ref(&*obj),
        error,
        error.is_conflict(),
    );
    kube::runtime::controller::Action::requeue(if error.is_conflict() {
        std::time::Duration::from_millis(200)
    } else {
        std::time::Duration::from_secs(2)
    })
}

/// The built-in class as the server installs it: the default class, volumes bound at once
/// (one node: nothing to wait for), deleted with their claim, growable.
pub fn default_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(DEFAULT_CLASS.into()),
            annotations: Some(
                [(
                    "storageclass.kubernetes.io/is-default-class".to_string(),
                    "true".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        allow_volume_expansion: Some(true),
        ..Default::default()
    }
}

/// Creates the built-in class unless a class of that name exists (an administrator's
/// changes stay).
pub async fn ensure_default_class(client: &Client) -> Result<(), StorageError> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    match classes
        .create(&PostParams::default(), &default_class())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(StorageError::api(
            "creating storage class",
            DEFAULT_CLASS,
            e,
        )),
    }
}

/// Where the embedded storage keeps its volumes and which node it serves.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub volumes: LocalVolumes,
    pub node: String,
    /// Passed to registry imports (the containerDisk cache and registry settings).
    pub registry: kubevirt_diskprep::RegistryConfig,
    pub cache_dir: PathBuf,
    /// Serves VM exports from this process (embedded mode); `None`: no export controller.
    pub exports: Option<Arc<export::Exports>>,
}

/// Runs the embedded storage (default class, claims and volumes, DataVolumes) until
/// `shutdown` resolves.
pub async fn run(
    client: Client,
    config: StorageConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    if let Err(e) = ensure_default_class(&client).await {
        tracing::warn!(error = %e, "could not install the built-in storage class");
    }
    let ctx = Arc::new(claims::Context {
        recorder: EventRecorder::new(client.clone(), "persistentvolume-controller", None),
        client: client.clone(),
        volumes: config.volumes.clone(),
        node: config.node.clone(),
    });
    let shutdown = futures::FutureExt::shared(shutdown);
    let snapshots = Arc::new(snapshots::Context {
        recorder: EventRecorder::new(client.clone(), "snapshot-controller", None),
        client: client.clone(),
        volumes: config.volumes.clone(),
    });
    let exports = config.exports.clone().map(|exports| {
        Arc::new(export::Context {
            recorder: EventRecorder::new(client.clone(), "export-controller", None),
            client: client.clone(),
            exports,
        })
    });
    let dv = Arc::new(datavolume::Context::new(client, config));
    let exports_shutdown = shutdown.clone();
    let exports = async move {
        if let Some(ctx) = exports {
            export::run(ctx, exports_shutdown).await;
        }
    };
    futures::join!(
        claims::run(ctx, shutdown.clone()),
        snapshots::run(snapshots, shutdown.clone()),
        exports,
        datavolume::run(dv, shutdown)
    );
}
