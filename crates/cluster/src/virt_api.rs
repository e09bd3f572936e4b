//! `kubevirt-rs virt-api` in cluster mode: the admission webhooks over TLS, with the
//! certificate from the self-managed PKI ([`crate::certs`]), and the loop that keeps the
//! PKI fresh and the webhook configurations' `caBundle` in step with it.

use std::net::SocketAddr;
use std::sync::Arc;
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
use crate::webhooks::{MUTATING_CONFIGURATION, VALIDATING_CONFIGURATION};

/// How often the PKI and the `caBundle`s are checked.
pub const REFRESH: Duration = Duration::from_secs(10);

pub struct VirtApiConfig {
    pub namespace: String,
    pub listen: SocketAddr,
    pub admission: Arc<dyn Admission>,
    pub lifetimes: Lifetimes,
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
    let tls = certs::server_config(serving.clone())?;
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    tracing::info!(listen = %cfg.listen, "virt-api is serving its webhooks");
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
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
                if let Err(error) = serving.update(&p) {
                    tracing::warn!(%error, "could not load the renewed certificate");
                } else {
                    tracing::info!("serving the renewed certificate");
                    current = p;
                }
            }
            Ok(_) => sync_ca_bundles(&client, &cfg.namespace, &current).await,
            Err(error) => tracing::warn!(%error, "checking the PKI"),
        }
    }
    let _ = serve.await;
    Ok(())
}

/// Sets `caBundle` on every webhook of ours that lacks the current bundle.
async fn sync_ca_bundles(client: &Client, ns: &str, pki: &Pki) {
    let bundle = ByteString(pki.ca_bundle.clone().into_bytes());
    let ours = |c: &WebhookClientConfig| {
        c.service
            .as_ref()
            .is_some_and(|s| s.name == VIRT_API && s.namespace == ns)
    };
    // Every one of ours is set (not just the first stale one): one write per configuration.
    let fix_all = |configs: &mut [&mut WebhookClientConfig]| {
        let mut changed = false;
        for c in configs.iter_mut() {
            if ours(c) && c.ca_bundle.as_ref() != Some(&bundle) {
                c.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        changed
    };
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Ok(Some(mut m)) = mutating.get_opt(MUTATING_CONFIGURATION).await {
        let mut configs: Vec<_> = m
            .webhooks
            .iter_mut()
            .flatten()
            .map(|w| &mut w.client_config)
            .collect();
        let changed = fix_all(&mut configs);
        if changed {
            report(
                MUTATING_CONFIGURATION,
                mutating
                    .replace(MUTATING_CONFIGURATION, &PostParams::default(), &m)
                    .await,
            );
        }
    }
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Ok(Some(mut v)) = validating.get_opt(VALIDATING_CONFIGURATION).await {
        let mut configs: Vec<_> = v
            .webhooks
            .iter_mut()
            .flatten()
            .map(|w| &mut w.client_config)
            .collect();
        let changed = fix_all(&mut configs);
        if changed {
            report(
                VALIDATING_CONFIGURATION,
                validating
                    .replace(VALIDATING_CONFIGURATION, &PostParams::default(), &v)
                    .await,
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
