//! `kubevirt-launcher`: runs one VirtualMachineInstance (see the crate docs).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    // A plain level (RUST_LOG=debug) rather than an EnvFilter: directive parsing pulls in the
    // regex engine, a large share of the launcher's resident memory for no benefit here.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = kubevirt_launcher::LauncherArgs::parse();
    let code = kubevirt_launcher::run(args)?;
    std::process::exit(code)
}
