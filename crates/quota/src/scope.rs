//! Quota scopes: `spec.scopes` and `spec.scopeSelector.matchExpressions` of a ResourceQuota.

use std::collections::BTreeMap;

use serde_json::Value;

/// One scope requirement (`ScopedResourceSelectorRequirement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScopeSelector {
    /// `Terminating`, `NotTerminating`, `BestEffort`, `NotBestEffort`, `PriorityClass`,
    /// `CrossNamespacePodAffinity` or `VolumeAttributesClass`.
    pub(crate) scope_name: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub(crate) operator: String,
    /// The values `In`/`NotIn` compare with.
    pub(crate) values: Vec<String>,
}

/// Every scope requirement of a quota: each of `spec.scopes` as an `Exists` requirement (as the
/// admission plugin reads them; the controller passes no operator, which only matters for the
/// selector-based scopes and is read as `Exists` here too), then `spec.scopeSelector`'s
/// expressions. Malformed entries are skipped.
pub(crate) fn quota_selectors(quota: &Value) -> Vec<ScopeSelector> {
    let mut selectors: Vec<ScopeSelector> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|scope| ScopeSelector {
            scope_name: scope.to_string(),
            operator: "Exists".to_string(),
            values: Vec::new(),
        })
        .collect();
    let expressions = quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array);
    for expr in expressions.into_iter().flatten() {
        let Some(scope_name) = expr.get("scopeName").and_then(Value::as_str) else {
            continue;
        };
        selectors.push(ScopeSelector {
            scope_name: scope_name.to_string(),
            operator: expr
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            values: expr
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        });
    }
    selectors
}

/// Label-selector semantics of a scope requirement against `labels` (the scope name mapped to the
/// object's value, when it has one). An operator upstream cannot convert is an error there; here
/// it simply matches nothing.
pub(crate) fn label_selector_matches(
    selector: &ScopeSelector,
    labels: &BTreeMap<&str, &str>,
) -> bool {
    let value = labels.get(selector.scope_name.as_str());
    let listed = |v: &&str| selector.values.iter().any(|x| x == v);
    match selector.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => !value.is_some_and(listed),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_scopes_and_selectors() {
        let quota = json!({"spec": {
            "scopes": ["BestEffort", 7],
            "scopeSelector": {"matchExpressions": [
                {"scopeName": "PriorityClass", "operator": "In", "values": ["high", 1]},
                {"operator": "In"},
            ]},
        }});
        let got = quota_selectors(&quota);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].scope_name, "BestEffort");
        assert_eq!(got[0].operator, "Exists");
        assert_eq!(got[1].values, vec!["high".to_string()]);
        let labels = BTreeMap::from([("PriorityClass", "high")]);
        assert!(label_selector_matches(&got[1], &labels));
        let odd = ScopeSelector {
            operator: "Gt".into(),
            ..got[1].clone()
        };
        assert!(!label_selector_matches(&odd, &labels));
    }
}
