//! Read-side helpers: label/field selectors, the JSONPath subset printer columns use,
//! and `meta.k8s.io/v1 Table` rendering.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::registry::{ColumnSource, ResourceDef};

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (`a=b,c!=d,e in (f,g),!h,i`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '(' => {
                depth += 1;
                cur.push(ch)
            }
            ')' => {
                depth -= 1;
                cur.push(ch)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn set_values(rest: &str, sel: &str) -> ApiResult<Vec<String>> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to parse requirement: found '{rest}', expected: '(' in label selector \"{sel}\""
            ))
        })?;
    Ok(inner
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(sel: &str) -> ApiResult<LabelSelector> {
        let mut reqs = Vec::new();
        for part in split_top(sel) {
            let r = if let Some(k) = part.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Req::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Req::NotIn(k.trim().into(), set_values(rest, sel)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Req::In(k.trim().into(), set_values(rest, sel)?)
            } else if part.contains(' ') || part.contains('(') {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: invalid label selector \"{sel}\""
                )));
            } else {
                Req::Exists(part.clone())
            };
            reqs.push(r);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector (`metadata.name=x,status.phase!=Running`). Any dotted path of
/// the object may be used (kube-apiserver allows a per-kind subset; this is a superset).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    pub fn parse(sel: &str) -> ApiResult<FieldSelector> {
        let mut out = Vec::new();
        for part in sel.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v, eq) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{sel}'; can't understand '{part}'"
                )));
            };
            out.push((k.trim().to_string(), v.trim().to_string(), eq));
        }
        Ok(FieldSelector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `metadata.name=X` value, if the selector pins one name.
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _, eq)| k == "metadata.name" && *eq)
            .map(|(_, v, _)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(k, v, eq)| {
            let mut cur = obj;
            let mut found = true;
            for seg in k.split('.') {
                match cur.get(seg) {
                    Some(n) => cur = n,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            let actual = if !found || cur.is_null() {
                String::new()
            } else {
                match cur {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            };
            (actual == *v) == *eq
        })
    }
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a['x.y']`,
/// `.a[*].b`, `.a[?(@.type=='Ready')].status`. Returns every match.
pub fn jsonpath(obj: &Value, expr: &str) -> Vec<Value> {
    let expr = expr.trim();
    let expr = expr
        .strip_prefix('{')
        .and_then(|e| e.strip_suffix('}'))
        .unwrap_or(expr);
    let expr = expr.strip_prefix('$').unwrap_or(expr);
    let mut cur: Vec<Value> = vec![obj.clone()];
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if name.is_empty() {
                    continue;
                }
                cur = cur.iter().filter_map(|v| v.get(&name).cloned()).collect();
            }
            '[' => {
                let start = i + 1;
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '[' {
                        depth += 1;
                    } else if chars[i] == ']' {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
                let inner: String = chars[start..i.min(chars.len())].iter().collect();
                i += 1;
                cur = apply_bracket(&cur, inner.trim());
            }
            _ => {
                // Bare leading name (`status.phase`).
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                cur = cur.iter().filter_map(|v| v.get(&name).cloned()).collect();
            }
        }
    }
    cur.into_iter().filter(|v| !v.is_null()).collect()
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
        .unwrap_or(s)
}

fn apply_bracket(cur: &[Value], inner: &str) -> Vec<Value> {
    if inner == "*" {
        return cur
            .iter()
            .flat_map(|v| match v {
                Value::Array(a) => a.clone(),
                Value::Object(o) => o.values().cloned().collect(),
                _ => Vec::new(),
            })
            .collect();
    }
    if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        // @.path==value or @.path!=value
        let (lhs, rhs, eq) = if let Some((l, r)) = filter.split_once("==") {
            (l, r, true)
        } else if let Some((l, r)) = filter.split_once("!=") {
            (l, r, false)
        } else {
            (filter, "", true)
        };
        let lhs = lhs.trim().strip_prefix('@').unwrap_or(lhs.trim());
        let want = unquote(rhs);
        return cur
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .filter(|item| {
                let got = jsonpath(item, lhs);
                if rhs.is_empty() {
                    return !got.is_empty();
                }
                let hit = got.iter().any(|g| match g {
                    Value::String(s) => s == want,
                    other => other.to_string().as_str() == want,
                });
                hit == eq
            })
            .cloned()
            .collect();
    }
    if let Ok(idx) = inner.parse::<i64>() {
        return cur
            .iter()
            .filter_map(Value::as_array)
            .filter_map(|a| {
                let i = if idx < 0 { a.len() as i64 + idx } else { idx };
                usize::try_from(i).ok().and_then(|i| a.get(i)).cloned()
            })
            .collect();
    }
    let key = unquote(inner);
    cur.iter().filter_map(|v| v.get(key).cloned()).collect()
}

/// kube's `duration.HumanDuration`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age_of(ts: Option<&str>) -> Value {
    match ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => Value::String(human_duration(
            chrono::Utc::now().signed_duration_since(t.with_timezone(&chrono::Utc)),
        )),
        None => Value::String("<unknown>".into()),
    }
}

/// kubectl's STATUS of a pod: Terminating while deleted, else the last container's waiting
/// or terminated reason (ContainerCreating, Completed, Error), else the pod's reason
/// (a kubelet's refusal), else its phase.
fn pod_status(obj: &Value) -> String {
    let phase = obj
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    let mut status = obj
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .unwrap_or(phase)
        .to_string();
    for c in obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            status = r.to_string();
        } else if let Some(r) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            status = r.to_string();
        }
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    status
}

fn cell(def_type: &str, source: &ColumnSource, obj: &Value) -> Value {
    match source {
        ColumnSource::Age => age_of(
            obj.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str),
        ),
        ColumnSource::EventLastSeen => {
            let ts = [
                "/series/lastObservedTime",
                "/lastTimestamp",
                "/eventTime",
                "/firstTimestamp",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                obj.pointer(p)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            });
            age_of(ts)
        }
        ColumnSource::EventObject => {
            let o = &obj["involvedObject"];
            Value::String(format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or_default().to_lowercase(),
                o["name"].as_str().unwrap_or_default()
            ))
        }
        ColumnSource::PodReady => {
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(statuses.len(), Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            Value::String(format!("{ready}/{total}"))
        }
        ColumnSource::PodStatus => Value::String(pod_status(obj)),
        ColumnSource::PodRestarts => {
            let n: i64 = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .map_or(0, |cs| {
                    cs.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
                });
            Value::String(n.to_string())
        }
        ColumnSource::RoleRef => Value::String(format!(
            "{}/{}",
            obj.pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            obj.pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        )),
        ColumnSource::AccessModes(pointer) => Value::String(
            obj.pointer(pointer)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        ColumnSource::ClaimRef => match obj.pointer("/spec/claimRef") {
            Some(c) => Value::String(format!(
                "{}/{}",
                c["namespace"].as_str().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default()
            )),
            None => Value::String(String::new()),
        },
        ColumnSource::OrUnset(path) => Value::String(
            obj.pointer(&path.replace('.', "/"))
                .and_then(Value::as_str)
                .unwrap_or("<unset>")
                .to_string(),
        ),
        ColumnSource::OrFalse(path) => Value::String(
            obj.pointer(&path.replace('.', "/"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ),
        ColumnSource::QuotaUsage { limits } => {
            let hard = obj.pointer("/status/hard").and_then(Value::as_object);
            let used = obj.pointer("/status/used");
            let pairs: Vec<String> = hard
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("limits.") == *limits)
                .map(|(k, h)| {
                    let u = used
                        .and_then(|u| u.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or("0");
                    format!("{k}: {u}/{}", h.as_str().unwrap_or_default())
                })
                .collect();
            Value::String(pairs.join(", "))
        }
        ColumnSource::DataCount => {
            let n = obj["data"].as_object().map_or(0, |m| m.len())
                + obj["binaryData"].as_object().map_or(0, |m| m.len());
            json!(n)
        }
        ColumnSource::Path(p) => {
            let vals = jsonpath(obj, p);
            if vals.is_empty() {
                return Value::Null;
            }
            if def_type == "date" {
                return age_of(vals[0].as_str());
            }
            if vals.len() == 1 {
                return vals[0].clone();
            }
            Value::String(
                vals.iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        o => o.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
    }
}

/// How much of each object a Table row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// The NAME cell: the object's name, and for the default StorageClass `name (default)`
/// as kubectl's printer shows it.
fn name_cell(def: &ResourceDef, o: &Value) -> Value {
    let name = o.pointer("/metadata/name").cloned().unwrap_or(json!(""));
    let default_class = def.group == "storage.k8s.io"
        && def.kind == "StorageClass"
        && o.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
            .and_then(Value::as_str)
            == Some("true");
    match (default_class, name.as_str()) {
        (true, Some(n)) => Value::String(format!("{n} (default)")),
        _ => name,
    }
}

/// Renders objects as a `meta.k8s.io/v1 Table`.
pub fn table(
    def: &ResourceDef,
    objs: &[&Value],
    include: IncludeObject,
    with_headers: bool,
    list_meta: Value,
) -> Value {
    let mut columns = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    })];
    for c in &def.columns {
        columns.push(json!({
            "name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
            "format": c.format, "description": c.description, "priority": c.priority,
        }));
    }
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut cells = vec![name_cell(def, o)];
            for c in &def.columns {
                cells.push(cell(&c.type_, &c.source, o));
            }
            let mut row = json!({"cells": cells});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(o),
                IncludeObject::Object => row["object"] = (*o).clone(),
            }
            row
        })
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "rows": rows,
    });
    if with_headers {
        t["columnDefinitions"] = Value::Array(columns);
    } else {
        t["columnDefinitions"] = Value::Null;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("missing", false),
            ("!missing", true),
            ("app=web,tier in (front, back)", true),
            ("app=web,tier=back", false),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let o =
            json!({"metadata": {"name": "x", "namespace": "d"}, "involvedObject": {"uid": "u1"}});
        assert!(
            FieldSelector::parse("metadata.name=x,involvedObject.uid=u1")
                .unwrap()
                .matches(&o)
        );
        assert!(!FieldSelector::parse("metadata.name!=x")
            .unwrap()
            .matches(&o));
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&o));
        assert!(FieldSelector::parse("garbage").is_err());
    }

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"conditions": [
            {"type": "Paused", "status": "False"},
            {"type": "Ready", "status": "True"}],
            "interfaces": [{"ipAddress": "10.0.0.2"}]},
            "metadata": {"labels": {"a.b/c": "v"}}});
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type=='Ready')].status"),
            vec![json!("True")]
        );
        assert_eq!(
            jsonpath(&o, ".status.interfaces[0].ipAddress"),
            vec![json!("10.0.0.2")]
        );
        assert_eq!(jsonpath(&o, ".metadata.labels['a.b/c']"), vec![json!("v")]);
        assert_eq!(jsonpath(&o, ".status.conditions[*].type").len(), 2);
        assert!(jsonpath(&o, ".status.nothing").is_empty());
    }

    #[test]
    fn event_columns() {
        let def = crate::registry::builtins()
            .into_iter()
            .find(|d| d.group.is_empty() && d.plural == "events")
            .unwrap();
        let ev = json!({"metadata": {"name": "e1"}, "type": "Normal", "reason": "Started",
            "involvedObject": {"kind": "VirtualMachine", "name": "vm1"}, "message": "hi",
            "eventTime": chrono::Utc::now().to_rfc3339()});
        let t = table(&def, &[&ev], IncludeObject::None, true, json!({}));
        let cells = t["rows"][0]["cells"].as_array().unwrap();
        assert_eq!(cells[2], "Normal");
        assert_eq!(cells[4], "virtualmachine/vm1");
        assert!(cells[1].as_str().unwrap().ends_with('s'), "{cells:?}");
    }

    #[test]
    fn human_durations() {
        let d = chrono::Duration::seconds;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(150)), "2m30s");
        assert_eq!(human_duration(d(3600 * 5 + 60)), "5h1m");
        assert_eq!(human_duration(d(3600 * 30)), "30h");
        assert_eq!(human_duration(d(86400 * 3)), "3d");
    }
}
