//! Resource lists (`{"cpu": "1", "memory": "1Gi"}`) and the arithmetic apiserver's
//! `quota/v1/resources.go` does on them.
//!
//! Keys are kept sorted (a `BTreeMap`), which is also the order upstream's messages print them in
//! (`sort.Strings`, byte order).

use std::collections::{BTreeMap, BTreeSet};

use kubevirt_api::quantity::{Quantity, QuantityFormat};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Quantities by resource name.
pub type ResourceList = BTreeMap<String, Quantity>;

/// A quantity from JSON (string or number).
///
/// Malformed values count as zero: upstream never sees them because validation rejects the object
/// before (or, for stored objects, decoding fails), so any value here is a choice; zero keeps the
/// arithmetic total and never panics.
pub(crate) fn quantity(value: &Value) -> Quantity {
    Quantity::deserialize(value).unwrap_or_default()
}

/// A resource list from an optional JSON object; anything that is not an object is empty.
pub(crate) fn resource_list(value: Option<&Value>) -> ResourceList {
    value
        .and_then(Value::as_object)
        .map(|map| map.iter().map(|(k, v)| (k.clone(), quantity(v))).collect())
        .unwrap_or_default()
}

/// `1` in DecimalSI, the usage every counted object contributes.
pub(crate) fn one() -> Quantity {
    Quantity::from_int(1, QuantityFormat::DecimalSI)
}

/// `0` in DecimalSI, upstream's starting value when summing usage.
pub(crate) fn zero() -> Quantity {
    Quantity::from_int(0, QuantityFormat::DecimalSI)
}

/// `a + b`. The exact sum only fails to fit for absurd quantities (beyond 38 significant digits
/// across their scales); then the larger operand stands for the sum rather than panicking.
pub(crate) fn plus(a: &Quantity, b: &Quantity) -> Quantity {
    a.checked_add(b)
        .unwrap_or_else(|| if a >= b { a.clone() } else { b.clone() })
}

/// `a - b`, with the same overflow fallback as [`plus`] (keeping `a`).
pub(crate) fn minus(a: &Quantity, b: &Quantity) -> Quantity {
    a.checked_sub(b).unwrap_or_else(|| a.clone())
}

/// Adds `more` into `list` key by key (`addResourceList`).
pub(crate) fn add_into(list: &mut ResourceList, more: &ResourceList) {
    for (name, q) in more {
        let sum = match list.get(name) {
            Some(existing) => plus(existing, q),
            None => q.clone(),
        };
        list.insert(name.clone(), sum);
    }
}

/// Raises each value of `list` to the one in `other` when that is larger (`maxResourceList`).
pub(crate) fn max_into(list: &mut ResourceList, other: &ResourceList) {
    for (name, q) in other {
        if list.get(name).is_none_or(|existing| q > existing) {
            list.insert(name.clone(), q.clone());
        }
    }
}

/// `a + b` for every name in either (`quota.Add`).
pub(crate) fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut result = a.clone();
    add_into(&mut result, b);
    result
}

/// `a - b` per name, never below zero (`quota.SubtractWithNonNegativeResult`).
pub(crate) fn subtract_non_negative(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut result = ResourceList::new();
    for (name, q) in a {
        let diff = match b.get(name) {
            Some(other) => minus(q, other),
            None => q.clone(),
        };
        let value = if diff > zero() { diff } else { zero() };
        result.insert(name.clone(), value);
    }
    for name in b.keys() {
        result.entry(name.clone()).or_insert_with(zero);
    }
    result
}

/// Only the entries whose names are in `names` (`quota.Mask`).
pub(crate) fn mask<'a>(
    list: &ResourceList,
    names: impl IntoIterator<Item = &'a String>,
) -> ResourceList {
    let names: BTreeSet<&String> = names.into_iter().collect();
    list.iter()
        .filter(|(k, _)| names.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The entries that are not zero (`quota.RemoveZeros`).
pub(crate) fn remove_zeros(list: &ResourceList) -> ResourceList {
    list.iter()
        .filter(|(_, v)| !v.is_zero())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The JSON object apimachinery would serialise: every quantity in canonical form.
pub(crate) fn to_json(list: &ResourceList) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.canonical())))
            .collect::<Map<String, Value>>(),
    )
}

/// `name=quantity` pairs, sorted and comma separated, as the quota admission errors print them.
pub(crate) fn pretty_print(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={}", v.canonical()))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(v: Value) -> ResourceList {
        resource_list(Some(&v))
    }

    #[test]
    fn malformed_quantities_are_zero() {
        let l = list(json!({"cpu": "lots", "memory": 3, "x": {"y": 1}}));
        assert!(l["cpu"].is_zero());
        assert_eq!(l["memory"].value(), 3);
        assert!(l["x"].is_zero());
        assert!(resource_list(Some(&json!("nope"))).is_empty());
    }

    #[test]
    fn arithmetic_and_printing() {
        let a = list(json!({"cpu": "500m", "memory": "512Mi"}));
        let b = list(json!({"cpu": "1", "memory": "512Mi", "pods": "1"}));
        let sum = add(&a, &b);
        assert_eq!(pretty_print(&sum), "cpu=1500m,memory=1Gi,pods=1");
        let diff = subtract_non_negative(&a, &b);
        assert_eq!(pretty_print(&diff), "cpu=0,memory=0,pods=0");
        let mut m = a.clone();
        max_into(&mut m, &b);
        assert_eq!(
            to_json(&m),
            json!({"cpu": "1", "memory": "512Mi", "pods": "1"})
        );
        let names = ["cpu".to_string()];
        assert_eq!(pretty_print(&mask(&sum, &names)), "cpu=1500m");
    }
}
