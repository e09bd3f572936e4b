//! Everything a Kubernetes cluster needs to run kubevirt-rs, as API objects: the
//! namespace, the CRDs of the kinds this project owns, a ServiceAccount and least-privilege
//! RBAC per component, KubeVirt's user roles (aggregated into `admin`, `edit`, `view`),
//! virt-api's Service and webhook configurations, and the components' workloads.
//!
//! The objects are versioned (`app.kubernetes.io/version`) and applied with server-side
//! apply, so a second install is a no-op and a newer one updates in place. Fields that
//! virt-api manages at run time (the webhooks' `caBundle`) are left out, so an install never
//! resets them.

use serde_json::{json, Value};

use crate::webhooks::{self, Role, MUTATING_CONFIGURATION, VALIDATING_CONFIGURATION};

/// The label every installed object carries (with the version label): how `uninstall` and
/// users find them.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "kubevirt-rs");
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Component names, as upstream's deployments, service accounts and cluster roles.
pub const VIRT_API: &str = "virt-api";
pub const VIRT_CONTROLLER: &str = "virt-controller";
pub const VIRT_HANDLER: &str = "virt-handler";
/// The web console (ours: upstream has none).
pub const VIRT_CONSOLE: &str = "virt-console";
/// The port the console listens on inside its pod; its Service maps 443 to it.
pub const VIRT_CONSOLE_PORT: u16 = 8443;
pub const API_SERVICE_ACCOUNT: &str = "kubevirt-apiserver";
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "kubevirt-controller";
pub const HANDLER_SERVICE_ACCOUNT: &str = "kubevirt-handler";
/// The APIService through which kube-apiserver's aggregator serves
/// `subresources.kubevirt.io` from virt-api.
pub const API_SERVICE: &str = "v1.subresources.kubevirt.io";
/// The port virt-api listens on inside its pod; its Service maps 443 to it.
pub const VIRT_API_PORT: u16 = 8443;
/// virt-controller's and virt-handler's `/metrics` port (HTTPS), as upstream's.
pub const METRICS_PORT: u16 = 8443;
/// The Service in front of the components' `/metrics`, and the pod label it selects.
pub const METRICS_SERVICE: &str = "kubevirt-prometheus-metrics";
pub const PROMETHEUS_LABEL: &str = "prometheus.kubevirt.io";

/// Groups whose CRDs belong to other projects on a cluster: CDI installs DataVolumes, the
/// CSI external-snapshotter the volume snapshot kinds. The embedded server serves them
/// itself; an install leaves them to their owners.
const FOREIGN_GROUPS: &[&str] = &["cdi.kubevirt.io", "snapshot.storage.k8s.io"];

/// What an install is made of.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub namespace: String,
    /// The image holding the `kubevirt-rs` binary (virt-api, virt-controller, virt-handler).
    pub image: String,
    /// The virt-launcher image the VMIs' pods run.
    pub launcher_image: String,
    pub image_pull_policy: String,
    /// Where launchers keep their run directories on a node (the node agent's `--run-root`).
    pub run_root: String,
}

impl InstallOptions {
    /// The defaults: namespace `kubevirt`, this version's images.
    pub fn new(run_root: &str) -> Self {
        InstallOptions {
            namespace: "kubevirt".into(),
            image: format!("kubevirt-rs/kubevirt-rs:{VERSION}"),
            launcher_image: format!("kubevirt-rs/virt-launcher:{VERSION}"),
            image_pull_policy: "IfNotPresent".into(),
            run_root: run_root.into(),
        }
    }
}

fn labels(component: Option<&str>) -> Value {
    let mut l = json!({
        PART_OF.0: PART_OF.1,
        VERSION_LABEL: VERSION,
        "app.kubernetes.io/managed-by": "kubevirt-rs-install",
    });
    if let Some(c) = component {
        l["kubevirt.io"] = json!(c);
        l["app.kubernetes.io/component"] = json!(c);
    }
    l
}

fn meta(name: &str, namespace: Option<&str>, component: Option<&str>) -> Value {
    let mut m = json!({"name": name, "labels": labels(component)});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// Every object of an install, in the order they are applied.
pub fn install(o: &InstallOptions) -> Vec<Value> {
    let ns = o.namespace.as_str();
    let mut out = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": meta(ns, None, None),
    })];
    out.extend(crds());
    for sa in [
        API_SERVICE_ACCOUNT,
        CONTROLLER_SERVICE_ACCOUNT,
        HANDLER_SERVICE_ACCOUNT,
    ] {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(sa, Some(ns), None),
        }));
    }
    out.extend(rbac(ns));
    out.extend(
        kubevirt_rbac::defaults::kubevirt_cluster_roles()
            .into_iter()
            .chain(kubevirt_rbac::defaults::kubevirt_cluster_role_bindings())
            .map(with_install_labels),
    );
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(VIRT_API, Some(ns), Some(VIRT_API)),
        "spec": {
            "type": "ClusterIP",
            "selector": {"kubevirt.io": VIRT_API},
            "ports": [{"name": "https", "port": 443, "targetPort": VIRT_API_PORT, "protocol": "TCP"}],
        },
    }));
    // Upstream's Service in front of every component's `/metrics` (what a ServiceMonitor
    // selects).
    let mut metrics_meta = meta(METRICS_SERVICE, Some(ns), None);
    metrics_meta["labels"][PROMETHEUS_LABEL] = json!("true");
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metrics_meta,
        "spec": {
            "type": "ClusterIP",
            "selector": {PROMETHEUS_LABEL: "true"},
            "ports": [{"name": "metrics", "port": 443, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }));
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(VIRT_CONSOLE, Some(ns), Some(VIRT_CONSOLE)),
        "spec": {
            "type": "ClusterIP",
            "selector": {"kubevirt.io": VIRT_CONSOLE},
            "ports": [{"name": "https", "port": 443, "targetPort": VIRT_CONSOLE_PORT, "protocol": "TCP"}],
        },
    }));
    out.push(webhook_configuration(ns, Role::Mutate));
    out.push(webhook_configuration(ns, Role::Validate));
    // Without `caBundle`: virt-api sets it (and keeps it current).
    out.push(json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": meta(API_SERVICE, None, Some(VIRT_API)),
        "spec": {
            "group": kubevirt_api::subresources::GROUP,
            "version": kubevirt_api::subresources::VERSION,
            "groupPriorityMinimum": 1000,
            "versionPriority": 15,
            "service": {"namespace": ns, "name": VIRT_API, "port": 443},
        },
    }));
    out.extend(workloads(o));
    out
}

/// The CRDs of the kinds kubevirt-rs owns on a cluster.
pub fn crds() -> Vec<Value> {
    kubevirt_api::crds::all()
        .into_iter()
        .filter(|c| !FOREIGN_GROUPS.contains(&c.spec.group.as_str()))
        .filter_map(|c| serde_json::to_value(c).ok())
        .map(with_install_labels)
        .collect()
}

/// Adds the install's labels to an object made elsewhere (keeping its own).
fn with_install_labels(mut obj: Value) -> Value {
    let own = obj["metadata"]["labels"].as_object().cloned();
    let mut merged = labels(None);
    if let (Some(own), Some(m)) = (own, merged.as_object_mut()) {
        m.extend(own);
    }
    obj["metadata"]["labels"] = merged;
    obj
}

fn rbac(ns: &str) -> Vec<Value> {
    let kv_kinds = [
        "virtualmachines",
        "virtualmachineinstances",
        "virtualmachineinstancemigrations",
        "virtualmachineinstancereplicasets",
    ];
    let kv_status: Vec<String> = kv_kinds.iter().map(|k| format!("{k}/status")).collect();
    let kv_status: Vec<&str> = kv_status.iter().map(String::as_str).collect();
    let controller = vec![
        rule(&[""], &["pods"], WRITE),
        // The launcher pod's readiness gate: False while the VMI is paused.
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["events"], &["create", "patch", "update"]),
        rule(&[""], &["nodes"], READ),
        rule(&[""], &["persistentvolumeclaims"], WRITE),
        rule(&["kubevirt.io"], &kv_kinds, WRITE),
        rule(&["kubevirt.io"], &kv_status, &["get", "update", "patch"]),
        // The install's KubeVirt object: made if missing, its status kept.
        rule(
            &["kubevirt.io"],
            &["kubevirts"],
            &["get", "list", "watch", "create"],
        ),
        rule(&["kubevirt.io"], &["kubevirts/status"], &["get", "patch"]),
        rule(
            &[
                "snapshot.kubevirt.io",
                "export.kubevirt.io",
                "clone.kubevirt.io",
            ],
            &["*"],
            WRITE,
        ),
        rule(&["cdi.kubevirt.io"], &["datavolumes"], WRITE),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshots", "volumesnapshotcontents"],
            WRITE,
        ),
        rule(
            &["snapshot.storage.k8s.io"],
            &["volumesnapshotclasses"],
            READ,
        ),
        rule(&["storage.k8s.io"], &["storageclasses"], READ),
        rule(&["migrations.kubevirt.io"], &["migrationpolicies"], READ),
        rule(&["instancetype.kubevirt.io"], &["*"], READ),
    ];
    let handler = vec![
        rule(
            &[""],
            &["nodes"],
            &["get", "list", "watch", "create", "update", "patch"],
        ),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(
            &[""],
            &["pods"],
            &["get", "list", "watch", "patch", "delete"],
        ),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["events"], &["create", "patch", "update"]),
        rule(
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
            READ,
        ),
        rule(&[""], &["secrets", "configmaps", "namespaces"], &["get"]),
        rule(
            &["kubevirt.io"],
            &[
                "virtualmachineinstances",
                "virtualmachineinstancemigrations",
            ],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["kubevirt.io"],
            &[
                "virtualmachineinstances/status",
                "virtualmachineinstancemigrations/status",
            ],
            &["get", "update", "patch"],
        ),
        rule(&["kubevirt.io"], &["virtualmachines"], READ),
        // Migrations run with the cluster's configuration (the KubeVirt object's).
        rule(&["kubevirt.io"], &["kubevirts"], READ),
        rule(&["migrations.kubevirt.io"], &["migrationpolicies"], READ),
        rule(&["storage.k8s.io"], &["storageclasses"], READ),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "create", "update"],
        ),
    ];
    let api = vec![
        rule(
            &["admissionregistration.k8s.io"],
            &[
                "mutatingwebhookconfigurations",
                "validatingwebhookconfigurations",
            ],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["apiregistration.k8s.io"],
            &["apiservices"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(&["kubevirt.io"], &kv_kinds, READ),
        // The VM-level subresources: start/stop/restart change the VM (and a stop's grace
        // period annotates its VMI), migrate creates a migration, volumes edit the VM.
        rule(
            &["kubevirt.io"],
            &["virtualmachines", "virtualmachineinstances"],
            &["patch", "update"],
        ),
        rule(
            &["kubevirt.io"],
            &["virtualmachineinstancemigrations"],
            &["create"],
        ),
        rule(&[""], &["persistentvolumeclaims"], READ),
        // The eviction webhook reads the launcher pod and marks its VMI for evacuation.
        rule(&[""], &["pods"], &["get"]),
        rule(
            &["kubevirt.io"],
            &["virtualmachineinstances/status"],
            &["patch"],
        ),
        rule(&["cdi.kubevirt.io"], &["datavolumes"], READ),
        rule(&["migrations.kubevirt.io"], &["migrationpolicies"], READ),
        // The subresources API: who may do what is asked of the cluster; where a VMI runs
        // is read from its node.
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
        ),
        rule(&[""], &["nodes"], READ),
    ];
    let mut out = Vec::new();
    // virt-controller's and virt-handler's `/metrics` ask the cluster who scrapes and
    // whether they may.
    let metrics_auth = [
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
        ),
    ];
    let (mut controller, mut handler) = (controller, handler);
    controller.extend(metrics_auth.clone());
    handler.extend(metrics_auth);
    for (sa, rules) in [
        (API_SERVICE_ACCOUNT, api),
        (CONTROLLER_SERVICE_ACCOUNT, controller),
        (HANDLER_SERVICE_ACCOUNT, handler),
    ] {
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": meta(sa, None, None),
            "rules": rules,
        }));
        out.push(binding(
            "ClusterRoleBinding",
            sa,
            None,
            "ClusterRole",
            sa,
            ns,
        ));
    }
    // In its own namespace only: virt-api keeps its CA and certificate in Secrets, the
    // controllers elect a leader with a Lease.
    for (sa, rules) in [
        (
            API_SERVICE_ACCOUNT,
            vec![rule(
                &[""],
                &["secrets"],
                &["get", "list", "watch", "create", "update", "patch"],
            )],
        ),
        (
            CONTROLLER_SERVICE_ACCOUNT,
            vec![rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["get", "list", "watch", "create", "update", "patch"],
            )],
        ),
    ] {
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(sa, Some(ns), None),
            "rules": rules,
        }));
        out.push(binding("RoleBinding", sa, Some(ns), "Role", sa, ns));
    }
    // The cluster's front-proxy settings, as every aggregated API server reads them.
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta("kubevirt-apiserver-auth-reader", Some("kube-system"), None),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "extension-apiserver-authentication-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": API_SERVICE_ACCOUNT, "namespace": ns}],
    }));
    // virt-handler reads its certificate (issued by virt-api) in the install's namespace.
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(HANDLER_SERVICE_ACCOUNT, Some(ns), None),
        "rules": [{"apiGroups": [""], "resources": ["secrets"],
                   "resourceNames": [crate::certs::HANDLER_CERT_SECRET], "verbs": ["get"]}],
    }));
    out.push(binding(
        "RoleBinding",
        HANDLER_SERVICE_ACCOUNT,
        Some(ns),
        "Role",
        HANDLER_SERVICE_ACCOUNT,
        ns,
    ));
    out
}

fn binding(
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    role_kind: &str,
    role: &str,
    sa_namespace: &str,
) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta(name, namespace, None),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": sa_namespace}],
    })
}

/// `virt-api-mutator` or `virt-api-validator`, without `caBundle` (virt-api sets it).
pub fn webhook_configuration(ns: &str, role: Role) -> Value {
    let (kind, name) = match role {
        Role::Mutate => ("MutatingWebhookConfiguration", MUTATING_CONFIGURATION),
        Role::Validate => ("ValidatingWebhookConfiguration", VALIDATING_CONFIGURATION),
    };
    let hooks: Vec<Value> = webhooks::of_role(role)
        .map(|w| {
            let mut hook = json!({
                "name": w.name,
                "admissionReviewVersions": ["v1"],
                "sideEffects": w.side_effects,
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "matchPolicy": "Equivalent",
                "clientConfig": {"service": {"namespace": ns, "name": VIRT_API, "path": w.path, "port": 443}},
                "rules": [{
                    "operations": w.operations,
                    "apiGroups": [w.group],
                    "apiVersions": ["*"],
                    "resources": [w.resource],
                    "scope": "*",
                }],
            });
            if w.only_launchers {
                hook["matchConditions"] = json!([{
                    "name": "only-launchers",
                    "expression": "object.metadata.name.startsWith('virt-launcher-')",
                }]);
            }
            hook
        })
        .collect();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": meta(name, None, Some(VIRT_API)),
        "webhooks": hooks,
    })
}

/// A container that may not escalate, runs as non-root and drops every capability.
fn restricted_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn workloads(o: &InstallOptions) -> Vec<Value> {
    let ns = o.namespace.as_str();
    let metrics_port = json!({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"});
    let scraped = |mut l: Value| {
        l[PROMETHEUS_LABEL] = json!("true");
        l
    };
    let pod_name_env =
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}});
    let api = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(VIRT_API, Some(ns), Some(VIRT_API)),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"kubevirt.io": VIRT_API}},
            "template": {
                "metadata": {"labels": labels(Some(VIRT_API))},
                "spec": {
                    "serviceAccountName": API_SERVICE_ACCOUNT,
                    "priorityClassName": "system-cluster-critical",
                    "containers": [{
                        "name": VIRT_API,
                        "image": o.image,
                        "imagePullPolicy": o.image_pull_policy,
                        "command": ["kubevirt-rs", "virt-api", "--namespace", ns,
                                    "--listen", format!("0.0.0.0:{VIRT_API_PORT}")],
                        "env": [pod_name_env],
                        "ports": [{"name": "https", "containerPort": VIRT_API_PORT, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"scheme": "HTTPS", "port": VIRT_API_PORT, "path": "/healthz"},
                                           "periodSeconds": 5},
                        "resources": {"requests": {"cpu": "5m", "memory": "32Mi"}},
                        "securityContext": restricted_security(),
                    }],
                },
            },
        },
    });
    let controller = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(VIRT_CONTROLLER, Some(ns), Some(VIRT_CONTROLLER)),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"kubevirt.io": VIRT_CONTROLLER}},
            "template": {
                "metadata": {"labels": scraped(labels(Some(VIRT_CONTROLLER)))},
                "spec": {
                    "serviceAccountName": CONTROLLER_SERVICE_ACCOUNT,
                    "priorityClassName": "system-cluster-critical",
                    "containers": [{
                        "name": VIRT_CONTROLLER,
                        "image": o.image,
                        "imagePullPolicy": o.image_pull_policy,
                        "command": ["kubevirt-rs", "virt-controller", "--namespace", ns,
                                    "--launcher-image", o.launcher_image],
                        "ports": [metrics_port.clone()],
                        "env": [pod_name_env],
                        "resources": {"requests": {"cpu": "10m", "memory": "48Mi"}},
                        "securityContext": restricted_security(),
                    }],
                },
            },
        },
    });
    let host_dir = |name: &str, path: &str| json!({"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}});
    let handler = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": meta(VIRT_HANDLER, Some(ns), Some(VIRT_HANDLER)),
        "spec": {
            "selector": {"matchLabels": {"kubevirt.io": VIRT_HANDLER}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": scraped(labels(Some(VIRT_HANDLER)))},
                "spec": {
                    "serviceAccountName": HANDLER_SERVICE_ACCOUNT,
                    "priorityClassName": "system-node-critical",
                    "hostPID": true,
                    "tolerations": [{"operator": "Exists", "key": "CriticalAddonsOnly"}],
                    "containers": [{
                        "name": VIRT_HANDLER,
                        "image": o.image,
                        "imagePullPolicy": o.image_pull_policy,
                        "command": ["kubevirt-rs", "virt-handler", "--node-name", "$(NODE_NAME)",
                                    "--namespace", ns, "--run-root", o.run_root],
                        "ports": [{"name": "subresources", "containerPort": crate::node_api::DEFAULT_PORT,
                                   "hostPort": crate::node_api::DEFAULT_PORT, "protocol": "TCP"},
                                  metrics_port],
                        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                        "resources": {"requests": {"cpu": "10m", "memory": "48Mi"}},
                        // The node agent manages the VMs' launchers, their network
                        // namespaces and cgroups on the host, as upstream's virt-handler.
                        "securityContext": {"privileged": true},
                        "volumeMounts": [
                            {"name": "run", "mountPath": o.run_root},
                            {"name": "data", "mountPath": "/var/lib/kubevirt-rs"},
                        ],
                    }],
                    "volumes": [
                        host_dir("run", &o.run_root),
                        host_dir("data", "/var/lib/kubevirt-rs"),
                    ],
                },
            },
        },
    });
    // The console holds no credentials: no ServiceAccount token is mounted, only the
    // cluster's CA (the `kube-root-ca.crt` ConfigMap every namespace has) to check
    // kube-apiserver's certificate. Each user's own token does the rest.
    let console = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(VIRT_CONSOLE, Some(ns), Some(VIRT_CONSOLE)),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"kubevirt.io": VIRT_CONSOLE}},
            "template": {
                "metadata": {"labels": labels(Some(VIRT_CONSOLE))},
                "spec": {
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": VIRT_CONSOLE,
                        "image": o.image,
                        "imagePullPolicy": o.image_pull_policy,
                        "command": ["kubevirt-rs", "virt-console",
                                    "--listen", format!("0.0.0.0:{VIRT_CONSOLE_PORT}"),
                                    "--api-ca", "/etc/kubevirt-rs/api-ca/ca.crt"],
                        "ports": [{"name": "https", "containerPort": VIRT_CONSOLE_PORT, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"scheme": "HTTPS", "port": VIRT_CONSOLE_PORT, "path": "/"},
                                           "periodSeconds": 10},
                        "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}},
                        "securityContext": restricted_security(),
                        "volumeMounts": [{"name": "api-ca", "mountPath": "/etc/kubevirt-rs/api-ca", "readOnly": true}],
                    }],
                    "volumes": [{"name": "api-ca", "configMap": {"name": "kube-root-ca.crt"}}],
                },
            },
        },
    });
    vec![api, controller, handler, console]
}

/// The objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        match serde_yaml::to_string(o) {
            Ok(s) => out.push_str(&s),
            Err(e) => out.push_str(&format!("# error: {e}\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
        objs.iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    #[test]
    fn the_metrics_service_reaches_controller_and_handler() {
        let objs = install(&InstallOptions::new("/run/kubevirt-rs"));
        let svc = find(&objs, "Service", METRICS_SERVICE);
        assert_eq!(svc["spec"]["selector"][PROMETHEUS_LABEL], "true");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");
        for (kind, name) in [("Deployment", VIRT_CONTROLLER), ("DaemonSet", VIRT_HANDLER)] {
            let pod = &find(&objs, kind, name)["spec"]["template"];
            assert_eq!(
                pod["metadata"]["labels"][PROMETHEUS_LABEL], "true",
                "{name}"
            );
            let ports = pod["spec"]["containers"][0]["ports"].as_array().unwrap();
            assert!(
                ports
                    .iter()
                    .any(|p| p["name"] == "metrics" && p["containerPort"] == METRICS_PORT),
                "{name}: {ports:?}"
            );
        }
        // virt-api has no metrics endpoint: the Service must not select it.
        let api = &find(&objs, "Deployment", VIRT_API)["spec"]["template"];
        assert!(api["metadata"]["labels"][PROMETHEUS_LABEL].is_null());
    }

    #[test]
    fn the_console_runs_without_credentials_behind_its_service() {
        let objs = install(&InstallOptions::new("/run/kubevirt-rs"));
        let svc = find(&objs, "Service", VIRT_CONSOLE);
        assert_eq!(svc["spec"]["selector"]["kubevirt.io"], VIRT_CONSOLE);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], VIRT_CONSOLE_PORT);
        let pod = &find(&objs, "Deployment", VIRT_CONSOLE)["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["kubevirt.io"], VIRT_CONSOLE);
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert!(pod["spec"]["serviceAccountName"].is_null());
        assert_eq!(
            pod["spec"]["volumes"][0]["configMap"]["name"],
            "kube-root-ca.crt"
        );
    }

    #[test]
    fn install_is_complete_and_labelled() {
        let objs = install(&InstallOptions::new("/run/kubevirt-rs"));
        for o in &objs {
            let l = &o["metadata"]["labels"];
            assert_eq!(l[PART_OF.0], PART_OF.1, "{}", o["metadata"]["name"]);
            assert_eq!(l[VERSION_LABEL], VERSION);
        }
        // CRDs of this project, not those of CDI or the external snapshotter.
        let crd_groups: Vec<&str> = objs
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .filter_map(|o| o["spec"]["group"].as_str())
            .collect();
        assert!(crd_groups.contains(&"kubevirt.io"));
        assert!(!crd_groups.contains(&"cdi.kubevirt.io"));
        assert!(!crd_groups.contains(&"snapshot.storage.k8s.io"));
        let v = find(
            &objs,
            "ValidatingWebhookConfiguration",
            "virt-api-validator",
        );
        let hook = v["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "virtualmachine-validator.kubevirt.io")
            .unwrap();
        assert_eq!(
            hook["clientConfig"]["service"]["path"],
            "/virtualmachines-validate"
        );
        assert!(hook["clientConfig"].get("caBundle").is_none());
        find(&objs, "ClusterRole", "kubevirt.io:edit");
        find(&objs, "Deployment", VIRT_CONTROLLER);
        find(&objs, "DaemonSet", VIRT_HANDLER);
        // The namespace comes first so that namespaced objects can be created after it.
        assert_eq!(objs[0]["kind"], "Namespace");
    }

    #[test]
    fn no_component_may_write_rbac_or_list_secrets() {
        let objs = install(&InstallOptions::new("/run/kubevirt-rs"));
        for sa in [
            API_SERVICE_ACCOUNT,
            CONTROLLER_SERVICE_ACCOUNT,
            HANDLER_SERVICE_ACCOUNT,
        ] {
            let role = find(&objs, "ClusterRole", sa);
            for r in role["rules"].as_array().unwrap() {
                let groups: Vec<&str> = r["apiGroups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert!(!groups.contains(&"rbac.authorization.k8s.io"), "{sa}");
                assert!(!groups.contains(&"*"), "{sa}");
                let resources: Vec<&str> = r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let verbs: Vec<&str> = r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                if resources.contains(&"secrets") {
                    assert_eq!(
                        verbs,
                        ["get"],
                        "{sa} may get a named secret, not list or watch them"
                    );
                }
            }
        }
    }
}
