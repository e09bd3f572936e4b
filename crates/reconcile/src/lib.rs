//! kubevirt-reconcile: what the controllers and the node agent share to talk to the
//! Kubernetes API through kube-rs, so neither depends on the other.
//!
//! - [`events`]: core/v1 Events about any typed object (what `kubectl describe` lists).
//! - [`finalizer`]: add or remove one finalizer without touching anyone else's.
//! - [`leader`]: leader election over a `coordination.k8s.io/v1` Lease (client-go's
//!   semantics), so of several controller replicas only one acts.
//! - [`status`]: write a typed status as a JSON patch that only touches changed fields and
//!   fails (409/422) if someone changed them meanwhile.
//! - [`ApiCallError`]: a failed API call with what was being done to which object.
//! - `fake` (feature `testing`): a scripted API server for request-level reconciler tests.

pub mod events;
#[cfg(feature = "testing")]
pub mod fake;
pub mod finalizer;
pub mod leader;
pub mod status;

use kube::Resource;

/// A call to the API server failed: what we were doing, to which object, and why.
#[derive(Debug, thiserror::Error)]
#[error("{action} {kind} {namespace}/{name}: {source}")]
pub struct ApiCallError {
    pub action: &'static str,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[source]
    pub source: Box<kube::Error>,
}

impl ApiCallError {
    /// The HTTP status code of the API's answer, if the server answered.
    pub fn code(&self) -> Option<u16> {
        match &*self.source {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        }
    }

    /// The object changed under us (409, or a JSON patch whose `test` failed, which API
    /// servers answer with 422): read it again. kube-apiserver words a JSON patch that
    /// does not apply with the generic 422 message (field errors are worded otherwise).
    pub fn is_conflict(&self) -> bool {
        match &*self.source {
            kube::Error::Api(s) if s.code == 409 => true,
            kube::Error::Api(s) if s.code == 422 => {
                s.message.contains("did not match")
                    || s.message.contains("test failed")
                    || s.message == JSON_PATCH_NOT_APPLIED
            }
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.code(), Some(404))
    }
}

/// kube-apiserver's message for a JSON patch that does not apply to the stored object.
const JSON_PATCH_NOT_APPLIED: &str =
    "the server rejected our request due to an error in our request";

/// Builds the error mapper for an API call on `obj`:
/// `api.get(..).await.map_err(api_call("getting", &vmi))`.
pub fn api_call<K: Resource<DynamicType = ()>>(
    action: &'static str,
    obj: &K,
) -> impl FnOnce(kube::Error) -> ApiCallError {
    let (kind, namespace, name) = (
        K::kind(&()).into_owned(),
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    );
    move |source| ApiCallError {
        action,
        kind,
        namespace,
        name,
        source: Box::new(source),
    }
}

/// Like [`api_call`] for an object known only by kind, namespace and name.
pub fn api_call_on(
    action: &'static str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ApiCallError {
    let (kind, namespace, name) = (kind.to_string(), namespace.to_string(), name.to_string());
    move |source| ApiCallError {
        action,
        kind,
        namespace,
        name,
        source: Box::new(source),
    }
}

/// Logs a failed reconcile: at debug level when it only lost a race with another writer
/// (it is retried at once and is routine while objects change quickly), else as a warning.
pub fn log_failure(what: &str, object: &str, error: &dyn std::error::Error, conflict: bool) {
    if conflict {
        tracing::debug!(%object, %error, "{what} hit a concurrent change; retrying");
    } else {
        tracing::warn!(%object, %error, "{what} failed");
    }
}

/// `namespace/name` of an object, for logs.
pub fn object_ref<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}
