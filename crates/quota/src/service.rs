//! Service usage (`services.go`): the service itself, load balancers and node ports.

use kubevirt_api::quantity::{Quantity, QuantityFormat};
use serde_json::Value;

use crate::resources::{one, zero, ResourceList};

/// Quota names the service evaluator tracks.
pub(crate) const SERVICE_RESOURCES: &[&str] = &[
    "count/services",
    "services",
    "services.nodeports",
    "services.loadbalancers",
];

/// The quota usage of a Service. Node ports are charged by intent (the number of ports), since
/// they are not allocated yet at admission; a load balancer that opts out of node ports
/// (`allocateLoadBalancerNodePorts: false`) is charged only for ports that name one explicitly.
pub(crate) fn usage(service: &Value) -> ResourceList {
    let ports: &[Value] = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let count = |n: usize| {
        Quantity::from_int(
            i64::try_from(n).unwrap_or(i64::MAX),
            QuantityFormat::DecimalSI,
        )
    };
    let mut result = ResourceList::from([
        ("count/services".to_string(), one()),
        ("services".to_string(), one()),
        ("services.loadbalancers".to_string(), zero()),
        ("services.nodeports".to_string(), zero()),
    ]);
    match service.pointer("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => {
            result.insert("services.nodeports".to_string(), count(ports.len()));
        }
        Some("LoadBalancer") => {
            let opted_out = service
                .pointer("/spec/allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                == Some(false);
            let node_ports = if opted_out {
                ports
                    .iter()
                    .filter(|p| p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0)
                    .count()
            } else {
                ports.len()
            };
            result.insert("services.nodeports".to_string(), count(node_ports));
            result.insert("services.loadbalancers".to_string(), one());
        }
        _ => {}
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::pretty_print;
    use serde_json::json;

    #[test]
    fn counts_by_type() {
        let ports = json!([{"port": 80}, {"port": 443, "nodePort": 30443}]);
        let svc = |t: &str, allocate: bool| json!({"spec": {"type": t, "ports": ports, "allocateLoadBalancerNodePorts": allocate}});
        assert_eq!(
            pretty_print(&usage(&svc("ClusterIP", true))),
            "count/services=1,services=1,services.loadbalancers=0,services.nodeports=0"
        );
        assert_eq!(
            pretty_print(&usage(&svc("NodePort", true))),
            "count/services=1,services=1,services.loadbalancers=0,services.nodeports=2"
        );
        assert_eq!(
            pretty_print(&usage(&svc("LoadBalancer", false))),
            "count/services=1,services=1,services.loadbalancers=1,services.nodeports=1"
        );
    }
}
