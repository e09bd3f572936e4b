//! Random damage to valid manifests: admission and unknown-field listing never panic, every
//! rejection names a field, and accepted objects are stable under a second admission.

use kubevirt_api::admission::{admit, unknown_fields, Operation};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::Value;

fn seeds() -> Vec<(String, Value)> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubevirt-examples");
    let mut out = Vec::new();
    for name in [
        "vm-cirros.yaml",
        "vmi-fedora.yaml",
        "vmi-windows.yaml",
        "vm-alpine-datavolume.yaml",
        "vmi-replicaset-cirros.yaml",
        "migration-job.yaml",
        "vmi-sriov.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap().to_string();
            out.push((kind, v));
        }
    }
    out
}

/// Every (path, value) location in a JSON tree.
fn locations(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(path.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                path.push(Value::String(k.clone()));
                locations(x, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(Value::from(i));
                locations(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match p {
            Value::String(k) => cur.get_mut(k.as_str())?,
            Value::Number(n) => cur.get_mut(n.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(Value::from),
        "[a-zA-Z0-9 .:/_-]{0,12}".prop_map(Value::String),
        Just(Value::String("128Mi".into())),
        Just(Value::String("virtio".into())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn damaged_manifests_never_panic(seed in 0usize..64, loc in any::<prop::sample::Index>(), replacement in arb_json(), delete in any::<bool>()) {
        let seeds = seeds();
        let (kind, mut obj) = seeds[seed % seeds.len()].clone();
        let mut locs = Vec::new();
        locations(&obj, &mut Vec::new(), &mut locs);
        let path = loc.get(&locs).clone();
        if delete && !path.is_empty() {
            let (last, parent) = path.split_last().unwrap();
            if let Some(p) = get_mut(&mut obj, parent) {
                match (p, last) {
                    (Value::Object(m), Value::String(k)) => { m.remove(k); }
                    (Value::Array(a), Value::Number(n)) => { let i = n.as_u64().unwrap() as usize; if i < a.len() { a.remove(i); } }
                    _ => {}
                }
            }
        } else if let Some(slot) = get_mut(&mut obj, &path) {
            *slot = replacement;
        }
        let _ = unknown_fields(&kind, &obj);
        let mut admitted = obj.clone();
        match admit(&kind, Operation::Create, &mut admitted, None) {
            Err(errs) => {
                prop_assert!(!errs.is_empty());
                for e in &errs {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
            Ok(()) => {
                let mut again = admitted.clone();
                prop_assert!(admit(&kind, Operation::Create, &mut again, None).is_ok());
                prop_assert_eq!(&again, &admitted, "admission is idempotent");
                prop_assert!(unknown_fields(&kind, &admitted).is_empty());
            }
        }
    }
}
