//! The RBAC index: which bindings name which identities, with each binding's role already
//! resolved, so one decision looks only at the bindings naming the caller.
//!
//! Semantics are kube's `DefaultRuleResolver` + `RBACAuthorizer`: ClusterRoleBindings first,
//! then (for a namespaced request) the RoleBindings of that namespace, each in the order the
//! objects were handed in; the first rule that allows the request decides, and the reason
//! names its binding, role and the first subject of that binding that matched.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::covers::{covers, escalation_message};
use crate::quote::go_quote;
use crate::{Decision, PolicyRule, Request, UserInfo, PRIVILEGED_GROUP};

/// Prefix of the user name a ServiceAccount token authenticates as:
/// `system:serviceaccount:<namespace>:<name>`.
const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";

/// An immutable index of all RBAC objects; rebuilt by the server when any of them changes.
#[derive(Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Arc<[PolicyRule]>>,
    /// namespace -> role name -> rules.
    roles: HashMap<String, HashMap<String, Arc<[PolicyRule]>>>,
    cluster_bindings: Vec<Binding>,
    cluster_index: SubjectIndex,
    role_bindings: Vec<Binding>,
    /// namespace -> who its RoleBindings name.
    namespace_index: HashMap<String, SubjectIndex>,
}

/// One binding whose role exists, reduced to what decisions need.
struct Binding {
    name: String,
    /// "" for a ClusterRoleBinding.
    namespace: String,
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
    rules: Arc<[PolicyRule]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

struct Subject {
    kind: SubjectKind,
    name: String,
    namespace: String,
}

/// Bindings (by position, ascending) naming each identity. ServiceAccount subjects are filed
/// under the user name their tokens authenticate as, so one lookup by user name finds both
/// `User` and `ServiceAccount` subjects.
#[derive(Default)]
struct SubjectIndex {
    by_user: HashMap<String, Vec<u32>>,
    by_group: HashMap<String, Vec<u32>>,
}

impl SubjectIndex {
    fn add(&mut self, id: u32, binding: &Binding) {
        for subject in &binding.subjects {
            let (map, key) = match subject.kind {
                SubjectKind::User => (&mut self.by_user, subject.name.clone()),
                SubjectKind::Group => (&mut self.by_group, subject.name.clone()),
                SubjectKind::ServiceAccount => {
                    let namespace = subject.sa_namespace(&binding.namespace);
                    if namespace.is_empty() {
                        continue;
                    }
                    let user = format!("{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{}", subject.name);
                    (&mut self.by_user, user)
                }
            };
            let ids = map.entry(key).or_default();
            // A binding naming the same identity twice is filed once: all of one binding's
            // ids are pushed together, so a repeat can only be the last entry.
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
    }

    /// The lists of binding ids naming `user` (by name) or one of its groups.
    fn lists<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = &'a [u32]> + 'a {
        self.by_user
            .get(&user.name)
            .into_iter()
            .chain(user.groups.iter().filter_map(|g| self.by_group.get(g)))
            .map(Vec::as_slice)
    }
}

impl Subject {
    /// A ServiceAccount subject without a namespace means "in the binding's namespace"
    /// (kube's defaulting for RoleBindings); in a ClusterRoleBinding that leaves "", which
    /// matches nobody.
    fn sa_namespace<'a>(&'a self, binding_namespace: &'a str) -> &'a str {
        if self.namespace.is_empty() {
            binding_namespace
        } else {
            &self.namespace
        }
    }

    fn applies_to(&self, user: &UserInfo, binding_namespace: &str) -> bool {
        match self.kind {
            SubjectKind::User => user.name == self.name,
            SubjectKind::Group => user.groups.contains(&self.name),
            SubjectKind::ServiceAccount => {
                let namespace = self.sa_namespace(binding_namespace);
                !namespace.is_empty() && is_service_account(&user.name, namespace, &self.name)
            }
        }
    }

    /// As kube's `describeSubject`: `User "alice"`, `ServiceAccount "name/namespace"`.
    fn describe(&self, binding_namespace: &str) -> String {
        match self.kind {
            SubjectKind::ServiceAccount => format!(
                "ServiceAccount {}",
                go_quote(&format!(
                    "{}/{}",
                    self.name,
                    self.sa_namespace(binding_namespace)
                ))
            ),
            SubjectKind::User => format!("User {}", go_quote(&self.name)),
            SubjectKind::Group => format!("Group {}", go_quote(&self.name)),
        }
    }
}

fn is_service_account(user_name: &str, namespace: &str, name: &str) -> bool {
    user_name
        .strip_prefix(SERVICE_ACCOUNT_USER_PREFIX)
        .and_then(|rest| rest.strip_prefix(namespace))
        .and_then(|rest| rest.strip_prefix(':'))
        == Some(name)
}

impl Binding {
    /// As kube's binding describers, for the "allowed by" reason.
    fn describe(&self, user: &UserInfo) -> String {
        // The binding was found through one of its subjects, so one applies; the fallback
        // only guards against an index/subject mismatch.
        let subject = self
            .subjects
            .iter()
            .find(|s| s.applies_to(user, &self.namespace))
            .map(|s| s.describe(&self.namespace))
            .unwrap_or_default();
        if self.namespace.is_empty() {
            format!(
                "ClusterRoleBinding {} of {} {} to {}",
                go_quote(&self.name),
                self.role_kind,
                go_quote(&self.role_name),
                subject
            )
        } else {
            format!(
                "RoleBinding {} of {} {} to {}",
                go_quote(&format!("{}/{}", self.name, self.namespace)),
                self.role_kind,
                go_quote(&self.role_name),
                subject
            )
        }
    }
}

impl Policy {
    /// Index the given objects. Objects that are not well-formed (no name, a RoleBinding
    /// without namespace, a binding without roleRef, fields of the wrong type) are skipped;
    /// a malformed rule or subject is dropped from its object. A binding whose role does
    /// not exist grants nothing. If two objects share a name, the first one counts.
    pub fn new(
        cluster_roles: &[Value],
        roles: &[Value],
        cluster_role_bindings: &[Value],
        role_bindings: &[Value],
    ) -> Policy {
        let mut policy = Policy::default();
        for obj in cluster_roles {
            if let Some((name, rules)) = parse_role(obj) {
                policy.cluster_roles.entry(name).or_insert(rules.into());
            }
        }
        for obj in roles {
            let Some(namespace) = meta_str(obj, "namespace").filter(|n| !n.is_empty()) else {
                continue;
            };
            if let Some((name, rules)) = parse_role(obj) {
                policy
                    .roles
                    .entry(namespace.to_string())
                    .or_default()
                    .entry(name)
                    .or_insert(rules.into());
            }
        }
        for obj in cluster_role_bindings {
            if let Some(binding) = policy.parse_binding(obj, "") {
                let id = policy.cluster_bindings.len() as u32;
                policy.cluster_index.add(id, &binding);
                policy.cluster_bindings.push(binding);
            }
        }
        for obj in role_bindings {
            let Some(namespace) = meta_str(obj, "namespace").filter(|n| !n.is_empty()) else {
                continue;
            };
            if let Some(binding) = policy.parse_binding(obj, namespace) {
                let id = policy.role_bindings.len() as u32;
                policy
                    .namespace_index
                    .entry(namespace.to_string())
                    .or_default()
                    .add(id, &binding);
                policy.role_bindings.push(binding);
            }
        }
        policy
    }

    /// Decide one request as kube-apiserver does with `--authorization-mode=RBAC`: the
    /// privileged group first, then RBAC.
    pub fn authorize(&self, user: &UserInfo, req: &Request) -> Decision {
        if user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
            return Decision::allow(format!(
                "allowed by privileged group {}",
                go_quote(PRIVILEGED_GROUP)
            ));
        }
        if let Some(id) = first_allowing(&self.cluster_index, &self.cluster_bindings, user, req) {
            let binding = &self.cluster_bindings[id as usize];
            return Decision::allow(format!("RBAC: allowed by {}", binding.describe(user)));
        }
        let namespace = req.namespace();
        if !namespace.is_empty() {
            if let Some(index) = self.namespace_index.get(namespace) {
                if let Some(id) = first_allowing(index, &self.role_bindings, user, req) {
                    let binding = &self.role_bindings[id as usize];
                    return Decision::allow(format!("RBAC: allowed by {}", binding.describe(user)));
                }
            }
        }
        Decision::deny()
    }

    /// All rules that apply to `user` in `namespace` ("" = cluster-wide rules only), as
    /// kube's `RuleResolver.RulesFor`: the rules of the ClusterRoleBindings naming the user,
    /// then those of the namespace's RoleBindings naming the user, in binding order and
    /// without deduplication. Used for SelfSubjectRulesReview and escalation checks.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut rules = Vec::new();
        collect_rules(
            &self.cluster_index,
            &self.cluster_bindings,
            user,
            &mut rules,
        );
        if !namespace.is_empty() {
            if let Some(index) = self.namespace_index.get(namespace) {
                collect_rules(index, &self.role_bindings, user, &mut rules);
            }
        }
        rules
    }

    /// The rules a role reference points at: kind "Role" (looked up in `namespace`, the
    /// binding's) or "ClusterRole". None if there is no such role.
    pub fn role_rules(&self, kind: &str, name: &str, namespace: &str) -> Option<Vec<PolicyRule>> {
        self.role_ref_rules(kind, name, namespace)
            .map(|rules| rules.to_vec())
    }

    /// kube's `ConfirmNoEscalation`: Ok if `user`'s own rules in `namespace` cover
    /// `rules`, else the refusal text kube-apiserver returns for a Role or binding that would
    /// grant more than its author holds.
    pub fn confirm_no_escalation(
        &self,
        user: &UserInfo,
        namespace: &str,
        rules: &[PolicyRule],
    ) -> Result<(), String> {
        let owned = self.rules_for(user, namespace);
        let (covered, missing) = covers(&owned, rules);
        if covered {
            Ok(())
        } else {
            Err(escalation_message(user, &missing))
        }
    }

    fn role_ref_rules(
        &self,
        kind: &str,
        name: &str,
        namespace: &str,
    ) -> Option<&Arc<[PolicyRule]>> {
        match kind {
            "ClusterRole" => self.cluster_roles.get(name),
            // A ClusterRoleBinding (namespace "") cannot point at a Role.
            "Role" => self.roles.get(namespace)?.get(name),
            _ => None,
        }
    }

    /// A binding with its role resolved; None if malformed or if its role is missing.
    fn parse_binding(&self, obj: &Value, namespace: &str) -> Option<Binding> {
        let name = meta_str(obj, "name").filter(|n| !n.is_empty())?;
        let role_ref = obj.get("roleRef")?;
        let role_kind = role_ref.get("kind")?.as_str()?;
        let role_name = role_ref.get("name")?.as_str()?;
        let rules = self
            .role_ref_rules(role_kind, role_name, namespace)?
            .clone();
        let subjects = match obj.get("subjects") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().filter_map(parse_subject).collect(),
            Some(_) => return None,
        };
        Some(Binding {
            name: name.to_string(),
            namespace: namespace.to_string(),
            role_kind: role_kind.to_string(),
            role_name: role_name.to_string(),
            subjects,
            rules,
        })
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("cluster_roles", &self.cluster_roles.len())
            .field(
                "roles",
                &self.roles.values().map(HashMap::len).sum::<usize>(),
            )
            .field("cluster_role_bindings", &self.cluster_bindings.len())
            .field("role_bindings", &self.role_bindings.len())
            .finish()
    }
}

/// The lowest-positioned binding naming `user` that has a rule allowing `req`. Each id list
/// is ascending, so a list is abandoned as soon as it passes the best binding found so far.
fn first_allowing(
    index: &SubjectIndex,
    bindings: &[Binding],
    user: &UserInfo,
    req: &Request,
) -> Option<u32> {
    let mut best: Option<u32> = None;
    for ids in index.lists(user) {
        for &id in ids {
            if best.is_some_and(|b| id >= b) {
                break;
            }
            if bindings[id as usize].rules.iter().any(|r| r.allows(req)) {
                best = Some(id);
                break;
            }
        }
    }
    best
}

fn collect_rules(
    index: &SubjectIndex,
    bindings: &[Binding],
    user: &UserInfo,
    out: &mut Vec<PolicyRule>,
) {
    let mut ids: Vec<u32> = index.lists(user).flatten().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        out.extend(bindings[id as usize].rules.iter().cloned());
    }
}

fn parse_subject(value: &Value) -> Option<Subject> {
    let kind = match value.get("kind")?.as_str()? {
        "User" => SubjectKind::User,
        "Group" => SubjectKind::Group,
        "ServiceAccount" => SubjectKind::ServiceAccount,
        // Other kinds never match anyone.
        _ => return None,
    };
    let name = value.get("name")?.as_str()?.to_string();
    let namespace = match value.get("namespace") {
        None | Some(Value::Null) => String::new(),
        Some(v) => v.as_str()?.to_string(),
    };
    Some(Subject {
        kind,
        name,
        namespace,
    })
}

/// `metadata.<field>` as a string, if it is one.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// A Role or ClusterRole's name and rules. Absent or null `rules` is no rules (aggregated
/// ClusterRoles start that way); rules that do not parse are dropped.
pub(crate) fn parse_role(obj: &Value) -> Option<(String, Vec<PolicyRule>)> {
    let name = meta_str(obj, "name").filter(|n| !n.is_empty())?;
    let rules = parse_rules(obj.get("rules"))?;
    Some((name.to_string(), rules))
}

/// None only when `rules` is present but not a list.
pub(crate) fn parse_rules(value: Option<&Value>) -> Option<Vec<PolicyRule>> {
    match value {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|item| PolicyRule::deserialize(item).ok())
                .collect(),
        ),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{aggregate, defaults, ResourceAttributes};

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..UserInfo::default()
        }
    }

    fn res(verb: &str, ns: &str, group: &str, resource: &str, sub: &str, name: &str) -> Request {
        Request::Resource {
            verb: verb.into(),
            attrs: ResourceAttributes {
                namespace: ns.into(),
                api_group: group.into(),
                resource: resource.into(),
                subresource: sub.into(),
                name: name.into(),
            },
        }
    }

    fn get_pods(ns: &str) -> Request {
        res("get", ns, "", "pods", "", "p")
    }

    fn url(verb: &str, path: &str) -> Request {
        Request::NonResource {
            verb: verb.into(),
            path: path.into(),
        }
    }

    fn cluster_role(name: &str, rules: Value) -> Value {
        json!({"kind": "ClusterRole", "metadata": {"name": name}, "rules": rules})
    }

    fn role(ns: &str, name: &str, rules: Value) -> Value {
        json!({"kind": "Role", "metadata": {"name": name, "namespace": ns}, "rules": rules})
    }

    fn crb(name: &str, kind: &str, role: &str, subjects: Value) -> Value {
        json!({
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": subjects,
        })
    }

    fn rb(ns: &str, name: &str, kind: &str, role: &str, subjects: Value) -> Value {
        json!({
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": subjects,
        })
    }

    fn user_subject(name: &str) -> Value {
        json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}])
    }

    fn pod_reader() -> Value {
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}])
    }

    #[test]
    fn policy_can_be_shared_between_request_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Policy>();
    }

    #[test]
    fn role_binding_to_role_grants_only_in_its_namespace() {
        let policy = Policy::new(
            &[],
            &[role("ns1", "reader", pod_reader())],
            &[],
            &[rb("ns1", "read", "Role", "reader", user_subject("alice"))],
        );
        let alice = user("alice", &["system:authenticated"]);
        let d = policy.authorize(&alice, &get_pods("ns1"));
        assert_eq!(
            d,
            Decision::allow(
                r#"RBAC: allowed by RoleBinding "read/ns1" of Role "reader" to User "alice""#
            )
        );
        assert_eq!(policy.authorize(&alice, &get_pods("ns2")), Decision::deny());
        assert_eq!(policy.authorize(&alice, &get_pods("")), Decision::deny());
        assert!(
            !policy
                .authorize(&user("bob", &[]), &get_pods("ns1"))
                .allowed
        );
        assert!(
            !policy
                .authorize(&alice, &res("delete", "ns1", "", "pods", "", "p"))
                .allowed
        );
    }

    #[test]
    fn role_binding_cannot_use_another_namespaces_role() {
        let policy = Policy::new(
            &[],
            &[role("ns2", "reader", pod_reader())],
            &[],
            &[rb("ns1", "read", "Role", "reader", user_subject("alice"))],
        );
        let alice = user("alice", &[]);
        assert!(!policy.authorize(&alice, &get_pods("ns1")).allowed);
        assert!(!policy.authorize(&alice, &get_pods("ns2")).allowed);
    }

    #[test]
    fn role_binding_to_cluster_role_grants_only_in_its_namespace() {
        let policy = Policy::new(
            &[cluster_role("reader", pod_reader())],
            &[],
            &[],
            &[rb(
                "ns1",
                "read",
                "ClusterRole",
                "reader",
                user_subject("alice"),
            )],
        );
        let alice = user("alice", &[]);
        assert_eq!(
            policy.authorize(&alice, &get_pods("ns1")).reason,
            r#"RBAC: allowed by RoleBinding "read/ns1" of ClusterRole "reader" to User "alice""#
        );
        assert!(!policy.authorize(&alice, &get_pods("ns2")).allowed);
        assert!(!policy.authorize(&alice, &get_pods("")).allowed);
    }

    #[test]
    fn cluster_role_binding_grants_everywhere() {
        let policy = Policy::new(
            &[cluster_role("reader", pod_reader())],
            &[],
            &[crb("read", "ClusterRole", "reader", user_subject("alice"))],
            &[],
        );
        let alice = user("alice", &[]);
        for ns in ["", "ns1", "other"] {
            assert_eq!(
                policy.authorize(&alice, &get_pods(ns)).reason,
                r#"RBAC: allowed by ClusterRoleBinding "read" of ClusterRole "reader" to User "alice""#
            );
        }
    }

    #[test]
    fn cluster_role_binding_to_role_grants_nothing() {
        let policy = Policy::new(
            &[],
            &[role("ns1", "reader", pod_reader())],
            &[crb("read", "Role", "reader", user_subject("alice"))],
            &[],
        );
        assert!(
            !policy
                .authorize(&user("alice", &[]), &get_pods("ns1"))
                .allowed
        );
    }

    #[test]
    fn group_subjects() {
        let policy = Policy::new(
            &[cluster_role("reader", pod_reader())],
            &[],
            &[],
            &[rb(
                "ns1",
                "read",
                "ClusterRole",
                "reader",
                json!([{"kind": "Group", "name": "devs"}]),
            )],
        );
        assert_eq!(
            policy
                .authorize(&user("carol", &["x", "devs"]), &get_pods("ns1"))
                .reason,
            r#"RBAC: allowed by RoleBinding "read/ns1" of ClusterRole "reader" to Group "devs""#
        );
        assert!(
            !policy
                .authorize(&user("devs", &["x"]), &get_pods("ns1"))
                .allowed
        );
    }

    #[test]
    fn service_account_subjects() {
        let policy = Policy::new(
            &[cluster_role("reader", pod_reader())],
            &[],
            &[
                // No namespace in a ClusterRoleBinding: matches nobody.
                crb(
                    "sa-no-ns",
                    "ClusterRole",
                    "reader",
                    json!([{"kind": "ServiceAccount", "name": "default"}]),
                ),
                crb(
                    "sa",
                    "ClusterRole",
                    "reader",
                    json!([{"kind": "ServiceAccount", "name": "robot", "namespace": "ops"}]),
                ),
            ],
            &[
                rb(
                    "ns1",
                    "sa-default-ns",
                    "ClusterRole",
                    "reader",
                    json!([{"kind": "ServiceAccount", "name": "builder"}]),
                ),
                rb(
                    "ns1",
                    "sa-other-ns",
                    "ClusterRole",
                    "reader",
                    json!([{"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}]),
                ),
            ],
        );
        let sa = |ns: &str, name: &str| {
            user(
                &format!("system:serviceaccount:{ns}:{name}"),
                &[
                    "system:serviceaccounts",
                    &format!("system:serviceaccounts:{ns}"),
                ],
            )
        };
        assert_eq!(
            policy.authorize(&sa("ops", "robot"), &get_pods("x")).reason,
            r#"RBAC: allowed by ClusterRoleBinding "sa" of ClusterRole "reader" to ServiceAccount "robot/ops""#
        );
        assert!(
            !policy
                .authorize(&sa("ops", "robot2"), &get_pods("x"))
                .allowed
        );
        assert!(
            !policy
                .authorize(&sa("opsx", "robot"), &get_pods("x"))
                .allowed
        );
        assert!(!policy.authorize(&sa("", "default"), &get_pods("x")).allowed);
        assert!(
            !policy
                .authorize(&sa("x", "default"), &get_pods("x"))
                .allowed
        );
        // Defaulted to the binding's namespace.
        assert_eq!(
            policy
                .authorize(&sa("ns1", "builder"), &get_pods("ns1"))
                .reason,
            r#"RBAC: allowed by RoleBinding "sa-default-ns/ns1" of ClusterRole "reader" to ServiceAccount "builder/ns1""#
        );
        assert!(
            !policy
                .authorize(&sa("ns2", "builder"), &get_pods("ns1"))
                .allowed
        );
        // A ServiceAccount of another namespace, granted in ns1 only.
        assert!(
            policy
                .authorize(&sa("ci", "deployer"), &get_pods("ns1"))
                .allowed
        );
        assert!(
            !policy
                .authorize(&sa("ci", "deployer"), &get_pods("ci"))
                .allowed
        );
        // A plain user of that name is the service account, as far as RBAC can tell.
        assert!(
            policy
                .authorize(
                    &user("system:serviceaccount:ci:deployer", &[]),
                    &get_pods("ns1")
                )
                .allowed
        );
    }

    #[test]
    fn unknown_subject_kinds_match_nobody() {
        let policy = Policy::new(
            &[cluster_role("reader", pod_reader())],
            &[],
            &[crb(
                "odd",
                "ClusterRole",
                "reader",
                json!([{"kind": "Robot", "name": "alice"}, {"kind": "user", "name": "alice"}]),
            )],
            &[],
        );
        assert!(!policy.authorize(&user("alice", &[]), &get_pods("")).allowed);
    }

    #[test]
    fn non_resource_urls_only_through_cluster_role_bindings() {
        let health = cluster_role(
            "health",
            json!([{"nonResourceURLs": ["/healthz", "/healthz/*"], "verbs": ["get"]}]),
        );
        let policy = Policy::new(
            &[health],
            &[],
            &[crb("h", "ClusterRole", "health", user_subject("alice"))],
            &[rb("ns1", "h", "ClusterRole", "health", user_subject("bob"))],
        );
        let alice = user("alice", &[]);
        assert_eq!(
            policy
                .authorize(&alice, &url("get", "/healthz/etcd"))
                .reason,
            r#"RBAC: allowed by ClusterRoleBinding "h" of ClusterRole "health" to User "alice""#
        );
        assert!(!policy.authorize(&alice, &url("post", "/healthz")).allowed);
        assert!(!policy.authorize(&alice, &url("get", "/metrics")).allowed);
        assert!(
            !policy
                .authorize(&user("bob", &[]), &url("get", "/healthz"))
                .allowed
        );
    }

    #[test]
    fn system_masters_is_always_allowed() {
        let policy = Policy::new(&[], &[], &[], &[]);
        let root = user("root", &["system:authenticated", "system:masters"]);
        let d = policy.authorize(&root, &res("delete", "", "", "nodes", "", "n"));
        assert_eq!(
            d,
            Decision::allow(r#"allowed by privileged group "system:masters""#)
        );
        assert!(policy.authorize(&root, &url("get", "/metrics")).allowed);
        assert!(
            !policy
                .authorize(&user("system:masters", &[]), &get_pods(""))
                .allowed
        );
    }

    #[test]
    fn missing_roles_grant_nothing() {
        let policy = Policy::new(
            &[],
            &[],
            &[crb("x", "ClusterRole", "nope", user_subject("alice"))],
            &[
                rb("ns1", "y", "Role", "nope", user_subject("alice")),
                rb("ns1", "z", "Weird", "nope", user_subject("alice")),
            ],
        );
        let alice = user("alice", &[]);
        assert_eq!(policy.authorize(&alice, &get_pods("ns1")), Decision::deny());
        assert!(policy.rules_for(&alice, "ns1").is_empty());
        assert_eq!(policy.role_rules("ClusterRole", "nope", ""), None);
    }

    #[test]
    fn garbage_is_skipped_without_panicking() {
        let garbage = [
            json!(null),
            json!(42),
            json!("x"),
            json!([]),
            json!({}),
            json!({"metadata": null}),
            json!({"metadata": {"name": 7}}),
            json!({"metadata": {"name": ""}}),
            json!({"metadata": {"name": "r"}, "rules": "all"}),
            json!({"metadata": {"name": "b", "namespace": 3}, "roleRef": 5}),
            json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole"}}),
            json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "ok"},
                   "subjects": "alice"}),
        ];
        let mut cluster_roles = garbage.to_vec();
        cluster_roles.push(cluster_role(
            "ok",
            json!([
                {"verbs": "get", "apiGroups": [""], "resources": ["pods"]},
                {"apiGroups": [""], "resources": ["pods"]},
                7,
                {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "unknown": 1},
            ]),
        ));
        let mut crbs = garbage.to_vec();
        crbs.push(crb(
            "good",
            "ClusterRole",
            "ok",
            json!([null, {"kind": "User"}, {"kind": "User", "name": 5},
                   {"kind": "ServiceAccount", "name": "s", "namespace": 1},
                   {"kind": "User", "name": "alice"}]),
        ));
        let mut roles = garbage.to_vec();
        roles.push(role("ns1", "", pod_reader()));
        let policy = Policy::new(&cluster_roles, &roles, &crbs, &garbage);
        assert_eq!(
            policy.role_rules("ClusterRole", "ok", "").map(|r| r.len()),
            Some(1)
        );
        let alice = user("alice", &[]);
        assert!(policy.authorize(&alice, &get_pods("ns1")).allowed);
        assert!(
            !policy
                .authorize(&alice, &res("list", "ns1", "", "pods", "", ""))
                .allowed
        );
        assert!(format!("{policy:?}").contains("cluster_role_bindings: 1"));
    }

    #[test]
    fn first_binding_in_order_gives_the_reason() {
        let policy = Policy::new(
            &[
                cluster_role("reader", pod_reader()),
                cluster_role(
                    "all",
                    json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
                ),
            ],
            &[],
            &[
                crb(
                    "z-first",
                    "ClusterRole",
                    "all",
                    json!([{"kind": "Group", "name": "g"}]),
                ),
                crb("a-second", "ClusterRole", "reader", user_subject("alice")),
            ],
            &[rb(
                "ns1",
                "local",
                "ClusterRole",
                "reader",
                user_subject("alice"),
            )],
        );
        let alice = user("alice", &["g"]);
        // Bindings are visited in input order, across all of the user's identities.
        assert_eq!(
            policy.authorize(&alice, &get_pods("ns1")).reason,
            r#"RBAC: allowed by ClusterRoleBinding "z-first" of ClusterRole "all" to Group "g""#
        );
        // Without the group, the ClusterRoleBinding still comes before the RoleBinding.
        assert_eq!(
            policy
                .authorize(&user("alice", &[]), &get_pods("ns1"))
                .reason,
            r#"RBAC: allowed by ClusterRoleBinding "a-second" of ClusterRole "reader" to User "alice""#
        );
    }

    #[test]
    fn reason_names_the_first_matching_subject_of_the_binding() {
        let policy = Policy::new(
            &[cluster_role("reader", pod_reader())],
            &[],
            &[crb(
                "both",
                "ClusterRole",
                "reader",
                json!([{"kind": "User", "name": "bob"}, {"kind": "Group", "name": "g"},
                       {"kind": "User", "name": "alice"}, {"kind": "User", "name": "alice"}]),
            )],
            &[],
        );
        assert_eq!(
            policy
                .authorize(&user("alice", &["g"]), &get_pods(""))
                .reason,
            r#"RBAC: allowed by ClusterRoleBinding "both" of ClusterRole "reader" to Group "g""#
        );
        assert_eq!(policy.rules_for(&user("alice", &["g"]), "").len(), 1);
    }

    #[test]
    fn reasons_quote_like_go() {
        let policy = Policy::new(
            &[cluster_role("r\"1", pod_reader())],
            &[],
            &[crb("b\\1", "ClusterRole", "r\"1", user_subject("a\nb"))],
            &[],
        );
        assert_eq!(
            policy.authorize(&user("a\nb", &[]), &get_pods("")).reason,
            r#"RBAC: allowed by ClusterRoleBinding "b\\1" of ClusterRole "r\"1" to User "a\nb""#
        );
    }

    #[test]
    fn rules_for_cluster_then_namespace() {
        let secrets = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]);
        let policy = Policy::new(
            &[cluster_role("reader", pod_reader())],
            &[role("ns1", "secrets", secrets.clone())],
            &[crb(
                "c",
                "ClusterRole",
                "reader",
                json!([{"kind": "Group", "name": "g"}]),
            )],
            &[
                rb("ns1", "s", "Role", "secrets", user_subject("alice")),
                rb("ns2", "s", "ClusterRole", "reader", user_subject("alice")),
            ],
        );
        let alice = user("alice", &["g"]);
        let reader: Vec<PolicyRule> = serde_json::from_value(pod_reader()).unwrap();
        let secret_rules: Vec<PolicyRule> = serde_json::from_value(secrets).unwrap();
        assert_eq!(policy.rules_for(&alice, ""), reader);
        assert_eq!(
            policy.rules_for(&alice, "ns1"),
            [reader.clone(), secret_rules.clone()].concat()
        );
        assert_eq!(
            policy.rules_for(&alice, "ns2"),
            [reader.clone(), reader.clone()].concat()
        );
        assert!(policy.rules_for(&user("bob", &[]), "ns1").is_empty());
        assert_eq!(
            policy.role_rules("Role", "secrets", "ns1"),
            Some(secret_rules)
        );
        assert_eq!(policy.role_rules("Role", "secrets", "ns2"), None);
        assert_eq!(
            policy.role_rules("ClusterRole", "reader", "ns9"),
            Some(reader)
        );
        assert_eq!(policy.role_rules("Group", "reader", ""), None);
    }

    #[test]
    fn escalation_check() {
        let policy = Policy::new(
            &[cluster_role("reader", pod_reader())],
            &[],
            &[],
            &[rb(
                "ns1",
                "r",
                "ClusterRole",
                "reader",
                user_subject("alice"),
            )],
        );
        let alice = user("alice", &["system:authenticated"]);
        let wanted: Vec<PolicyRule> = serde_json::from_value(json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "create"]}
        ]))
        .unwrap();
        assert_eq!(
            policy.confirm_no_escalation(&alice, "ns1", &wanted),
            Err(
                "user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC \
                 permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], \
                 Verbs:[\"create\"]}"
                    .to_string()
            )
        );
        assert_eq!(
            policy.confirm_no_escalation(&alice, "ns1", &wanted[..0]),
            Ok(())
        );
        let read: Vec<PolicyRule> = serde_json::from_value(pod_reader()).unwrap();
        assert_eq!(policy.confirm_no_escalation(&alice, "ns1", &read), Ok(()));
        assert!(policy.confirm_no_escalation(&alice, "ns2", &read).is_err());
    }

    /// The defaults as a fresh cluster has them, aggregation applied.
    fn default_cluster_roles() -> Vec<Value> {
        let mut roles = defaults::cluster_roles();
        for (name, rules) in aggregate(&roles) {
            let role = roles
                .iter_mut()
                .find(|r| r["metadata"]["name"] == name.as_str())
                .unwrap();
            role["rules"] = serde_json::to_value(rules).unwrap();
        }
        roles
    }

    #[test]
    fn default_kubevirt_roles_through_aggregation() {
        let policy = Policy::new(
            &default_cluster_roles(),
            &[],
            &defaults::cluster_role_bindings(),
            &[
                rb("vms", "e", "ClusterRole", "edit", user_subject("editor")),
                rb("vms", "v", "ClusterRole", "view", user_subject("viewer")),
                rb("vms", "a", "ClusterRole", "admin", user_subject("admin")),
            ],
        );
        let authed = |name: &str| user(name, &["system:authenticated"]);
        let console = res(
            "get",
            "vms",
            "subresources.kubevirt.io",
            "virtualmachineinstances",
            "console",
            "vmi",
        );
        let vnc = res(
            "get",
            "vms",
            "subresources.kubevirt.io",
            "virtualmachineinstances",
            "vnc",
            "vmi",
        );
        let guest_info = res(
            "get",
            "vms",
            "subresources.kubevirt.io",
            "virtualmachineinstances",
            "guestosinfo",
            "vmi",
        );
        let start = res(
            "update",
            "vms",
            "subresources.kubevirt.io",
            "virtualmachines",
            "start",
            "vm",
        );
        let create_vm = res("create", "vms", "kubevirt.io", "virtualmachines", "", "");
        let secret = res("get", "vms", "", "secrets", "", "s");
        let make_role = res(
            "create",
            "vms",
            "rbac.authorization.k8s.io",
            "roles",
            "",
            "",
        );

        let viewer = authed("viewer");
        assert!(!policy.authorize(&viewer, &console).allowed);
        assert!(!policy.authorize(&viewer, &vnc).allowed);
        assert!(!policy.authorize(&viewer, &start).allowed);
        assert!(!policy.authorize(&viewer, &create_vm).allowed);
        assert!(!policy.authorize(&viewer, &secret).allowed);
        assert!(policy.authorize(&viewer, &guest_info).allowed);
        assert!(policy.authorize(&viewer, &get_pods("vms")).allowed);

        let editor = authed("editor");
        assert_eq!(
            policy.authorize(&editor, &console).reason,
            r#"RBAC: allowed by RoleBinding "e/vms" of ClusterRole "edit" to User "editor""#
        );
        for req in [&vnc, &guest_info, &start, &create_vm, &secret] {
            assert!(policy.authorize(&editor, req).allowed, "{req:?}");
        }
        assert!(!policy.authorize(&editor, &make_role).allowed);
        assert!(!policy.authorize(&editor, &console_in("elsewhere")).allowed);

        let admin = authed("admin");
        assert!(policy.authorize(&admin, &make_role).allowed);
        assert!(
            policy
                .authorize(
                    &admin,
                    &res(
                        "get",
                        "vms",
                        "subresources.kubevirt.io",
                        "virtualmachineinstances",
                        "vnc/screenshot",
                        "vmi"
                    )
                )
                .allowed
        );
        assert!(
            !policy
                .authorize(
                    &admin,
                    &res(
                        "update",
                        "vms",
                        "subresources.kubevirt.io",
                        "virtualmachines",
                        "migrate",
                        "vm"
                    )
                )
                .allowed
        );

        // Every authenticated user may discover the API and read KubeVirt's version.
        let nobody = authed("nobody");
        assert_eq!(
            policy
                .authorize(&nobody, &url("get", "/apis/kubevirt.io/v1"))
                .reason,
            r#"RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole "system:discovery" to Group "system:authenticated""#
        );
        assert!(
            policy
                .authorize(
                    &nobody,
                    &res("get", "", "subresources.kubevirt.io", "version", "", "")
                )
                .allowed
        );
        assert!(
            policy
                .authorize(
                    &nobody,
                    &res(
                        "create",
                        "",
                        "authorization.k8s.io",
                        "selfsubjectaccessreviews",
                        "",
                        ""
                    )
                )
                .allowed
        );
        assert!(!policy.authorize(&nobody, &get_pods("vms")).allowed);
        let anonymous = user("system:anonymous", &["system:unauthenticated"]);
        assert!(
            policy
                .authorize(&anonymous, &url("get", "/healthz"))
                .allowed
        );
        assert!(!policy.authorize(&anonymous, &url("get", "/apis")).allowed);
        // cluster-admin is bound to system:masters (who are allowed before RBAC anyway).
        let root = user("root", &["system:masters"]);
        assert!(policy.authorize(&root, &url("delete", "/anything")).allowed);
    }

    fn console_in(ns: &str) -> Request {
        res(
            "get",
            ns,
            "subresources.kubevirt.io",
            "virtualmachineinstances",
            "console",
            "vmi",
        )
    }

    #[test]
    fn many_bindings_only_the_callers_are_consulted() {
        let roles = [cluster_role("reader", pod_reader())];
        let bindings: Vec<Value> = (0..2000)
            .map(|i| {
                rb(
                    &format!("ns{}", i % 10),
                    &format!("b{i}"),
                    "ClusterRole",
                    "reader",
                    user_subject(&format!("user{i}")),
                )
            })
            .collect();
        let policy = Policy::new(&roles, &[], &[], &bindings);
        assert!(
            policy
                .authorize(&user("user1234", &[]), &get_pods("ns4"))
                .allowed
        );
        assert!(
            !policy
                .authorize(&user("user1234", &[]), &get_pods("ns5"))
                .allowed
        );
        assert_eq!(policy.rules_for(&user("user7", &[]), "ns7").len(), 1);
    }
}
