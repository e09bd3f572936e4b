//! The RBAC objects a cluster starts with: the ClusterRoles and ClusterRoleBindings
//! kube-apiserver bootstraps that users rely on, and those KubeVirt's operator installs.
//!
//! Rules are written as the API server stores them: kube's bootstrap policy sorts each
//! list (so they match `kubectl get clusterrole edit -o yaml` on a real cluster), KubeVirt's
//! keep the order of its source. The aggregated roles (`admin`, `edit`, `view`) ship with
//! `rules: []`; [`crate::aggregate`] fills them in, as kube's controller does.

use serde_json::{json, Map, Value};

const API_VERSION: &str = "rbac.authorization.k8s.io/v1";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const BOOTSTRAP_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");
/// Lets kube-apiserver restore missing permissions in these objects at every start.
const AUTOUPDATE_ANNOTATION: (&str, &str) = ("rbac.authorization.kubernetes.io/autoupdate", "true");
const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";
/// KubeVirt's `virtv1.AppLabel`, set (empty) on everything its operator installs.
const KUBEVIRT_LABEL: (&str, &str) = ("kubevirt.io", "");

const READ: &[&str] = &["get", "list", "watch"];
/// kube's `Write`, sorted.
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
/// kube's `ReadWrite`, sorted.
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// KubeVirt's verb lists, in its order.
const KV_ALL: &[&str] = &[
    "get",
    "delete",
    "create",
    "update",
    "patch",
    "list",
    "watch",
    "deletecollection",
];
const KV_EDIT: &[&str] = &[
    "get", "delete", "create", "update", "patch", "list", "watch",
];
const KV_READ: &[&str] = &["get", "list", "watch"];

const SUBRESOURCES: &str = "subresources.kubevirt.io";
const KUBEVIRT: &str = "kubevirt.io";
const INSTANCETYPES: &[&str] = &[
    "virtualmachineinstancetypes",
    "virtualmachineclusterinstancetypes",
    "virtualmachinepreferences",
    "virtualmachineclusterpreferences",
];

/// The default ClusterRoles: kube's first, then KubeVirt's.
pub fn cluster_roles() -> Vec<Value> {
    let mut roles = kube_cluster_roles();
    roles.extend(kubevirt_cluster_roles());
    roles
}

/// The default ClusterRoleBindings: kube's first, then KubeVirt's.
pub fn cluster_role_bindings() -> Vec<Value> {
    let bootstrap = [BOOTSTRAP_LABEL];
    let autoupdate = [AUTOUPDATE_ANNOTATION];
    let mut bindings = vec![
        binding(
            "cluster-admin",
            &bootstrap,
            &autoupdate,
            &["system:masters"],
        ),
        binding(
            "system:basic-user",
            &bootstrap,
            &autoupdate,
            &["system:authenticated"],
        ),
        binding(
            "system:discovery",
            &bootstrap,
            &autoupdate,
            &["system:authenticated"],
        ),
        binding(
            "system:public-info-viewer",
            &bootstrap,
            &autoupdate,
            &["system:authenticated", "system:unauthenticated"],
        ),
    ];
    bindings.extend(kubevirt_cluster_role_bindings());
    bindings
}

/// The ClusterRoleBindings KubeVirt's operator installs (every authenticated user may read
/// the KubeVirt CR, versions and cluster instancetypes).
pub fn kubevirt_cluster_role_bindings() -> Vec<Value> {
    let kubevirt = [KUBEVIRT_LABEL];
    let autoupdate = [AUTOUPDATE_ANNOTATION];
    vec![
        binding(
            "kubevirt.io:default",
            &kubevirt,
            &autoupdate,
            &["system:authenticated"],
        ),
        binding(
            "instancetype.kubevirt.io:view",
            &kubevirt,
            &autoupdate,
            &["system:authenticated"],
        ),
    ]
}

fn kube_cluster_roles() -> Vec<Value> {
    vec![
        // A "root" role which can do absolutely anything.
        kube_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        // Namespace admin: edit plus granting permissions to others.
        kube_aggregated("admin", &[], TO_ADMIN),
        // Namespace editor: all user-level actions, but not roles, quota or /status.
        kube_aggregated("edit", &[TO_ADMIN], TO_EDIT),
        // Namespace viewer: read-only access to non-escalating resources (not secrets).
        kube_aggregated("view", &[TO_EDIT], TO_VIEW),
        kube_role(
            "system:aggregate-to-admin",
            &[TO_ADMIN],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
                rule(&[RBAC_GROUP], &["rolebindings", "roles"], READ_WRITE),
            ],
        ),
        kube_role(
            "system:aggregate-to-edit",
            &[TO_EDIT],
            aggregate_to_edit_rules(),
        ),
        kube_role(
            "system:aggregate-to-view",
            &[TO_VIEW],
            aggregate_to_view_rules(),
        ),
        // Just enough for a user to learn about themselves.
        kube_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        // Readiness and API discovery, for version negotiation.
        kube_role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        // Insensitive cluster information, granted even to unauthenticated callers.
        kube_role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
    ]
}

fn aggregate_to_edit_rules() -> Vec<Value> {
    vec![
        // Read on escalating resources.
        rule(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "ingresses",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
            ],
            WRITE,
        ),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            WRITE,
        ),
        rule(&["coordination.k8s.io"], &["leases"], READ_WRITE),
    ]
}

fn aggregate_to_view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
            READ,
        ),
        rule(
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
            READ,
        ),
        // Reading namespaces in a namespace means reading *this* namespace.
        rule(&[""], &["namespaces"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        rule(
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
            ],
            READ,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            READ,
        ),
    ]
}

/// The ClusterRoles KubeVirt's operator installs: the user roles aggregated into `admin`,
/// `edit` and `view`, CDI's, and `kubevirt.io:migrate`.
pub fn kubevirt_cluster_roles() -> Vec<Value> {
    vec![
        kubevirt_role(
            "kubevirt.io:default",
            &[KUBEVIRT_LABEL, BOOTSTRAP_LABEL],
            &[AUTOUPDATE_ANNOTATION],
            vec![
                rule(&[KUBEVIRT], &["kubevirts"], &["get", "list"]),
                rule(&[SUBRESOURCES], &["version", "guestfs"], &["get", "list"]),
            ],
        ),
        kubevirt_role(
            "kubevirt.io:admin",
            &[KUBEVIRT_LABEL, (TO_ADMIN, "true")],
            &[],
            kubevirt_admin_rules(),
        ),
        kubevirt_role(
            "kubevirt.io:edit",
            &[KUBEVIRT_LABEL, (TO_EDIT, "true")],
            &[],
            kubevirt_edit_rules(),
        ),
        kubevirt_role(
            "kubevirt.io:view",
            &[KUBEVIRT_LABEL, (TO_VIEW, "true")],
            &[],
            kubevirt_view_rules(),
        ),
        kubevirt_role(
            "instancetype.kubevirt.io:view",
            &[KUBEVIRT_LABEL],
            &[],
            vec![rule(
                &["instancetype.kubevirt.io"],
                &[
                    "virtualmachineclusterinstancetypes",
                    "virtualmachineclusterpreferences",
                ],
                KV_READ,
            )],
        ),
        // CDI's user roles, aggregated into admin, edit and view as CDI installs them.
        cdi_role("cdi.kubevirt.io:admin", TO_ADMIN, true),
        cdi_role("cdi.kubevirt.io:edit", TO_EDIT, true),
        cdi_role("cdi.kubevirt.io:view", TO_VIEW, false),
        // Not aggregated: cluster admins grant live migration explicitly.
        kubevirt_role(
            "kubevirt.io:migrate",
            &[KUBEVIRT_LABEL],
            &[],
            vec![
                rule(&[SUBRESOURCES], &["virtualmachines/migrate"], &["update"]),
                rule(&[KUBEVIRT], &["virtualmachineinstancemigrations"], KV_ALL),
            ],
        ),
    ]
}

/// The subresources `get` on which opens a session into the guest or reads from it.
const VMI_GET_SUBRESOURCES: &[&str] = &[
    "virtualmachineinstances/console",
    "virtualmachineinstances/vnc",
    "virtualmachineinstances/vnc/screenshot",
    "virtualmachineinstances/portforward",
    "virtualmachineinstances/guestosinfo",
    "virtualmachineinstances/filesystemlist",
    "virtualmachineinstances/userlist",
    "virtualmachineinstances/sev/fetchcertchain",
    "virtualmachineinstances/sev/querylaunchmeasurement",
    "virtualmachineinstances/usbredir",
    "virtualmachines/objectgraph",
    "virtualmachineinstances/objectgraph",
];

const VMI_UPDATE_SUBRESOURCES: &[&str] = &[
    "virtualmachineinstances/pause",
    "virtualmachineinstances/unpause",
    "virtualmachineinstances/addvolume",
    "virtualmachineinstances/removevolume",
    "virtualmachineinstances/freeze",
    "virtualmachineinstances/unfreeze",
    "virtualmachineinstances/softreboot",
    "virtualmachineinstances/reset",
    "virtualmachineinstances/sev/setupsession",
    "virtualmachineinstances/sev/injectlaunchsecret",
    "virtualmachineinstances/evacuate/cancel",
];

const VM_UPDATE_SUBRESOURCES: &[&str] = &[
    "virtualmachines/start",
    "virtualmachines/stop",
    "virtualmachines/restart",
    "virtualmachines/addvolume",
    "virtualmachines/removevolume",
    "virtualmachines/memorydump",
    "virtualmachines/removememorydump",
    "virtualmachines/evacuate/cancel",
];

/// Rules shared by kubevirt.io:admin and kubevirt.io:edit, which differ in
/// `vnc/screenshot` (admin only) and in `deletecollection` on objects (admin only).
fn kubevirt_subresource_rules(get_subresources: &[&str]) -> Vec<Value> {
    vec![
        rule(&[SUBRESOURCES], get_subresources, &["get"]),
        rule(&[SUBRESOURCES], VMI_UPDATE_SUBRESOURCES, &["update"]),
        rule(
            &[SUBRESOURCES],
            &["virtualmachines/expand-spec", "virtualmachines/portforward"],
            &["get"],
        ),
        rule(&[SUBRESOURCES], VM_UPDATE_SUBRESOURCES, &["update"]),
        rule(&[SUBRESOURCES], &["expand-vm-spec"], &["update"]),
    ]
}

const VM_OBJECTS: &[&str] = &[
    "virtualmachines",
    "virtualmachineinstances",
    "virtualmachineinstancepresets",
    "virtualmachineinstancereplicasets",
];

fn kubevirt_admin_rules() -> Vec<Value> {
    let mut rules = kubevirt_subresource_rules(VMI_GET_SUBRESOURCES);
    rules.extend([
        rule(&[KUBEVIRT], VM_OBJECTS, KV_ALL),
        rule(&[KUBEVIRT], &["virtualmachineinstancemigrations"], KV_READ),
        rule(
            &["snapshot.kubevirt.io"],
            &[
                "virtualmachinesnapshots",
                "virtualmachinesnapshotcontents",
                "virtualmachinerestores",
            ],
            KV_ALL,
        ),
        rule(
            &["backup.kubevirt.io"],
            &["virtualmachinebackups", "virtualmachinebackuptrackers"],
            KV_ALL,
        ),
        rule(&["plugin.kubevirt.io"], &["plugins"], KV_ALL),
        rule(&["export.kubevirt.io"], &["virtualmachineexports"], KV_ALL),
        rule(&["clone.kubevirt.io"], &["virtualmachineclones"], KV_ALL),
        rule(&["instancetype.kubevirt.io"], INSTANCETYPES, KV_ALL),
        rule(&["pool.kubevirt.io"], &["virtualmachinepools"], KV_ALL),
        rule(&["migrations.kubevirt.io"], &["migrationpolicies"], KV_READ),
    ]);
    rules
}

fn kubevirt_edit_rules() -> Vec<Value> {
    let get_subresources: Vec<&str> = VMI_GET_SUBRESOURCES
        .iter()
        .copied()
        .filter(|r| *r != "virtualmachineinstances/vnc/screenshot")
        .collect();
    let mut rules = kubevirt_subresource_rules(&get_subresources);
    rules.extend([
        rule(&[KUBEVIRT], VM_OBJECTS, KV_EDIT),
        rule(&[KUBEVIRT], &["virtualmachineinstancemigrations"], KV_READ),
        rule(
            &["snapshot.kubevirt.io"],
            &[
                "virtualmachinesnapshots",
                "virtualmachinesnapshotcontents",
                "virtualmachinerestores",
            ],
            KV_EDIT,
        ),
        rule(
            &["backup.kubevirt.io"],
            &["virtualmachinebackups", "virtualmachinebackuptrackers"],
            KV_EDIT,
        ),
        rule(&["export.kubevirt.io"], &["virtualmachineexports"], KV_EDIT),
        rule(&["clone.kubevirt.io"], &["virtualmachineclones"], KV_EDIT),
        rule(&["instancetype.kubevirt.io"], INSTANCETYPES, KV_EDIT),
        rule(&["pool.kubevirt.io"], &["virtualmachinepools"], KV_EDIT),
        rule(&[KUBEVIRT], &["kubevirts"], &["get", "list"]),
        rule(&["migrations.kubevirt.io"], &["migrationpolicies"], KV_READ),
    ]);
    rules
}

fn kubevirt_view_rules() -> Vec<Value> {
    vec![
        rule(&[KUBEVIRT], &["kubevirts"], &["get", "list"]),
        // Reading about the guest, but no console, VNC or port forwarding.
        rule(
            &[SUBRESOURCES],
            &[
                "virtualmachines/expand-spec",
                "virtualmachineinstances/guestosinfo",
                "virtualmachineinstances/filesystemlist",
                "virtualmachineinstances/userlist",
                "virtualmachineinstances/sev/fetchcertchain",
                "virtualmachineinstances/sev/querylaunchmeasurement",
                "virtualmachines/objectgraph",
                "virtualmachineinstances/objectgraph",
            ],
            &["get"],
        ),
        rule(&[SUBRESOURCES], &["expand-vm-spec"], &["update"]),
        rule(
            &[KUBEVIRT],
            &[
                "virtualmachines",
                "virtualmachineinstances",
                "virtualmachineinstancepresets",
                "virtualmachineinstancereplicasets",
                "virtualmachineinstancemigrations",
            ],
            KV_READ,
        ),
        rule(
            &["snapshot.kubevirt.io"],
            &[
                "virtualmachinesnapshots",
                "virtualmachinesnapshotcontents",
                "virtualmachinerestores",
            ],
            KV_READ,
        ),
        rule(
            &["backup.kubevirt.io"],
            &["virtualmachinebackups", "virtualmachinebackuptrackers"],
            KV_READ,
        ),
        rule(&["export.kubevirt.io"], &["virtualmachineexports"], KV_READ),
        rule(&["clone.kubevirt.io"], &["virtualmachineclones"], KV_READ),
        rule(&["instancetype.kubevirt.io"], INSTANCETYPES, KV_READ),
        rule(&["pool.kubevirt.io"], &["virtualmachinepools"], KV_READ),
        rule(&["migrations.kubevirt.io"], &["migrationpolicies"], KV_READ),
        rule(&["plugin.kubevirt.io"], &["plugins"], KV_READ),
    ]
}

/// A resource rule, fields in the order the API server writes them.
fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn urls(verbs: &[&str], paths: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": paths})
}

fn string_map(pairs: &[(&str, &str)]) -> Value {
    let map: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    Value::Object(map)
}

fn metadata(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Value {
    let mut meta = Map::new();
    meta.insert("name".into(), name.into());
    if !labels.is_empty() {
        meta.insert("labels".into(), string_map(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), string_map(annotations));
    }
    Value::Object(meta)
}

/// A kube bootstrap role: its own labels plus the bootstrapping label (and each
/// `aggregate_to` label set to "true"), and the autoupdate annotation.
fn kube_role(name: &str, aggregate_to: &[&str], rules: Vec<Value>) -> Value {
    let mut labels = vec![BOOTSTRAP_LABEL];
    labels.extend(aggregate_to.iter().map(|k| (*k, "true")));
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRole",
        "metadata": metadata(name, &labels, &[AUTOUPDATE_ANNOTATION]),
        "rules": rules,
    })
}

/// A kube bootstrap role whose rules are those of the roles labelled `selects: "true"`.
fn kube_aggregated(name: &str, aggregate_to: &[&str], selects: &str) -> Value {
    let mut role = kube_role(name, aggregate_to, Vec::new());
    role["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {selects: "true"}}]});
    role
}

/// A CDI user role: DataVolumes (and what CDI serves beside them); `write` adds creating,
/// changing and deleting them, cloning from DataVolumes and upload tokens.
fn cdi_role(name: &str, aggregate_to: &str, write: bool) -> Value {
    let mut rules = vec![rule(
        &["cdi.kubevirt.io"],
        &[
            "datavolumes",
            "dataimportcrons",
            "datasources",
            "cdiconfigs",
            "storageprofiles",
        ],
        KV_READ,
    )];
    if write {
        rules = vec![
            rule(
                &["cdi.kubevirt.io"],
                &["datavolumes", "dataimportcrons", "datasources"],
                &["*"],
            ),
            rule(&["cdi.kubevirt.io"], &["datavolumes/source"], &["create"]),
            rule(
                &["upload.cdi.kubevirt.io"],
                &["uploadtokenrequests"],
                &["*"],
            ),
        ];
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRole",
        "metadata": metadata(name, &[("cdi.kubevirt.io", ""), (aggregate_to, "true")], &[]),
        "rules": rules,
    })
}

fn kubevirt_role(
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    rules: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRole",
        "metadata": metadata(name, labels, annotations),
        "rules": rules,
    })
}

/// A ClusterRoleBinding of the ClusterRole of the same name to `groups`.
fn binding(
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    groups: &[&str],
) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"kind": "Group", "apiGroup": RBAC_GROUP, "name": g}))
        .collect();
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": metadata(name, labels, annotations),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
        "subjects": subjects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_rules;
    use crate::{aggregate, covers, PolicyRule};

    fn find<'a>(roles: &'a [Value], name: &str) -> &'a Value {
        roles
            .iter()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no role {name}"))
    }

    fn rules_of(role: &Value) -> Vec<PolicyRule> {
        parse_rules(role.get("rules")).unwrap()
    }

    #[test]
    fn every_rule_parses_and_names_are_unique() {
        let roles = cluster_roles();
        for role in &roles {
            let raw = role["rules"].as_array().unwrap();
            assert_eq!(
                rules_of(role).len(),
                raw.len(),
                "{}",
                role["metadata"]["name"]
            );
        }
        let mut names: Vec<&str> = roles
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap())
            .collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        for b in cluster_role_bindings() {
            let role = b["roleRef"]["name"].as_str().unwrap();
            find(&roles, role);
        }
    }

    #[test]
    fn kube_metadata() {
        let roles = cluster_roles();
        let edit = find(&roles, "edit");
        assert_eq!(
            edit["metadata"]["labels"]["kubernetes.io/bootstrapping"],
            "rbac-defaults"
        );
        assert_eq!(edit["metadata"]["labels"][TO_ADMIN], "true");
        assert_eq!(
            edit["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
            "true"
        );
        assert_eq!(
            edit["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"][TO_EDIT],
            "true"
        );
        assert_eq!(edit["rules"], json!([]));
        let kv_edit = find(&roles, "kubevirt.io:edit");
        assert_eq!(kv_edit["metadata"]["labels"][TO_EDIT], "true");
        assert_eq!(kv_edit["metadata"]["labels"]["kubevirt.io"], "");
    }

    #[test]
    fn aggregation_fills_admin_edit_view() {
        let roles = cluster_roles();
        let aggregated = aggregate(&roles);
        let names: Vec<&str> = aggregated.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["admin", "edit", "view"]);
        let get = |name: &str| &aggregated.iter().find(|(n, _)| n == name).unwrap().1;
        let kv_edit = rules_of(find(&roles, "kubevirt.io:edit"));
        for rule in &kv_edit {
            assert!(get("edit").contains(rule), "{rule:?}");
            assert!(get("admin").contains(rule), "{rule:?}");
        }
        // admin > edit > view, each covering the next.
        assert!(covers(get("admin"), get("edit")).0);
        assert!(covers(get("edit"), get("view")).0);
        assert!(!covers(get("view"), get("edit")).0);
        assert!(!covers(get("edit"), get("admin")).0);
        let kv_admin = rules_of(find(&roles, "kubevirt.io:admin"));
        assert!(covers(get("admin"), &kv_admin).0);
    }
}
