//! Prints how long admission (decode + default + validate + re-encode) and unknown-field
//! listing take per object, over upstream's example VMs and VMIs.
//!
//! `cargo run --release -p kubevirt-api --example bench_admit`

use std::time::Instant;

use kubevirt_api::admission::{admit, unknown_fields, Operation};
use serde::Deserialize;
use serde_json::Value;

fn main() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubevirt-examples");
    let mut objs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(v) = Value::deserialize(doc) else {
                continue;
            };
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            if v["apiVersion"] == "kubevirt.io/v1"
                && (kind == "VirtualMachine" || kind == "VirtualMachineInstance")
            {
                objs.push((kind, v));
            }
        }
    }
    let rounds = 200;
    let start = Instant::now();
    let mut ok = 0usize;
    for _ in 0..rounds {
        for (kind, v) in &objs {
            let mut o = v.clone();
            if admit(kind, Operation::Create, &mut o, None).is_ok() {
                ok += 1;
            }
        }
    }
    let n = rounds * objs.len();
    let per = start.elapsed() / n as u32;
    println!(
        "admit: {n} admissions of {} example VMs/VMIs, {ok} accepted, {per:?} per object",
        objs.len()
    );
    let start = Instant::now();
    for _ in 0..rounds {
        for (kind, v) in &objs {
            assert!(unknown_fields(kind, v).is_empty());
        }
    }
    println!(
        "unknown_fields: {:?} per object",
        start.elapsed() / n as u32
    );
    let start = Instant::now();
    let yaml = kubevirt_api::crds::to_yaml();
    println!(
        "crds::to_yaml: {} bytes in {:?}",
        yaml.len(),
        start.elapsed()
    );
}
