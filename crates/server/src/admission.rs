//! The API's defaulting and validation, plugged into the embedded API server.

use kubevirt_api::admission as api;
use kubevirt_apiserver::{Admission, Cause, Operation};
use serde_json::Value;

pub struct KubevirtAdmission;

fn op(o: Operation) -> api::Operation {
    match o {
        Operation::Create => api::Operation::Create,
        Operation::Update => api::Operation::Update,
    }
}

impl Admission for KubevirtAdmission {
    fn admit(
        &self,
        group: &str,
        kind: &str,
        o: Operation,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), Vec<Cause>> {
        if group != "kubevirt.io" || !api::KINDS.contains(&kind) {
            return Ok(());
        }
        api::admit(kind, op(o), obj, old).map_err(|errors| {
            errors
                .iter()
                .map(|e| Cause {
                    reason: e.reason().to_string(),
                    message: e.body(),
                    field: e.field.clone(),
                })
                .collect()
        })
    }

    fn unknown_fields(&self, group: &str, kind: &str, obj: &Value) -> Vec<String> {
        if group != "kubevirt.io" {
            return Vec::new();
        }
        api::unknown_fields(kind, obj)
    }
}
