//! ClusterRole aggregation, as kube's clusterrole-aggregation controller does it: a
//! ClusterRole with an `aggregationRule` has its `rules` replaced by the rules of every
//! other ClusterRole its label selectors match.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::policy::{meta_str, parse_rules};
use crate::PolicyRule;

/// One entry of `aggregationRule.clusterRoleSelectors`: a `metav1.LabelSelector`.
#[derive(Debug, Default)]
struct Selector {
    match_labels: BTreeMap<String, String>,
    match_expressions: Vec<Requirement>,
}

#[derive(Debug)]
struct Requirement {
    key: String,
    op: Operator,
    values: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// An empty selector matches every role, as `LabelSelectorAsSelector` makes it.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// None for a selector kube would reject (the controller then leaves the role alone).
fn parse_selector(value: &Value) -> Option<Selector> {
    let obj = value.as_object()?;
    let mut selector = Selector::default();
    match obj.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                selector
                    .match_labels
                    .insert(k.clone(), v.as_str()?.to_string());
            }
        }
        Some(_) => return None,
    }
    match obj.get("matchExpressions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                selector.match_expressions.push(parse_requirement(item)?);
            }
        }
        Some(_) => return None,
    }
    Some(selector)
}

fn parse_requirement(value: &Value) -> Option<Requirement> {
    let key = value.get("key")?.as_str()?.to_string();
    let op = match value.get("operator")?.as_str()? {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        _ => return None,
    };
    let values = match value.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    // kube: In/NotIn need values, Exists/DoesNotExist must have none.
    let wants_values = matches!(op, Operator::In | Operator::NotIn);
    if wants_values == values.is_empty() {
        return None;
    }
    Some(Requirement { key, op, values })
}

struct Role {
    name: String,
    labels: BTreeMap<String, String>,
    rules: Vec<PolicyRule>,
    /// Some for an aggregated role whose selectors all parse.
    selectors: Option<Vec<Selector>>,
}

fn parse_cluster_role(obj: &Value) -> Option<Role> {
    let name = meta_str(obj, "name").filter(|n| !n.is_empty())?.to_string();
    let labels = match obj.get("metadata").and_then(|m| m.get("labels")) {
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    };
    let rules = parse_rules(obj.get("rules"))?;
    // Any aggregationRule object makes the role aggregated, even one without selectors
    // (kube then empties its rules).
    let selectors = match obj.get("aggregationRule") {
        Some(rule @ Value::Object(_)) => match rule.get("clusterRoleSelectors") {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(parse_selector).collect(),
            Some(_) => None,
        },
        _ => None,
    };
    Some(Role {
        name,
        labels,
        rules,
        selectors,
    })
}

/// The rules of each aggregated ClusterRole (one with an `aggregationRule`): for each
/// selector in order, the rules of every other ClusterRole it matches, roles taken by name,
/// duplicates dropped; as kube's clusterrole-aggregation controller writes them into
/// `rules`. Aggregated roles can select each other (`admin` selects `edit`, which selects
/// `view`), so this repeats until nothing changes, giving the state the controller settles
/// in. Returns `(name, rules)` for each aggregated role whose computed rules differ from
/// its current `rules`, in input order. Roles with a malformed selector are left alone, as
/// the controller does.
pub fn aggregate(cluster_roles: &[Value]) -> Vec<(String, Vec<PolicyRule>)> {
    let mut roles: Vec<Role> = Vec::new();
    for obj in cluster_roles {
        if let Some(role) = parse_cluster_role(obj) {
            // The first object with a name counts, as in `Policy::new`.
            if !roles.iter().any(|r| r.name == role.name) {
                roles.push(role);
            }
        }
    }
    let original: Vec<Vec<PolicyRule>> = roles.iter().map(|r| r.rules.clone()).collect();
    let mut by_name: Vec<usize> = (0..roles.len()).collect();
    by_name.sort_by(|&a, &b| roles[a].name.cmp(&roles[b].name));

    let aggregated: Vec<usize> = (0..roles.len())
        .filter(|&i| roles[i].selectors.is_some())
        .collect();
    // Each pass can only propagate rules one aggregation level further, so a chain of n
    // aggregated roles settles within n + 1 passes; the bound also stops pathological
    // cycles.
    for _ in 0..=aggregated.len() {
        let mut changed = false;
        for &i in &aggregated {
            let rules = aggregated_rules(&roles, &by_name, i);
            if rules != roles[i].rules {
                roles[i].rules = rules;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    aggregated
        .into_iter()
        .filter(|&i| roles[i].rules != original[i])
        .map(|i| (roles[i].name.clone(), roles[i].rules.clone()))
        .collect()
}

fn aggregated_rules(roles: &[Role], by_name: &[usize], target: usize) -> Vec<PolicyRule> {
    let mut rules: Vec<PolicyRule> = Vec::new();
    let Some(selectors) = &roles[target].selectors else {
        return rules;
    };
    for selector in selectors {
        for &j in by_name {
            if j == target || !selector.matches(&roles[j].labels) {
                continue;
            }
            for rule in &roles[j].rules {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    fn aggregated(name: &str, selectors: Value) -> Value {
        json!({"metadata": {"name": name}, "aggregationRule": {"clusterRoleSelectors": selectors}})
    }

    fn r(verb: &str, resource: &str) -> Value {
        json!({"apiGroups": [""], "resources": [resource], "verbs": [verb]})
    }

    fn rule(verb: &str, resource: &str) -> PolicyRule {
        serde_json::from_value(r(verb, resource)).unwrap()
    }

    #[test]
    fn match_labels_union_by_name_deduplicated() {
        let roles = vec![
            aggregated("agg", json!([{"matchLabels": {"x": "true"}}])),
            role(
                "b",
                json!({"x": "true"}),
                json!([r("get", "pods"), r("list", "pods")]),
            ),
            role(
                "a",
                json!({"x": "true"}),
                json!([r("get", "pods"), r("get", "secrets")]),
            ),
            role("c", json!({"x": "false"}), json!([r("delete", "pods")])),
        ];
        assert_eq!(
            aggregate(&roles),
            vec![(
                "agg".to_string(),
                vec![
                    rule("get", "pods"),
                    rule("get", "secrets"),
                    rule("list", "pods")
                ]
            )]
        );
    }

    #[test]
    fn unchanged_roles_are_not_returned() {
        let roles = vec![
            json!({
                "metadata": {"name": "agg"},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "true"}}]},
                "rules": [r("get", "pods")],
            }),
            role("a", json!({"x": "true"}), json!([r("get", "pods")])),
        ];
        assert!(aggregate(&roles).is_empty());
    }

    #[test]
    fn match_expressions() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let sel = |v: Value| parse_selector(&v).unwrap();
        let tier_in = sel(json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]}]}));
        assert!(tier_in.matches(&labels(&[("tier", "a")])));
        assert!(!tier_in.matches(&labels(&[("tier", "c")])));
        assert!(!tier_in.matches(&labels(&[])));
        let tier_not_in = sel(json!({"matchExpressions": [
            {"key": "tier", "operator": "NotIn", "values": ["a"]}]}));
        assert!(tier_not_in.matches(&labels(&[])));
        assert!(tier_not_in.matches(&labels(&[("tier", "b")])));
        assert!(!tier_not_in.matches(&labels(&[("tier", "a")])));
        let exists = sel(json!({"matchExpressions": [{"key": "k", "operator": "Exists"}]}));
        assert!(exists.matches(&labels(&[("k", "")])));
        assert!(!exists.matches(&labels(&[])));
        let absent = sel(json!({"matchExpressions": [{"key": "k", "operator": "DoesNotExist"}]}));
        assert!(absent.matches(&labels(&[])));
        assert!(!absent.matches(&labels(&[("k", "v")])));
        let both = sel(json!({"matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "Exists"}]}));
        assert!(both.matches(&labels(&[("a", "1"), ("b", "")])));
        assert!(!both.matches(&labels(&[("a", "1")])));
        assert!(sel(json!({})).matches(&labels(&[])));
        // Rejected like kube: unknown operator, In without values, Exists with values.
        for bad in [
            json!({"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["1"]}]}),
            json!({"matchExpressions": [{"key": "k", "operator": "In", "values": []}]}),
            json!({"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]}),
            json!({"matchLabels": {"k": 1}}),
            json!("nope"),
        ] {
            assert!(parse_selector(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn any_selector_matches_and_self_is_skipped() {
        let roles = vec![
            json!({
                "metadata": {"name": "agg", "labels": {"x": "true"}},
                "aggregationRule": {"clusterRoleSelectors": [
                    {"matchLabels": {"x": "true"}}, {"matchLabels": {"y": "true"}}]},
                "rules": [r("get", "self")],
            }),
            role("y", json!({"y": "true"}), json!([r("get", "y")])),
            role("x", json!({"x": "true"}), json!([r("get", "x")])),
        ];
        assert_eq!(
            aggregate(&roles),
            vec![("agg".to_string(), vec![rule("get", "x"), rule("get", "y")])]
        );
    }

    #[test]
    fn chained_aggregation_settles() {
        // top <- mid <- base, listed so that one pass is not enough.
        let roles = vec![
            aggregated("top", json!([{"matchLabels": {"to-top": "true"}}])),
            json!({
                "metadata": {"name": "mid", "labels": {"to-top": "true"}},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-mid": "true"}}]},
            }),
            role("base", json!({"to-mid": "true"}), json!([r("get", "pods")])),
        ];
        let out = aggregate(&roles);
        assert_eq!(
            out,
            vec![
                ("top".to_string(), vec![rule("get", "pods")]),
                ("mid".to_string(), vec![rule("get", "pods")]),
            ]
        );
    }

    #[test]
    fn cycles_terminate() {
        let roles = vec![
            json!({
                "metadata": {"name": "a", "labels": {"g": "1"}},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"g": "1"}}]},
                "rules": [r("get", "a")],
            }),
            json!({
                "metadata": {"name": "b", "labels": {"g": "1"}},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"g": "1"}}]},
                "rules": [r("get", "b")],
            }),
        ];
        // Terminates; whatever the result, no panic.
        let _ = aggregate(&roles);
    }

    #[test]
    fn empty_aggregation_rule_clears_rules_and_bad_selector_is_left_alone() {
        let roles = vec![
            json!({"metadata": {"name": "empty"}, "aggregationRule": {}, "rules": [r("get", "x")]}),
            json!({
                "metadata": {"name": "bad"},
                "aggregationRule": {"clusterRoleSelectors": [
                    {"matchExpressions": [{"key": "k", "operator": "Nope"}]}]},
                "rules": [r("get", "x")],
            }),
        ];
        assert_eq!(aggregate(&roles), vec![("empty".to_string(), vec![])]);
    }

    #[test]
    fn garbage_is_skipped() {
        let roles = vec![
            json!(null),
            json!("role"),
            json!({"metadata": {"name": 5}}),
            json!({"metadata": {"name": "x", "labels": "no"}, "rules": "no"}),
            json!({"metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": "no"}}),
            aggregated("ok", json!([{"matchLabels": {"l": "1"}}])),
            role(
                "src",
                json!({"l": "1", "n": 2}),
                json!([r("get", "pods"), {"verbs": "get"}, 7]),
            ),
        ];
        assert_eq!(
            aggregate(&roles),
            vec![("ok".to_string(), vec![rule("get", "pods")])]
        );
    }
}
