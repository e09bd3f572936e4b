//! `virtctl ssh` and `virtctl scp`, as upstream (1.7+): they run the local OpenSSH `ssh` or
//! `scp` with `-o ProxyCommand=<this virtctl> port-forward --stdio=true kind/name/namespace
//! PORT`, so the SSH connection travels over the API server's port-forward websocket and no
//! SSH code lives here. The host ssh sees is `[user@]kind.name.namespace`, which keeps
//! known_hosts entries distinct per VM.
//!
//! The argument vectors are built by pure functions so tests can check them exactly.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};

use crate::client::Session;
use crate::portforward::{parse_target, Target};

/// Flags shared by `ssh` and `scp` (upstream's `AddCommandlineArgs`).
#[derive(clap::Args, Debug, Clone)]
pub struct SshFlags {
    /// --username=jdoe: Set this to the user you want to open the SSH connection as; If
    /// unassigned, $USER (else $USERNAME, $LOGNAME) applies, and if that is empty too the
    /// SSH default
    #[arg(short = 'l', long)]
    pub username: Option<String>,
    /// --identity-file=/home/jdoe/.ssh/id_rsa: Set the path to a private key used for
    /// authenticating to the server; If not provided, the client will try to use the local
    /// ssh-agent at $SSH_AUTH_SOCK
    #[arg(short = 'i', long = "identity-file")]
    pub identity_file: Option<String>,
    /// --known-hosts=/home/jdoe/.ssh/kubevirt_known_hosts: Set the path to the known_hosts
    /// file. (Accepted for compatibility; like upstream's wrapped ssh it is not passed on:
    /// use -t "-o UserKnownHostsFile=FILE".)
    #[arg(long = "known-hosts")]
    pub known_hosts: Option<String>,
    /// --port=22: Specify a port on the VM to send SSH traffic to
    #[arg(short = 'p', long, default_value_t = 22)]
    pub port: u16,
    /// --local-ssh-opts="-o StrictHostKeyChecking=no" : Additional options to be passed to
    /// the local ssh client (repeatable; each value is one argument)
    #[arg(short = 't', long = "local-ssh-opts", allow_hyphen_values = true)]
    pub local_ssh_opts: Vec<String>,
}

const SSH_EXAMPLES: &str = "Examples:
  # Connect to 'testvmi':
  virtctl ssh jdoe@vmi/testvmi [--identity-file]

  # Connect to 'testvm' in 'mynamespace' namespace
  virtctl ssh jdoe@vm/testvm/mynamespace [--identity-file]

  # Specify a username and namespace:
  virtctl ssh --namespace=mynamespace --username=jdoe vmi/testvmi";

const SCP_EXAMPLES: &str = "Examples:
  # Copy a file to the remote home folder of user jdoe
  virtctl scp myfile.bin jdoe@vmi/testvmi:myfile.bin

  # Copy a directory to the remote home folder of user jdoe
  virtctl scp --recursive ~/mydir/ jdoe@vmi/testvmi:./mydir

  # Copy a file to the remote home folder of user jdoe without specifying a file name on the target
  virtctl scp myfile.bin jdoe@vmi/testvmi:.

  # Copy a file to 'testvm' in 'mynamespace' namespace
  virtctl scp myfile.bin jdoe@vm/testvm/mynamespace:myfile.bin

  # Copy a file from the remote location to a local folder
  virtctl scp jdoe@vmi/testvmi:myfile.bin ~/myfile.bin";

#[derive(clap::Args, Debug)]
#[command(override_usage = "virtctl ssh [flags] [username@]type/name[/namespace]", after_help = SSH_EXAMPLES)]
pub struct SshArgs {
    #[command(flatten)]
    pub flags: SshFlags,
    /// --command='ls /': Specify a command to execute in the VM
    #[arg(short = 'c', long)]
    pub command: Option<String>,
    /// [username@]type/name[/namespace]
    pub target: String,
}

#[derive(clap::Args, Debug)]
#[command(
    override_usage = "virtctl scp [flags] SOURCE DESTINATION  (one of them [username@]type/name[/namespace]:path)",
    after_help = SCP_EXAMPLES
)]
pub struct ScpArgs {
    #[command(flatten)]
    pub flags: SshFlags,
    /// Recursively copy entire directories
    #[arg(
        short = 'r',
        long,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false"
    )]
    pub recursive: bool,
    /// Preserves modification times, access times, and modes from the original file.
    #[arg(
        long,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false"
    )]
    pub preserve: bool,
    pub source: String,
    pub destination: String,
}

/// How the ProxyCommand re-invokes this virtctl: the same executable, talking to the same
/// server (kubeconfig and context are passed explicitly, not left to the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub exe: String,
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
}

impl Proxy {
    /// This process's executable and the given global flags; a relative kubeconfig path is
    /// made absolute so it does not depend on where ssh runs the ProxyCommand.
    pub fn current(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Proxy> {
        let exe = std::env::current_exe().context("finding the virtctl executable")?;
        let exe = exe
            .to_str()
            .ok_or_else(|| anyhow!("the virtctl path {} is not UTF-8", exe.display()))?
            .to_string();
        let kubeconfig = kubeconfig
            .map(|p| {
                let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
                abs.to_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("the kubeconfig path {} is not UTF-8", p.display()))
            })
            .transpose()?;
        Ok(Proxy {
            exe,
            kubeconfig,
            context: context.map(str::to_string),
        })
    }
}

/// Everything the local client's command line is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    pub proxy: Proxy,
    /// The guest port the tunnel goes to.
    pub port: u16,
    pub local_ssh_opts: Vec<String>,
    /// Passed as `-i` only when given, so ssh's own defaults and the agent apply otherwise.
    pub identity_file: Option<String>,
    /// Empty or absent: no `user@` in the host name.
    pub username: Option<String>,
}

/// Quotes `s` for the POSIX shell ssh runs the ProxyCommand with: left alone when it holds
/// only characters the shell does not interpret, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:@,+=".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `ProxyCommand=...` for `-o`. ssh expands `%` tokens in it before the shell sees it, so
/// literal percent signs are doubled.
pub fn proxy_command_option(proxy: &Proxy, target: &Target, port: u16) -> String {
    let mut words = vec![proxy.exe.clone()];
    if let Some(k) = &proxy.kubeconfig {
        words.extend(["--kubeconfig".to_string(), k.clone()]);
    }
    if let Some(c) = &proxy.context {
        words.extend(["--context".to_string(), c.clone()]);
    }
    words.extend([
        "port-forward".to_string(),
        "--stdio=true".to_string(),
        format!(
            "{}/{}/{}",
            target.kind.as_str(),
            target.name,
            target.namespace
        ),
        port.to_string(),
    ]);
    let line: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    format!("ProxyCommand={}", line.join(" ").replace('%', "%%"))
}

/// `[user@]kind.name.namespace`, upstream's host name for the target.
pub fn host_name(username: Option<&str>, target: &Target) -> String {
    let user = match username {
        Some(u) if !u.is_empty() => format!("{u}@"),
        _ => String::new(),
    };
    format!(
        "{user}{}.{}.{}",
        target.kind.as_str(),
        target.name,
        target.namespace
    )
}

/// The options every client call starts with (upstream's `LocalClientCmd`).
fn common_args(opts: &ClientOptions, target: &Target) -> Vec<String> {
    let mut args = vec![
        "-o".to_string(),
        proxy_command_option(&opts.proxy, target, opts.port),
    ];
    args.extend(opts.local_ssh_opts.iter().cloned());
    if let Some(i) = &opts.identity_file {
        args.extend(["-i".to_string(), i.clone()]);
    }
    args
}

/// The arguments for `ssh`; `target` has its namespace resolved.
pub fn ssh_args(opts: &ClientOptions, target: &Target, command: Option<&str>) -> Vec<String> {
    let mut args = common_args(opts, target);
    args.push(host_name(opts.username.as_deref(), target));
    if let Some(c) = command.filter(|c| !c.is_empty()) {
        args.push(c.to_string());
    }
    args
}

/// The remote side of an scp: `[user@]type/name[/namespace]:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpRemote {
    pub target: Target,
    pub username: Option<String>,
    pub path: String,
}

/// The arguments for `scp`; `remote.target` has its namespace resolved.
pub fn scp_args(
    opts: &ClientOptions,
    remote: &ScpRemote,
    local: &str,
    to_remote: bool,
    recursive: bool,
    preserve: bool,
) -> Vec<String> {
    let mut args = common_args(opts, &remote.target);
    if recursive {
        args.push("-r".to_string());
    }
    if preserve {
        args.push("-p".to_string());
    }
    let remote_arg = format!(
        "{}:{}",
        host_name(opts.username.as_deref(), &remote.target),
        remote.path
    );
    if to_remote {
        args.extend([local.to_string(), remote_arg]);
    } else {
        args.extend([remote_arg, local.to_string()]);
    }
    args
}

/// Parses `[username@]type/name[/namespace]` as upstream: text before the first `@` is the
/// user, the part after it the target (anything after a second `@` is ignored, as upstream).
pub fn parse_ssh_target(arg: &str) -> Result<(Target, Option<String>)> {
    let parts: Vec<&str> = arg.split('@').collect();
    let (username, rest) = if parts.len() > 1 {
        if parts[0].is_empty() {
            bail!("expected username before '@'");
        }
        (Some(parts[0].to_string()), parts[1])
    } else {
        (None, arg)
    };
    if rest.is_empty() {
        bail!("expected target after '@'");
    }
    Ok((parse_target(rest)?, username))
}

/// Splits scp's SOURCE and DESTINATION into the local path, the remote side and the
/// direction (true: local to remote), as upstream: whichever holds a `:` is remote.
pub fn parse_scp_locations(source: &str, destination: &str) -> Result<(String, ScpRemote, bool)> {
    let (src_remote, dst_remote) = (source.contains(':'), destination.contains(':'));
    if src_remote && dst_remote {
        bail!(
            "copying from a remote location to another remote location is not supported: {source:?} to {destination:?}"
        );
    }
    if !src_remote && !dst_remote {
        bail!(
            "none of the two provided locations seems to be a remote location: {source:?} to {destination:?}"
        );
    }
    let (remote, local, to_remote) = if dst_remote {
        (destination, source, true)
    } else {
        (source, destination, false)
    };
    let Some((target, path)) = remote.split_once(':') else {
        bail!("invalid remote argument format: {remote:?}");
    };
    let (target, username) = parse_ssh_target(target)?;
    Ok((
        local.to_string(),
        ScpRemote {
            target,
            username,
            path: path.to_string(),
        },
        to_remote,
    ))
}

/// Upstream's default user: the first of $USER, $USERNAME, $LOGNAME that is set.
fn default_username() -> Option<String> {
    ["USER", "USERNAME", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.is_empty())
}

/// The target's user wins over `-l`, which wins over the environment's user.
fn client_options(flags: &SshFlags, proxy: Proxy, target_user: Option<String>) -> ClientOptions {
    let username = target_user
        .or_else(|| flags.username.clone())
        .or_else(default_username)
        .filter(|u| !u.is_empty());
    ClientOptions {
        proxy,
        port: flags.port,
        local_ssh_opts: flags.local_ssh_opts.clone(),
        identity_file: flags.identity_file.clone(),
        username,
    }
}

fn resolve_namespace(target: &mut Target, session: &Session) {
    if target.namespace.is_empty() {
        target.namespace = session.namespace.clone();
    }
}

/// Checks the arguments before anything needs a kubeconfig.
pub fn validate_ssh(args: &SshArgs) -> Result<()> {
    parse_ssh_target(&args.target).map(|_| ())
}

pub fn validate_scp(args: &ScpArgs) -> Result<()> {
    parse_scp_locations(&args.source, &args.destination).map(|_| ())
}

pub async fn run_ssh(session: &Session, args: &SshArgs, proxy: Proxy) -> Result<ExitCode> {
    let (mut target, user) = parse_ssh_target(&args.target)?;
    resolve_namespace(&mut target, session);
    let opts = client_options(&args.flags, proxy, user);
    run_client("ssh", ssh_args(&opts, &target, args.command.as_deref())).await
}

pub async fn run_scp(session: &Session, args: &ScpArgs, proxy: Proxy) -> Result<ExitCode> {
    let (local, mut remote, to_remote) = parse_scp_locations(&args.source, &args.destination)?;
    resolve_namespace(&mut remote.target, session);
    let opts = client_options(&args.flags, proxy, remote.username.clone());
    let argv = scp_args(
        &opts,
        &remote,
        &local,
        to_remote,
        args.recursive,
        args.preserve,
    );
    run_client("scp", argv).await
}

/// Runs the local client with this process's stdin/stdout/stderr and returns its exit code
/// (128+signal when it was killed), so scripts see ssh's own status.
async fn run_client(program: &str, args: Vec<String>) -> Result<ExitCode> {
    use std::os::unix::process::ExitStatusExt;
    let status = tokio::process::Command::new(program)
        .args(&args)
        .status()
        .await
        .with_context(|| format!("running {program}"))?;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portforward::Kind;

    fn target(kind: Kind, name: &str, namespace: &str) -> Target {
        Target {
            kind,
            name: name.into(),
            namespace: namespace.into(),
        }
    }

    fn proxy() -> Proxy {
        Proxy {
            exe: "/usr/bin/virtctl".into(),
            kubeconfig: None,
            context: None,
        }
    }

    fn opts() -> ClientOptions {
        ClientOptions {
            proxy: proxy(),
            port: 22,
            local_ssh_opts: vec![],
            identity_file: None,
            username: None,
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/virtctl"), "/usr/bin/virtctl");
        assert_eq!(shell_quote("--stdio=true"), "--stdio=true");
        assert_eq!(shell_quote("vmi/a.b/ns"), "vmi/a.b/ns");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("/tmp/my dir/kc"), "'/tmp/my dir/kc'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote("a;b"), "'a;b'");
    }

    #[test]
    fn proxy_command_as_upstream() {
        let t = target(Kind::Vmi, "testvmi", "default");
        assert_eq!(
            proxy_command_option(&proxy(), &t, 12345),
            "ProxyCommand=/usr/bin/virtctl port-forward --stdio=true vmi/testvmi/default 12345"
        );
        let p = Proxy {
            exe: "/opt/my tools/virtctl".into(),
            kubeconfig: Some("/tmp/100%/kube config".into()),
            context: Some("admin@c1".into()),
        };
        assert_eq!(
            proxy_command_option(&p, &target(Kind::Vm, "x", "ns"), 22),
            "ProxyCommand='/opt/my tools/virtctl' --kubeconfig '/tmp/100%%/kube config' \
             --context admin@c1 port-forward --stdio=true vm/x/ns 22"
        );
    }

    #[test]
    fn ssh_argv() {
        let t = target(Kind::Vmi, "testvmi", "default");
        let pc = "ProxyCommand=/usr/bin/virtctl port-forward --stdio=true vmi/testvmi/default 22";
        assert_eq!(
            ssh_args(&opts(), &t, None),
            vec!["-o", pc, "vmi.testvmi.default"]
        );
        let full = ClientOptions {
            port: 2222,
            local_ssh_opts: vec!["-o StrictHostKeyChecking=no".into(), "-v".into()],
            identity_file: Some("/k/id".into()),
            username: Some("cirros".into()),
            ..opts()
        };
        assert_eq!(
            ssh_args(&full, &t, Some("ls /")),
            vec![
                "-o",
                "ProxyCommand=/usr/bin/virtctl port-forward --stdio=true vmi/testvmi/default 2222",
                "-o StrictHostKeyChecking=no",
                "-v",
                "-i",
                "/k/id",
                "cirros@vmi.testvmi.default",
                "ls /",
            ]
        );
        let empty_user = ClientOptions {
            username: Some(String::new()),
            ..opts()
        };
        assert_eq!(
            ssh_args(&empty_user, &t, Some(""))[2],
            "vmi.testvmi.default"
        );
    }

    #[test]
    fn scp_argv() {
        let remote = ScpRemote {
            target: target(Kind::Vm, "fake-name", "fake-ns"),
            username: None,
            path: "/remote/fakepath".into(),
        };
        let pc = "ProxyCommand=/usr/bin/virtctl port-forward --stdio=true vm/fake-name/fake-ns 22";
        assert_eq!(
            scp_args(&opts(), &remote, "/local/fakepath", false, false, false),
            vec![
                "-o",
                pc,
                "vm.fake-name.fake-ns:/remote/fakepath",
                "/local/fakepath"
            ]
        );
        let with_user = ClientOptions {
            username: Some("testuser".into()),
            identity_file: Some("id".into()),
            local_ssh_opts: vec!["-O".into()],
            ..opts()
        };
        assert_eq!(
            scp_args(&with_user, &remote, "/local/fakepath", true, true, true),
            vec![
                "-o",
                pc,
                "-O",
                "-i",
                "id",
                "-r",
                "-p",
                "/local/fakepath",
                "testuser@vm.fake-name.fake-ns:/remote/fakepath",
            ]
        );
    }

    #[test]
    fn ssh_targets_as_upstream() {
        let ok = [
            ("vmi/testvmi", target(Kind::Vmi, "testvmi", ""), None),
            (
                "user@vmi/testvmi/default",
                target(Kind::Vmi, "testvmi", "default"),
                Some("user"),
            ),
            (
                "user@vm/testvm.default",
                target(Kind::Vm, "testvm.default", ""),
                Some("user"),
            ),
            (
                "user@vmi/testvmi.with.dots/default.with.dots",
                target(Kind::Vmi, "testvmi.with.dots", "default.with.dots"),
                Some("user"),
            ),
        ];
        for (input, want, user) in ok {
            let (t, u) = parse_ssh_target(input).unwrap();
            assert_eq!(t, want, "{input}");
            assert_eq!(u.as_deref(), user, "{input}");
        }
        let errors = [
            (
                "user@testvmi",
                "target must contain type and name separated by '/'",
            ),
            ("user@vmi/testvmi/", "namespace cannot be empty"),
            (
                "user@vmi/testvmi/default/something",
                "target is not valid with more than two '/'",
            ),
            (
                "user@invalid/testvmi",
                "unsupported resource type 'invalid'",
            ),
            ("user@vmi/", "name cannot be empty"),
            ("", "expected target after '@'"),
            ("/", "unsupported resource type ''"),
            ("user@//", "namespace cannot be empty"),
            (".", "target must contain type and name separated by '/'"),
            ("@/.", "expected username before '@'"),
            ("user@", "expected target after '@'"),
            ("@", "expected username before '@'"),
            ("@vmi/testvmi", "expected username before '@'"),
        ];
        for (input, want) in errors {
            assert_eq!(
                parse_ssh_target(input).unwrap_err().to_string(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn scp_locations_as_upstream() {
        let want = ScpRemote {
            target: target(Kind::Vmi, "remote", "mynamespace"),
            username: Some("cirros".into()),
            path: "myfile.yaml".into(),
        };
        assert_eq!(
            parse_scp_locations("myfile.yaml", "cirros@vmi/remote/mynamespace:myfile.yaml")
                .unwrap(),
            ("myfile.yaml".to_string(), want.clone(), true)
        );
        assert_eq!(
            parse_scp_locations("cirros@vmi/remote/mynamespace:myfile.yaml", "myfile.yaml")
                .unwrap(),
            ("myfile.yaml".to_string(), want, false)
        );
        let (_, r, _) = parse_scp_locations("vm/x:a:b", "here").unwrap();
        assert_eq!(r.path, "a:b");
        assert_eq!(r.username, None);
        assert_eq!(
            parse_scp_locations("myfile.yaml", "otherfile.yaml")
                .unwrap_err()
                .to_string(),
            "none of the two provided locations seems to be a remote location: \"myfile.yaml\" to \"otherfile.yaml\""
        );
        assert_eq!(
            parse_scp_locations("remotenode:myfile.yaml", "othernode:otherfile.yaml")
                .unwrap_err()
                .to_string(),
            "copying from a remote location to another remote location is not supported: \"remotenode:myfile.yaml\" to \"othernode:otherfile.yaml\""
        );
        assert_eq!(
            parse_scp_locations("host:f", "local")
                .unwrap_err()
                .to_string(),
            "target must contain type and name separated by '/'"
        );
    }

    #[test]
    fn username_precedence() {
        let flags = SshFlags {
            username: Some("flag".into()),
            identity_file: None,
            known_hosts: None,
            port: 22,
            local_ssh_opts: vec![],
        };
        assert_eq!(
            client_options(&flags, proxy(), Some("target".into())).username,
            Some("target".into())
        );
        assert_eq!(
            client_options(&flags, proxy(), None).username,
            Some("flag".into())
        );
        let empty = SshFlags {
            username: Some(String::new()),
            ..flags
        };
        assert_eq!(client_options(&empty, proxy(), None).username, None);
    }
}
