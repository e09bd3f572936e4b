//! `virtctl expose (vmi|vm|vmirs) NAME --name SVC ...`, as upstream: a Service selecting
//! the VM's pods, owned by what it exposes (controller reference, no blocking), on the
//! `--port` given or else on the ports the VM's pod-network interface declares.
//!
//! The selector is the VMI's labels, the VM's template labels or the replica set's
//! `matchLabels` (upstream before its `vmi.kubevirt.io/id` label, which this project's
//! launcher pods do not carry yet).

use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::Api;
use serde_json::{json, Map, Value};

use crate::client::Session;

#[derive(clap::Args, Debug)]
pub struct ExposeArgs {
    /// vmi, vm or vmirs (singular or plural, short or long names).
    pub kind: String,
    pub resource: String,
    /// Name of the service created for the exposure of the VM.
    #[arg(long)]
    pub name: String,
    /// ClusterIP to be assigned to the service. Leave empty to auto-allocate, or set to
    /// 'None' to create a headless service.
    #[arg(long = "cluster-ip", default_value = "")]
    pub cluster_ip: String,
    /// Additional external IP address (not managed by the cluster) to accept for the service.
    #[arg(long = "external-ip", default_value = "")]
    pub external_ip: String,
    /// The port that the service should serve on.
    #[arg(long, default_value_t = 0)]
    pub port: i32,
    /// The network protocol for the service to be created.
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    /// Name or number for the port on the VM that the service should direct traffic to.
    #[arg(long = "target-port", default_value = "")]
    pub target_port: String,
    /// Type for this service: ClusterIP, NodePort, or LoadBalancer.
    #[arg(long = "type", default_value = "ClusterIP")]
    pub service_type: String,
    /// Name of the port.
    #[arg(long = "port-name", default_value = "")]
    pub port_name: String,
    /// IP family over which the service will be exposed: 'IPv4', 'IPv6', 'IPv4,IPv6' or 'IPv6,IPv4'.
    #[arg(long = "ip-family", default_value = "")]
    pub ip_family: String,
    /// 'SingleStack', 'PreferDualStack' or 'RequireDualStack'.
    #[arg(long = "ip-family-policy", default_value = "")]
    pub ip_family_policy: String,
}

fn protocol(s: &str) -> anyhow::Result<&'static str> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok("TCP"),
        "udp" => Ok("UDP"),
        _ => anyhow::bail!("unknown protocol: {s}"),
    }
}

fn service_type(s: &str) -> anyhow::Result<&'static str> {
    match s.to_ascii_lowercase().as_str() {
        "clusterip" => Ok("ClusterIP"),
        "nodeport" => Ok("NodePort"),
        "loadbalancer" => Ok("LoadBalancer"),
        "externalname" => anyhow::bail!("type: {s} not supported"),
        _ => anyhow::bail!("unknown service type: {s}"),
    }
}

fn ip_families(s: &str) -> anyhow::Result<Vec<&'static str>> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "" => vec![],
        "ipv4" => vec!["IPv4"],
        "ipv6" => vec!["IPv6"],
        "ipv4,ipv6" => vec!["IPv4", "IPv6"],
        "ipv6,ipv4" => vec!["IPv6", "IPv4"],
        _ => anyhow::bail!("unknown IPFamily/s: {s}"),
    })
}

fn ip_family_policy(s: &str, families: &[&str]) -> anyhow::Result<Option<&'static str>> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "" if families.len() > 1 => Some("PreferDualStack"),
        "" => None,
        "singlestack" => Some("SingleStack"),
        "preferdualstack" => Some("PreferDualStack"),
        "requiredualstack" => Some("RequireDualStack"),
        _ => anyhow::bail!("unknown IPFamilyPolicy/s: {s}"),
    })
}

/// `targetPort` as `intstr.Parse`: a number if it is one, else a name; empty is unset.
fn target_port(s: &str) -> Option<Value> {
    if s.is_empty() {
        return None;
    }
    Some(match s.parse::<i32>() {
        Ok(n) => json!(n),
        Err(_) => json!(s),
    })
}

/// The ports the pod-network interface declares (upstream's `podNetworkPorts`).
fn pod_network_ports(vmi_spec: &Value) -> Vec<Value> {
    let Some(net) = vmi_spec
        .get("networks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|n| n.get("pod").is_some())
        .and_then(|n| n.get("name"))
    else {
        return Vec::new();
    };
    vmi_spec
        .pointer("/domain/devices/interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|i| i.get("name") == Some(net))
        .and_then(|i| i.get("ports"))
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut v = json!({"name": format!("port-{}", i + 1), "port": p.get("port")});
                    if let Some(proto) = p.get("protocol").filter(|v| v != &"") {
                        v["protocol"] = proto.clone();
                    }
                    v
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Target {
    kind: &'static str,
    plural: &'static str,
    /// Where the labels the Service selects on are.
    selector: &'static str,
    /// Where the VMI spec (for the ports) is.
    spec: &'static str,
}

fn target(kind: &str) -> anyhow::Result<Target> {
    Ok(match kind.to_ascii_lowercase().as_str() {
        "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => Target {
            kind: "VirtualMachineInstance",
            plural: "virtualmachineinstances",
            selector: "/metadata/labels",
            spec: "/spec",
        },
        "vm" | "vms" | "virtualmachine" | "virtualmachines" => Target {
            kind: "VirtualMachine",
            plural: "virtualmachines",
            selector: "/spec/template/metadata/labels",
            spec: "/spec/template/spec",
        },
        "vmirs"
        | "vmirss"
        | "virtualmachineinstancereplicaset"
        | "virtualmachineinstancereplicasets" => Target {
            kind: "VirtualMachineInstanceReplicaSet",
            plural: "virtualmachineinstancereplicasets",
            selector: "/spec/selector/matchLabels",
            spec: "/spec/template/spec",
        },
        _ => anyhow::bail!("unsupported resource type: {kind}"),
    })
}

/// The Service for `obj` (the exposed object, as JSON).
fn service(args: &ExposeArgs, t: &Target, obj: &Value, namespace: &str) -> anyhow::Result<Value> {
    let proto = protocol(&args.protocol)?;
    let ty = service_type(&args.service_type)?;
    let families = ip_families(&args.ip_family)?;
    let policy = ip_family_policy(&args.ip_family_policy, &families)?;
    if t.kind == "VirtualMachineInstanceReplicaSet"
        && obj
            .pointer("/spec/selector/matchExpressions")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty())
    {
        anyhow::bail!("cannot expose VirtualMachineInstanceReplicaSet with match expressions");
    }
    let selector: Map<String, Value> = obj
        .pointer(t.selector)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if selector.is_empty() {
        if t.kind == "VirtualMachineInstanceReplicaSet" {
            anyhow::bail!(
                "cannot expose VirtualMachineInstanceReplicaSet without any selector labels"
            );
        }
        anyhow::bail!(
            "cannot expose {} without any label: {}",
            t.kind,
            args.resource
        );
    }
    let ports = if args.port != 0 {
        let mut p = json!({"protocol": proto, "port": args.port});
        if !args.port_name.is_empty() {
            p["name"] = json!(args.port_name);
        }
        if let Some(tp) = target_port(&args.target_port) {
            p["targetPort"] = tp;
        }
        vec![p]
    } else {
        obj.pointer(t.spec)
            .map(pod_network_ports)
            .unwrap_or_default()
    };
    if ports.is_empty() {
        anyhow::bail!("couldn't find port via --port flag or introspection");
    }
    let mut spec = json!({"ports": ports, "selector": selector, "type": ty});
    if !args.cluster_ip.is_empty() {
        spec["clusterIP"] = json!(args.cluster_ip);
    }
    if !families.is_empty() {
        spec["ipFamilies"] = json!(families);
    }
    if let Some(p) = policy {
        spec["ipFamilyPolicy"] = json!(p);
    }
    if !args.external_ip.is_empty() {
        spec["externalIPs"] = json!([args.external_ip]);
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": args.name,
            "namespace": namespace,
            "ownerReferences": [{
                "apiVersion": "kubevirt.io/v1",
                "kind": t.kind,
                "name": obj.pointer("/metadata/name"),
                "uid": obj.pointer("/metadata/uid"),
                "controller": true,
                "blockOwnerDeletion": false,
            }],
        },
        "spec": spec,
    }))
}

pub async fn run(s: &Session, args: &ExposeArgs) -> anyhow::Result<()> {
    let t = target(&args.kind)?;
    // Flags are checked before anything is fetched, as upstream parses them first.
    protocol(&args.protocol)?;
    service_type(&args.service_type)?;
    ip_family_policy(&args.ip_family_policy, &ip_families(&args.ip_family)?)?;
    let ar = ApiResource {
        group: "kubevirt.io".into(),
        version: "v1".into(),
        api_version: "kubevirt.io/v1".into(),
        kind: t.kind.into(),
        plural: t.plural.into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(s.client.clone(), &s.namespace, &ar);
    let obj = api.get(&args.resource).await.map_err(|e| {
        anyhow::anyhow!(
            "error fetching {}: {}",
            t.kind,
            crate::client::ApiFailure(e).message()
        )
    })?;
    let obj = serde_json::to_value(&obj)?;
    let svc = service(args, &t, &obj, &s.namespace)?;
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(svc)?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(s.client.clone(), &s.namespace);
    services
        .create(&PostParams::default(), &svc)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "service creation failed: {}",
                crate::client::ApiFailure(e).message()
            )
        })?;
    println!(
        "Service {} successfully created for {} {}",
        args.name,
        args.kind.to_ascii_lowercase(),
        args.resource
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ExposeArgs,
    }

    fn args(extra: &[&str]) -> ExposeArgs {
        let mut v = vec!["t", "vm", "myvm", "--name", "svc"];
        v.extend_from_slice(extra);
        T::parse_from(v).a
    }

    fn vm() -> Value {
        json!({"metadata": {"name": "myvm", "uid": "u1"}, "spec": {"template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"networks": [{"name": "default", "pod": {}}],
                     "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {},
                        "ports": [{"port": 22}, {"port": 53, "protocol": "UDP"}]}]}}}}}})
    }

    #[test]
    fn builds_upstreams_service() {
        let a = args(&[
            "--port",
            "80",
            "--target-port",
            "8080",
            "--type",
            "nodeport",
        ]);
        let svc = service(&a, &target("vm").unwrap(), &vm(), "default").unwrap();
        assert_eq!(svc["spec"]["type"], "NodePort");
        assert_eq!(svc["spec"]["selector"], json!({"app": "web"}));
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"protocol": "TCP", "port": 80, "targetPort": 8080}])
        );
        assert_eq!(
            svc["metadata"]["ownerReferences"][0]["kind"],
            "VirtualMachine"
        );
        assert_eq!(
            svc["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
            false
        );
        // Without --port: the interface's ports.
        let svc = service(&args(&[]), &target("vm").unwrap(), &vm(), "default").unwrap();
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"name": "port-1", "port": 22}, {"name": "port-2", "port": 53, "protocol": "UDP"}])
        );
        let a = args(&["--port", "80", "--target-port", "http", "--protocol", "udp"]);
        let svc = service(&a, &target("vm").unwrap(), &vm(), "default").unwrap();
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "UDP");
    }

    #[test]
    fn refuses_as_upstream() {
        let e = |extra: &[&str], obj: Value| {
            service(&args(extra), &target("vm").unwrap(), &obj, "d")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(&["--port", "1", "--type", "ExternalName"], vm()),
            "type: ExternalName not supported"
        );
        assert_eq!(
            e(&["--port", "1", "--type", "x"], vm()),
            "unknown service type: x"
        );
        assert_eq!(
            e(&["--port", "1", "--protocol", "sctp"], vm()),
            "unknown protocol: sctp"
        );
        let mut bare = vm();
        bare["spec"]["template"]["metadata"] = json!({});
        assert_eq!(
            e(&["--port", "1"], bare),
            "cannot expose VirtualMachine without any label: myvm"
        );
        let mut no_ports = vm();
        no_ports["spec"]["template"]["spec"]["networks"] = json!([]);
        assert_eq!(
            e(&[], no_ports),
            "couldn't find port via --port flag or introspection"
        );
        assert!(target("pod").is_err());
    }
}
