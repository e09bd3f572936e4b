//! Conformance: drive the server with kube-rs, the client the controllers use.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestServer, VM_YAML};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, PropagationPolicy,
    WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kubevirt_api::v1::VirtualMachine;
use serde_json::json;

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn crud_conflict_and_errors() {
    let s = TestServer::start();
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let e = api_err(
        cms.create(&PostParams::default(), &cm("a", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    let mut upd = created.clone();
    upd.data = Some(BTreeMap::from([("k".to_string(), "v2".to_string())]));
    let after = cms
        .replace("a", &PostParams::default(), &upd)
        .await
        .unwrap();
    assert_ne!(
        after.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    // Same stale object again: 409 Conflict.
    let e = api_err(
        cms.replace("a", &PostParams::default(), &upd)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("the object has been modified"),
        "{}",
        e.message
    );
    let e = api_err(cms.get("missing").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(e.message, "configmaps \"missing\" not found");
    // Namespace must exist.
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let e = api_err(
        other
            .create(&PostParams::default(), &cm("x", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "namespaces \"nope\" not found")
    );
    // generateName.
    let mut g = cm("", &[]);
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let made = cms.create(&PostParams::default(), &g).await.unwrap();
    let name = made.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    // Unauthenticated: 401.
    let mut kc = kube::config::Kubeconfig::read_from(&s.kubeconfig).unwrap();
    kc.auth_infos[0].auth_info.as_mut().unwrap().token = Some("wrong".to_string().into());
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let bad: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "default");
    let e = api_err(bad.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(e.code, 401);
    // Read-only token: reads work, writes are 403 with a Status.
    let ro: Api<ConfigMap> =
        Api::namespaced(common::client_for(&s.readonly_kubeconfig).await, "default");
    assert!(ro.get("a").await.is_ok());
    let e = api_err(ro.delete("a", &DeleteParams::default()).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
}

#[tokio::test]
async fn vm_typed_generation_status_and_admission() {
    let s = TestServer::start();
    let client = s.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client, "default");
    let vm: VirtualMachine = serde_yaml::from_str(VM_YAML).unwrap();
    let created = vms.create(&PostParams::default(), &vm).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    // Label-only change: no generation bump.
    let p = vms
        .patch(
            "testvm",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(1));
    // Spec change: bump.
    let p = vms
        .patch(
            "testvm",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Always"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(2));
    // Status through /status only; the main resource ignores status.
    let st = vms
        .patch_status(
            "testvm",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"printableStatus": "Starting"}})),
        )
        .await
        .unwrap();
    assert_eq!(st.metadata.generation, Some(2));
    let raw = serde_json::to_value(&st).unwrap();
    assert_eq!(raw["status"]["printableStatus"], "Starting");
    let p = vms
        .patch(
            "testvm",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"printableStatus": "Hacked"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&p).unwrap()["status"]["printableStatus"],
        "Starting"
    );
    // Admission: invalid update is 422 with field causes.
    let e = api_err(
        vms.patch("testvm", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"domain": {"resources": {"requests": {"memory": "abc"}}}}}}})))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(e.message.starts_with("VirtualMachine.kubevirt.io \"testvm\" is invalid: spec.template.spec.domain.resources.requests.memory"), "{}", e.message);
    // Server-side apply (simplified) creates and updates.
    let mut applied: serde_json::Value = serde_yaml::from_str(VM_YAML).unwrap();
    applied["metadata"]["name"] = json!("ssa");
    let pp = PatchParams::apply("test").force();
    let v = vms
        .patch("ssa", &pp, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(v.metadata.generation, Some(1));
    applied["spec"]["runStrategy"] = json!("Manual");
    let v = vms
        .patch("ssa", &pp, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&v).unwrap()["spec"]["runStrategy"],
        "Manual"
    );
}

#[tokio::test]
async fn list_selectors_and_pagination() {
    let s = TestServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    for i in 0..25 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        cms.create(
            &PostParams::default(),
            &cm(&format!("cm-{i:02}"), &[("tier", tier)]),
        )
        .await
        .unwrap();
    }
    let even = cms
        .list(&ListParams::default().labels("tier=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 13);
    let notodd = cms
        .list(&ListParams::default().labels("tier notin (odd)"))
        .await
        .unwrap();
    assert_eq!(notodd.items.len(), 13);
    let one = cms
        .list(&ListParams::default().fields("metadata.name=cm-07"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    assert_eq!(one.items[0].metadata.name.as_deref(), Some("cm-07"));
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(10);
    let mut pages = 0;
    loop {
        let page = cms.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 25);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 25);
}

#[tokio::test]
async fn watch_from_rv_bookmarks_and_410() {
    let s = TestServer::start_with(|mut c| {
        c.store.ring_size = 20;
        c.bookmark_interval = Duration::from_millis(200);
        c
    });
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let first = cms
        .create(&PostParams::default(), &cm("w0", &[]))
        .await
        .unwrap();
    let rv0 = first.metadata.resource_version.clone().unwrap();
    // Watch from rv0: sees the later create and modify, then a bookmark with the current RV.
    let mut stream = cms
        .watch(&WatchParams::default().timeout(30), &rv0)
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("w1", &[]))
        .await
        .unwrap();
    let last = cms
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v3"}})),
        )
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while let Some(ev) = stream.try_next().await.unwrap() {
        match ev {
            WatchEvent::Added(o) => kinds.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => kinds.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(b) => {
                assert_eq!(
                    Some(b.metadata.resource_version),
                    last.metadata.resource_version
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, vec!["ADDED w1", "MODIFIED w1"]);
    // Push rv0 out of the event ring: watching from it is 410 Expired.
    for i in 0..30 {
        cms.patch(
            "w0",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"i": i.to_string()}})),
        )
        .await
        .unwrap();
    }
    let mut stream = cms
        .watch(&WatchParams::default(), &rv0)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn runtime_watcher_sees_changes() {
    let s = TestServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    cms.create(&PostParams::default(), &cm("pre", &[("app", "w")]))
        .await
        .unwrap();
    let mut stream = watcher(cms.clone(), watcher::Config::default().labels("app=w")).boxed();
    let mut initial = Vec::new();
    loop {
        match stream.try_next().await.unwrap().unwrap() {
            watcher::Event::InitApply(o) => initial.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, vec!["pre"]);
    cms.create(&PostParams::default(), &cm("new", &[("app", "w")]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("other", &[("app", "z")]))
        .await
        .unwrap();
    cms.delete("pre", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(90), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Apply(o) => seen.push(format!("apply {}", o.metadata.name.unwrap())),
            watcher::Event::Delete(o) => seen.push(format!("delete {}", o.metadata.name.unwrap())),
            _ => {}
        }
    }
    assert_eq!(seen, vec!["apply new", "delete pre"]);
    // The streaming-list strategy (watch with sendInitialEvents and the initial-events-end
    // bookmark) sees the same state.
    let mut streaming = watcher(
        cms.clone(),
        watcher::Config::default().labels("app=w").streaming_lists(),
    )
    .boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(90), streaming.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(o) => initial.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, vec!["new"]);
}

fn owned_by(name: &str, owner: &ConfigMap) -> ConfigMap {
    let mut c = cm(name, &[]);
    c.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner.metadata.name.clone().unwrap(),
        uid: owner.metadata.uid.clone().unwrap(),
        block_owner_deletion: Some(true),
        ..Default::default()
    }]);
    c
}

#[tokio::test]
async fn garbage_collection_policies() {
    let s = TestServer::start();
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    // Foreground: owner waits (foregroundDeletion finalizer) until the dependent is gone.
    let owner = cms
        .create(&PostParams::default(), &cm("fg-owner", &[]))
        .await
        .unwrap();
    let mut child = owned_by("fg-child", &owner);
    child.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &child).await.unwrap();
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..Default::default()
    };
    cms.delete("fg-owner", &dp).await.unwrap();
    let o = cms.get("fg-owner").await.unwrap();
    assert!(o.metadata.deletion_timestamp.is_some());
    assert!(o
        .metadata
        .finalizers
        .unwrap()
        .contains(&"foregroundDeletion".to_string()));
    eventually("child marked for deletion", || async {
        cms.get("fg-child")
            .await
            .is_ok_and(|c| c.metadata.deletion_timestamp.is_some())
    })
    .await;
    assert!(
        cms.get("fg-owner").await.is_ok(),
        "owner must wait for its dependent"
    );
    cms.patch(
        "fg-child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("foreground owner gone", || async {
        cms.get("fg-owner").await.is_err()
    })
    .await;
    assert!(cms.get("fg-child").await.is_err());

    // Orphan: dependent stays, without the ownerReference.
    let owner = cms
        .create(&PostParams::default(), &cm("or-owner", &[]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned_by("or-child", &owner))
        .await
        .unwrap();
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    cms.delete("or-owner", &dp).await.unwrap();
    eventually("orphaning owner gone", || async {
        cms.get("or-owner").await.is_err()
    })
    .await;
    let c = cms.get("or-child").await.unwrap();
    assert!(c.metadata.owner_references.unwrap_or_default().is_empty());

    // Background: owner goes at once, dependent follows.
    let owner = cms
        .create(&PostParams::default(), &cm("bg-owner", &[]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned_by("bg-child", &owner))
        .await
        .unwrap();
    cms.delete("bg-owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually("background dependent gone", || async {
        cms.get("bg-child").await.is_err()
    })
    .await;
}

#[tokio::test]
async fn table_output() {
    let s = TestServer::start();
    let client = s.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vm: VirtualMachine = serde_yaml::from_str(VM_YAML).unwrap();
    vms.create(&PostParams::default(), &vm).await.unwrap();
    let req = http::Request::builder()
        .uri("/apis/kubevirt.io/v1/namespaces/default/virtualmachines?includeObject=Object")
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap();
    let t: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(&cols[..4], &["Name", "Age", "Status", "Ready"]);
    assert_eq!(t["rows"][0]["cells"][0], "testvm");
    assert_eq!(t["rows"][0]["object"]["kind"], "VirtualMachine");
}

#[tokio::test]
async fn recorder_events_show_in_kubectl_describe() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    use kube::Resource;
    let s = TestServer::start();
    let client = s.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vm: VirtualMachine = serde_yaml::from_str(VM_YAML).unwrap();
    let vm = vms.create(&PostParams::default(), &vm).await.unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test-ctl".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "SuccessfulCreate".into(),
        note: Some("Created virtual machine instance testvm".into()),
        action: "Create".into(),
        secondary: None,
    };
    let reference = vm.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    // A repeat becomes a series (merge patch of the events.k8s.io/v1 Event).
    recorder.publish(&ev, &reference).await.unwrap();
    // Core v1 Events see the same objects, selectable by involvedObject.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "default");
    let uid = vm.metadata.uid.clone().unwrap();
    let list = core
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name=testvm,involvedObject.namespace=default,involvedObject.uid={uid}"
        )))
        .await
        .unwrap();
    let all = core.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1, "{:?}", all.items);
    assert_eq!(
        list.items[0].message.as_deref(),
        Some("Created virtual machine instance testvm")
    );
    let out = common::kubectl_with(&s.kubeconfig, &["describe", "vm", "testvm"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = text.split("Events:").nth(1).unwrap_or_default();
    assert!(events.contains("SuccessfulCreate"), "{text}");
    assert!(
        events.contains("Created virtual machine instance testvm"),
        "{text}"
    );
    assert!(events.contains("test-ctl"), "{text}");
    let out = common::kubectl_with(&s.kubeconfig, &["get", "events"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("Normal")
            && row.contains("SuccessfulCreate")
            && row.contains("virtualmachine/testvm"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_input_is_a_4xx_status_never_a_crash() {
    let s = TestServer::start();
    let client = s.client().await;
    let send = |method: &str, uri: &str, ct: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .header("Content-Type", ct)
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let cms = "/api/v1/namespaces/default/configmaps";
    let cases = [
        send("POST", cms, "application/json", "not json"),
        send("POST", cms, "application/json", "[1,2]"),
        send(
            "POST",
            cms,
            "application/json",
            r#"{"metadata":{"name":"Bad_Name"}}"#,
        ),
        send("POST", cms, "application/json", r#"{"metadata":{}}"#),
        send(
            "POST",
            cms,
            "application/vnd.kubernetes.protobuf",
            "k8s\0\u{1}",
        ),
        send(
            "POST",
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
            "application/json",
            r#"{"metadata":{"name":"x"},"spec":{"template":"nope"}}"#,
        ),
        send(
            "GET",
            &format!("{cms}?labelSelector=a%20b"),
            "application/json",
            "",
        ),
        send(
            "GET",
            &format!("{cms}?continue=%%%"),
            "application/json",
            "",
        ),
        send(
            "GET",
            &format!("{cms}?watch=true&resourceVersion=abc"),
            "application/json",
            "",
        ),
    ];
    for req in cases {
        let uri = req.uri().to_string();
        let err = client.request_text(req).await.unwrap_err();
        let st = api_err(err);
        assert!((400..500).contains(&st.code), "{uri}: {st:?}");
        assert!(!st.message.is_empty(), "{uri}");
    }
    cms_ok(&client).await;
    // Patches that are not objects, or invalid JSON patches.
    let cmapi: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (ct, body) in [
        ("application/merge-patch+json", "\"str\""),
        ("application/json-patch+json", r#"{"op":"add"}"#),
        ("application/apply-patch+yaml", "[1]"),
        ("text/plain", "{}"),
    ] {
        let req = send("PATCH", &format!("{cms}/ok"), ct, body);
        let st = api_err(client.request_text(req).await.unwrap_err());
        assert!((400..500).contains(&st.code), "{ct} {body}: {st:?}");
    }
    assert_eq!(cmapi.get("ok").await.unwrap().data.unwrap()["k"], "v");
}

async fn cms_ok(client: &kube::Client) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("ok", &[]))
        .await
        .unwrap();
}
