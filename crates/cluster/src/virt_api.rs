//! `kubevirt-rs virt-api` in cluster mode: the admission webhooks over TLS, with the
//! certificate from the self-managed PKI ([`crate::certs`]), and the loop that keeps the
//! PKI fresh and the webhook configurations' `caBundle` in step with it.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::Client;

use kubevirt_apiserver::Admission;

use crate::certs::{self, Lifetimes, Pki, ServingCert};
use crate::manifests::VIRT_API;
use crate::subresources::{ProxyState, RequestHeaderAuth};
use crate::webhooks::{MUTATING_CONFIGURATION, VALIDATING_CONFIGURATION};

/// How often the PKI and the `caBundle`s are checked.
pub const REFRESH: Duration = Duration::from_secs(10);

pub struct VirtApiConfig {
    pub namespace: String,
    pub listen: SocketAddr,
    pub admission: Arc<dyn Admission>,
    pub lifetimes: Lifetimes,
    /// The port virt-handlers serve the node-level subresources on.
    pub handler_port: u16,
    /// The VM-level subresources (served here, after authorization).
    pub vm_subresources: Router,
}

/// The DNS names kube-apiserver may use for virt-api's Service.
pub fn service_dns_names(ns: &str) -> Vec<String> {
    vec![
        format!("{VIRT_API}.{ns}.svc"),
        format!("{VIRT_API}.{ns}.svc.cluster.local"),
        format!("{VIRT_API}.{ns}"),
    ]
}

/// Serves until `shutdown` turns true.
pub async fn run(
    client: Client,
    cfg: VirtApiConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let names = service_dns_names(&cfg.namespace);
    let pki = loop {
        match certs::reconcile(&client, &cfg.namespace, &names, cfg.lifetimes).await {
            Ok(p) => break p,
            Err(error) => {
                tracing::warn!(%error, "the PKI is not ready; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let serving = Arc::new(ServingCert::new(&pki)?);
    let front_proxy = match RequestHeaderAuth::from_cluster(&client).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            tracing::warn!("the cluster has no front-proxy settings: the subresources API will refuse every request");
            RequestHeaderAuth::default()
        }
        Err(e) => anyhow::bail!("reading kube-system/extension-apiserver-authentication: {e}"),
    };
    let client_roots =
        (!front_proxy.client_ca.is_empty()).then_some(front_proxy.client_ca.as_str());
    let tls = certs::server_config(serving.clone(), client_roots)?;
    let handler_tls = Arc::new(RwLock::new(certs::handler_client_config(&pki)?));
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    tracing::info!(listen = %cfg.listen, "virt-api is serving its webhooks and subresources");
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::subresources::router(ProxyState {
            client: client.clone(),
            auth: Arc::new(front_proxy),
            handler_tls: handler_tls.clone(),
            handler_port: cfg.handler_port,
            vm_subresources: cfg.vm_subresources.clone(),
        }))
        .merge(crate::eviction::router(client.clone()))
        .merge(crate::admission::router(crate::admission::Webhooks::new(
            cfg.admission.clone(),
        )));
    let serve = tokio::spawn(kubevirt_apiserver::conn::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        router,
        kubevirt_apiserver::Limits::default(),
        shutdown.clone(),
    ));
    let mut current = pki;
    sync_ca_bundles(&client, &cfg.namespace, &current).await;
    let mut stop = shutdown;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(REFRESH) => {}
        }
        match certs::reconcile(&client, &cfg.namespace, &names, cfg.lifetimes).await {
            Ok(p) if p != current => {
                // Clients learn the new bundle first; the new certificate follows at once
                // (the bundle keeps the previous CA, so either certificate verifies).
                sync_ca_bundles(&client, &cfg.namespace, &p).await;
                let loaded = serving
                    .update(&p)
                    .and_then(|()| certs::handler_client_config(&p));
                match loaded {
                    Ok(client_tls) => {
                        *handler_tls.write().unwrap_or_else(|e| e.into_inner()) = client_tls;
                        tracing::info!("serving the renewed certificate");
                        current = p;
                    }
                    Err(error) => tracing::warn!(%error, "could not load the renewed certificate"),
                }
            }
            Ok(_) => sync_ca_bundles(&client, &cfg.namespace, &current).await,
            Err(error) => tracing::warn!(%error, "checking the PKI"),
        }
    }
    let _ = serve.await;
    Ok(())
}

/// Sets `caBundle` on every webhook of ours and on our APIService where it is not the
/// current bundle.
async fn sync_ca_bundles(client: &Client, ns: &str, pki: &Pki) {
    let bundle = ByteString(pki.ca_bundle.clone().into_bytes());
    let ours = |c: &WebhookClientConfig| {
        c.service
            .as_ref()
            .is_some_and(|s| s.name == VIRT_API && s.namespace == ns)
    };
    // Every one of ours is set (not just the first stale one): one write per configuration.
    let fix_all = |configs: Vec<&mut WebhookClientConfig>| {
        let mut changed = false;
        for c in configs {
            if ours(c) && c.ca_bundle.as_ref() != Some(&bundle) {
                c.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        changed
    };
    set_bundles::<MutatingWebhookConfiguration>(client, MUTATING_CONFIGURATION, |m| {
        fix_all(
            m.webhooks
                .iter_mut()
                .flatten()
                .map(|w| &mut w.client_config)
                .collect(),
        )
    })
    .await;
    set_bundles::<ValidatingWebhookConfiguration>(client, VALIDATING_CONFIGURATION, |v| {
        fix_all(
            v.webhooks
                .iter_mut()
                .flatten()
                .map(|w| &mut w.client_config)
                .collect(),
        )
    })
    .await;
    let gvk = kube::core::GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "apiservices");
    let services: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
    let name = crate::manifests::API_SERVICE;
    if let Ok(Some(s)) = services.get_opt(name).await {
        let want = certs::ca_bundle_field(pki);
        if s.data["spec"]["caBundle"].as_str() != Some(want.as_str()) {
            let patch = serde_json::json!({"spec": {"caBundle": want}});
            report(
                name,
                services
                    .patch(
                        name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await,
            );
        }
    }
}

/// Reads webhook configuration `name`, lets `fix` set its bundles, and writes it back if
/// `fix` changed anything (guarded by the resourceVersion it read).
async fn set_bundles<K>(client: &Client, name: &str, fix: impl FnOnce(&mut K) -> bool)
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    if let Ok(Some(mut config)) = api.get_opt(name).await {
        if fix(&mut config) {
            report(
                name,
                api.replace(name, &PostParams::default(), &config).await,
            );
        }
    }
}

fn report<T>(name: &str, r: Result<T, kube::Error>) {
    match r {
        Ok(_) => tracing::info!(name, "caBundle updated"),
        // A conflict is another replica's write; the next round looks again.
        Err(error) => tracing::info!(name, %error, "caBundle not updated this round"),
    }
}
