//! Rough cost of one `Policy::authorize` with 1,000 RoleBindings present, all in one
//! namespace or one per namespace, over the default roles (aggregated as on a cluster).
//!
//! Run with `cargo run --release -p kubevirt-rbac --example bench`.

use std::hint::black_box;
use std::time::Instant;

use kubevirt_rbac::{aggregate, defaults, Policy, Request, ResourceAttributes, UserInfo};
use serde_json::{json, Value};

const BINDINGS: usize = 1000;
const ITERATIONS: u32 = 1_000_000;

fn main() {
    let roles = default_cluster_roles();
    let bindings = defaults::cluster_role_bindings();

    let one_namespace: Vec<Value> = (0..BINDINGS)
        .map(|i| binding("vms", &format!("user{i}")))
        .collect();
    run(
        "1000 RoleBindings in one namespace",
        &roles,
        &bindings,
        &one_namespace,
        |_| "vms".to_string(),
    );

    let many_namespaces: Vec<Value> = (0..BINDINGS)
        .map(|i| binding(&format!("ns{i}"), &format!("user{i}")))
        .collect();
    run(
        "1000 RoleBindings in 1000 namespaces",
        &roles,
        &bindings,
        &many_namespaces,
        |i| format!("ns{i}"),
    );
}

fn run(
    title: &str,
    roles: &[Value],
    cluster_bindings: &[Value],
    role_bindings: &[Value],
    namespace_of: impl Fn(usize) -> String,
) {
    let start = Instant::now();
    let policy = Policy::new(roles, &[], cluster_bindings, role_bindings);
    let build = start.elapsed();

    let user = UserInfo {
        name: "user500".into(),
        groups: vec!["system:authenticated".into()],
        ..UserInfo::default()
    };
    let namespace = namespace_of(500);
    let allowed = request(
        "update",
        &namespace,
        "subresources.kubevirt.io",
        "virtualmachines",
        "start",
    );
    let denied = request(
        "create",
        &namespace,
        "rbac.authorization.k8s.io",
        "roles",
        "",
    );
    assert!(policy.authorize(&user, &allowed).allowed);
    assert!(!policy.authorize(&user, &denied).allowed);

    println!("{title} (Policy::new {:.1} ms):", build.as_secs_f64() * 1e3);
    for (label, req) in [("allowed", &allowed), ("denied", &denied)] {
        let start = Instant::now();
        for _ in 0..ITERATIONS {
            black_box(policy.authorize(black_box(&user), black_box(req)));
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);
        println!("  {label:>7}: {ns:.0} ns per authorize");
    }
}

fn default_cluster_roles() -> Vec<Value> {
    let mut roles = defaults::cluster_roles();
    for (name, rules) in aggregate(&roles) {
        if let Some(role) = roles
            .iter_mut()
            .find(|r| r["metadata"]["name"] == name.as_str())
        {
            role["rules"] = serde_json::to_value(rules).expect("rules serialize");
        }
    }
    roles
}

fn binding(namespace: &str, user: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": format!("{user}-edit"), "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    })
}

fn request(verb: &str, namespace: &str, group: &str, resource: &str, sub: &str) -> Request {
    Request::Resource {
        verb: verb.into(),
        attrs: ResourceAttributes {
            namespace: namespace.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: if verb == "create" {
                String::new()
            } else {
                "x".into()
            },
        },
    }
}
