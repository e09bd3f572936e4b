//! Authorization: the RBAC policy of the objects in the store (`kubevirt-rbac` decides),
//! kept current cheaply, kube-apiserver's 403 wording, impersonation, and the escalation
//! checks on writes of roles and bindings.

use std::sync::{Arc, RwLock};

use http::{HeaderMap, StatusCode};
use kubevirt_rbac::{Policy, Request as RbacRequest, ResourceAttributes};
use serde_json::Value;

use super::{UserInfo, AUTHENTICATED, MASTERS, UNAUTHENTICATED};
use crate::error::ApiError;
use crate::http::RequestInfo;
use crate::registry::RBAC_GROUP;
use crate::store::Store;
use crate::AuthorizationMode;

const RBAC_RESOURCES: [&str; 4] = [
    "rbac.authorization.k8s.io/clusterroles/",
    "rbac.authorization.k8s.io/roles/",
    "rbac.authorization.k8s.io/clusterrolebindings/",
    "rbac.authorization.k8s.io/rolebindings/",
];

type Cached = ([i64; 4], Arc<Policy>);

pub struct Authorizer {
    store: Arc<Store>,
    mode: AuthorizationMode,
    /// The policy and the revisions of the RBAC resources it was built from.
    cache: RwLock<Option<Cached>>,
}

impl Authorizer {
    pub fn new(store: Arc<Store>, mode: AuthorizationMode) -> Authorizer {
        Authorizer {
            store,
            mode,
            cache: RwLock::new(None),
        }
    }

    /// The policy as of the last RBAC write. Rebuilt (aggregated ClusterRoles included)
    /// only when a role or binding changed, so a write is in force for the next request.
    pub fn policy(&self) -> Arc<Policy> {
        let revs = self.store.resource_revisions(&RBAC_RESOURCES);
        if let Some((r, p)) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if *r == revs {
                return p.clone();
            }
        }
        let list = |prefix: &str| -> Vec<Value> {
            self.store
                .list(prefix)
                .0
                .iter()
                .map(|v| (**v).clone())
                .collect()
        };
        let mut cluster_roles = list(RBAC_RESOURCES[0]);
        apply_aggregation(&mut cluster_roles);
        let policy = Arc::new(Policy::new(
            &cluster_roles,
            &list(RBAC_RESOURCES[1]),
            &list(RBAC_RESOURCES[2]),
            &list(RBAC_RESOURCES[3]),
        ));
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = Some((revs, policy.clone()));
        policy
    }

    pub fn allowed(&self, user: &UserInfo, req: &RbacRequest) -> bool {
        self.mode == AuthorizationMode::AlwaysAllow || self.policy().authorize(user, req).allowed
    }

    /// A resource request, or 403 worded as kube-apiserver's.
    pub fn check_resource(&self, user: &UserInfo, info: &RequestInfo) -> Result<(), ApiError> {
        let req = RbacRequest::Resource {
            verb: info.verb.to_string(),
            attrs: ResourceAttributes {
                namespace: info.namespace.clone().unwrap_or_default(),
                api_group: info.group.clone(),
                resource: info.resource.clone(),
                subresource: info.subresource.clone().unwrap_or_default(),
                name: info.name.clone().unwrap_or_default(),
            },
        };
        if self.allowed(user, &req) {
            Ok(())
        } else {
            Err(forbidden(&user.name, info))
        }
    }

    /// A non-resource request (`/api`, `/version`, `/metrics`, ...), or 403.
    pub fn check_path(&self, user: &UserInfo, verb: &str, path: &str) -> Result<(), ApiError> {
        let req = RbacRequest::NonResource {
            verb: verb.to_string(),
            path: path.to_string(),
        };
        if self.allowed(user, &req) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
                user.name
            ),
        ))
    }

    /// The user a request acts as when it carries `Impersonate-*` headers (`None` when it
    /// does not), after checking `impersonate` on each part as kube-apiserver does.
    pub fn impersonate(
        &self,
        user: &UserInfo,
        headers: &HeaderMap,
    ) -> Result<Option<UserInfo>, ApiError> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect()
        };
        let target_user = values("impersonate-user").into_iter().next();
        let groups = values("impersonate-group");
        let uid = values("impersonate-uid").into_iter().next();
        let mut extra = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (name, value) in headers {
            if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
                if let Ok(v) = value.to_str() {
                    let key = crate::http::percent_decode(key);
                    extra.entry(key).or_default().push(v.to_string());
                }
            }
        }
        let Some(target) = target_user else {
            if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
                return Err(ApiError::bad_request(
                    "requested impersonation without impersonating a user",
                ));
            }
            return Ok(None);
        };
        let check = |info: RequestInfo| self.check_resource(user, &info);
        let mut new_groups = groups.clone();
        if let Some(sa) = target.strip_prefix("system:serviceaccount:") {
            let (ns, name) = sa.split_once(':').unwrap_or(("", sa));
            check(impersonate_info("", "serviceaccounts", Some(ns), name))?;
            if groups.is_empty() {
                new_groups = vec![
                    "system:serviceaccounts".to_string(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        } else {
            check(impersonate_info("", "users", None, &target))?;
        }
        for g in &groups {
            check(impersonate_info("", "groups", None, g))?;
        }
        if let Some(uid) = &uid {
            check(impersonate_info("authentication.k8s.io", "uids", None, uid))?;
        }
        for (key, vs) in &extra {
            for v in vs {
                check(impersonate_info(
                    "authentication.k8s.io",
                    &format!("userextras/{key}"),
                    None,
                    v,
                ))?;
            }
        }
        let implicit = if target == super::ANONYMOUS {
            UNAUTHENTICATED
        } else {
            AUTHENTICATED
        };
        if !new_groups.iter().any(|g| g == implicit) {
            new_groups.push(implicit.to_string());
        }
        Ok(Some(UserInfo {
            name: target,
            uid: uid.unwrap_or_default(),
            groups: new_groups,
            extra,
        }))
    }

    /// kube-apiserver's RBAC escalation check on a create/update of a Role, ClusterRole,
    /// RoleBinding or ClusterRoleBinding by `user`: a role may only hold rules its author
    /// holds (or may `escalate`); a binding may only grant a role whose rules its author
    /// holds (or may `bind`). `plural` is the resource, `obj` the object as it would be
    /// stored.
    pub fn check_escalation(
        &self,
        user: &UserInfo,
        plural: &str,
        obj: &Value,
    ) -> Result<(), ApiError> {
        if user.groups.iter().any(|g| g == MASTERS) || self.mode == AuthorizationMode::AlwaysAllow {
            return Ok(());
        }
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let policy = self.policy();
        let may = |verb: &str, resource: &str, ns: &str, name: &str| {
            policy
                .authorize(
                    user,
                    &RbacRequest::Resource {
                        verb: verb.to_string(),
                        attrs: ResourceAttributes {
                            namespace: ns.to_string(),
                            api_group: RBAC_GROUP.to_string(),
                            resource: resource.to_string(),
                            subresource: String::new(),
                            name: name.to_string(),
                        },
                    },
                )
                .allowed
        };
        let refuse = |message: String| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: {message}",
                    crate::error::qualified(plural, RBAC_GROUP)
                ),
            )
            .with_resource_details(name, RBAC_GROUP, plural)
        };
        let requested: Vec<kubevirt_rbac::PolicyRule> = match plural {
            "roles" | "clusterroles" => {
                if may("escalate", plural, ns, name) {
                    return Ok(());
                }
                if plural == "clusterroles"
                    && obj.get("aggregationRule").is_some_and(|a| !a.is_null())
                {
                    return Err(refuse(
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    ));
                }
                serde_json::from_value(obj.get("rules").cloned().unwrap_or(Value::Null))
                    .unwrap_or_default()
            }
            "rolebindings" | "clusterrolebindings" => {
                let kind = obj
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role = obj
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role_resource = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", role_resource, ns, role) {
                    return Ok(());
                }
                match policy.role_rules(kind, role, ns) {
                    Some(rules) => rules,
                    None => {
                        let what = crate::error::qualified(role_resource, RBAC_GROUP);
                        return Err(refuse(format!("{what} \"{role}\" not found")));
                    }
                }
            }
            _ => return Ok(()),
        };
        policy
            .confirm_no_escalation(user, ns, &requested)
            .map_err(refuse)
    }
}

/// Fills each aggregated ClusterRole's `rules` (kube's clusterrole-aggregation controller
/// writes them; the policy must not wait for it).
pub fn apply_aggregation(cluster_roles: &mut [Value]) {
    for (name, rules) in kubevirt_rbac::aggregate(cluster_roles) {
        if let Some(role) = cluster_roles
            .iter_mut()
            .find(|r| r.pointer("/metadata/name").and_then(Value::as_str) == Some(&name))
        {
            role["rules"] = serde_json::to_value(rules).unwrap_or_default();
        }
    }
}

fn impersonate_info(group: &str, resource: &str, ns: Option<&str>, name: &str) -> RequestInfo {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    RequestInfo {
        verb: "impersonate",
        group: group.to_string(),
        resource,
        subresource,
        subresource_path: None,
        namespace: ns.map(str::to_string),
        name: Some(name.to_string()),
    }
}

/// 403 worded as kube-apiserver's RBAC denials.
pub fn forbidden(user: &str, info: &RequestInfo) -> ApiError {
    let resource = match &info.subresource {
        Some(sub) => format!("{}/{sub}", info.resource),
        None => info.resource.clone(),
    };
    let scope = match &info.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let qualified = crate::error::qualified(&info.resource, &info.group);
    let subject = match &info.name {
        Some(n) => format!("{qualified} \"{n}\""),
        None => qualified,
    };
    ApiError::new(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            info.verb, info.group
        ),
    )
    .with_resource_details(
        info.name.as_deref().unwrap_or(""),
        &info.group,
        &info.resource,
    )
}
