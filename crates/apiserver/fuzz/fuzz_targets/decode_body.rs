//! Arbitrary bytes through the server's request-body decoding (JSON, YAML, protobuf) and,
//! for patch media types, through patch application onto a sample object, with the
//! server's limits. Besides crashes and hangs it checks that a JSON patch cannot grow an
//! object by more than its own size plus the `copy` allowance.

#![no_main]

use kubevirt_apiserver::decode;
use kubevirt_apiserver::ops::{apply_patch_type, PatchType};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const MEDIA_TYPES: [&str; 7] = [
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn sample() -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "default", "labels": {"a": "b"},
                     "finalizers": ["x", "y"]},
        "data": {"k": "v", "list": "[1, 2, 3]"},
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if body.len() > decode::MAX_BODY_BYTES {
        return;
    }
    let ct = MEDIA_TYPES[selector as usize % MEDIA_TYPES.len()];
    let Ok(value) = decode::decode_body(ct, body) else {
        return;
    };
    let Ok(pt) = PatchType::from_content_type(ct) else {
        return;
    };
    let cur = sample();
    let Ok(patched) = apply_patch_type(pt, &cur, &value) else {
        return;
    };
    if pt == PatchType::Json {
        let before = decode::json_len_within(&cur, usize::MAX).unwrap_or(0);
        let bound = before + 2 * body.len() + decode::MAX_JSON_PATCH_COPY_BYTES + 64;
        assert!(
            decode::json_len_within(&patched, bound).is_some(),
            "a JSON patch of {} bytes grew the object past {bound} bytes",
            body.len()
        );
    }
});
