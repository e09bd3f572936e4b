//! The `subresources.kubevirt.io/v1` API: its resources and verbs, as discovery lists them
//! (served by the embedded server, by the node agent, and by virt-api on a cluster).

use serde_json::{json, Value};

pub const GROUP: &str = "subresources.kubevirt.io";
pub const VERSION: &str = "v1";

/// Each subresource and its verbs.
pub const RESOURCES: &[(&str, &[&str])] = &[
    ("virtualmachines/start", &["update"]),
    ("virtualmachines/stop", &["update"]),
    ("virtualmachines/restart", &["update"]),
    ("virtualmachines/migrate", &["update"]),
    ("virtualmachineinstances/pause", &["update"]),
    ("virtualmachineinstances/unpause", &["update"]),
    ("virtualmachineinstances/softreboot", &["update"]),
    ("virtualmachineinstances/reset", &["update"]),
    ("virtualmachineinstances/console", &["get"]),
    ("virtualmachineinstances/vnc", &["get"]),
    ("virtualmachineinstances/guestosinfo", &["get"]),
    ("virtualmachineinstances/filesystemlist", &["get"]),
    ("virtualmachineinstances/userlist", &["get"]),
    ("virtualmachineinstances/portforward", &["get"]),
    ("virtualmachines/portforward", &["get"]),
    ("virtualmachineinstances/freeze", &["update"]),
    ("virtualmachineinstances/unfreeze", &["update"]),
    ("virtualmachineinstances/addvolume", &["update"]),
    ("virtualmachineinstances/removevolume", &["update"]),
    ("virtualmachines/addvolume", &["update"]),
    ("virtualmachines/removevolume", &["update"]),
];

/// The resources as discovery's APIResource objects.
pub fn api_resources() -> Vec<Value> {
    RESOURCES
        .iter()
        .map(|(name, verbs)| {
            json!({"name": name, "singularName": "", "namespaced": true, "kind": "", "verbs": verbs})
        })
        .collect()
}

/// `GET /apis/subresources.kubevirt.io/v1`.
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": api_resources(),
    })
}

/// `GET /apis/subresources.kubevirt.io/v1/version`.
pub fn version() -> Value {
    json!({
        "gitVersion": crate::install::VERSION,
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
        "goVersion": "", "compiler": "rustc", "platform": "linux/amd64",
    })
}
