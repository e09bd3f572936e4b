//! Durability: kill -9 the server in the middle of a write loop, restart it, and check that
//! every acknowledged write is there and the database is intact.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &Path) -> (Child, u16) {
    let port = free_port();
    let _ = std::fs::remove_file(dir.join("kubeconfig"));
    let child = Command::new(env!("CARGO_BIN_EXE_kubevirt-apiserver"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    (child, port)
}

async fn ready(dir: &Path) -> kube::Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "server did not come up"
        );
        if dir.join("kubeconfig").exists() {
            let client = common::client_for(&dir.join("kubeconfig")).await;
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
            if api.list(&ListParams::default().limit(1)).await.is_ok() {
                return client;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let counter_acked: Arc<Mutex<i64>> = Arc::default();
    for round in 0..4 {
        let (mut child, _port) = spawn(dir.path());
        let client = ready(dir.path()).await;
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        if round == 0 {
            cms.create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("counter".into()),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([("n".into(), "0".into())])),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        let mut writers = Vec::new();
        for w in 0..4 {
            let cms = cms.clone();
            let acked = acked.clone();
            let counter_acked = counter_acked.clone();
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("r{round}-w{w}-{i}");
                    let obj = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            ..Default::default()
                        },
                        data: Some(BTreeMap::from([("i".into(), i.to_string())])),
                        ..Default::default()
                    };
                    match cms.create(&PostParams::default(), &obj).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(name);
                        }
                        Err(_) => return,
                    }
                    if w == 0 {
                        let n = *counter_acked.lock().unwrap() + 1;
                        let p = json!({"data": {"n": n.to_string()}});
                        match cms
                            .patch("counter", &PatchParams::default(), &Patch::Merge(p))
                            .await
                        {
                            Ok(_) => *counter_acked.lock().unwrap() = n,
                            Err(_) => return,
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(700 + 300 * round as u64)).await;
        // SIGKILL, mid-loop.
        child.kill().unwrap();
        child.wait().unwrap();
        for w in writers {
            let _ = tokio::time::timeout(Duration::from_secs(90), w).await;
        }
    }
    // The database is intact, and holds every acknowledged write.
    {
        let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    let (mut child, _) = spawn(dir.path());
    let client = ready(dir.path()).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let present: BTreeSet<String> = list
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the loop wrote too little to prove anything: {}",
        acked.len()
    );
    let missing: Vec<&String> = acked.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost: {missing:?}",
        missing.len()
    );
    let counter = cms.get("counter").await.unwrap();
    let n: i64 = counter.data.unwrap()["n"].parse().unwrap();
    assert!(
        n >= *counter_acked.lock().unwrap(),
        "counter {n} behind acknowledged"
    );
    // Revisions keep increasing across restarts.
    let rv: i64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv as usize >= acked.len());
    child.kill().unwrap();
    child.wait().unwrap();
}
