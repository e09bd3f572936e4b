//! What kube-apiserver's Service storage does beyond storing: defaulting
//! (`SetDefaults_Service`), validation (`ValidateService`, the parts a tenant can get
//! wrong), and the allocation of `spec.clusterIP` from the service CIDR and of node ports
//! from 30000-32767, with the allocators' own 422 messages.
//!
//! Nothing is kept beside the store: what is allocated is what the stored Services hold,
//! read under `Ops::service_allocation` (held from that read until the write is committed),
//! so a deleted Service releases its addresses at once and a restart loses nothing.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use rand::Rng;
use serde_json::{json, Map, Value};

use crate::error::Cause;
use crate::ops::Operation;
use crate::registry::ResourceDef;
use crate::store::{self, Store};

/// kubeadm's default `--service-cluster-ip-range`.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// kube-apiserver's default `--service-node-port-range`.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];

pub fn is_service(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.kind == "Service"
}

/// Addresses and ports held by the stored Services, with who holds them ("ns/name").
#[derive(Debug, Default)]
pub struct Taken {
    cluster_ips: HashMap<Ipv4Addr, String>,
    node_ports: HashMap<u16, String>,
}

/// What the stored Services hold; read only before a Service is written.
pub fn taken_for(store: &Store, def: &ResourceDef) -> Arc<Taken> {
    if !is_service(def) {
        return Arc::default();
    }
    let (services, _) = store.list(&store::resource_prefix("", "services"));
    Arc::new(taken_by(services.iter().map(|s| s.as_ref())))
}

fn owner(svc: &Value) -> String {
    format!(
        "{}/{}",
        svc.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        svc.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    )
}

fn taken_by<'a>(services: impl Iterator<Item = &'a Value>) -> Taken {
    let mut taken = Taken::default();
    for svc in services {
        let who = owner(svc);
        if let Some(ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        {
            taken.cluster_ips.insert(ip, who.clone());
        }
        for p in ports(svc) {
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                if let Ok(n) = u16::try_from(n) {
                    taken.node_ports.insert(n, who.clone());
                }
            }
        }
    }
    taken
}

fn ports(svc: &Value) -> impl Iterator<Item = &Value> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn in_cidr(ip: Ipv4Addr) -> bool {
    let (net, bits) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(net)
}

/// The usable addresses of the CIDR: neither the network nor the broadcast address.
fn cidr_span() -> (u32, u32) {
    let (net, bits) = SERVICE_CIDR;
    let first = u32::from(net) + 1;
    let size = 1u32 << (32 - bits);
    (first, u32::from(net) + size - 2)
}

/// kube's allocators pick at random, preferring the upper part of the range so the lower
/// band stays free for addresses users ask for (`--service-cluster-ip-range` static band).
fn pick<T: Copy + Eq + std::hash::Hash>(
    lo: u32,
    hi: u32,
    static_band: u32,
    to: impl Fn(u32) -> T,
    free: impl Fn(T) -> bool,
) -> Option<T> {
    let mut rng = rand::rng();
    for (a, b) in [(lo + static_band, hi), (lo, hi)] {
        if a > b {
            continue;
        }
        let span = b - a + 1;
        let start = rng.random_range(0..span);
        // A linear scan from a random start finds a free one if there is any.
        for i in 0..span {
            let v = to(a + (start + i) % span);
            if free(v) {
                return Some(v);
            }
        }
    }
    None
}

fn cause(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        reason: reason.into(),
        field: field.into(),
        message: message.into(),
    }
}

fn invalid(field: impl Into<String>, value: &Value, msg: &str) -> Cause {
    cause(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {value}: {msg}"),
    )
}

fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    cause(
        "FieldValueNotSupported",
        field,
        format!(
            "Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ),
    )
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(|v| v.is_null() || v == "") {
        map.insert(key.into(), value);
    }
}

/// `IsValidPortName` (IANA_SVC_NAME).
fn port_name_problems(name: &str) -> Vec<&'static str> {
    let mut p = Vec::new();
    if name.len() > 15 {
        p.push("must be no more than 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        p.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if name.contains("--") {
        p.push("must not contain consecutive hyphens");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        p.push("must contain at least one letter (a-z)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        p.push("must not begin or end with a hyphen");
    }
    p
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

fn valid_port(v: &Value) -> Option<u16> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
}

/// Defaults, validates and allocates; `taken` from [`taken_for`].
pub fn admit(
    def: &ResourceDef,
    op: Operation,
    obj: &mut Value,
    old: Option<&Value>,
    taken: &Taken,
) -> Result<(), Vec<Cause>> {
    if !is_service(def) {
        return Ok(());
    }
    let me = owner(obj);
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let old_spec = old.and_then(|o| o.get("spec"));
    let mut errs = Vec::new();
    let spec = obj["spec"].as_object_mut().expect("spec is an object");
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec["type"].clone();
    let ty_str = ty.as_str().unwrap_or_default().to_string();
    if !TYPES.contains(&ty_str.as_str()) {
        return Err(vec![not_supported("spec.type", &ty, &TYPES)]);
    }
    let external_name = ty_str == "ExternalName";
    let node_ports_wanted = ty_str == "NodePort" || ty_str == "LoadBalancer";
    set_default(spec, "sessionAffinity", json!("None"));
    let affinity = spec["sessionAffinity"].clone();
    if !matches!(affinity.as_str(), Some("None" | "ClientIP")) {
        errs.push(not_supported(
            "spec.sessionAffinity",
            &affinity,
            &["ClientIP", "None"],
        ));
    }

    // Updates keep what was allocated when the client leaves it out (kube's
    // patchAllocatedValues), so a PUT or apply without clusterIP is no change.
    if let Some(old_spec) = old_spec {
        if !external_name {
            for f in ["clusterIP", "clusterIPs"] {
                if spec.get(f).is_none_or(|v| v.is_null() || v == "") {
                    if let Some(v) = old_spec.get(f) {
                        spec.insert(f.into(), v.clone());
                    }
                }
            }
        }
    }

    // clusterIP / clusterIPs
    if external_name {
        if spec
            .get("clusterIP")
            .is_some_and(|v| !v.is_null() && v != "")
        {
            errs.push(cause(
                "FieldValueForbidden",
                "spec.clusterIP",
                "Forbidden: may not be set for ExternalName services",
            ));
        }
        match spec.get("externalName").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => {}
            _ => errs.push(cause(
                "FieldValueRequired",
                "spec.externalName",
                "Required value",
            )),
        }
    } else {
        let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
        let ips = spec.get("clusterIPs").cloned().unwrap_or(Value::Null);
        let first_of_ips = ips.get(0).cloned();
        if let (Some(a), Some(b)) = (ip.as_str().filter(|s| !s.is_empty()), &first_of_ips) {
            if b.as_str() != Some(a) {
                errs.push(invalid(
                    "spec.clusterIPs",
                    &ips,
                    "first value must match `clusterIP`",
                ));
            }
        }
        if ips.as_array().is_some_and(|a| a.len() > 1) {
            errs.push(invalid(
                "spec.clusterIPs",
                &ips,
                "may only hold up to 2 values",
            ));
        }
        let wanted = ip
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| first_of_ips.and_then(|v| v.as_str().map(str::to_string)));
        if !ip.is_null() && !ip.is_string() {
            errs.push(invalid("spec.clusterIP", &ip, "must be a string"));
        }
        let old_ip = old_spec
            .and_then(|s| s.get("clusterIP"))
            .and_then(Value::as_str);
        if let (Some(old_ip), Some(w)) = (old_ip.filter(|s| !s.is_empty()), &wanted) {
            if old_ip != w {
                errs.push(invalid(
                    "spec.clusterIPs[0]",
                    &json!(w),
                    "may not change once set",
                ));
            }
        }
        match wanted.as_deref() {
            Some("None") => {
                if ty_str != "ClusterIP" {
                    errs.push(invalid(
                        "spec.clusterIPs[0]",
                        &json!("None"),
                        &format!("may not be set to 'None' for {ty_str} services"),
                    ));
                }
                spec.insert("clusterIP".into(), json!("None"));
                spec.insert("clusterIPs".into(), json!(["None"]));
            }
            Some(w) if old_ip == Some(w) => {}
            Some(w) => match w.parse::<Ipv4Addr>() {
                Err(_) => errs.push(invalid(
                    "spec.clusterIPs[0]",
                    &json!(w),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                )),
                Ok(addr) => {
                    let (first, last) = cidr_span();
                    let msg = if !in_cidr(addr) || u32::from(addr) < first || u32::from(addr) > last
                    {
                        Some(format!(
                            "failed to allocate IP {w}: the provided IP ({w}) is not in the valid range. The range of valid IPs is {}/{}",
                            SERVICE_CIDR.0, SERVICE_CIDR.1
                        ))
                    } else if taken.cluster_ips.get(&addr).is_some_and(|o| *o != me) {
                        Some(format!(
                            "failed to allocate IP {w}: provided IP is already allocated"
                        ))
                    } else {
                        None
                    };
                    match msg {
                        Some(m) => errs.push(invalid("spec.clusterIPs", &json!([w]), &m)),
                        None => {
                            spec.insert("clusterIP".into(), json!(w));
                            spec.insert("clusterIPs".into(), json!([w]));
                        }
                    }
                }
            },
            None => {
                let (first, last) = cidr_span();
                match pick(first, last, 256, Ipv4Addr::from, |a| {
                    !taken.cluster_ips.contains_key(&a)
                }) {
                    Some(a) => {
                        spec.insert("clusterIP".into(), json!(a.to_string()));
                        spec.insert("clusterIPs".into(), json!([a.to_string()]));
                    }
                    None => errs.push(cause(
                        "FieldValueInvalid",
                        "spec.clusterIPs",
                        "Internal error: failed to allocate a serviceIP: range is full",
                    )),
                }
            }
        }
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        if let Some(fams) = spec.get("ipFamilies").and_then(Value::as_array) {
            for (i, f) in fams.iter().enumerate() {
                if f != "IPv4" {
                    errs.push(invalid(
                        format!("spec.ipFamilies[{i}]"),
                        f,
                        "not configured on this cluster",
                    ));
                }
            }
        }
        let policy = spec["ipFamilyPolicy"].clone();
        match policy.as_str() {
            Some("SingleStack" | "PreferDualStack") => {}
            Some("RequireDualStack") => errs.push(invalid(
                "spec.ipFamilyPolicy",
                &policy,
                "this cluster is not configured for dual-stack services",
            )),
            _ => errs.push(not_supported(
                "spec.ipFamilyPolicy",
                &policy,
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            )),
        }
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        let itp = spec["internalTrafficPolicy"].clone();
        if !matches!(itp.as_str(), Some("Cluster" | "Local")) {
            errs.push(not_supported(
                "spec.internalTrafficPolicy",
                &itp,
                &["Cluster", "Local"],
            ));
        }
    }
    if node_ports_wanted {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
        let etp = spec["externalTrafficPolicy"].clone();
        if !matches!(etp.as_str(), Some("Cluster" | "Local")) {
            errs.push(not_supported(
                "spec.externalTrafficPolicy",
                &etp,
                &["Cluster", "Local"],
            ));
        }
        if ty_str == "LoadBalancer" {
            set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
        }
    } else if spec
        .get("externalTrafficPolicy")
        .is_some_and(|v| !v.is_null() && v != "")
    {
        let etp = spec["externalTrafficPolicy"].clone();
        errs.push(invalid(
            "spec.externalTrafficPolicy",
            &etp,
            "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
        ));
    }

    // ports
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let old_ports: Vec<Value> = old_spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let old_type = old_spec.and_then(|s| s.get("type")).and_then(Value::as_str);
    // `allocateLoadBalancerNodePorts: false`: a LoadBalancer gets only the node ports asked for.
    let lb_without_node_ports = ty_str == "LoadBalancer"
        && spec.get("allocateLoadBalancerNodePorts") == Some(&json!(false));
    let ports_val = spec.entry("ports").or_insert(Value::Null);
    if ports_val.is_null() {
        *ports_val = json!([]);
    }
    let Some(ports) = ports_val.as_array_mut() else {
        errs.push(invalid(
            "spec.ports",
            &json!("<not a list>"),
            "must be a list",
        ));
        return Err(errs);
    };
    if ports.is_empty() && !headless && !external_name {
        errs.push(cause("FieldValueRequired", "spec.ports", "Required value"));
    }
    let many = ports.len() > 1;
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    let mut my_node_ports: HashMap<u16, String> = HashMap::new();
    for (i, port) in ports.iter_mut().enumerate() {
        let path = format!("spec.ports[{i}]");
        let Some(p) = port.as_object_mut() else {
            errs.push(invalid(path, port, "must be an object"));
            continue;
        };
        set_default(p, "protocol", json!("TCP"));
        let name = p.get("name").cloned().unwrap_or(Value::Null);
        match name.as_str().filter(|s| !s.is_empty()) {
            None if many => errs.push(cause(
                "FieldValueRequired",
                format!("{path}.name"),
                "Required value",
            )),
            None => {}
            Some(n) => {
                if !is_dns1123_label(n) {
                    errs.push(invalid(
                        format!("{path}.name"),
                        &name,
                        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                    ));
                }
                if !names.insert(n.to_string()) {
                    errs.push(cause(
                        "FieldValueDuplicate",
                        format!("{path}.name"),
                        format!("Duplicate value: {name}"),
                    ));
                }
            }
        }
        let protocol = p["protocol"].clone();
        let proto = protocol.as_str().unwrap_or_default().to_string();
        if !PROTOCOLS.contains(&proto.as_str()) {
            errs.push(not_supported(
                format!("{path}.protocol"),
                &protocol,
                &PROTOCOLS,
            ));
        }
        let port_v = p.get("port").cloned().unwrap_or(Value::Null);
        let Some(number) = valid_port(&port_v) else {
            if port_v.is_null() {
                errs.push(cause(
                    "FieldValueRequired",
                    format!("{path}.port"),
                    "Required value",
                ));
            } else {
                errs.push(invalid(format!("{path}.port"), &port_v, PORT_RANGE_MSG));
            }
            continue;
        };
        if !keys.insert((proto.clone(), number)) {
            errs.push(cause(
                "FieldValueDuplicate",
                path.clone(),
                format!("Duplicate value: {{\"port\":{number},\"protocol\":\"{proto}\"}}"),
            ));
        }
        set_default(p, "targetPort", json!(number));
        let target = p["targetPort"].clone();
        match &target {
            Value::Number(_) => {
                if valid_port(&target).is_none() {
                    errs.push(invalid(
                        format!("{path}.targetPort"),
                        &target,
                        PORT_RANGE_MSG,
                    ));
                }
            }
            Value::String(s) => {
                for m in port_name_problems(s) {
                    errs.push(invalid(format!("{path}.targetPort"), &target, m));
                }
            }
            _ => errs.push(invalid(
                format!("{path}.targetPort"),
                &target,
                "must be a port number or name",
            )),
        }
        // Node ports.
        let np_v = p.get("nodePort").cloned().unwrap_or(Value::Null);
        let np_set = !np_v.is_null() && np_v != 0;
        let np_path = format!("{path}.nodePort");
        if !node_ports_wanted || (lb_without_node_ports && !np_set) {
            if np_set && !node_ports_wanted {
                // Switching away from NodePort drops the ports it held (kube's
                // dropTypeDependentFields) when the client did not change them.
                let unchanged = old_type.is_some_and(|t| t != ty_str)
                    && old_ports.iter().any(|o| o.get("nodePort") == Some(&np_v));
                if unchanged {
                    p.remove("nodePort");
                } else {
                    errs.push(cause(
                        "FieldValueForbidden",
                        np_path,
                        format!("Forbidden: may not be used when `type` is '{ty_str}'"),
                    ));
                }
            }
            continue;
        }
        if !np_set {
            // Keep the port allocated before for the same port and protocol.
            let kept = old_ports
                .iter()
                .find(|o| {
                    o.get("port").and_then(Value::as_u64) == Some(u64::from(number))
                        && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == proto
                })
                .and_then(|o| o.get("nodePort"))
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok());
            // The same port number across protocols shares one node port, as kube does.
            let shared = my_node_ports
                .iter()
                .find(|(_, v)| v.ends_with(&format!("/{number}")))
                .map(|(k, _)| *k);
            let chosen = kept.or(shared).or_else(|| {
                pick(
                    u32::from(*NODE_PORTS.start()),
                    u32::from(*NODE_PORTS.end()),
                    86,
                    |v| v as u16,
                    |n| {
                        taken.node_ports.get(&n).is_none_or(|o| *o == me)
                            && !my_node_ports.contains_key(&n)
                    },
                )
            });
            match chosen {
                Some(n) => {
                    p.insert("nodePort".into(), json!(n));
                    my_node_ports.insert(n, format!("{proto}/{number}"));
                }
                None => errs.push(cause(
                    "FieldValueInvalid",
                    np_path,
                    "Internal error: failed to allocate a nodePort: range is full",
                )),
            }
            continue;
        }
        let Some(n) = valid_port(&np_v) else {
            errs.push(invalid(np_path, &np_v, PORT_RANGE_MSG));
            continue;
        };
        if !NODE_PORTS.contains(&n) {
            errs.push(invalid(
                np_path,
                &np_v,
                &format!(
                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                    NODE_PORTS.start(),
                    NODE_PORTS.end()
                ),
            ));
        } else if taken.node_ports.get(&n).is_some_and(|o| *o != me) {
            errs.push(invalid(
                np_path,
                &np_v,
                "provided port is already allocated",
            ));
        } else if let Some(other) = my_node_ports.get(&n) {
            if other.starts_with(&format!("{proto}/")) {
                errs.push(cause(
                    "FieldValueDuplicate",
                    np_path,
                    format!("Duplicate value: {n}"),
                ));
            }
        } else {
            my_node_ports.insert(n, format!("{proto}/{number}"));
        }
    }
    if op == Operation::Create {
        // A Service starts with an empty status (a LoadBalancer's ingress comes from a
        // controller).
        obj["status"] = json!({"loadBalancer": {}});
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ResourceDef {
        crate::registry::builtins()
            .into_iter()
            .find(|d| d.group.is_empty() && d.kind == "Service")
            .expect("services are built in")
    }

    fn svc(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    fn create(obj: &mut Value, taken: &Taken) -> Result<(), Vec<Cause>> {
        admit(&def(), Operation::Create, obj, None, taken)
    }

    fn messages(r: Result<(), Vec<Cause>>) -> Vec<String> {
        r.expect_err("refused")
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn defaults_and_allocates_a_cluster_ip() {
        let mut s = svc(
            "a",
            json!({"selector": {"app": "x"}, "ports": [{"port": 80}]}),
        );
        create(&mut s, &Taken::default()).unwrap();
        let spec = &s["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert!(spec.get("externalTrafficPolicy").is_none());
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert!(spec["ports"][0].get("nodePort").is_none());
        let ip: Ipv4Addr = spec["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(in_cidr(ip), "{ip}");
        assert_eq!(spec["clusterIPs"], json!([ip.to_string()]));
    }

    #[test]
    fn node_ports_are_allocated_in_range_and_kept_on_update() {
        let mut s = svc(
            "np",
            json!({"type": "NodePort", "ports": [
                {"name": "tcp", "port": 80, "targetPort": 8080},
                {"name": "udp", "port": 53, "protocol": "UDP"}]}),
        );
        create(&mut s, &Taken::default()).unwrap();
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
        let a = s["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
        let b = s["spec"]["ports"][1]["nodePort"].as_u64().unwrap() as u16;
        assert!(NODE_PORTS.contains(&a) && NODE_PORTS.contains(&b) && a != b);
        // A PUT without clusterIP or nodePorts keeps them.
        let mut upd = svc(
            "np",
            json!({"type": "NodePort", "ports": [
                {"name": "tcp", "port": 80, "targetPort": 8080},
                {"name": "udp", "port": 53, "protocol": "UDP"}]}),
        );
        let taken = taken_by([&s].into_iter());
        admit(&def(), Operation::Update, &mut upd, Some(&s), &taken).unwrap();
        assert_eq!(upd["spec"]["clusterIP"], s["spec"]["clusterIP"]);
        assert_eq!(upd["spec"]["ports"], s["spec"]["ports"]);
        // Back to ClusterIP: the node ports are released.
        let mut back = s.clone();
        back["spec"]["type"] = json!("ClusterIP");
        back["spec"]
            .as_object_mut()
            .unwrap()
            .remove("externalTrafficPolicy");
        admit(&def(), Operation::Update, &mut back, Some(&s), &taken).unwrap();
        assert!(back["spec"]["ports"][0].get("nodePort").is_none());
    }

    #[test]
    fn conflicts_are_worded_as_kube_apiserver() {
        let mut first = svc(
            "a",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                   "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        create(&mut first, &Taken::default()).unwrap();
        assert_eq!(first["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        let taken = taken_by([&first].into_iter());
        let mut second = svc(
            "b",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                   "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        assert_eq!(
            messages(create(&mut second, &taken)),
            [
                "spec.clusterIPs: Invalid value: [\"10.96.0.10\"]: failed to allocate IP 10.96.0.10: provided IP is already allocated",
                "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated",
            ]
        );
        // The same object may be written again with what it holds.
        let mut again = first.clone();
        admit(&def(), Operation::Update, &mut again, Some(&first), &taken).unwrap();
    }

    #[test]
    fn hostile_specs_get_field_paths() {
        let cases = [
            (json!({"ports": [{"port": 0}]}), "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"),
            (json!({"ports": [{"port": 70000}]}), "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"),
            (json!({"ports": [{"port": -1}]}), "spec.ports[0].port: Invalid value: -1: must be between 1 and 65535, inclusive"),
            (json!({"ports": [{"port": "80"}]}), "spec.ports[0].port: Invalid value: \"80\": must be between 1 and 65535, inclusive"),
            (json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 22}]}), "spec.ports[0].nodePort: Invalid value: 22: provided port is not in the valid range. The range of valid ports is 30000-32767"),
            (json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 99999}]}), "spec.ports[0].nodePort: Invalid value: 99999: must be between 1 and 65535, inclusive"),
            (json!({"ports": [{"port": 80, "nodePort": 30001}]}), "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
            (json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}), "spec.clusterIPs: Invalid value: [\"10.0.0.1\"]: failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
            (json!({"clusterIP": "10.111.255.255", "ports": [{"port": 80}]}), "spec.clusterIPs: Invalid value: [\"10.111.255.255\"]: failed to allocate IP 10.111.255.255: the provided IP (10.111.255.255) is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
            (json!({"clusterIP": "bogus", "ports": [{"port": 80}]}), "spec.clusterIPs[0]: Invalid value: \"bogus\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
            (json!({"ports": [{"port": 80, "protocol": "ICMP"}]}), "spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
            (json!({"ports": [{"port": 80, "targetPort": 0}]}), "spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive"),
            (json!({"ports": [{"port": 80, "targetPort": "--"}]}), "spec.ports[0].targetPort: Invalid value: \"--\": must not contain consecutive hyphens"),
            (json!({"type": "Bogus", "ports": [{"port": 80}]}), "spec.type: Unsupported value: \"Bogus\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
            (json!({}), "spec.ports: Required value"),
            (json!({"ports": [{"port": 80}, {"port": 81}]}), "spec.ports[0].name: Required value"),
            (json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}), "spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"),
            (json!({"ports": "x"}), "spec.ports: Invalid value: \"<not a list>\": must be a list"),
        ];
        for (spec, want) in cases {
            let mut s = svc("h", spec.clone());
            let got = messages(create(&mut s, &Taken::default()));
            assert!(got.iter().any(|m| m == want), "{spec}: {got:?}");
        }
        let mut s = json!({"metadata": {"name": "x", "namespace": "d"}, "spec": "nope"});
        assert!(create(&mut s, &Taken::default()).is_err());
    }

    #[test]
    fn cluster_ip_is_immutable_and_none_is_headless() {
        let mut s = svc("a", json!({"ports": [{"port": 80}]}));
        create(&mut s, &Taken::default()).unwrap();
        let mut upd = s.clone();
        upd["spec"]["clusterIP"] = json!("10.96.0.99");
        upd["spec"]["clusterIPs"] = json!(["10.96.0.99"]);
        let got = messages(admit(
            &def(),
            Operation::Update,
            &mut upd,
            Some(&s),
            &Taken::default(),
        ));
        assert!(
            got[0].starts_with(
                "spec.clusterIPs[0]: Invalid value: \"10.96.0.99\": may not change once set"
            ),
            "{got:?}"
        );
        let mut h = svc("h", json!({"clusterIP": "None", "selector": {"a": "b"}}));
        create(&mut h, &Taken::default()).unwrap();
        assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn allocation_skips_taken_addresses() {
        let mut taken = Taken::default();
        // Only one node port left.
        for n in NODE_PORTS {
            if n != 31234 {
                taken.node_ports.insert(n, "x/y".into());
            }
        }
        let mut s = svc("a", json!({"type": "NodePort", "ports": [{"port": 80}]}));
        create(&mut s, &taken).unwrap();
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 31234);
        taken.node_ports.insert(31234, "x/z".into());
        let mut full = svc("b", json!({"type": "NodePort", "ports": [{"port": 80}]}));
        let got = messages(create(&mut full, &taken));
        assert!(got[0].contains("range is full"), "{got:?}");
    }
}
