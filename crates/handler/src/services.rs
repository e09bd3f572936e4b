//! The embedded service proxy (kube-proxy's part on one machine) and endpoints controller:
//! watches Services and Pods, and on every change programs the host's services table
//! (`kubevirt_podnet::services`) from each Service's ready endpoints, and publishes them as
//! an `Endpoints` object of the Service's name (what `kubectl get endpoints` shows).
//!
//! An endpoint is a Pod of the Service's namespace matching its selector, Running, with a
//! pod IP and not being deleted; it carries traffic only when its `Ready` condition is True
//! (else it is listed under `notReadyAddresses`). Only TCP and UDP ports are programmed
//! (SCTP is stored, not carried); headless and ExternalName Services get no rules.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServicePort as KubeServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use kubevirt_podnet::services::ServicePort;
use kubevirt_podnet::Protocol;
use serde_json::{json, Value};

const FIELD_MANAGER: &str = "kubevirt-rs-endpoints";

/// One endpoint of a Service: the pod and whether it is ready.
#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    ip: Ipv4Addr,
    ready: bool,
    pod: String,
    uid: String,
    node: Option<String>,
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn endpoints_of(
    svc: &Service,
    pods: &[std::sync::Arc<Pod>],
) -> Vec<(Endpoint, std::sync::Arc<Pod>)> {
    let ns = svc.namespace().unwrap_or_default();
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return Vec::new();
    };
    let mut out: Vec<_> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()?
                .pod_ip
                .as_deref()?
                .parse::<Ipv4Addr>()
                .ok()?;
            Some((
                Endpoint {
                    ip,
                    ready: is_ready(p),
                    pod: p.name_any(),
                    uid: p.uid().unwrap_or_default(),
                    node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                },
                p.clone(),
            ))
        })
        .collect();
    out.sort_by(|a, b| a.0.ip.cmp(&b.0.ip).then(a.0.pod.cmp(&b.0.pod)));
    out
}

/// The pod's port for a Service's `targetPort` (a number, or a container port's name).
fn target_port(port: &KubeServicePort, pod: &Pod) -> Option<u16> {
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n > 0),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

fn protocol(port: &KubeServicePort) -> Option<Protocol> {
    match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// The rules for every Service, in a stable order.
fn rules(services: &[std::sync::Arc<Service>], pods: &[std::sync::Arc<Pod>]) -> Vec<ServicePort> {
    let mut services: Vec<_> = services.iter().collect();
    services.sort_by_key(|s| (s.namespace(), s.name_any()));
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        if matches!(spec.type_.as_deref(), Some("ExternalName")) {
            continue;
        }
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let eps = endpoints_of(svc, pods);
        for port in spec.ports.iter().flatten() {
            let (Some(protocol), Ok(number)) = (protocol(port), u16::try_from(port.port)) else {
                continue;
            };
            let node_port = port
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0);
            if cluster_ip.is_none() && node_port.is_none() {
                continue;
            }
            let endpoints = eps
                .iter()
                .filter(|(e, _)| e.ready)
                .filter_map(|(e, pod)| Some((e.ip, target_port(port, pod)?)))
                .collect();
            out.push(ServicePort {
                protocol,
                cluster_ip,
                port: number,
                node_port,
                endpoints,
            });
        }
    }
    out
}

/// An Endpoints subset being built: its ports, ready and not-ready addresses.
type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);

/// The `Endpoints` object a Service with a selector gets (kube's endpoints controller).
fn endpoints_object(svc: &Service, pods: &[std::sync::Arc<Pod>]) -> Option<Value> {
    let spec = svc.spec.as_ref()?;
    spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let eps = endpoints_of(svc, pods);
    let address = |e: &Endpoint| {
        let mut a = json!({"ip": e.ip.to_string(), "targetRef": {
            "kind": "Pod", "name": e.pod, "namespace": svc.namespace(), "uid": e.uid}});
        if let Some(n) = &e.node {
            a["nodeName"] = json!(n);
        }
        a
    };
    // One subset per set of resolved ports, as kube repacks them; with numeric target
    // ports (the common case) that is one subset.
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    for (e, pod) in &eps {
        let ports: Vec<Value> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let mut v = json!({"port": target_port(p, pod)?,
                                   "protocol": p.protocol.clone().unwrap_or("TCP".into())});
                if let Some(n) = p.name.as_ref().filter(|n| !n.is_empty()) {
                    v["name"] = json!(n);
                }
                Some(v)
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let entry = subsets
            .entry(key)
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if e.ready {
            entry.1.push(address(e));
        } else {
            entry.2.push(address(e));
        }
    }
    let subsets: Vec<Value> = subsets
        .into_values()
        .map(|(ports, ready, not_ready)| {
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    let mut labels = svc.labels().clone();
    labels.insert(
        "endpoints.kubernetes.io/managed-by".into(),
        "endpoint-controller".into(),
    );
    Some(json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": svc.name_any(), "namespace": svc.namespace(), "labels": labels},
        "subsets": subsets,
    }))
}

/// The host bridge the launchers' pods are on (podnet's default).
pub fn pod_bridge() -> String {
    kubevirt_podnet::PodNetworkConfig::default().bridge
}

/// Runs until `shutdown`: programs the host table for the pods on `bridge` and keeps
/// Endpoints in step. The table is left in place at the end.
pub async fn run(
    client: Client,
    bridge: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let svc_events = reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|_| ());
    let pod_events = reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|_| ());
    let mut changes = std::pin::pin!(futures::stream::select(svc_events, pod_events));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut applied: Option<Vec<ServicePort>> = None;
    let mut published: HashMap<(String, String), Value> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            ev = changes.next() => if ev.is_none() { return },
        }
        // Let a burst of events settle into one update.
        let settle = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                ev = changes.next() => if ev.is_none() { return },
            }
        }
        if services.wait_until_ready().await.is_err() || pods.wait_until_ready().await.is_err() {
            return;
        }
        sync(
            &client,
            &bridge,
            &services,
            &pods,
            &mut applied,
            &mut published,
        )
        .await;
    }
}

async fn sync(
    client: &Client,
    bridge: &str,
    services: &Store<Service>,
    pods: &Store<Pod>,
    applied: &mut Option<Vec<ServicePort>>,
    published: &mut HashMap<(String, String), Value>,
) {
    let svcs = services.state();
    let all_pods = pods.state();
    let wanted = rules(&svcs, &all_pods);
    if applied.as_ref() != Some(&wanted) {
        let (b, w) = (bridge.to_string(), wanted.clone());
        match tokio::task::spawn_blocking(move || kubevirt_podnet::services::apply(&b, &w)).await {
            Ok(Ok(())) => {
                tracing::info!(ports = wanted.len(), "service rules updated");
                *applied = Some(wanted);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "programming service rules"),
            Err(e) => tracing::error!(error = %e, "programming service rules"),
        }
    }
    let mut seen = HashMap::new();
    for svc in &svcs {
        let Some(obj) = endpoints_object(svc, &all_pods) else {
            continue;
        };
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        seen.insert(key.clone(), ());
        if published.get(&key) == Some(&obj) {
            continue;
        }
        let api: Api<Endpoints> = Api::namespaced(client.clone(), &key.0);
        match api
            .patch(
                &key.1,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
        {
            Ok(_) => {
                published.insert(key, obj);
            }
            Err(e) => {
                tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "publishing endpoints")
            }
        }
    }
    let gone: Vec<_> = published
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        let api: Api<Endpoints> = Api::namespaced(client.clone(), &key.0);
        match api.delete(&key.1, &DeleteParams::default()).await {
            Ok(_) => {
                published.remove(&key);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                published.remove(&key);
            }
            Err(e) => {
                tracing::warn!(namespace = %key.0, name = %key.1, error = %e, "deleting endpoints")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pod(name: &str, ip: &str, ready: bool, labels: &[(&str, &str)]) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": name,
                             "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
                "spec": {"nodeName": "n1", "containers": [{"name": "compute",
                          "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip,
                           "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap(),
        )
    }

    fn svc(spec: Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "s", "namespace": "default"}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn ready_matching_pods_are_endpoints() {
        let pods = vec![
            pod("a", "10.244.0.5", true, &[("app", "x")]),
            pod("b", "10.244.0.6", false, &[("app", "x")]),
            pod("c", "10.244.0.7", true, &[("app", "y")]),
        ];
        let s = svc(
            json!({"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "x"},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080},
                      {"name": "n", "port": 81, "targetPort": "http", "protocol": "UDP"},
                      {"port": 82, "protocol": "SCTP"}]}),
        );
        let r = rules(std::slice::from_ref(&s), &pods);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].endpoints, vec![(Ipv4Addr::new(10, 244, 0, 5), 8080)]);
        assert_eq!(r[0].node_port, Some(30080));
        assert_eq!(r[1].protocol, Protocol::Udp);
        assert_eq!(r[1].endpoints, vec![(Ipv4Addr::new(10, 244, 0, 5), 8080)]);
        let ep = endpoints_object(&s, &pods).unwrap();
        assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "10.244.0.5");
        assert_eq!(ep["subsets"][0]["notReadyAddresses"][0]["ip"], "10.244.0.6");
        // Headless and selector-less Services get no rules.
        assert!(rules(
            &[svc(
                json!({"clusterIP": "None", "selector": {"app": "x"}, "ports": [{"port": 80}]})
            )],
            &pods
        )
        .is_empty());
        assert!(endpoints_object(
            &svc(json!({"clusterIP": "10.96.0.9", "ports": [{"port": 80}]})),
            &pods
        )
        .is_none());
    }
}
