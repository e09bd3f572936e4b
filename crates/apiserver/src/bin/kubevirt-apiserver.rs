//! Standalone embedded API server (the `kubevirt-rs server` binary adds controllers and the
//! node agent on top). Used by the crash test and for manual use.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Embedded Kubernetes-compatible API server for kubevirt-rs")]
struct Cli {
    #[command(flatten)]
    server: kubevirt_apiserver::ServerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    kubevirt_apiserver::run_cli(cli.server).await?;
    Ok(())
}
