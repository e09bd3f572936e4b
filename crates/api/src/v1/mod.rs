//! `kubevirt.io/v1` types. Field names, casing and enum values are upstream's, so manifests
//! round-trip. Every optional field is an `Option` so that `{}` and "absent" stay distinct.
//!
//! Unknown fields are tolerated by deserialisation (like client-go); the API server finds them
//! with [`crate::admission::unknown_fields`] and rejects or prunes them.

mod domain;
mod helpers;
mod migration;
mod network;
mod storage;
mod vm;
mod vmi;
pub mod well_known;

pub use domain::*;
pub use migration::*;
pub use network::*;
pub use storage::*;
pub use vm::*;
pub use vmi::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of all kinds here.
pub const GROUP: &str = "kubevirt.io";
/// API version of all kinds here.
pub const VERSION: &str = "v1";
/// `group/version`.
pub const API_VERSION: &str = "kubevirt.io/v1";

/// Status of a condition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

impl ConditionStatus {
    /// `True`/`False` from a bool.
    pub fn from_bool(b: bool) -> Self {
        if b {
            Self::True
        } else {
            Self::False
        }
    }
}

/// Schema for a free-form object kept as is (structural: preserve unknown fields).
pub(crate) fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Schema for an array of free-form objects.
pub(crate) fn preserved_array(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// Schema for embedded `metadata` (templates): an object whose fields are kept.
pub(crate) fn template_metadata(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
