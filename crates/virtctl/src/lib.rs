//! virtctl: the KubeVirt command line, command-compatible with upstream for the commands
//! this project supports. Talks to the API only through the kubeconfig's server (kube-rs
//! for REST, a rustls websocket for console/VNC/port-forward with upstream's
//! `plain.kubevirt.io`); `ssh`/`scp` run the local OpenSSH clients over `port-forward`.

mod client;
mod console;
mod create;
mod expose;
mod migrate;
mod portforward;
mod ssh;
mod upload;
mod vmexport;
mod vnc;
mod volumes;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use client::Session;

#[derive(Parser, Debug)]
#[command(
    name = "virtctl",
    version,
    about = "virtctl controls virtual machine related operations on your kubernetes cluster."
)]
struct Cli {
    /// Path to the kubeconfig file to use for CLI requests.
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// If present, the namespace scope for this CLI request.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// The name of the kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a virtual machine.
    Start {
        vm: String,
        /// Start the VM in a paused state (not supported yet; refused).
        #[arg(long)]
        paused: bool,
        /// Only check the request; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop a virtual machine.
    Stop {
        vm: String,
        /// Seconds the guest gets to shut down before it is stopped hard.
        #[arg(long)]
        grace_period: Option<i64>,
        /// Stop at once (with --grace-period 0 by default).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Restart a virtual machine.
    Restart {
        vm: String,
        #[arg(long)]
        grace_period: Option<i64>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Pause a virtual machine (vm) or instance (vmi).
    Pause {
        #[arg(value_parser = ["vm", "vmi"])]
        kind: String,
        name: String,
    },
    /// Unpause a virtual machine (vm) or instance (vmi).
    Unpause {
        #[arg(value_parser = ["vm", "vmi"])]
        kind: String,
        name: String,
    },
    /// Soft reboot a virtual machine instance through its guest agent (ACPI otherwise).
    SoftReboot { vmi: String },
    /// Hard reset a virtual machine instance.
    Reset { vmi: String },
    /// Connect to a serial console of a virtual machine instance (escape: ^]).
    Console {
        vmi: String,
        /// Minutes to wait for the VMI to be running.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Open a VNC connection to a virtual machine instance.
    Vnc {
        vmi: String,
        /// Only start the local proxy and print its port as JSON.
        #[arg(long)]
        proxy_only: bool,
        /// Local port for the proxy (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
    },
    /// Return guest agent info about the operating system.
    Guestosinfo { vmi: String },
    /// Return the full list of filesystems available on the guest machine.
    Fslist { vmi: String },
    /// Return the full list of users logged in on the guest machine.
    Userlist { vmi: String },
    /// Export a VM volume.
    Vmexport(vmexport::VmExportArgs),
    /// Upload a VM image to a DataVolume or PersistentVolumeClaim.
    ImageUpload(upload::UploadArgs),
    /// Expose a virtual machine instance, virtual machine, or virtual machine instance
    /// replica set as a new service.
    Expose(expose::ExposeArgs),
    /// Migrate a virtual machine.
    Migrate(migrate::MigrateArgs),
    /// Cancel migration of a virtual machine.
    MigrateCancel(migrate::MigrateCancelArgs),
    /// Add a volume to a running VM.
    Addvolume(volumes::AddVolumeArgs),
    /// Remove a volume from a running VM.
    Removevolume(volumes::RemoveVolumeArgs),
    #[command(
        about = "Forward local ports to a virtualmachine or virtualmachineinstance.",
        long_about = portforward::LONG_ABOUT
    )]
    PortForward(portforward::PortForwardArgs),
    /// Open a SSH connection to a virtual machine instance.
    Ssh(ssh::SshArgs),
    /// SCP files from/to a virtual machine instance.
    Scp(ssh::ScpArgs),
    /// Create a manifest for a resource (prints YAML).
    Create {
        #[command(subcommand)]
        what: create::CreateCmd,
    },
    /// Print the client and server version information.
    Version {
        /// Client version only (no server needed).
        #[arg(long)]
        client: bool,
    },
}

/// The `virtctl` entry point (the binary lives in the `kubevirt-rs` package, so its
/// end-to-end tests find both binaries in one build).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let connect = || {
        Session::connect(
            cli.kubeconfig.clone(),
            cli.context.clone(),
            cli.namespace.clone(),
        )
    };
    match &cli.command {
        Cmd::Create { what } => {
            print!("{}", create::render(what)?);
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Version { client: true } => {
            println!("Client Version: {}", client::client_version_info());
            return Ok(ExitCode::SUCCESS);
        }
        // Argument errors come before anything needs a kubeconfig, as upstream's.
        Cmd::PortForward(args) => {
            if let Err(e) = portforward::check_arg_count(&args.args) {
                // Upstream prints the help to stderr: stdout may be a --stdio tunnel.
                use clap::CommandFactory;
                let mut cmd = Cli::command();
                if let Some(sub) = cmd.find_subcommand_mut("port-forward") {
                    eprintln!("{e}\n{}", sub.render_help());
                }
                anyhow::bail!("argument validation failed");
            }
            portforward::parse_target(&args.args[0])?;
            portforward::parse_ports(&args.args[1..])?;
        }
        Cmd::Ssh(args) => ssh::validate_ssh(args)?,
        Cmd::Scp(args) => ssh::validate_scp(args)?,
        _ => {}
    }
    let s = connect().await?;
    match cli.command {
        Cmd::Start {
            vm,
            paused,
            dry_run,
        } => {
            if paused {
                anyhow::bail!(
                    "Error starting VirtualMachine: --paused is not supported by this server"
                );
            }
            let body = serde_json::json!({"dryRun": if dry_run { vec!["All"] } else { vec![] }});
            s.vm_action(&vm, "start", body)
                .await
                .map_err(|e| e.context("Error starting VirtualMachine"))?;
            println!("VM {vm} was scheduled to start");
        }
        Cmd::Stop {
            vm,
            grace_period,
            force,
            dry_run,
        } => {
            let grace = match (force, grace_period) {
                (_, Some(g)) => Some(g),
                (true, None) => Some(0),
                (false, None) => None,
            };
            if grace_period.is_some() && !force {
                anyhow::bail!("Can not set gracePeriod without --force=true");
            }
            let mut body =
                serde_json::json!({"dryRun": if dry_run { vec!["All"] } else { vec![] }});
            if let Some(g) = grace {
                body["gracePeriod"] = g.into();
            }
            s.vm_action(&vm, "stop", body)
                .await
                .map_err(|e| e.context("Error stopping VirtualMachine"))?;
            println!("VM {vm} was scheduled to stop");
        }
        Cmd::Restart {
            vm,
            grace_period,
            force,
            dry_run,
        } => {
            if grace_period.is_some() && !force {
                anyhow::bail!("Can not set gracePeriod without --force=true");
            }
            let mut body =
                serde_json::json!({"dryRun": if dry_run { vec!["All"] } else { vec![] }});
            if let Some(g) = grace_period.or(force.then_some(0)) {
                body["gracePeriodSeconds"] = g.into();
            }
            s.vm_action(&vm, "restart", body)
                .await
                .map_err(|e| e.context("Error restarting VirtualMachine"))?;
            println!("VM {vm} was scheduled to restart");
        }
        Cmd::Pause { kind, name } => {
            if kind == "vm" {
                s.require_vm(&name)
                    .await
                    .map_err(|e| e.context("Error pausing VirtualMachine"))?;
            }
            s.vmi_action(&name, "pause")
                .await
                .map_err(|e| e.context("Error pausing VirtualMachineInstance"))?;
            println!("VMI {name} was scheduled to pause");
        }
        Cmd::Unpause { kind, name } => {
            if kind == "vm" {
                s.require_vm(&name)
                    .await
                    .map_err(|e| e.context("Error unpausing VirtualMachine"))?;
            }
            s.vmi_action(&name, "unpause")
                .await
                .map_err(|e| e.context("Error unpausing VirtualMachineInstance"))?;
            println!("VMI {name} was scheduled to unpause");
        }
        Cmd::SoftReboot { vmi } => {
            s.vmi_action(&vmi, "softreboot")
                .await
                .map_err(|e| e.context("Error soft rebooting VirtualMachineInstance"))?;
            println!("VMI {vmi} was scheduled to softreboot");
        }
        Cmd::Reset { vmi } => {
            s.vmi_action(&vmi, "reset")
                .await
                .map_err(|e| e.context("Error resetting VirtualMachineInstance"))?;
            println!("VMI {vmi} was scheduled to reset");
        }
        Cmd::Guestosinfo { vmi } => {
            let info = s.vmi_get_json(&vmi, "guestosinfo").await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        Cmd::Fslist { vmi } => {
            let list = s.vmi_get_json(&vmi, "filesystemlist").await.map_err(|e| {
                e.context(format!(
                    "Error listing filesystems of VirtualMachineInstance {vmi}"
                ))
            })?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Cmd::Userlist { vmi } => {
            let list = s.vmi_get_json(&vmi, "userlist").await.map_err(|e| {
                e.context(format!(
                    "Error listing users of VirtualMachineInstance {vmi}"
                ))
            })?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Cmd::Console { vmi, timeout } => {
            return console::run(&s, &vmi, std::time::Duration::from_secs(timeout * 60)).await;
        }
        Cmd::Vnc {
            vmi,
            proxy_only,
            port,
            address,
        } => {
            vnc::run(&s, &vmi, proxy_only, &address, port).await?;
        }
        Cmd::Version { .. } => {
            println!("Client Version: {}", client::client_version_info());
            let server = s.server_version().await?;
            println!("Server Version: {server}");
        }
        Cmd::Vmexport(args) => vmexport::run(&s, &args).await?,
        Cmd::ImageUpload(args) => upload::run(&s, &args).await?,
        Cmd::Expose(args) => expose::run(&s, &args).await?,
        Cmd::Migrate(args) => migrate::migrate(&s, &args).await?,
        Cmd::MigrateCancel(args) => migrate::cancel(&s, &args).await?,
        Cmd::Addvolume(args) => volumes::add(&s, &args).await?,
        Cmd::Removevolume(args) => volumes::remove(&s, &args).await?,
        Cmd::PortForward(args) => portforward::run(s, &args).await?,
        Cmd::Ssh(args) => {
            let proxy = ssh::Proxy::current(cli.kubeconfig.as_deref(), cli.context.as_deref())?;
            return ssh::run_ssh(&s, &args, proxy).await;
        }
        Cmd::Scp(args) => {
            let proxy = ssh::Proxy::current(cli.kubeconfig.as_deref(), cli.context.as_deref())?;
            return ssh::run_scp(&s, &args, proxy).await;
        }
        Cmd::Create { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("virtctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn port_forward_help_is_upstreams() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("port-forward")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        assert!(help.contains("Usage can be restricted by the cluster administrator"));
        assert!(help.contains("virtctl port-forward vmi/testvmi/mynamespace udp/8080:9090"));
    }

    #[test]
    fn port_forward_flags() {
        // The form the ssh ProxyCommand uses, with the global flags before the command.
        let cli = parse(&[
            "--kubeconfig",
            "/k",
            "--context",
            "c",
            "port-forward",
            "--stdio=true",
            "vmi/x/ns",
            "22",
        ]);
        assert_eq!(cli.kubeconfig.as_deref(), Some(std::path::Path::new("/k")));
        let Cmd::PortForward(a) = cli.command else {
            panic!("not port-forward")
        };
        assert!(a.stdio);
        assert_eq!(a.address, "127.0.0.1");
        assert_eq!(a.args, ["vmi/x/ns", "22"]);

        let Cmd::PortForward(a) = parse(&[
            "port-forward",
            "--address",
            "0.0.0.0",
            "vm/x",
            "0:22",
            "udp/53",
        ])
        .command
        else {
            panic!("not port-forward")
        };
        assert!(!a.stdio);
        assert_eq!(a.address, "0.0.0.0");
        assert_eq!(a.args, ["vm/x", "0:22", "udp/53"]);

        let Cmd::PortForward(a) = parse(&["port-forward", "--stdio", "vm/x", "22"]).command else {
            panic!("not port-forward")
        };
        assert!(a.stdio);
    }

    #[test]
    fn ssh_and_scp_flags() {
        let Cmd::Ssh(a) = parse(&[
            "ssh",
            "-l",
            "cirros",
            "-i",
            "/id",
            "-p",
            "2222",
            "-t",
            "-o StrictHostKeyChecking=no",
            "--local-ssh-opts=-v",
            "-c",
            "uname -a",
            "vmi/x",
        ])
        .command
        else {
            panic!("not ssh")
        };
        assert_eq!(a.flags.username.as_deref(), Some("cirros"));
        assert_eq!(a.flags.identity_file.as_deref(), Some("/id"));
        assert_eq!(a.flags.port, 2222);
        assert_eq!(
            a.flags.local_ssh_opts,
            ["-o StrictHostKeyChecking=no", "-v"]
        );
        assert_eq!(a.command.as_deref(), Some("uname -a"));
        assert_eq!(a.target, "vmi/x");

        let Cmd::Scp(a) = parse(&[
            "scp",
            "-r",
            "--preserve",
            "--known-hosts",
            "/kh",
            "dir",
            "vmi/x/ns:dst",
        ])
        .command
        else {
            panic!("not scp")
        };
        assert!(a.recursive && a.preserve);
        assert_eq!(a.flags.port, 22);
        assert_eq!(
            (a.source.as_str(), a.destination.as_str()),
            ("dir", "vmi/x/ns:dst")
        );
    }
}
