//! The limits an attacker found missing on the default settings, checked over real
//! HTTPS against a started server: slow and idle clients, connection caps, deep and large
//! bodies, oversized objects, endless watches, names, read-only streams, file modes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use kube::core::Status;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one request with the client's credentials; the body, or the Status it failed with.
async fn send(
    client: &kube::Client,
    method: &str,
    uri: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<String, Box<Status>> {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("Content-Type", content_type)
        .body(body)
        .unwrap();
    client.request_text(req).await.map_err(|e| match e {
        kube::Error::Api(s) => s,
        other => panic!("{method} {uri}: expected an API error, got {other:?}"),
    })
}

fn tls_connector(s: &TestServer) -> tokio_rustls::TlsConnector {
    let ca = std::fs::read(s.dir.path().join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Reads until the peer closes; how long that took (panics after `within`).
async fn closed_within(mut io: impl AsyncReadExt + Unpin, within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + within).into(), io.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open for {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// One HTTP/1.1 request on an open connection; the status line of the answer.
async fn http1_get<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    io: &mut S,
    path: &str,
    token: &str,
) -> String {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    io.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "connection closed before an answer");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    while got.len() < head_end + len {
        let n = io.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    head.lines().next().unwrap().to_string()
}

#[tokio::test]
async fn slow_clients_are_disconnected_while_others_are_served() {
    let s = TestServer::start_with(|mut c| {
        c.limits.tls_handshake_timeout = Duration::from_secs(1);
        c.limits.header_read_timeout = Duration::from_secs(1);
        c.limits.idle_timeout = Duration::from_secs(2);
        c
    });
    let client = s.client().await;
    // Opens TCP and sends nothing: dropped when the TLS handshake times out.
    let silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // Finishes TLS, sends half a request head and stalls: dropped at the header timeout.
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut half = tls_connector(&s)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    half.write_all(b"GET /version HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // Finishes TLS and never sends a request.
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let idle = tls_connector(&s)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    // Meanwhile a kubectl-like client is served.
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    let (a, b, c) = tokio::join!(
        closed_within(silent, Duration::from_secs(10)),
        closed_within(half, Duration::from_secs(10)),
        closed_within(idle, Duration::from_secs(10)),
    );
    for took in [a, b, c] {
        assert!(
            took >= Duration::from_millis(800),
            "closed too early: {took:?}"
        );
    }
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_the_others_kept() {
    let s = TestServer::start_with(|mut c| {
        c.limits.max_connections = 3;
        c.limits.tls_handshake_timeout = Duration::from_secs(60);
        c
    });
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut kept = tls_connector(&s)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let status = http1_get(&mut kept, "/api/v1/namespaces", &s.admin_token).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let idle1 = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let idle2 = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // The fourth is closed at once, long before any timeout.
    let excess = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let took = closed_within(excess, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5));
    // The connection already open still works.
    let status = http1_get(&mut kept, "/api/v1/namespaces/default", &s.admin_token).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // Freed slots are usable again.
    drop((idle1, idle2, kept));
    let client = s.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.apiserver_version().await.is_err() {
        assert!(Instant::now() < deadline, "slots were not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn deep_and_large_bodies_are_refused_fast() {
    let s = TestServer::start();
    let client = s.client().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let deep_yaml = "{a: ".repeat(50_000).into_bytes();
    let deep_json = "[".repeat(200_000).into_bytes();
    for (ct, body) in [
        ("application/yaml", deep_yaml),
        ("application/json", deep_json),
    ] {
        let start = Instant::now();
        let st = send(&client, "POST", cms, ct, body).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{ct}: {:?}",
            start.elapsed()
        );
        assert_eq!(st.code, 400, "{ct}: {st:?}");
        assert_eq!(st.reason, "BadRequest");
    }
    let start = Instant::now();
    let st = send(
        &client,
        "POST",
        cms,
        "application/yaml",
        "{a: ".repeat(50_000).into_bytes(),
    )
    .await
    .unwrap_err();
    assert_eq!(st.message, "error decoding YAML: exceeded max depth of 128");
    assert!(start.elapsed() < Duration::from_secs(1));
    // Over 3 MiB: 413 as kube-apiserver words it.
    let big = vec![b' '; 3 * 1024 * 1024 + 1];
    let st = send(&client, "POST", cms, "application/json", big)
        .await
        .unwrap_err();
    assert_eq!(st.code, 413, "{st:?}");
    assert_eq!(st.reason, "RequestEntityTooLarge");
    assert_eq!(st.message, "Request entity too large: limit is 3145728");
}

#[tokio::test]
async fn objects_over_etcds_limit_are_413() {
    let s = TestServer::start();
    let client = s.client().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let cm = |name: &str, bytes: usize| {
        serde_json::to_vec(&json!({"metadata": {"name": name}, "data": {"a": "x".repeat(bytes)}}))
            .unwrap()
    };
    let st = send(
        &client,
        "POST",
        cms,
        "application/json",
        cm("big", 1_600_000),
    )
    .await
    .unwrap_err();
    assert_eq!(st.code, 413, "{st:?}");
    assert_eq!(st.reason, "RequestEntityTooLarge");
    assert_eq!(st.message, "etcdserver: request is too large");
    send(&client, "POST", cms, "application/json", cm("small", 1000))
        .await
        .unwrap();
    // Update to over the limit.
    let st = send(
        &client,
        "PUT",
        &format!("{cms}/small"),
        "application/json",
        cm("small", 1_600_000),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (st.code, st.message.as_str()),
        (413, "etcdserver: request is too large")
    );
    // A 70 KB JSON patch of copies that grows the object to 2 MB.
    let ops: Vec<Value> = (0..2000)
        .map(|i| json!({"op": "copy", "from": "/data/a", "path": format!("/data/k{i}")}))
        .collect();
    let patch = serde_json::to_vec(&ops).unwrap();
    let st = send(
        &client,
        "PATCH",
        &format!("{cms}/small"),
        "application/json-patch+json",
        patch,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (st.code, st.message.as_str()),
        (413, "etcdserver: request is too large")
    );
    // Copies that would build tens of MB are stopped while the patch is applied.
    let ops: Vec<Value> = (0..5000)
        .map(|i| json!({"op": "copy", "from": "/data/a", "path": format!("/data/k{i}")}))
        .collect();
    let start = Instant::now();
    let st = send(
        &client,
        "PATCH",
        &format!("{cms}/small"),
        "application/json-patch+json",
        serde_json::to_vec(&ops).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(st.code, 422, "{st:?}");
    assert!(
        st.message
            .contains("the accumulated size increase of copy is"),
        "{}",
        st.message
    );
    // The object is unchanged and still usable.
    let got: Value = serde_json::from_str(
        &send(
            &client,
            "GET",
            &format!("{cms}/small"),
            "application/json",
            vec![],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(got["data"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn watches_end_within_the_capped_timeout() {
    let s = TestServer::start_with(|mut c| {
        c.limits.min_request_timeout = Duration::from_secs(1);
        c
    });
    let client = s.client().await;
    for query in ["watch=true&timeoutSeconds=3600", "watch=true"] {
        let start = Instant::now();
        let body = tokio::time::timeout(
            Duration::from_secs(10),
            send(
                &client,
                "GET",
                &format!("/api/v1/namespaces/default/configmaps?{query}"),
                "application/json",
                vec![],
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{query}: the watch did not end"))
        .unwrap();
        let took = start.elapsed();
        assert!(body.is_empty(), "{body}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{query}: {took:?}"
        );
    }
}

#[tokio::test]
async fn names_are_validated_as_apimachinery_does() {
    let s = TestServer::start();
    let client = s.client().await;
    let post = |uri: &'static str, body: Value| {
        let client = client.clone();
        async move {
            send(
                &client,
                "POST",
                uri,
                "application/json",
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let cms = "/api/v1/namespaces/default/configmaps";
    let st = post(cms, json!({"metadata": {"name": "a..b"}}))
        .await
        .unwrap_err();
    assert_eq!(st.code, 422);
    assert_eq!(st.reason, "Invalid");
    assert_eq!(
        st.message,
        "ConfigMap \"a..b\" is invalid: metadata.name: Invalid value: \"a..b\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );
    let cause = &st.details.as_ref().unwrap().causes[0];
    assert_eq!(cause.field, "metadata.name");
    assert_eq!(cause.reason, "FieldValueInvalid");
    // Dots are fine in a subdomain, not in a namespace (a DNS-1123 label).
    post(cms, json!({"metadata": {"name": "a.b"}}))
        .await
        .unwrap();
    let nss = "/api/v1/namespaces";
    let st = post(nss, json!({"metadata": {"name": "a.b"}}))
        .await
        .unwrap_err();
    assert_eq!(
        st.message,
        "Namespace \"a.b\" is invalid: metadata.name: Invalid value: \"a.b\": must not contain dots"
    );
    let long = "n".repeat(64);
    let st = post(nss, json!({"metadata": {"name": long}}))
        .await
        .unwrap_err();
    assert!(
        st.message
            .ends_with("metadata.name: Invalid value: \"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\": must be no more than 63 characters"),
        "{}",
        st.message
    );
    // generateName: a trailing '-' is fine; the prefix itself is validated.
    let made: Value = serde_json::from_str(
        &post(cms, json!({"metadata": {"generateName": "web-"}}))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(made["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("web-"));
    let st = post(cms, json!({"metadata": {"generateName": "Web-"}}))
        .await
        .unwrap_err();
    let fields: Vec<&str> = st
        .details
        .as_ref()
        .unwrap()
        .causes
        .iter()
        .map(|c| c.field.as_str())
        .collect();
    assert_eq!(fields, ["metadata.generateName", "metadata.name"], "{st:?}");
    let st = post(cms, json!({"metadata": {}})).await.unwrap_err();
    assert_eq!(
        st.message,
        "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required"
    );
    // Services are DNS-1035 labels.
    let st = post(
        "/api/v1/namespaces/default/services",
        json!({"metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await
    .unwrap_err();
    assert!(
        st.message.contains("a DNS-1035 label must consist"),
        "{}",
        st.message
    );
}

#[tokio::test]
async fn readonly_token_cannot_open_streams() {
    let s = TestServer::start();
    let ro = common::client_for(&s.readonly_kubeconfig).await;
    let admin = s.client().await;
    let vmi = "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/vm1";
    for (path, resource, group) in [
        (
            format!("{vmi}/console"),
            "virtualmachineinstances/console",
            "subresources.kubevirt.io",
        ),
        (
            format!("{vmi}/vnc"),
            "virtualmachineinstances/vnc",
            "subresources.kubevirt.io",
        ),
        (
            format!("{vmi}/vnc/screenshot"),
            "virtualmachineinstances/vnc",
            "subresources.kubevirt.io",
        ),
        (
            format!("{vmi}/portforward/22/tcp"),
            "virtualmachineinstances/portforward",
            "subresources.kubevirt.io",
        ),
        (
            format!("{vmi}/usbredir"),
            "virtualmachineinstances/usbredir",
            "subresources.kubevirt.io",
        ),
        (
            format!("{vmi}/%63onsole"),
            "virtualmachineinstances/console",
            "subresources.kubevirt.io",
        ),
        (
            "/api/v1/namespaces/default/pods/vm1/exec?command=sh".into(),
            "pods/exec",
            "",
        ),
        (
            "/api/v1/namespaces/default/pods/vm1/attach".into(),
            "pods/attach",
            "",
        ),
        (
            "/api/v1/namespaces/default/pods/vm1/portforward".into(),
            "pods/portforward",
            "",
        ),
        (
            "/api/v1/namespaces/default/pods/vm1/proxy/".into(),
            "pods/proxy",
            "",
        ),
        (
            "/api/v1/namespaces/default/services/vm1/proxy/x".into(),
            "services/proxy",
            "",
        ),
    ] {
        let st = send(&ro, "GET", &path, "application/json", vec![])
            .await
            .unwrap_err();
        assert_eq!(st.code, 403, "{path}: {st:?}");
        assert_eq!(st.reason, "Forbidden");
        let plural = resource.split('/').next().unwrap();
        let qualified = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        assert_eq!(
            st.message,
            format!("{qualified} \"vm1\" is forbidden: User \"readonly\" cannot get resource \"{resource}\" in API group \"{group}\" in the namespace \"default\""),
            "{path}"
        );
        // The admin token is not refused (nothing serves these routes here: 404).
        let st = send(&admin, "GET", &path, "application/json", vec![])
            .await
            .unwrap_err();
        assert_eq!(st.code, 404, "{path}: {st:?}");
    }
    // Reads stay open to the read-only user, guestosinfo included.
    send(
        &ro,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        vec![],
    )
    .await
    .unwrap();
    let st = send(
        &ro,
        "GET",
        &format!("{vmi}/guestosinfo"),
        "application/json",
        vec![],
    )
    .await
    .unwrap_err();
    assert_eq!(st.code, 404, "{st:?}");
    // Writes are refused with the object's name in the message.
    let st = send(
        &ro,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/x",
        "application/json",
        vec![],
    )
    .await
    .unwrap_err();
    assert_eq!(
        st.message,
        "configmaps \"x\" is forbidden: User \"readonly\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
}

#[test]
fn data_dir_and_secrets_are_private() {
    let s = TestServer::start_with(|c| {
        // An existing, too open data directory is tightened.
        std::fs::set_permissions(&c.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        c
    });
    let dir = s.dir.path();
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for name in [
        "store.db",
        "store.db-wal",
        "store.db-shm",
        "tokens",
        "tls.key",
        "kubeconfig",
        "kubeconfig-readonly",
    ] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    for name in ["ca.crt", "tls.crt"] {
        assert_eq!(mode(name) & 0o022, 0, "{name} is writable by others");
    }
}
