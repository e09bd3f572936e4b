//! Benchmark (not a test): what RBAC costs the API server's create throughput. Two
//! in-process servers in one run, one with RBAC and 1,000 RoleBindings (to other users,
//! in the namespace written to and in others), one with `AlwaysAllow`; the same
//! ServiceAccount token (bound to `edit`) creates VirtualMachines with 32 concurrent
//! kube-rs clients against each, alternating rounds so machine noise hits both alike.
//!
//!     cargo run -p kubevirt-apiserver --release --example rbac_bench [-- CREATES_PER_ROUND ROUNDS BINDINGS]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use kubevirt_apiserver::{AuthorizationMode, ServerConfig, ServerHandle};
use serde_json::json;

const CONCURRENCY: usize = 32;

fn obj(v: serde_json::Value) -> DynamicObject {
    serde_json::from_value(v).expect("static JSON")
}

fn vm(name: &str) -> DynamicObject {
    obj(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                       "resources": {"requests": {"memory": "64Mi"}}},
            "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/kubevirt/cirros-container-disk-demo"}}]}}}
    }))
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

async fn client_from(path: &std::path::Path, token: Option<&str>) -> anyhow::Result<kube::Client> {
    let mut kc = kube::config::Kubeconfig::read_from(path)?;
    if let Some(t) = token {
        kc.auth_infos[0]
            .auth_info
            .as_mut()
            .expect("auth info")
            .token = Some(t.to_string().into());
    }
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// A server with namespace `bench`, ServiceAccount `bench/writer` bound to `edit`, and
/// `bindings` RoleBindings to other users (half in `bench`, half across other
/// namespaces). Returns the handle, the writer's token and the server's temp dir.
async fn server(
    mode: AuthorizationMode,
    bindings: usize,
) -> anyhow::Result<(ServerHandle, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut cfg = ServerConfig::new(dir.path(), "127.0.0.1:0".parse()?);
    cfg.authorization = mode;
    let handle = kubevirt_apiserver::start(cfg).await?;
    let admin = client_from(&handle.kubeconfig_path, None).await?;
    let ns_api: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &resource("", "v1", "Namespace", "namespaces"),
    );
    let namespaces = 10;
    for i in 0..namespaces {
        let name = if i == 0 {
            "bench".to_string()
        } else {
            format!("other-{i}")
        };
        ns_api
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": name}})),
            )
            .await?;
    }
    let rb = resource(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
    );
    for i in 0..bindings {
        let ns = if i % 2 == 0 {
            "bench".to_string()
        } else {
            format!("other-{}", 1 + i % (namespaces - 1))
        };
        let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &ns, &rb);
        api.create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": format!("user-{i}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("user-{i}")}],
            })),
        )
        .await?;
    }
    let sa: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        "bench",
        &resource("", "v1", "ServiceAccount", "serviceaccounts"),
    );
    sa.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "writer"}})),
    )
    .await?;
    let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "bench", &rb);
    api.create(
        &PostParams::default(),
        &obj(json!({
            "metadata": {"name": "writer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "ServiceAccount", "name": "writer", "namespace": "bench"}],
        })),
    )
    .await?;
    let token: serde_json::Value = admin
        .request(
            http::Request::post("/api/v1/namespaces/bench/serviceaccounts/writer/token")
                .header("content-type", "application/json")
                .body(serde_json::to_vec(
                    &json!({"apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}),
                )?)?,
        )
        .await?;
    let token = token["status"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((handle, token, dir))
}

/// Creates `count` VMs named `prefix-N` with `CONCURRENCY` parallel clients; ops/s.
async fn creates(vms: &Api<DynamicObject>, prefix: &str, count: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (vms, next, prefix) = (vms.clone(), next.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), kube::Error>(());
                }
                vms.create(&PostParams::default(), &vm(&format!("{prefix}-{i:05}")))
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(count as f64 / t.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let per_round: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let bindings: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let (rbac, rbac_token, _d1) = server(AuthorizationMode::Rbac, bindings).await?;
    let (open, open_token, _d2) = server(AuthorizationMode::AlwaysAllow, bindings).await?;
    let vm_resource = resource("kubevirt.io", "v1", "VirtualMachine", "virtualmachines");
    let rbac_vms: Api<DynamicObject> = Api::namespaced_with(
        client_from(&rbac.kubeconfig_path, Some(&rbac_token)).await?,
        "bench",
        &vm_resource,
    );
    let open_vms: Api<DynamicObject> = Api::namespaced_with(
        client_from(&open.kubeconfig_path, Some(&open_token)).await?,
        "bench",
        &vm_resource,
    );
    // Warm-up (connections, the policy cache).
    creates(&rbac_vms, "warm", 100).await?;
    creates(&open_vms, "warm", 100).await?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let a = creates(&rbac_vms, &format!("r{r}"), per_round).await?;
        let b = creates(&open_vms, &format!("r{r}"), per_round).await?;
        println!("round {r}: RBAC {a:.0} creates/s, AlwaysAllow {b:.0} creates/s");
        with.push(a);
        without.push(b);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut with), median(&mut without));
    println!(
        "{bindings} RoleBindings, {CONCURRENCY} clients, {per_round} creates x {rounds} rounds: \
         RBAC {a:.0}/s vs AlwaysAllow {b:.0}/s (median): RBAC costs {:.1}% of create throughput",
        (1.0 - a / b) * 100.0
    );
    rbac.shutdown().await;
    open.shutdown().await;
    Ok(())
}
