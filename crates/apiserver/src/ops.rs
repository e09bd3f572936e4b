//! The verbs, independent of HTTP: create, update, patch, delete, get, list. Every
//! read-modify-write runs inside the store's writer (see `store`), so the checks
//! (resourceVersion preconditions, finalizers, admission) see the exact state they change.

use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use crate::auth::{Authorizer, UserInfo};
use crate::convert;
use crate::error::{ApiError, ApiResult, Cause};
use crate::registry::{Registry, ResourceDef, RBAC_GROUP};
use crate::schema;
use crate::store::{self, Mutation, Store, Written};

/// Create or update, for admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

/// In-process admission (mutating + validating), run on every create/update of the main
/// resource. `kubevirt` kinds get the `kubevirt-api` implementation.
pub trait Admission: Send + Sync {
    /// Applies defaults to `obj` and validates it. `Err` holds the field causes (422).
    fn admit(
        &self,
        group: &str,
        kind: &str,
        op: Operation,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), Vec<Cause>>;

    /// Paths of fields the kind does not know (beyond what the CRD schema finds).
    fn unknown_fields(&self, _group: &str, _kind: &str, _obj: &Value) -> Vec<String> {
        Vec::new()
    }
}

/// `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, Strict, got \"{other}\""
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    /// Who writes; `None` for the server's own writes (bootstrap, controllers in-process).
    /// Role and binding writes are checked against what this user holds.
    pub user: Option<Arc<UserInfo>>,
}

impl Default for WriteOpts {
    fn default() -> Self {
        WriteOpts {
            dry_run: false,
            field_validation: FieldValidation::Warn,
            user: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub propagation: Option<Propagation>,
    /// `gracePeriodSeconds`: how long a pod bound to a node gets to stop (default: its
    /// `terminationGracePeriodSeconds`); 0 deletes at once.
    pub grace_period: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> ApiResult<Self> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        match ct {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            other => Err(ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got \"{other}\")"
            ))),
        }
    }
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    /// `pods/binding`: the scheduler assigns a pod to a node.
    Binding,
    /// `pods/eviction`: a pod is deleted unless an eviction check refuses.
    Eviction,
}

/// A successful write: the object and any `Warning` headers.
#[derive(Debug)]
pub struct Outcome {
    pub obj: Arc<Value>,
    pub warnings: Vec<String>,
    pub created: bool,
    pub deleted: bool,
}

/// A check before a pod is evicted (`pods/eviction`), what a validating webhook on
/// evictions does upstream (virt-api's turns a launcher pod's eviction into a live
/// migration). `Err(message)` refuses the eviction with 429 TooManyRequests, so `kubectl
/// drain` tries again.
pub trait EvictionCheck: Send + Sync {
    fn check<'a>(
        &'a self,
        pod: &'a Value,
        eviction: &'a Value,
    ) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

pub struct Ops {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub admission: Vec<Arc<dyn Admission>>,
    pub eviction_checks: Vec<Arc<dyn EvictionCheck>>,
    /// RBAC: role and binding writes may not grant more than their author holds.
    pub authz: Arc<Authorizer>,
    /// Held by Service writes from reading what is allocated until the write is committed,
    /// so two Services never get the same cluster IP or node port.
    pub service_allocation: Arc<tokio::sync::Mutex<()>>,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

/// `metadata` as a mutable map, created if missing. A non-object `v` is replaced by an
/// empty object first (callers reject non-objects before; this keeps untrusted input from
/// ever reaching a panicking index).
fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    let Value::Object(obj) = v else {
        unreachable!("replaced by an object above")
    };
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("replaced by an object above"),
    }
}

/// Everything except metadata and status: a change here bumps `metadata.generation`.
fn spec_part(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    c
}

fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Struct holding what the writer closure needs (cheap clones).
#[derive(Clone)]
struct Ctx {
    def: Arc<ResourceDef>,
    admission: Vec<Arc<dyn Admission>>,
    authz: Arc<Authorizer>,
    opts: WriteOpts,
    warnings: Arc<Mutex<Vec<String>>>,
    /// StorageClasses, read before a claim is written (claim admission needs them).
    storage_classes: Arc<Vec<Arc<Value>>>,
    /// Cluster IPs and node ports held, read before a Service is written (only then).
    services: Arc<crate::services::Taken>,
}

impl Ctx {
    /// Unknown-field handling per `fieldValidation`: Strict rejects, Warn warns; both prune.
    fn unknown_fields(&self, obj: &mut Value) -> ApiResult<()> {
        let mut unknown = Vec::new();
        let builtin = self
            .def
            .builtin_definition
            .as_deref()
            .and_then(crate::openapi::builtin_field_schema);
        if let (Some(schema), true) = (&self.def.schema, self.def.structural) {
            unknown = schema::unknown_fields(schema, obj, false);
        } else if let Some(schema) = &builtin {
            unknown = schema::unknown_fields(schema, obj, false);
        }
        for a in &self.admission {
            for f in a.unknown_fields(&self.def.group, &self.def.kind, obj) {
                if !unknown.contains(&f) {
                    unknown.push(f);
                }
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        match self.opts.field_validation {
            FieldValidation::Strict => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                    self.def.kind,
                    self.def.version,
                    self.def.kind,
                    list.join(", ")
                )));
            }
            FieldValidation::Warn => {
                let mut w = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
                for f in &unknown {
                    w.push(format!("unknown field \"{f}\""));
                }
            }
            FieldValidation::Ignore => {}
        }
        if let (Some(schema), true) = (&self.def.schema, self.def.structural) {
            schema::unknown_fields(schema, obj, true);
        } else if let Some(schema) = &builtin {
            schema::unknown_fields(schema, obj, true);
        }
        Ok(())
    }

    fn invalid(&self, name: &str, causes: Vec<Cause>) -> ApiError {
        ApiError::invalid(&self.def.kind, &self.def.group, name, causes)
    }

    /// Admission + schema validation.
    fn admit(&self, op: Operation, obj: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        if let (true, Some(user)) = (self.def.group == RBAC_GROUP, &self.opts.user) {
            // Like kube-apiserver, writes that only touch metadata (finalizers, owners,
            // labels) are not escalation.
            let grants_unchanged = old.is_some_and(|old| {
                ["rules", "aggregationRule", "roleRef", "subjects"]
                    .iter()
                    .all(|f| old.get(f) == obj.get(f))
            });
            if !grants_unchanged {
                self.authz.check_escalation(user, &self.def.plural, obj)?;
            }
        }
        if self.def.group.is_empty() && self.def.kind == "Secret" {
            fold_secret_string_data(obj);
        }
        crate::volumes::admit(&self.def, op, obj, old, &self.storage_classes)?;
        crate::services::admit(&self.def, op, obj, old, &self.services)
            .map_err(|causes| self.invalid(&name, causes))?;
        let mut causes = Vec::new();
        if let Some(schema) = &self.def.schema {
            causes.extend(schema::validate(schema, obj));
        }
        if causes.is_empty() {
            for a in &self.admission {
                if let Err(c) = a.admit(&self.def.group, &self.def.kind, op, obj, old) {
                    causes.extend(c);
                }
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(&name, causes))
        }
    }
}

/// A Secret's `stringData` is write-only: kube-apiserver merges it into `data` (base64,
/// overriding keys of the same name) and never stores it.
fn fold_secret_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    // Malformed input is left alone for schema validation to report with its field path.
    let data_ok = map.get("data").is_none_or(Value::is_object);
    if !data_ok || !map.get("stringData").is_some_and(Value::is_object) {
        return;
    }
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = map
        .entry("data")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(data) = data.as_object_mut() {
        for (key, value) in string_data {
            let text = value
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, Value::String(encoded));
        }
    }
}

/// How a kind's names are checked: apimachinery's `ValidateNameFunc` for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// `NameIsDNSSubdomain`: most kinds, custom resources included.
    Subdomain,
    /// `NameIsDNSLabel`: namespaces.
    Label,
    /// `NameIsDNS1035Label`: services.
    Dns1035Label,
    /// `ValidatePathSegmentName`: RBAC kinds (`system:aggregate-to-edit` is a valid name).
    PathSegment,
}

impl NameRule {
    pub fn of(def: &ResourceDef) -> NameRule {
        match (def.group.as_str(), def.plural.as_str()) {
            ("", "namespaces") => NameRule::Label,
            ("", "services") => NameRule::Dns1035Label,
            (RBAC_GROUP, _) => NameRule::PathSegment,
            _ => NameRule::Subdomain,
        }
    }

    /// What is wrong with `name`, in apimachinery's words (empty when valid). With
    /// `prefix` (a `generateName`), a trailing '-' is allowed: a suffix follows it.
    pub fn problems(self, name: &str, prefix: bool) -> Vec<String> {
        let masked;
        let name = match name.strip_suffix('-') {
            Some(head) if prefix => {
                masked = format!("{head}a");
                masked.as_str()
            }
            _ => name,
        };
        let mut out = Vec::new();
        match self {
            NameRule::PathSegment => {
                if matches!(name, "." | "..") && !prefix {
                    out.push(format!("may not be '{name}'"));
                }
                for bad in ["/", "%"] {
                    if name.contains(bad) {
                        out.push(format!("may not contain '{bad}'"));
                    }
                }
            }
            NameRule::Subdomain => {
                if name.len() > 253 {
                    out.push("must be no more than 253 characters".to_string());
                }
                if !is_dns1123_subdomain(name) {
                    out.push(format!("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{LABEL_FMT}(\\.{LABEL_FMT})*')"));
                }
            }
            NameRule::Label => {
                if name.len() > 63 {
                    out.push("must be no more than 63 characters".to_string());
                }
                if !is_dns1123_label(name) {
                    if is_dns1123_subdomain(name) {
                        out.push("must not contain dots".to_string());
                    } else {
                        out.push(format!("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{LABEL_FMT}')"));
                    }
                }
            }
            NameRule::Dns1035Label => {
                if name.len() > 63 {
                    out.push("must be no more than 63 characters".to_string());
                }
                if !(is_dns1123_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())) {
                    out.push("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".to_string());
                }
            }
        }
        out
    }
}

const LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` (no length limit: callers check it).
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
}

/// Labels joined by dots: `a..b`, `.a` and `a.` are not subdomains.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(is_dns1123_label)
}

fn invalid_value(field: &str, value: &str, msg: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!(
            "Invalid value: {}: {msg}",
            serde_json::to_string(value).unwrap_or_default()
        ),
        field: field.into(),
    }
}

/// apimachinery's `ValidateObjectMeta` for names on create: `generateName` (as a prefix),
/// the name and, for namespaced kinds, the namespace (a DNS-1123 label). 422 Invalid with
/// one cause per problem.
fn validate_metadata(def: &ResourceDef, obj: &Value) -> ApiResult<()> {
    let rule = NameRule::of(def);
    let name = meta_str(obj, "name").unwrap_or_default();
    let mut causes = Vec::new();
    if let Some(gen) = meta_str(obj, "generateName").filter(|g| !g.is_empty()) {
        for msg in rule.problems(gen, true) {
            causes.push(invalid_value("metadata.generateName", gen, &msg));
        }
    }
    for msg in rule.problems(name, false) {
        causes.push(invalid_value("metadata.name", name, &msg));
    }
    if def.namespaced {
        let ns = meta_str(obj, "namespace").unwrap_or_default();
        for msg in NameRule::Label.problems(ns, false) {
            causes.push(invalid_value("metadata.namespace", ns, &msg));
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(&def.kind, &def.group, name, causes))
}

/// The update pipeline shared by PUT, PATCH and server-side apply, run in the writer.
fn finish_update(ctx: &Ctx, old: &Value, mut new: Value, part: Part) -> ApiResult<Mutation> {
    let def = &ctx.def;
    let name = meta_str(old, "name").unwrap_or_default().to_string();
    if !new.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    if let Some(rv) = meta_str(&new, "resourceVersion") {
        if !rv.is_empty() && Some(rv) != meta_str(old, "resourceVersion") {
            return Err(ApiError::modified(&def.plural, &def.group, &name));
        }
    }
    if let Some(n) = meta_str(&new, "name") {
        if n != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    if part == Part::Status {
        // The status subresource changes status only.
        let status = new.get("status").cloned();
        new = old.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    } else {
        ctx.unknown_fields(&mut new)?;
        if def.status_subresource {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    new["apiVersion"] = json!(def.api_version());
    new["kind"] = json!(def.kind);
    {
        let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
        let m = meta_mut(&mut new);
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match old_meta.get(f) {
                Some(v) => {
                    m.insert(f.into(), v.clone());
                }
                None => {
                    m.remove(f);
                }
            }
        }
        m.remove("selfLink");
        m.remove("managedFields");
        // Once deletion started, finalizers may only be removed.
        if old_meta.get("deletionTimestamp").is_some() {
            let old_f = finalizers(old);
            if let Some(Value::Array(newf)) = m.get("finalizers") {
                if let Some(added) = newf
                    .iter()
                    .filter_map(Value::as_str)
                    .find(|f| !old_f.iter().any(|o| o == f))
                {
                    return Err(ctx.invalid(
                        &name,
                        vec![Cause {
                            reason: "FieldValueForbidden".into(),
                            message: format!("Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{\"{added}\"}}"),
                            field: "metadata.finalizers".into(),
                        }],
                    ));
                }
            }
        }
    }
    if part == Part::Main {
        ctx.admit(Operation::Update, &mut new, Some(old))?;
        if def.group == "apiextensions.k8s.io" {
            crd_status(&mut new);
        }
    }
    if tracks_generation(def) && spec_part(&new) != spec_part(old) {
        let gen = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta_mut(&mut new).insert("generation".into(), json!(gen + 1));
    }
    if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&new).is_empty() {
        if ctx.opts.dry_run {
            return Ok(Mutation::Noop(new));
        }
        return Ok(Mutation::Delete);
    }
    if new == *old {
        return Ok(Mutation::Noop(new));
    }
    if ctx.opts.dry_run {
        return Ok(Mutation::Noop(new));
    }
    Ok(Mutation::Put(new))
}

/// Runs `finish_update` in the resource's own shape when it is stored in another one.
fn stored_update(
    ctx: &Ctx,
    stored: &Value,
    make_new: impl FnOnce(&Value) -> ApiResult<Value>,
    part: Part,
) -> ApiResult<Mutation> {
    if !convert::is_events_v1(&ctx.def) {
        let new = make_new(stored)?;
        return finish_update(ctx, stored, new, part);
    }
    let old = convert::core_to_events_v1(stored);
    let new = make_new(&old)?;
    Ok(match finish_update(ctx, &old, new, part)? {
        Mutation::Put(v) => Mutation::Put(convert::events_v1_to_core(&v)),
        Mutation::Noop(v) => Mutation::Noop(convert::events_v1_to_core(&v)),
        Mutation::Delete => Mutation::Delete,
    })
}

/// kube-apiserver maintains `metadata.generation` for custom resources and CRDs.
fn tracks_generation(def: &ResourceDef) -> bool {
    def.builtin_definition.is_none() || def.group == "apiextensions.k8s.io"
}

/// Marks a CRD accepted and established, as kube-apiserver's controllers do.
fn crd_status(crd: &mut Value) {
    let t = now();
    let names = crd["spec"]["names"].clone();
    crd["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": t},
        ],
        "storedVersions": crd["spec"]["versions"].as_array().map(|vs| vs.iter()
            .filter(|v| v["storage"].as_bool() == Some(true))
            .map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
    });
}

/// JSON merge patch (RFC 7386).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Strategic merge patch, simplified: a JSON merge patch that also understands the
/// `$patch: delete|replace` and `$retainKeys`/`$setElementOrder` directives by dropping
/// them. Lists are replaced whole (kubectl sends whole lists for the kinds served here).
fn strategic_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                *target = Value::Null;
                return;
            }
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut clean = patch.clone();
                strip_directives(&mut clean);
                *target = clean;
                return;
            }
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if k.starts_with('$') || k.starts_with("$setElementOrder/") {
                        continue;
                    }
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        let slot = t.entry(k.clone()).or_insert(Value::Null);
                        strategic_patch(slot, v);
                        if slot.is_null() {
                            t.remove(k);
                        }
                    }
                }
            }
        }
        other => {
            let mut clean = other.clone();
            strip_directives(&mut clean);
            *target = clean;
        }
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            for x in m.values_mut() {
                strip_directives(x);
            }
        }
        Value::Array(a) => {
            a.retain(|x| {
                !(x.get("$patch").is_some() && x.as_object().is_some_and(|o| o.len() <= 2))
            });
            for x in a {
                strip_directives(x);
            }
        }
        _ => {}
    }
}

/// Server-side apply, simplified: the applied configuration is merged into the live object
/// (fields it names win, fields it omits are kept); no managedFields tracking.
fn apply_patch(target: &mut Value, applied: &Value) {
    match applied {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    apply_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

pub fn apply_patch_type(pt: PatchType, cur: &Value, body: &Value) -> ApiResult<Value> {
    let mut doc = cur.clone();
    match pt {
        PatchType::Merge => merge_patch(&mut doc, body),
        PatchType::Strategic => strategic_patch(&mut doc, body),
        PatchType::Apply => apply_patch(&mut doc, body),
        PatchType::Json => {
            let ops = crate::decode::parse_json_patch(body)?;
            crate::decode::apply_json_patch(
                &mut doc,
                &ops,
                crate::decode::MAX_JSON_PATCH_COPY_BYTES,
            )?;
        }
    }
    Ok(doc)
}

impl Ops {
    /// The Service allocation lock, for Service writes only.
    async fn allocation_guard(&self, def: &ResourceDef) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if crate::services::is_service(def) {
            Some(self.service_allocation.lock().await)
        } else {
            None
        }
    }

    fn ctx(&self, def: &Arc<ResourceDef>, opts: WriteOpts) -> Ctx {
        Ctx {
            def: def.clone(),
            admission: self.admission.clone(),
            authz: self.authz.clone(),
            opts,
            warnings: Arc::new(Mutex::new(Vec::new())),
            storage_classes: crate::volumes::classes_for(&self.store, def),
            services: crate::services::taken_for(&self.store, def),
        }
    }

    fn key(def: &ResourceDef, ns: Option<&str>, name: &str) -> String {
        store::key(
            convert::storage_group(def),
            &def.plural,
            if def.namespaced { ns } else { None },
            name,
        )
    }

    /// Objects are stored in one version; answer in the version asked for.
    pub fn present(def: &ResourceDef, obj: &Value) -> Value {
        if convert::is_events_v1(def) {
            return convert::core_to_events_v1(obj);
        }
        let mut o = obj.clone();
        if o.is_object() {
            o["apiVersion"] = json!(def.api_version());
        }
        o
    }

    fn after_write(&self, def: &ResourceDef) {
        if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
            self.refresh_registry();
        }
    }

    pub fn refresh_registry(&self) {
        let (crds, _) = self.store.list(&store::resource_prefix(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
        ));
        self.registry.rebuild(crds.iter().map(|c| c.as_ref()));
    }

    pub fn get(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        self.store
            .get(&Self::key(def, ns, name))
            .map(|o| Self::present(def, &o))
            .ok_or_else(|| ApiError::not_found(&def.plural, &def.group, name))
    }

    fn check_namespace(&self, def: &ResourceDef, ns: Option<&str>, obj: &Value) -> ApiResult<()> {
        if !def.namespaced {
            return Ok(());
        }
        let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
        let Some(namespace) = self.store.get(&store::key("", "namespaces", None, ns)) else {
            return Err(ApiError::not_found("namespaces", "", ns));
        };
        if namespace.pointer("/metadata/deletionTimestamp").is_some() {
            let message = format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            );
            let name = meta_str(obj, "name").unwrap_or_default();
            return Err(ApiError::new(
                http::StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: {message}",
                    crate::error::qualified(&def.plural, &def.group)
                ),
            )
            .with_resource_details(name, &def.group, &def.plural)
            .with_cause(Cause {
                reason: "NamespaceTerminating".into(),
                message: format!("namespace {ns} is being terminated"),
                field: "metadata.namespace".into(),
            }));
        }
        Ok(())
    }

    pub async fn create(
        &self,
        def: &Arc<ResourceDef>,
        ns: Option<&str>,
        mut obj: Value,
        opts: WriteOpts,
    ) -> ApiResult<Outcome> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        if let Some(kind) = obj.get("kind").and_then(Value::as_str) {
            if kind != def.kind {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({}) does not match the expected API version ({})",
                    obj["apiVersion"].as_str().unwrap_or_default(),
                    def.api_version()
                )));
            }
        }
        let dry_run = opts.dry_run;
        let _allocation = self.allocation_guard(def).await;
        let ctx = self.ctx(def, opts);
        {
            let m = meta_mut(&mut obj);
            if def.namespaced {
                match (m.get("namespace").and_then(Value::as_str), ns) {
                    (Some(a), Some(b)) if !a.is_empty() && a != b => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ))
                    }
                    _ => {}
                }
                if let Some(ns) = ns {
                    m.insert("namespace".into(), json!(ns));
                }
            } else {
                m.remove("namespace");
            }
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                let gen = m
                    .get("generateName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if gen.is_empty() {
                    return Err(ApiError::invalid(
                        &def.kind,
                        &def.group,
                        "",
                        vec![Cause {
                            reason: "FieldValueRequired".into(),
                            message: "Required value: name or generateName is required".into(),
                            field: "metadata.name".into(),
                        }],
                    ));
                }
                // Like apiserver's name generator: the prefix is cut to leave room for the
                // 5-character suffix within 63 characters.
                let base: String = gen.chars().take(58).collect();
                m.insert("name".into(), json!(format!("{base}{}", random_suffix())));
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now()));
            if tracks_generation(def) {
                m.insert("generation".into(), json!(1));
            }
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                m.remove(f);
            }
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        validate_metadata(def, &obj)?;
        self.check_namespace(def, ns, &obj)?;
        obj["apiVersion"] = json!(def.api_version());
        obj["kind"] = json!(def.kind);
        ctx.unknown_fields(&mut obj)?;
        if def.status_subresource && def.builtin_definition.is_none() {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        if def.group.is_empty() && def.plural == "namespaces" {
            obj["status"] = json!({"phase": "Active"});
            if !obj.pointer("/spec/finalizers").is_some_and(Value::is_array) {
                obj["spec"]["finalizers"] = json!([NAMESPACE_FINALIZER]);
            }
            // Namespace selectors match by name through this label (kube sets it).
            let labels = meta_mut(&mut obj)
                .entry("labels")
                .or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
        if def.group.is_empty()
            && def.plural == "secrets"
            && obj
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        {
            obj["type"] = json!("Opaque");
        }
        if def.group == "apiextensions.k8s.io" {
            crd_status(&mut obj);
        }
        ctx.admit(Operation::Create, &mut obj, None)?;
        if let (true, Some(ns)) = (def.namespaced, ns) {
            // A create that will fail as AlreadyExists must not be charged to a quota.
            if self.store.get(&Self::key(def, Some(ns), &name)).is_some() {
                return Err(ApiError::already_exists(&def.plural, &def.group, &name));
            }
            crate::quota::admit_create(&self.store, def, ns, &mut obj, dry_run).await?;
        }
        if dry_run {
            return Ok(Outcome {
                obj: Arc::new(obj),
                warnings: take(&ctx.warnings),
                created: true,
                deleted: false,
            });
        }
        if convert::is_events_v1(def) {
            obj = convert::events_v1_to_core(&obj);
        }
        let key = Self::key(def, ns, &name);
        let (plural, group) = (def.plural.clone(), def.group.clone());
        let written = self
            .store
            .write(
                key,
                Box::new(move |cur| match cur {
                    Some(_) => Err(ApiError::already_exists(&plural, &group, &name)),
                    None => Ok(Mutation::Put(obj)),
                }),
            )
            .await?;
        self.after_write(def);
        Ok(self.outcome(def, written, &ctx))
    }

    fn outcome(&self, def: &ResourceDef, w: Written, ctx: &Ctx) -> Outcome {
        Outcome {
            obj: Arc::new(Self::present(def, &w.obj)),
            warnings: take(&ctx.warnings),
            created: w.created,
            deleted: w.deleted,
        }
    }

    pub async fn update(
        &self,
        def: &Arc<ResourceDef>,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        part: Part,
        opts: WriteOpts,
    ) -> ApiResult<Outcome> {
        let _allocation = self.allocation_guard(def).await;
        let ctx = self.ctx(def, opts);
        let c2 = ctx.clone();
        let (plural, group, n) = (def.plural.clone(), def.group.clone(), name.to_string());
        let written = self
            .store
            .write(
                Self::key(def, ns, name),
                Box::new(move |cur| match cur {
                    None => Err(ApiError::not_found(&plural, &group, &n)),
                    Some(old) => stored_update(&c2, old, |_| Ok(obj), part),
                }),
            )
            .await?;
        self.after_write(def);
        Ok(self.outcome(def, written, &ctx))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        def: &Arc<ResourceDef>,
        ns: Option<&str>,
        name: &str,
        pt: PatchType,
        body: Value,
        part: Part,
        opts: WriteOpts,
    ) -> ApiResult<Outcome> {
        if !body.is_object() && pt != PatchType::Json {
            return Err(ApiError::bad_request("the patch must be a JSON object"));
        }
        if pt == PatchType::Apply && self.store.get(&Self::key(def, ns, name)).is_none() {
            {
                let mut obj = body;
                meta_mut(&mut obj).insert("name".into(), json!(name));
                match self.create(def, ns, obj.clone(), opts.clone()).await {
                    Err(e) if e.reason == "AlreadyExists" => {
                        return Box::pin(self.patch(def, ns, name, pt, obj, part, opts)).await
                    }
                    other => return other,
                }
            }
        }
        let _allocation = self.allocation_guard(def).await;
        let ctx = self.ctx(def, opts);
        let c2 = ctx.clone();
        let (plural, group, n) = (def.plural.clone(), def.group.clone(), name.to_string());
        let written = self
            .store
            .write(
                Self::key(def, ns, name),
                Box::new(move |cur| match cur {
                    None => Err(ApiError::not_found(&plural, &group, &n)),
                    Some(old) => stored_update(
                        &c2,
                        old,
                        |old| {
                            let mut new = apply_patch_type(pt, old, &body)?;
                            // A patch that does not pin a resourceVersion applies to the current one.
                            if body.pointer("/metadata/resourceVersion").is_none() {
                                if let Some(rv) = old.pointer("/metadata/resourceVersion") {
                                    meta_mut(&mut new).insert("resourceVersion".into(), rv.clone());
                                }
                            }
                            Ok(new)
                        },
                        part,
                    ),
                }),
            )
            .await?;
        self.after_write(def);
        Ok(self.outcome(def, written, &ctx))
    }

    /// `POST pods/NAME/binding`: sets `spec.nodeName` (once) and the `PodScheduled`
    /// condition, as kube-apiserver's binding storage does.
    pub async fn bind(
        &self,
        def: &Arc<ResourceDef>,
        ns: &str,
        name: &str,
        body: Value,
    ) -> ApiResult<()> {
        let target = body
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "Binding",
                    "",
                    name,
                    vec![Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value".into(),
                        field: "target.name".into(),
                    }],
                )
            })?
            .to_string();
        let n = name.to_string();
        self.store
            .write(
                Self::key(def, Some(ns), name),
                Box::new(move |cur| {
                    let Some(cur) = cur else {
                        return Err(ApiError::not_found("pods", "", &n));
                    };
                    let conflict =
                        |why: String| Err(ApiError::conflict("pods/binding", "", &n, &why));
                    if cur.pointer("/metadata/deletionTimestamp").is_some() {
                        return conflict(format!(
                            "pod {n} is being deleted, cannot be assigned to a host"
                        ));
                    }
                    if let Some(node) = cur
                        .pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                    {
                        return conflict(format!("pod {n} is already assigned to node \"{node}\""));
                    }
                    let mut next = cur.clone();
                    next["spec"]["nodeName"] = json!(target);
                    let status = next
                        .as_object_mut()
                        .expect("stored objects are JSON objects")
                        .entry("status")
                        .or_insert_with(|| json!({}));
                    if !status.is_object() {
                        *status = json!({});
                    }
                    let conditions = status
                        .as_object_mut()
                        .expect("checked above")
                        .entry("conditions")
                        .or_insert_with(|| json!([]));
                    if !conditions.is_array() {
                        *conditions = json!([]);
                    }
                    let list = conditions.as_array_mut().expect("checked above");
                    list.retain(|c| c["type"] != "PodScheduled");
                    list.push(json!({"type": "PodScheduled", "status": "True",
                        "lastProbeTime": null, "lastTransitionTime": now()}));
                    Ok(Mutation::Put(next))
                }),
            )
            .await?;
        self.after_write(def);
        Ok(())
    }

    /// `POST pods/NAME/eviction` (policy/v1 `Eviction`): the checks may refuse (429);
    /// otherwise the pod is deleted with the eviction's `deleteOptions` (grace period,
    /// preconditions, dry run). PodDisruptionBudgets are not evaluated.
    pub async fn evict(
        &self,
        def: &Arc<ResourceDef>,
        ns: &str,
        name: &str,
        body: Value,
    ) -> ApiResult<()> {
        if body.get("kind").and_then(Value::as_str) != Some("Eviction") {
            return Err(ApiError::bad_request(format!(
                "the body of an eviction must be an Eviction, not {}",
                body.get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("(no kind)")
            )));
        }
        if meta_str(&body, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
        let Some(pod) = self.store.get(&Self::key(def, Some(ns), name)) else {
            return Err(ApiError::not_found("pods", "", name));
        };
        for check in &self.eviction_checks {
            if let Err(message) = check.check(&pod, &body).await {
                // As kube-apiserver passes on a webhook's refusal: the webhook's code (429,
                // so `kubectl drain` retries), no reason.
                return Err(ApiError::new(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    "",
                    message,
                ));
            }
        }
        let options = body.get("deleteOptions").cloned().unwrap_or(Value::Null);
        let opts = DeleteOpts {
            propagation: None,
            grace_period: options.get("gracePeriodSeconds").and_then(Value::as_i64),
            precondition_uid: options
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            precondition_rv: options
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
            dry_run: options
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|v| v == "All")),
        };
        self.delete(def, Some(ns), name, opts).await?;
        Ok(())
    }

    pub async fn delete(
        &self,
        def: &Arc<ResourceDef>,
        ns: Option<&str>,
        name: &str,
        opts: DeleteOpts,
    ) -> ApiResult<Outcome> {
        let key = Self::key(def, ns, name);
        let written = delete_key(&self.store, key, &def.plural, &def.group, name, opts).await?;
        self.after_write(def);
        Ok(Outcome {
            obj: Arc::new(Self::present(def, &written.obj)),
            warnings: Vec::new(),
            created: false,
            deleted: written.deleted,
        })
    }
}

fn take(w: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    std::mem::take(&mut *w.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Deletes one key, honouring finalizers and the propagation policy.
pub async fn delete_key(
    store: &Store,
    key: String,
    plural: &str,
    group: &str,
    name: &str,
    opts: DeleteOpts,
) -> ApiResult<Written> {
    let (plural, group, name) = (plural.to_string(), group.to_string(), name.to_string());
    store
        .write(
            key,
            Box::new(move |cur| {
                let Some(cur) = cur else {
                    return Err(ApiError::not_found(&plural, &group, &name));
                };
                if let Some(uid) = &opts.precondition_uid {
                    if meta_str(cur, "uid") != Some(uid.as_str()) {
                        return Err(ApiError::conflict(
                            &plural,
                            &group,
                            &name,
                            &format!(
                                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                                meta_str(cur, "uid").unwrap_or_default()
                            ),
                        ));
                    }
                }
                if let Some(rv) = &opts.precondition_rv {
                    if meta_str(cur, "resourceVersion") != Some(rv.as_str()) {
                        return Err(ApiError::conflict(
                            &plural,
                            &group,
                            &name,
                            &format!(
                                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                                meta_str(cur, "resourceVersion").unwrap_or_default()
                            ),
                        ));
                    }
                }
                if group.is_empty() && plural == "namespaces" {
                    return terminate_namespace(cur, &name, opts.dry_run);
                }
                // Pods running on a node end gracefully, as kube-apiserver's pod strategy
                // decides: marked with the time they will be gone and their grace period;
                // the node's agent deletes them (grace 0) once their containers stopped.
                let grace = if group.is_empty() && plural == "pods" {
                    pod_grace_period(cur, opts.grace_period)
                } else {
                    0
                };
                if grace > 0 {
                    let current = cur
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_i64);
                    if current.is_some_and(|c| c <= grace) {
                        return Ok(Mutation::Noop(cur.clone()));
                    }
                    let mut next = cur.clone();
                    let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
                    let m = meta_mut(&mut next);
                    m.insert(
                        "deletionTimestamp".into(),
                        json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    );
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    if opts.dry_run {
                        return Ok(Mutation::Noop(next));
                    }
                    return Ok(Mutation::Put(next));
                }
                let mut fins = finalizers(cur);
                let mut added = false;
                let extra = match opts.propagation {
                    Some(Propagation::Foreground) => Some("foregroundDeletion"),
                    Some(Propagation::Orphan) => Some("orphan"),
                    _ => None,
                };
                if let Some(f) = extra {
                    if !fins.iter().any(|x| x == f) {
                        fins.push(f.to_string());
                        added = true;
                    }
                }
                if fins.is_empty() {
                    if opts.dry_run {
                        return Ok(Mutation::Noop(cur.clone()));
                    }
                    return Ok(Mutation::Delete);
                }
                let deleting = cur.pointer("/metadata/deletionTimestamp").is_some();
                if deleting && !added {
                    return Ok(Mutation::Noop(cur.clone()));
                }
                let mut next = cur.clone();
                let m = meta_mut(&mut next);
                if !deleting {
                    m.insert("deletionTimestamp".into(), json!(now()));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                m.insert("finalizers".into(), json!(fins));
                if opts.dry_run {
                    return Ok(Mutation::Noop(next));
                }
                Ok(Mutation::Put(next))
            }),
        )
        .await
}

/// Namespaces kube-apiserver never lets go.
const UNDELETABLE_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Deleting a namespace marks it `Terminating`; the namespace controller (`gc`) deletes
/// its contents and then the namespace itself, as kube's namespace lifecycle does.
fn terminate_namespace(cur: &Value, name: &str, dry_run: bool) -> ApiResult<Mutation> {
    if UNDELETABLE_NAMESPACES.contains(&name) {
        return Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        )
        .with_resource_details(name, "", "namespaces"));
    }
    if cur.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(Mutation::Noop(cur.clone()));
    }
    let mut next = cur.clone();
    let m = meta_mut(&mut next);
    m.insert("deletionTimestamp".into(), json!(now()));
    m.insert("deletionGracePeriodSeconds".into(), json!(0));
    next["status"]["phase"] = json!("Terminating");
    if dry_run {
        return Ok(Mutation::Noop(next));
    }
    Ok(Mutation::Put(next))
}

/// The finalizer in a namespace's `spec.finalizers` that stands for "its contents are
/// not deleted yet".
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

/// The grace period a pod gets when deleted: 0 (at once) when it never reached a node or has
/// finished, else the request's `gracePeriodSeconds` or its own
/// `terminationGracePeriodSeconds` (default 30).
fn pod_grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !bound || finished {
        return 0;
    }
    requested
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0)
}

/// Removes one finalizer (used by the garbage collector). Deletes the object if it was the
/// last one and deletion was requested.
pub async fn remove_finalizer(store: &Store, key: String, finalizer: &str) -> ApiResult<Written> {
    let f = finalizer.to_string();
    store
        .write(
            key,
            Box::new(move |cur| {
                let Some(cur) = cur else {
                    return Err(ApiError::not_found("", "", ""));
                };
                let fins = finalizers(cur);
                if !fins.contains(&f) {
                    return Ok(Mutation::Noop(cur.clone()));
                }
                let rest: Vec<String> = fins.into_iter().filter(|x| *x != f).collect();
                if rest.is_empty() && cur.pointer("/metadata/deletionTimestamp").is_some() {
                    return Ok(Mutation::Delete);
                }
                let mut next = cur.clone();
                meta_mut(&mut next).insert("finalizers".into(), json!(rest));
                Ok(Mutation::Put(next))
            }),
        )
        .await
}

/// Drops the ownerReference to `owner_uid` from an object (orphaning, or an owner of several).
pub async fn remove_owner_ref(store: &Store, key: String, owner_uid: &str) -> ApiResult<Written> {
    let uid = owner_uid.to_string();
    store
        .write(
            key,
            Box::new(move |cur| {
                let Some(cur) = cur else {
                    return Err(ApiError::not_found("", "", ""));
                };
                let mut next = cur.clone();
                let m = meta_mut(&mut next);
                let Some(Value::Array(refs)) = m.get_mut("ownerReferences") else {
                    return Ok(Mutation::Noop(cur.clone()));
                };
                let before = refs.len();
                refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                if refs.len() == before {
                    return Ok(Mutation::Noop(cur.clone()));
                }
                if refs.is_empty() {
                    m.remove("ownerReferences");
                }
                Ok(Mutation::Put(next))
            }),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_apimachinery_does() {
        let sub = NameRule::Subdomain;
        assert!(sub.problems("a.b-c.d", false).is_empty());
        for bad in ["a..b", ".a", "a.", "A", "a_b", "-a", ""] {
            assert_eq!(sub.problems(bad, false).len(), 1, "{bad}");
        }
        assert_eq!(
            sub.problems(&"a".repeat(254), false),
            vec!["must be no more than 253 characters".to_string()]
        );
        assert_eq!(
            sub.problems("a..b", false)[0],
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        // A generateName may end in '-'.
        assert!(sub.problems("web-", true).is_empty());
        assert!(!sub.problems("web-", false).is_empty());
        let label = NameRule::Label;
        assert_eq!(
            label.problems("a.b", false),
            vec!["must not contain dots".to_string()]
        );
        assert_eq!(
            label.problems(&"a".repeat(64), false),
            vec!["must be no more than 63 characters".to_string()]
        );
        assert!(label.problems("Ab", false)[0].starts_with("a lowercase RFC 1123 label"));
        assert!(NameRule::Dns1035Label.problems("1a", false)[0].starts_with("a DNS-1035 label"));
        assert!(NameRule::Dns1035Label.problems("a1", false).is_empty());
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn strategic_patch_drops_directives() {
        let mut t = json!({"metadata": {"labels": {"a": "1"}}, "data": {"x": "1", "y": "2"}});
        let p = json!({"$setElementOrder/containers": [], "data": {"y": null, "z": "3"},
                       "metadata": {"labels": {"$patch": "replace", "b": "2"}}});
        strategic_patch(&mut t, &p);
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"b": "2"}}, "data": {"x": "1", "z": "3"}})
        );
    }

    #[test]
    fn json_patch_errors_are_422() {
        let cur = json!({"a": 1});
        let err = apply_patch_type(
            PatchType::Json,
            &cur,
            &json!([{"op": "test", "path": "/a", "value": 2}]),
        )
        .unwrap_err();
        assert_eq!(err.code, http::StatusCode::UNPROCESSABLE_ENTITY);
        let ok = apply_patch_type(
            PatchType::Json,
            &cur,
            &json!([{"op": "replace", "path": "/a", "value": 2}]),
        )
        .unwrap();
        assert_eq!(ok, json!({"a": 2}));
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let mut secret =
            json!({"data": {"a": "YQ==", "b": "b2xk"}, "stringData": {"b": "new", "c": "x y"}});
        fold_secret_string_data(&mut secret);
        assert_eq!(
            secret,
            json!({"data": {"a": "YQ==", "b": "bmV3", "c": "eCB5"}})
        );
        // A malformed `data` is left for schema validation to report.
        let mut bad = json!({"data": "oops", "stringData": {"c": "x"}});
        fold_secret_string_data(&mut bad);
        assert_eq!(bad, json!({"data": "oops", "stringData": {"c": "x"}}));
    }
}
