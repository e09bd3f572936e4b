//! Running `ip` and `nft`.
//!
//! We call iproute2 and nftables instead of speaking netlink ourselves: the nft ruleset
//! language has no stable Rust binding, `ip netns add` is the reference for the
//! `/run/netns` bind-mount layout that `ip netns exec` expects, and every step stays
//! reproducible by hand when debugging a node. Each call is logged at debug level.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{PodNetError, Result};

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, feeding `stdin`; returns its stdout.
pub(crate) fn run_cmd(mut cmd: Command, stdin: Option<&str>) -> Result<String> {
    let command = describe(&cmd);
    tracing::debug!(%command, "run");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| PodNetError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as the program's own failure below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| PodNetError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(PodNetError::CommandFailed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...` in the host namespace.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_cmd(cmd, None)
}

/// `ip -n NETNS ARGS...`.
pub(crate) fn ip_in(netns: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.arg("-n").arg(netns).args(args);
    run_cmd(cmd, None)
}

/// Several `ip` commands in one process (`ip [-n NETNS] -batch -`), one per line; each
/// command is a list of words without spaces (names are validated before they get here).
pub(crate) fn ip_batch(netns: Option<&str>, commands: &[Vec<&str>]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.arg("-n").arg(ns);
    }
    cmd.args(["-batch", "-"]);
    let script: String = commands.iter().map(|c| c.join(" ") + "\n").collect();
    run_cmd(cmd, Some(&script)).map(|_| ())
}

/// `nft -f -` with `script`, in `netns` (a path under /run/netns) or the host.
pub(crate) fn nft(netns: Option<&Path>, script: &str) -> Result<()> {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"]);
    if let Some(ns) = netns {
        crate::netns::enter_netns_for_child(&mut cmd, ns)?;
    }
    run_cmd(cmd, Some(script)).map(|_| ())
}

/// Whether a link exists (in `netns` or the host). The host's links are read from sysfs
/// (no process to start).
pub(crate) fn link_exists(netns: Option<&str>, name: &str) -> bool {
    match netns {
        Some(ns) => ip_in(ns, &["link", "show", "dev", name]).is_ok(),
        None => Path::new("/sys/class/net").join(name).exists(),
    }
}
