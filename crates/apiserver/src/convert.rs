//! `events.k8s.io/v1` Events share storage with core `v1` Events (as in kube-apiserver):
//! stored in the core shape, converted on the way in and out.

use serde_json::{Map, Value};

use crate::registry::ResourceDef;

/// (events.k8s.io/v1 field, core/v1 field)
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

/// Whether `def` is stored under another group's key space.
pub fn is_events_v1(def: &ResourceDef) -> bool {
    def.group == "events.k8s.io" && def.plural == "events"
}

/// The group whose key space holds `def`'s objects.
pub fn storage_group(def: &ResourceDef) -> &str {
    if is_events_v1(def) {
        ""
    } else {
        &def.group
    }
}

fn rename(v: &Value, to_core: bool) -> Value {
    let Some(m) = v.as_object() else {
        return v.clone();
    };
    let mut out = Map::new();
    for (k, val) in m {
        let nk = RENAMES
            .iter()
            .find_map(|(a, b)| {
                if to_core && k == a {
                    Some(*b)
                } else if !to_core && k == b {
                    Some(*a)
                } else {
                    None
                }
            })
            .unwrap_or(k.as_str());
        out.insert(nk.to_string(), val.clone());
    }
    Value::Object(out)
}

pub fn events_v1_to_core(v: &Value) -> Value {
    let mut c = rename(v, true);
    if let Some(m) = c.as_object_mut() {
        m.insert("apiVersion".into(), Value::String("v1".into()));
    }
    c
}

pub fn core_to_events_v1(v: &Value) -> Value {
    let mut c = rename(v, false);
    if let Some(m) = c.as_object_mut() {
        m.insert(
            "apiVersion".into(),
            Value::String("events.k8s.io/v1".into()),
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "VirtualMachine", "name": "vm"}, "note": "started", "reason": "Started",
            "reportingController": "ctl", "type": "Normal"});
        let core = events_v1_to_core(&v1);
        assert_eq!(core["involvedObject"]["name"], "vm");
        assert_eq!(core["message"], "started");
        assert_eq!(core["reportingComponent"], "ctl");
        assert_eq!(core_to_events_v1(&core), v1);
    }
}
