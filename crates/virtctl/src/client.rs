//! Connection to the API: kube-rs for REST calls, a rustls websocket for streams.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

pub const SUBPROTOCOL: &str = "plain.kubevirt.io";

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

pub struct Session {
    pub client: Client,
    pub config: Config,
    pub namespace: String,
}

pub fn client_version_info() -> String {
    format!(
        "version.Info{{GitVersion:\"v{}-kubevirt-rs\", GitCommit:\"\", GitTreeState:\"clean\", BuildDate:\"\", GoVersion:\"\", Compiler:\"rustc\", Platform:\"{}/{}\"}}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH },
    )
}

/// The message of a Kubernetes `Status` error, else the error itself.
fn describe(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow!("{}", s.message),
        other => anyhow!(other),
    }
}

/// A failed API call, kept whole.
#[derive(Debug)]
pub struct ApiFailure(pub kube::Error);

impl ApiFailure {
    pub fn code(&self) -> Option<u16> {
        match &self.0 {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        }
    }

    /// The `Status` message, else the error itself.
    pub fn message(&self) -> String {
        match &self.0 {
            kube::Error::Api(s) => s.message.clone(),
            other => other.to_string(),
        }
    }
}

/// The `subresources.kubevirt.io/v1` path of `sub` on `{resource}/{name}` in `namespace`.
fn subresource_path(namespace: &str, resource: &str, name: &str, sub: &str) -> String {
    format!("/apis/subresources.kubevirt.io/v1/namespaces/{namespace}/{resource}/{name}/{sub}")
}

impl Session {
    pub async fn connect(
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        namespace: Option<String>,
    ) -> Result<Session> {
        let options = KubeConfigOptions {
            context,
            ..Default::default()
        };
        let config = match kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(&path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &options).await?
            }
            None => Config::from_kubeconfig(&options)
                .await
                .context("no kubeconfig: set KUBECONFIG or pass --kubeconfig")?,
        };
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config.clone())?;
        Ok(Session {
            client,
            config,
            namespace,
        })
    }

    fn path(&self, resource: &str, name: &str, sub: &str) -> String {
        subresource_path(&self.namespace, resource, name, sub)
    }

    async fn put(&self, path: String, body: Value) -> Result<()> {
        let req = http::Request::put(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)?;
        self.client.request_text(req).await.map_err(describe)?;
        Ok(())
    }

    /// PUT `body` to a subresource, keeping the API's error (its code tells a missing
    /// object from a refusal).
    pub async fn put_subresource(
        &self,
        resource: &str,
        name: &str,
        sub: &str,
        body: Value,
    ) -> std::result::Result<(), ApiFailure> {
        let req = http::Request::put(self.path(resource, name, sub))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .map_err(|e| ApiFailure(kube::Error::HttpError(e)))?;
        self.client.request_text(req).await.map_err(ApiFailure)?;
        Ok(())
    }

    pub async fn vm_action(&self, vm: &str, action: &str, body: Value) -> Result<()> {
        self.put(self.path("virtualmachines", vm, action), body)
            .await
    }

    pub async fn vmi_action(&self, vmi: &str, action: &str) -> Result<()> {
        self.put(
            self.path("virtualmachineinstances", vmi, action),
            Value::Object(Default::default()),
        )
        .await
    }

    pub async fn vmi_get_json(&self, vmi: &str, sub: &str) -> Result<Value> {
        let req =
            http::Request::get(self.path("virtualmachineinstances", vmi, sub)).body(vec![])?;
        self.client.request::<Value>(req).await.map_err(describe)
    }

    pub async fn require_vm(&self, name: &str) -> Result<()> {
        let path = format!(
            "/apis/kubevirt.io/v1/namespaces/{}/virtualmachines/{name}",
            self.namespace
        );
        let req = http::Request::get(path).body(vec![])?;
        self.client.request::<Value>(req).await.map_err(describe)?;
        Ok(())
    }

    pub async fn server_version(&self) -> Result<String> {
        let req = http::Request::get("/apis/subresources.kubevirt.io/v1/version").body(vec![])?;
        let v: Value = self.client.request(req).await.map_err(describe)?;
        let f = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Ok(format!(
            "version.Info{{GitVersion:\"{}\", GitCommit:\"{}\", GitTreeState:\"{}\", BuildDate:\"{}\", GoVersion:\"{}\", Compiler:\"{}\", Platform:\"{}\"}}",
            f("gitVersion"), f("gitCommit"), f("gitTreeState"), f("buildDate"), f("goVersion"), f("compiler"), f("platform")
        ))
    }

    /// Opens the `console` or `vnc` websocket of a VMI in the session's namespace. A
    /// refusal (VMI missing or not running) comes back as the server's message.
    pub async fn open_stream(&self, vmi: &str, sub: &str) -> Result<Ws> {
        self.open_stream_at(&self.namespace, "virtualmachineinstances", vmi, sub)
            .await
    }

    /// Opens the websocket subresource `sub` (e.g. `portforward/22/tcp`) of
    /// `{resource}/{name}` in `namespace`: port-forward targets name their own namespace
    /// and may be a VM (`virtualmachines`) as well as a VMI.
    pub async fn open_stream_at(
        &self,
        namespace: &str,
        resource: &str,
        name: &str,
        sub: &str,
    ) -> Result<Ws> {
        let url = &self.config.cluster_url;
        if url.scheme_str() != Some("https") {
            bail!("websocket streams (console, vnc, port-forward) need an https API server, got {url}");
        }
        let host = url
            .host()
            .ok_or_else(|| anyhow!("API server URL {url} has no host"))?;
        let port = url.port_u16().unwrap_or(443);
        let ws_url = format!(
            "wss://{host}:{port}{}",
            subresource_path(namespace, resource, name, sub)
        );
        let mut request = ws_url.into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse()?);
        if let Some(token) = &self.config.auth_info.token {
            request.headers_mut().insert(
                "Authorization",
                format!("Bearer {}", token.expose_secret()).parse()?,
            );
        }
        let tcp = TcpStream::connect((host.trim_matches(|c| c == '[' || c == ']'), port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let tls = self.tls_connector()?;
        let server_name = rustls::pki_types::ServerName::try_from(
            self.config
                .tls_server_name
                .clone()
                .unwrap_or_else(|| host.trim_matches(|c| c == '[' || c == ']').to_string()),
        )?;
        let stream = tls
            .connect(server_name, tcp)
            .await
            .context("TLS handshake")?;
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                let msg = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
                bail!("{msg}")
            }
            Err(e) => Err(e).context("websocket handshake"),
        }
    }

    fn tls_connector(&self) -> Result<tokio_rustls::TlsConnector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?;
        let mut roots = rustls::RootCertStore::empty();
        for der in self.config.root_cert.iter().flatten() {
            roots.add(rustls::pki_types::CertificateDer::from(der.clone()))?;
        }
        if roots.is_empty() {
            bail!("the kubeconfig has no certificate-authority-data for the API server");
        }
        let builder = builder.with_root_certificates(roots);
        // A kubeconfig user with a client certificate presents it here too, as the API
        // client does (kube-apiserver would otherwise see an anonymous websocket).
        let config = match self.client_identity()? {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .context("the kubeconfig's client certificate")?,
            None => builder.with_no_client_auth(),
        };
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    /// The kubeconfig user's client certificate and key (inline data or files), if any.
    fn client_identity(
        &self,
    ) -> Result<
        Option<(
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        )>,
    > {
        use base64::Engine;
        let info = &self.config.auth_info;
        let load =
            |data: Option<String>, file: &Option<String>, what: &str| -> Result<Option<Vec<u8>>> {
                if let Some(d) = data {
                    return base64::engine::general_purpose::STANDARD
                        .decode(d.trim())
                        .map(Some)
                        .with_context(|| format!("the kubeconfig's {what} data is not base64"));
                }
                file.as_ref()
                    .map(|f| std::fs::read(f).with_context(|| format!("reading {what} {f}")))
                    .transpose()
            };
        let cert = load(
            info.client_certificate_data.clone(),
            &info.client_certificate,
            "client-certificate",
        )?;
        let key = load(
            info.client_key_data
                .as_ref()
                .map(|k| k.expose_secret().to_string()),
            &info.client_key,
            "client-key",
        )?;
        let (Some(cert), Some(key)) = (cert, key) else {
            return Ok(None);
        };
        let certs = rustls_pemfile::certs(&mut cert.as_slice())
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("the kubeconfig's client certificate")?;
        let key = rustls_pemfile::private_key(&mut key.as_slice())
            .context("the kubeconfig's client key")?
            .ok_or_else(|| anyhow!("the kubeconfig's client key holds no key"))?;
        Ok(Some((certs, key)))
    }
}
