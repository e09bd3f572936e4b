//! `kubevirt-launcher`: runs one VirtualMachineInstance (see the crate docs).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = kubevirt_launcher::LauncherArgs::parse();
    kubevirt_launcher::run(args)?;
    Ok(())
}
