//! Request bodies from untrusted clients, decoded with kube-apiserver's limits: the body
//! size, the nesting depth of JSON and YAML, the number of JSON patch operations and the
//! bytes its `copy` operations may add. Everything here is synchronous and CPU-bound; the
//! HTTP layer runs it off the async runtime (`spawn_blocking`). The fuzz target in
//! `fuzz/` drives [`decode_body`] and [`apply_json_patch`] directly.

use std::io::Write;

use http::StatusCode;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// kube-apiserver's `MaxRequestBodyBytes`: 2x etcd's request limit, as JSON is larger than
/// the protobuf it stores.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Deepest nesting of arrays/objects accepted in a JSON or YAML body. serde_json and
/// serde_yaml both stop at 128 levels; YAML is checked before parsing because libyaml's
/// scanner is quadratic in the depth of flow collections.
pub const MAX_DEPTH: usize = 128;

/// kube-apiserver's `maxJSONPatchOperations`.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// kube-apiserver's `JSONPatchMaxCopyBytes`: the most a JSON patch's `copy` operations may
/// add to an object, counted in serialized JSON bytes.
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// How a body is encoded, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Protobuf,
    Cbor,
}

impl Format {
    /// JSON unless the media type says YAML, protobuf or CBOR (patch types included:
    /// `application/apply-patch+yaml` is YAML).
    pub fn from_content_type(ct: &str) -> Format {
        if ct.contains("protobuf") {
            Format::Protobuf
        } else if ct.contains("cbor") {
            Format::Cbor
        } else if ct.contains("yaml") {
            Format::Yaml
        } else {
            Format::Json
        }
    }
}

/// 413 `RequestEntityTooLarge`, worded as apimachinery's `NewRequestEntityTooLargeError`.
pub fn too_large(detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        format!("Request entity too large: {detail}"),
    )
}

/// Decodes a request body into a JSON value. An empty (or all-whitespace) body is `Null`.
/// The caller bounds `bytes` (the HTTP layer reads at most `Limits::max_body_bytes`).
pub fn decode_body(content_type: &str, bytes: &[u8]) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    match Format::from_content_type(content_type) {
        Format::Protobuf => {
            // kubectl's typed commands; anything else gets 415 and falls back to JSON.
            crate::proto::decode(bytes).map_err(|e| ApiError::unsupported_media(e.to_string()))
        }
        Format::Cbor => Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got \"{content_type}\")"
        ))),
        Format::Yaml => {
            yaml_depth_within(bytes, MAX_DEPTH)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
            serde_yaml::from_slice::<Value>(bytes)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
        }
        // serde_json parses as it reads and stops at depth 128 ("recursion limit
        // exceeded"), so a deep body fails in linear time without a pre-scan.
        Format::Json => serde_json::from_slice::<Value>(bytes).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        }),
    }
}

/// Why a YAML document was refused before parsing.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum YamlDepthError {
    #[error("exceeded max depth of {limit}")]
    TooDeep { limit: usize },
    #[error("the YAML scanner could not be initialized")]
    Init,
}

/// Runs libyaml's scanner (the one serde_yaml parses with) over `input`, token by token,
/// and stops as soon as collections nest deeper than `limit`. libyaml keeps one pending
/// simple key per flow level and checks them all for every token, so letting it parse a
/// 200 KB `{a: {a: ...` costs quadratic time (tens of seconds); stopping at the limit bounds
/// each token's work by `limit`.
pub fn yaml_depth_within(input: &[u8], limit: usize) -> Result<(), YamlDepthError> {
    use std::mem::MaybeUninit;
    use unsafe_libyaml as unsafe_yaml;

    struct Parser(Box<MaybeUninit<unsafe_yaml::yaml_parser_t>>);
    impl Drop for Parser {
        fn drop(&mut self) {
            // SAFETY: a `Parser` exists only after `yaml_parser_initialize` succeeded on it,
            // and it is deleted exactly once, here.
            unsafe { unsafe_yaml::yaml_parser_delete(self.0.as_mut_ptr()) }
        }
    }

    let mut raw = Box::new(MaybeUninit::<unsafe_yaml::yaml_parser_t>::uninit());
    // SAFETY: `raw` points to writable memory for a parser; initialize fills all of it.
    if unsafe { unsafe_yaml::yaml_parser_initialize(raw.as_mut_ptr()) }.fail {
        return Err(YamlDepthError::Init);
    }
    let mut parser = Parser(raw);
    let p = parser.0.as_mut_ptr();
    // SAFETY: the parser is initialized; `input` outlives it (both live until this function
    // returns, and `parser` is dropped first as it was declared later).
    unsafe { unsafe_yaml::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as _) };
    let mut depth = 0usize;
    loop {
        let mut token = MaybeUninit::<unsafe_yaml::yaml_token_t>::uninit();
        // SAFETY: the parser is initialized and has its input; `token` is writable and is
        // fully written by `yaml_parser_scan` (it zeroes it first, also on failure).
        let failed = unsafe { unsafe_yaml::yaml_parser_scan(p, token.as_mut_ptr()) }.fail;
        if failed {
            // Not too deep so far; serde_yaml reports the syntax error with its position
            // (re-scanning up to it costs the same bounded work).
            return Ok(());
        }
        // SAFETY: the scan succeeded, so the token is initialized; it is read once and
        // then freed once.
        let kind = unsafe {
            let t = token.as_mut_ptr();
            let kind = (*t).type_;
            unsafe_yaml::yaml_token_delete(t);
            kind
        };
        match kind {
            unsafe_yaml::YAML_STREAM_END_TOKEN => return Ok(()),
            unsafe_yaml::YAML_FLOW_SEQUENCE_START_TOKEN
            | unsafe_yaml::YAML_FLOW_MAPPING_START_TOKEN
            | unsafe_yaml::YAML_BLOCK_SEQUENCE_START_TOKEN
            | unsafe_yaml::YAML_BLOCK_MAPPING_START_TOKEN => {
                depth += 1;
                if depth > limit {
                    return Err(YamlDepthError::TooDeep { limit });
                }
            }
            unsafe_yaml::YAML_FLOW_SEQUENCE_END_TOKEN
            | unsafe_yaml::YAML_FLOW_MAPPING_END_TOKEN
            | unsafe_yaml::YAML_BLOCK_END_TOKEN => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
}

/// The length of `v` serialized as compact JSON, or `None` once it exceeds `limit` (the
/// count stops there, so this costs at most `limit` bytes of work).
pub fn json_len_within(v: &Value, limit: usize) -> Option<usize> {
    struct Counter {
        n: usize,
        limit: usize,
    }
    impl Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len();
            if self.n > self.limit {
                return Err(std::io::Error::other("limit exceeded"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter { n: 0, limit };
    serde_json::to_writer(&mut c, v).ok().map(|()| c.n)
}

/// Decodes a JSON patch (RFC 6902) body: 400 when it is not one, 413 past
/// [`MAX_JSON_PATCH_OPERATIONS`].
pub fn parse_json_patch(body: &Value) -> ApiResult<Vec<json_patch::PatchOperation>> {
    let Some(ops) = body.as_array() else {
        return Err(ApiError::bad_request(
            "invalid JSON patch: the patch must be a JSON array of operations",
        ));
    };
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(too_large(format_args!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.len()
        )));
    }
    ops.iter()
        .map(|op| {
            serde_json::from_value(op.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))
        })
        .collect()
}

/// 422 as kube-apiserver answers a JSON patch that cannot be applied.
fn patch_failed(detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("the server rejected our request due to an error in our request: {detail}"),
    )
}

/// Applies `ops` to `doc` one at a time. Before each `copy`, the size of the copied value
/// is added to a running total, and the patch fails (422, evanphx/json-patch's message) as
/// soon as the total exceeds `max_copy_bytes`: a 2 KB patch of `copy` operations doubling a
/// list cannot build a 41 MB object in memory first. On error `doc` is left part-patched;
/// callers patch a copy.
pub fn apply_json_patch(
    doc: &mut Value,
    ops: &[json_patch::PatchOperation],
    max_copy_bytes: usize,
) -> ApiResult<()> {
    let mut copied = 0usize;
    for (i, op) in ops.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(c) = op {
            if let Some(src) = doc.pointer(c.from.as_str()) {
                let room = max_copy_bytes.saturating_sub(copied);
                match json_len_within(src, room) {
                    Some(n) => copied += n,
                    None => {
                        let size = json_len_within(src, usize::MAX).unwrap_or(usize::MAX);
                        return Err(patch_failed(format_args!(
                            "Unable to complete the copy, the accumulated size increase of copy is {}, exceeding the limit {max_copy_bytes}",
                            copied.saturating_add(size)
                        )));
                    }
                }
            }
        }
        json_patch::patch_unsafe(doc, std::slice::from_ref(op)).map_err(|e| {
            // Report the operation's index in the whole patch, not in the one-op slice.
            patch_failed(format_args!(
                "operation '/{i}' failed at path '{}': {}",
                e.path, e.kind
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn fast<T>(what: &str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let r = f();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what} took {:?}",
            start.elapsed()
        );
        r
    }

    #[test]
    fn deep_yaml_is_refused_quickly() {
        for (what, body) in [
            ("flow mappings", "{a: ".repeat(50_000)),
            ("flow sequences", "[".repeat(200_000)),
            ("block sequences", "- ".repeat(100_000) + "x"),
        ] {
            let err = fast(what, || decode_body("application/yaml", body.as_bytes())).unwrap_err();
            assert_eq!(err.code, StatusCode::BAD_REQUEST, "{what}: {err:?}");
            assert_eq!(
                err.message, "error decoding YAML: exceeded max depth of 128",
                "{what}"
            );
        }
    }

    #[test]
    fn deep_json_is_refused_quickly() {
        let body = "[".repeat(200_000);
        let err = fast("json", || decode_body("application/json", body.as_bytes())).unwrap_err();
        assert_eq!(err.code, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("recursion limit exceeded"), "{err:?}");
    }

    #[test]
    fn ordinary_yaml_and_json_decode() {
        let y = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: |\n    [[[[[\n";
        let v = decode_body("application/yaml", y.as_bytes()).unwrap();
        assert_eq!(v["data"]["k"], "[[[[[\n");
        let nested = "[".repeat(100) + &"]".repeat(100);
        assert!(decode_body("application/yaml", nested.as_bytes()).is_ok());
        assert!(decode_body("application/json", nested.as_bytes()).is_ok());
        assert_eq!(
            decode_body("application/json", b" \n").unwrap(),
            Value::Null
        );
    }

    #[test]
    fn yaml_alias_bombs_are_refused() {
        let mut y = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
        for (n, p) in ["b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            y += &format!("{n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n");
        }
        let err = fast("aliases", || decode_body("application/yaml", y.as_bytes())).unwrap_err();
        assert_eq!(err.code, StatusCode::BAD_REQUEST, "{err:?}");
    }

    #[test]
    fn json_patch_copies_are_bounded() {
        let mut doc = json!({"data": {"a": "x".repeat(1000)}});
        let ops: Vec<Value> = (0..5000)
            .map(|i| json!({"op": "copy", "from": "/data/a", "path": format!("/data/k{i}")}))
            .collect();
        let ops = parse_json_patch(&Value::Array(ops)).unwrap();
        let err = apply_json_patch(&mut doc, &ops, MAX_JSON_PATCH_COPY_BYTES).unwrap_err();
        assert_eq!(err.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            err.message
                .contains("Unable to complete the copy, the accumulated size increase of copy is"),
            "{}",
            err.message
        );
        assert!(
            err.message.ends_with("exceeding the limit 3145728"),
            "{}",
            err.message
        );
        // Doubling a list: each copy is as large as everything before it.
        let mut doc = json!({"l": ["x".repeat(100)]});
        let ops: Vec<Value> = (0..30)
            .map(|_| json!({"op": "copy", "from": "/l", "path": "/l/-"}))
            .collect();
        let ops = parse_json_patch(&Value::Array(ops)).unwrap();
        let err = fast("doubling", || {
            apply_json_patch(&mut doc, &ops, MAX_JSON_PATCH_COPY_BYTES)
        })
        .unwrap_err();
        assert_eq!(err.code, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn json_patch_operation_limit_is_413() {
        let ops =
            vec![json!({"op": "test", "path": "/a", "value": 1}); MAX_JSON_PATCH_OPERATIONS + 1];
        let err = parse_json_patch(&Value::Array(ops)).unwrap_err();
        assert_eq!(err.code, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            err.message,
            "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
    }

    #[test]
    fn json_patch_errors_name_the_operation() {
        let mut doc = json!({"a": 1});
        let ops = parse_json_patch(&json!([
            {"op": "replace", "path": "/a", "value": 2},
            {"op": "test", "path": "/a", "value": 3},
        ]))
        .unwrap();
        let err = apply_json_patch(&mut doc, &ops, MAX_JSON_PATCH_COPY_BYTES).unwrap_err();
        assert_eq!(
            err.message,
            "the server rejected our request due to an error in our request: operation '/1' failed at path '/a': value did not match"
        );
    }

    #[test]
    fn json_len_stops_at_the_limit() {
        let v = json!({"a": "x".repeat(100)});
        assert_eq!(json_len_within(&v, 1000), Some(v.to_string().len()));
        assert_eq!(json_len_within(&v, 10), None);
    }
}
