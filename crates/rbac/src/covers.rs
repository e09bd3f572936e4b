//! Escalation checks: whether one set of rules covers another (kube's `validation.Covers`),
//! and the refusal text kube-apiserver returns when a user tries to grant rules they do not
//! hold (`ConfirmNoEscalation`).

use std::collections::{BTreeSet, HashMap};

use crate::quote::{go_quote, go_quote_list};
use crate::{PolicyRule, UserInfo};

const ALL: &str = "*";

/// Whether `owner` covers every rule in `requested`, and the parts it does not cover.
///
/// Each requested rule is first broken into atomic rules (one group, resource, verb and
/// resource name; or one URL and verb), so each atom is either wholly covered by a single
/// owner rule or not at all; the uncovered atoms are returned in breakdown order.
pub fn covers(owner: &[PolicyRule], requested: &[PolicyRule]) -> (bool, Vec<PolicyRule>) {
    let uncovered: Vec<PolicyRule> = requested
        .iter()
        .flat_map(breakdown_rule)
        .filter(|atom| !owner.iter().any(|o| rule_covers(o, atom)))
        .collect();
    (uncovered.is_empty(), uncovered)
}

/// An equivalent list of rules with at most one verb, group, resource and resource name
/// each (or one URL and one verb), in kube's order: group, resource, verb, name; then URLs.
pub fn breakdown_rule(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut atoms = Vec::new();
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                let atom = |names: Vec<String>| PolicyRule {
                    verbs: vec![verb.clone()],
                    api_groups: vec![group.clone()],
                    resources: vec![resource.clone()],
                    resource_names: names,
                    non_resource_urls: Vec::new(),
                };
                if rule.resource_names.is_empty() {
                    atoms.push(atom(Vec::new()));
                } else {
                    for name in &rule.resource_names {
                        atoms.push(atom(vec![name.clone()]));
                    }
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            atoms.push(PolicyRule {
                verbs: vec![verb.clone()],
                non_resource_urls: vec![url.clone()],
                ..PolicyRule::default()
            });
        }
    }
    atoms
}

fn has(set: &[String], item: &str) -> bool {
    set.iter().any(|s| s == item)
}

fn has_all(set: &[String], items: &[String]) -> bool {
    items.iter().all(|i| has(set, i))
}

/// Like matching, but between rules: `*` covers everything, `*/sub` covers that
/// subresource of any resource, a trailing `*` URL covers its prefix.
fn resources_cover(owner: &[String], requested: &[String]) -> bool {
    if has(owner, ALL) {
        return true;
    }
    requested.iter().all(|path| {
        has(owner, path)
            || match path.split_once('/') {
                Some((_, sub)) => has(owner, &format!("*/{sub}")),
                None => false,
            }
    })
}

fn urls_cover(owner: &[String], requested: &[String]) -> bool {
    requested
        .iter()
        .all(|path| owner.iter().any(|o| url_covers(o, path)))
}

fn url_covers(owner: &str, path: &str) -> bool {
    owner == path || (owner.ends_with('*') && path.starts_with(owner.trim_end_matches('*')))
}

/// Whether `owner` (any shape) covers `atom` (one of each, from [`breakdown_rule`]).
fn rule_covers(owner: &PolicyRule, atom: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, ALL) || has_all(&owner.verbs, &atom.verbs);
    let groups = has(&owner.api_groups, ALL) || has_all(&owner.api_groups, &atom.api_groups);
    let resources = resources_cover(&owner.resources, &atom.resources);
    let urls = urls_cover(&owner.non_resource_urls, &atom.non_resource_urls);
    // An owner restricted to names never covers an unrestricted request.
    let names = owner.resource_names.is_empty()
        || (!atom.resource_names.is_empty()
            && has_all(&owner.resource_names, &atom.resource_names));
    verbs && groups && resources && urls && names
}

/// kube's `CompactRules`: merges rules that differ only by verb and have exactly one group,
/// one resource, at most one resource name and no URLs; other rules pass through. Merged
/// rules keep their verbs in input order and come after the others.
pub fn compact_rules(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut compacted = Vec::with_capacity(rules.len());
    let mut simple: Vec<PolicyRule> = Vec::new();
    let mut simple_at: HashMap<(&str, &str, Option<&str>), usize> = HashMap::new();
    for rule in rules {
        let is_simple = rule.non_resource_urls.is_empty()
            && rule.resource_names.len() <= 1
            && rule.api_groups.len() == 1
            && rule.resources.len() == 1;
        if !is_simple {
            compacted.push(rule.clone());
            continue;
        }
        let key = (
            rule.api_groups[0].as_str(),
            rule.resources[0].as_str(),
            rule.resource_names.first().map(String::as_str),
        );
        match simple_at.get(&key) {
            Some(&i) => simple[i].verbs.extend(rule.verbs.iter().cloned()),
            None => {
                simple_at.insert(key, simple.len());
                simple.push(rule.clone());
            }
        }
    }
    compacted.extend(simple);
    compacted
}

impl PolicyRule {
    /// kube's `CompactString`, used in escalation messages:
    /// `{APIGroups:[""], Resources:["pods"], Verbs:["create"]}`; empty fields are left out.
    pub fn compact_string(&self) -> String {
        let fields = [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ];
        let parts: Vec<String> = fields
            .iter()
            .filter(|(_, values)| !values.is_empty())
            .map(|(label, values)| format!("{label}:{}", go_quote_list(values)))
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// kube-apiserver's refusal text for creating or updating a Role, ClusterRole or binding
/// that would grant `uncovered` (as returned by [`covers`]), which `user` does not hold:
/// the rules are compacted, printed one per line, sorted and deduplicated.
pub fn escalation_message(user: &UserInfo, uncovered: &[PolicyRule]) -> String {
    let lines: BTreeSet<String> = compact_rules(uncovered)
        .iter()
        .map(PolicyRule::compact_string)
        .collect();
    let lines: Vec<String> = lines.into_iter().collect();
    format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        go_quote(&user.name),
        go_quote_list(&user.groups),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: strings(verbs),
            api_groups: strings(groups),
            resources: strings(resources),
            ..PolicyRule::default()
        }
    }

    fn named(mut r: PolicyRule, names: &[&str]) -> PolicyRule {
        r.resource_names = strings(names);
        r
    }

    fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: strings(verbs),
            non_resource_urls: strings(urls),
            ..PolicyRule::default()
        }
    }

    #[test]
    fn breakdown_is_one_of_each_in_kube_order() {
        let r = named(
            rule(&["get", "update"], &["", "apps"], &["pods"]),
            &["a", "b"],
        );
        let atoms = breakdown_rule(&r);
        assert_eq!(atoms.len(), 8);
        assert_eq!(atoms[0], named(rule(&["get"], &[""], &["pods"]), &["a"]));
        assert_eq!(atoms[1], named(rule(&["get"], &[""], &["pods"]), &["b"]));
        assert_eq!(atoms[2], named(rule(&["update"], &[""], &["pods"]), &["a"]));
        assert_eq!(
            atoms[7],
            named(rule(&["update"], &["apps"], &["pods"]), &["b"])
        );
        let u = breakdown_rule(&urls(&["get", "post"], &["/a", "/b"]));
        assert_eq!(u[0], urls(&["get"], &["/a"]));
        assert_eq!(u[1], urls(&["post"], &["/a"]));
        assert_eq!(u[3], urls(&["post"], &["/b"]));
    }

    #[test]
    fn covers_exact_and_wildcards() {
        let owner = vec![rule(&["get", "list"], &[""], &["pods", "pods/log"])];
        assert!(covers(&owner, &[rule(&["get"], &[""], &["pods/log"])]).0);
        let (ok, missing) = covers(&owner, &[rule(&["get", "delete"], &[""], &["pods"])]);
        assert!(!ok);
        assert_eq!(missing, vec![rule(&["delete"], &[""], &["pods"])]);

        let admin = vec![rule(&["*"], &["*"], &["*"])];
        assert!(
            covers(
                &admin,
                &[rule(
                    &["escalate"],
                    &["rbac.authorization.k8s.io"],
                    &["roles"]
                )]
            )
            .0
        );
        assert!(!covers(&admin, &[urls(&["get"], &["/healthz"])]).0);

        let scale = vec![rule(&["update"], &["apps"], &["*/scale"])];
        assert!(
            covers(
                &scale,
                &[rule(&["update"], &["apps"], &["deployments/scale"])]
            )
            .0
        );
        assert!(!covers(&scale, &[rule(&["update"], &["apps"], &["deployments"])]).0);

        let url_owner = vec![urls(&["get"], &["/apis/*", "/healthz"])];
        assert!(
            covers(
                &url_owner,
                &[urls(&["get"], &["/apis/kubevirt.io", "/healthz"])]
            )
            .0
        );
        assert!(!covers(&url_owner, &[urls(&["get"], &["/healthz/etcd"])]).0);
        assert!(!covers(&url_owner, &[rule(&["get"], &[""], &["pods"])]).0);
    }

    #[test]
    fn covers_resource_names() {
        let limited = vec![named(rule(&["get"], &[""], &["secrets"]), &["a"])];
        assert!(
            covers(
                &limited,
                &[named(rule(&["get"], &[""], &["secrets"]), &["a"])]
            )
            .0
        );
        assert!(
            !covers(
                &limited,
                &[named(rule(&["get"], &[""], &["secrets"]), &["b"])]
            )
            .0
        );
        assert!(!covers(&limited, &[rule(&["get"], &[""], &["secrets"])]).0);
        let all = vec![rule(&["get"], &[""], &["secrets"])];
        assert!(covers(&all, &[named(rule(&["get"], &[""], &["secrets"]), &["b"])]).0);
    }

    #[test]
    fn covers_nothing_requested() {
        assert_eq!(covers(&[], &[]), (true, vec![]));
        // A rule with no verbs breaks down to nothing, so it asks for nothing.
        assert!(covers(&[], &[rule(&[], &[""], &["pods"])]).0);
    }

    #[test]
    fn compact_merges_verbs_of_simple_rules() {
        let missing = vec![
            rule(&["get"], &[""], &["pods"]),
            urls(&["get"], &["/x"]),
            rule(&["create"], &[""], &["pods"]),
            named(rule(&["get"], &[""], &["secrets"]), &["s"]),
            named(rule(&["update"], &[""], &["secrets"]), &["s"]),
        ];
        assert_eq!(
            compact_rules(&missing),
            vec![
                urls(&["get"], &["/x"]),
                rule(&["get", "create"], &[""], &["pods"]),
                named(rule(&["get", "update"], &[""], &["secrets"]), &["s"]),
            ]
        );
    }

    #[test]
    fn compact_string_like_kube() {
        assert_eq!(
            rule(&["create"], &[""], &["pods"]).compact_string(),
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["create"]}"#
        );
        assert_eq!(
            named(rule(&["get", "list"], &["", "apps"], &["a", "b"]), &["n"]).compact_string(),
            r#"{APIGroups:["" "apps"], Resources:["a" "b"], ResourceNames:["n"], Verbs:["get" "list"]}"#
        );
        assert_eq!(
            urls(&["get"], &["/healthz"]).compact_string(),
            r#"{NonResourceURLs:["/healthz"], Verbs:["get"]}"#
        );
    }

    #[test]
    fn escalation_message_like_kube() {
        let user = UserInfo {
            name: "alice".into(),
            groups: strings(&["system:serviceaccounts", "system:authenticated"]),
            ..UserInfo::default()
        };
        let (ok, missing) = covers(
            &[rule(&["get"], &[""], &["pods"])],
            &[
                rule(&["get", "create", "delete"], &[""], &["pods"]),
                rule(&["update"], &["kubevirt.io"], &["virtualmachines"]),
            ],
        );
        assert!(!ok);
        assert_eq!(
            escalation_message(&user, &missing),
            "user \"alice\" (groups=[\"system:serviceaccounts\" \"system:authenticated\"]) is \
             attempting to grant RBAC permissions not currently held:\n\
             {APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"create\" \"delete\"]}\n\
             {APIGroups:[\"kubevirt.io\"], Resources:[\"virtualmachines\"], Verbs:[\"update\"]}"
        );
        let nobody = UserInfo::default();
        assert!(escalation_message(&nobody, &missing).starts_with("user \"\" (groups=[]) is"));
    }
}
