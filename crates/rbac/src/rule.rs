//! Whether one PolicyRule allows one request: kube's `RuleAllows` and its helpers.
//!
//! Everything is an exact string comparison except three wildcards: `*` in verbs,
//! apiGroups, resources and nonResourceURLs; `*/sub` in resources (that subresource of any
//! resource); and a trailing `*` in nonResourceURLs (a path prefix).

use crate::{PolicyRule, Request, ResourceAttributes};

const ALL: &str = "*";

impl PolicyRule {
    /// Whether this rule, on its own, allows `req`.
    pub fn allows(&self, req: &Request) -> bool {
        match req {
            Request::Resource { verb, attrs } => self.allows_resource(verb, attrs),
            Request::NonResource { verb, path } => {
                verb_matches(&self.verbs, verb)
                    && non_resource_url_matches(&self.non_resource_urls, path)
            }
        }
    }

    fn allows_resource(&self, verb: &str, attrs: &ResourceAttributes) -> bool {
        verb_matches(&self.verbs, verb)
            && api_group_matches(&self.api_groups, &attrs.api_group)
            && resource_matches(&self.resources, &attrs.resource, &attrs.subresource)
            && resource_name_matches(&self.resource_names, &attrs.name)
    }
}

fn verb_matches(verbs: &[String], verb: &str) -> bool {
    verbs.iter().any(|v| v == ALL || v == verb)
}

fn api_group_matches(groups: &[String], group: &str) -> bool {
    groups.iter().any(|g| g == ALL || g == group)
}

/// A rule's resource is `resource` or `resource/subresource`, never a bare resource
/// standing for its subresources: "pods" does not grant "pods/log".
fn resource_matches(resources: &[String], resource: &str, subresource: &str) -> bool {
    resources.iter().any(|r| {
        r == ALL
            || is_combined(r, resource, subresource)
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

/// `r == resource` or `r == resource + "/" + subresource`, without building the latter on
/// every check.
fn is_combined(r: &str, resource: &str, subresource: &str) -> bool {
    if subresource.is_empty() {
        return r == resource;
    }
    match r.strip_prefix(resource) {
        Some(rest) => rest.strip_prefix('/') == Some(subresource),
        None => false,
    }
}

/// An empty list means every name. A non-empty list only matches requests naming one of
/// them, so such a rule never grants create, list, watch or deletecollection (those carry
/// no name), exactly as upstream.
fn resource_name_matches(names: &[String], name: &str) -> bool {
    names.is_empty() || names.iter().any(|n| n == name)
}

fn non_resource_url_matches(urls: &[String], path: &str) -> bool {
    urls.iter().any(|u| {
        u == ALL || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: strings(verbs),
            api_groups: strings(groups),
            resources: strings(resources),
            ..PolicyRule::default()
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn req(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Request {
        Request::Resource {
            verb: verb.into(),
            attrs: ResourceAttributes {
                namespace: "ns".into(),
                api_group: group.into(),
                resource: resource.into(),
                subresource: sub.into(),
                name: name.into(),
            },
        }
    }

    fn url(verb: &str, path: &str) -> Request {
        Request::NonResource {
            verb: verb.into(),
            path: path.into(),
        }
    }

    #[test]
    fn verbs_exact_or_star() {
        let r = rule(&["get", "list"], &[""], &["pods"]);
        assert!(r.allows(&req("get", "", "pods", "", "p")));
        assert!(r.allows(&req("list", "", "pods", "", "")));
        assert!(!r.allows(&req("delete", "", "pods", "", "p")));
        let star = rule(&["*"], &[""], &["pods"]);
        assert!(star.allows(&req("delete", "", "pods", "", "p")));
        assert!(star.allows(&req("escalate", "", "pods", "", "")));
        assert!(!rule(&[], &[""], &["pods"]).allows(&req("get", "", "pods", "", "")));
    }

    #[test]
    fn api_groups_exact_or_star() {
        let core = rule(&["get"], &[""], &["pods"]);
        assert!(core.allows(&req("get", "", "pods", "", "")));
        assert!(!core.allows(&req("get", "apps", "pods", "", "")));
        let any = rule(&["get"], &["*"], &["pods"]);
        assert!(any.allows(&req("get", "metrics.k8s.io", "pods", "", "")));
        assert!(any.allows(&req("get", "", "pods", "", "")));
        // A rule without apiGroups grants no resource at all.
        assert!(!rule(&["get"], &[], &["pods"]).allows(&req("get", "", "pods", "", "")));
    }

    #[test]
    fn resources_and_subresources() {
        let pods = rule(&["get"], &[""], &["pods"]);
        assert!(pods.allows(&req("get", "", "pods", "", "p")));
        assert!(!pods.allows(&req("get", "", "pods", "log", "p")));
        assert!(!pods.allows(&req("get", "", "podsx", "", "p")));

        let log = rule(&["get"], &[""], &["pods/log"]);
        assert!(log.allows(&req("get", "", "pods", "log", "p")));
        assert!(!log.allows(&req("get", "", "pods", "", "p")));
        assert!(!log.allows(&req("get", "", "pods", "exec", "p")));

        let all = rule(&["get"], &[""], &["*"]);
        assert!(all.allows(&req("get", "", "pods", "", "p")));
        assert!(all.allows(&req("get", "", "pods", "log", "p")));

        let scale = rule(&["update"], &["*"], &["*/scale"]);
        assert!(scale.allows(&req("update", "apps", "deployments", "scale", "d")));
        assert!(scale.allows(&req("update", "", "replicationcontrollers", "scale", "r")));
        assert!(!scale.allows(&req("update", "apps", "deployments", "", "d")));
        assert!(!scale.allows(&req("update", "apps", "deployments", "status", "d")));
        assert!(!scale.allows(&req("update", "apps", "deployments", "scalex", "d")));
    }

    #[test]
    fn multi_segment_subresources() {
        // KubeVirt's "virtualmachineinstances/sev/fetchcertchain" style subresources.
        let r = rule(
            &["get"],
            &["subresources.kubevirt.io"],
            &["virtualmachineinstances/sev/fetchcertchain"],
        );
        assert!(r.allows(&req(
            "get",
            "subresources.kubevirt.io",
            "virtualmachineinstances",
            "sev/fetchcertchain",
            "vmi"
        )));
        assert!(!r.allows(&req(
            "get",
            "subresources.kubevirt.io",
            "virtualmachineinstances",
            "sev",
            "vmi"
        )));
    }

    #[test]
    fn resource_names_only_match_named_requests() {
        let mut r = rule(&["*"], &[""], &["configmaps"]);
        r.resource_names = strings(&["a", "b"]);
        assert!(r.allows(&req("get", "", "configmaps", "", "a")));
        assert!(r.allows(&req("update", "", "configmaps", "", "b")));
        assert!(!r.allows(&req("get", "", "configmaps", "", "c")));
        for verb in ["create", "list", "watch", "deletecollection"] {
            assert!(!r.allows(&req(verb, "", "configmaps", "", "")), "{verb}");
        }
        let unnamed = rule(&["create"], &[""], &["configmaps"]);
        assert!(unnamed.allows(&req("create", "", "configmaps", "", "")));
    }

    #[test]
    fn non_resource_urls() {
        let r = PolicyRule {
            verbs: strings(&["get"]),
            non_resource_urls: strings(&["/healthz", "/apis/*"]),
            ..PolicyRule::default()
        };
        assert!(r.allows(&url("get", "/healthz")));
        assert!(!r.allows(&url("get", "/healthz/etcd")));
        assert!(!r.allows(&url("post", "/healthz")));
        assert!(r.allows(&url("get", "/apis/")));
        assert!(r.allows(&url("get", "/apis/kubevirt.io/v1")));
        assert!(!r.allows(&url("get", "/apis")));
        let all = PolicyRule {
            verbs: strings(&["*"]),
            non_resource_urls: strings(&["*"]),
            ..PolicyRule::default()
        };
        assert!(all.allows(&url("delete", "/anything")));
        // URL rules never grant resources, and resource rules never grant URLs.
        assert!(!all.allows(&req("get", "", "pods", "", "")));
        assert!(!rule(&["*"], &["*"], &["*"]).allows(&url("get", "/healthz")));
    }
}
