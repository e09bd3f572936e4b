//! Test infrastructure: guest images built once per run, a local OCI registry.
