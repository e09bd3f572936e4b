//! `virtctl port-forward type/name[/namespace] [protocol/]localPort[:targetPort]...`, as
//! upstream: every local TCP connection (or UDP client address) gets its own
//! `portforward/{port}/{protocol}` websocket on the VM or VMI, whose binary frames carry
//! the raw stream (one frame per datagram for UDP). `--stdio` forwards one port over
//! stdin/stdout instead, which is what `virtctl ssh`/`scp` use as ssh's ProxyCommand.
//!
//! Everything but the forwarded bytes goes to stderr, so stdio mode keeps stdout clean.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Session, Ws};

/// Upstream's `Long` text (without the legacy `type/name.namespace` paragraph: upstream's
/// parser no longer does that since 1.7 even though its help still mentions it).
pub const LONG_ABOUT: &str = "Forward local ports to a virtualmachine or virtualmachineinstance.

The target argument supports the syntax target/name[/namespace] with /namespace as optional field.
Kind accepts any of vmi, vmis, vm, vms, virtualmachineinstance, virtualmachine, virtualmachineinstances, virtualmachines.

The port argument supports the syntax protocol/localPort:targetPort with protocol/ and :targetPort as optional fields.
Protocol supports TCP (default) and UDP.

Portforwards get established over the Kubernetes control-plane using websocket streams.
Usage can be restricted by the cluster administrator through the /portforward subresource.";

pub const EXAMPLES: &str = "Examples:
  # Forward the local port 8080 to the vmi port:
  virtctl port-forward vmi/testvmi 8080

  # Forward the local port 8080 to the vmi port 9090:
  virtctl port-forward vmi/testvmi 8080:9090

  # Forward the local port 8080 to the vmi port 9090 as a UDP connection:
  virtctl port-forward vmi/testvmi/mynamespace udp/8080:9090

  # Forward the local port 8080 to the vm port
  virtctl port-forward vm/testvm 8080

  # Forward the local port 8080 to the vm port in mynamespace
  virtctl port-forward vm/testvm/mynamespace 8080

  # Note: virtctl port-forward sends all traffic over the Kubernetes API Server.
  # This means any traffic will add additional pressure to the control plane.
  # For continous traffic intensive connections, consider using a dedicated Kubernetes Service.";

#[derive(clap::Args, Debug)]
#[command(
    override_usage = "virtctl port-forward type/name[/namespace] [protocol/]localPort[:targetPort]...",
    after_help = EXAMPLES
)]
pub struct PortForwardArgs {
    /// --stdio=true: Set this to true to forward the tunnel to stdout/stdin; Only works
    /// with a single port
    #[arg(
        long,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false"
    )]
    pub stdio: bool,
    /// --address=: Set this to the address the local ports should be opened on
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// type/name[/namespace] followed by [protocol/]localPort[:targetPort]...
    #[arg(value_name = "ARGS")]
    pub args: Vec<String>,
}

/// What a target names; upstream normalises every spelling to `vm` or `vmi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vm,
    Vmi,
}

impl Kind {
    /// The short name upstream uses in ssh host names and ProxyCommands.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vm => "vm",
            Kind::Vmi => "vmi",
        }
    }

    /// The API resource whose `portforward` subresource is opened.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Vm => "virtualmachines",
            Kind::Vmi => "virtualmachineinstances",
        }
    }
}

/// A parsed `type/name[/namespace]`; `namespace` is empty when the target names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub name: String,
    pub namespace: String,
}

fn normalize_kind(kind: &str) -> Result<Kind> {
    match kind.to_lowercase().as_str() {
        "vm" | "vms" | "virtualmachine" | "virtualmachines" => Ok(Kind::Vm),
        "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => Ok(Kind::Vmi),
        _ => bail!("unsupported resource type '{kind}'"),
    }
}

/// Parses `type/name[/namespace]` with upstream's checks in upstream's order, so the same
/// input gets the same error message. Dots are part of the name (upstream 1.7+).
pub fn parse_target(target: &str) -> Result<Target> {
    if target.is_empty() {
        bail!("target cannot be empty");
    }
    let parts: Vec<&str> = target.split('/').collect();
    let (kind, name, namespace) = match parts.as_slice() {
        [_] => bail!("target must contain type and name separated by '/'"),
        [kind, name] => (*kind, *name, ""),
        [kind, name, namespace] => {
            if namespace.is_empty() {
                bail!("namespace cannot be empty");
            }
            (*kind, *name, *namespace)
        }
        _ => bail!("target is not valid with more than two '/'"),
    };
    let kind = normalize_kind(kind)?;
    if name.is_empty() {
        bail!("name cannot be empty");
    }
    Ok(Target {
        kind,
        name: name.to_string(),
        namespace: namespace.to_string(),
    })
}

/// One `[protocol/]localPort[:targetPort]` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedPort {
    pub local: u16,
    pub remote: u16,
    /// `tcp` or `udp` (case-sensitive, as upstream).
    pub protocol: String,
}

/// Go's `strconv.Atoi` with its error text, then a port range check (upstream fails later,
/// at listen time, for out-of-range numbers).
fn atoi_port(s: &str) -> Result<u16> {
    let n: i64 = s
        .parse()
        .map_err(|_| anyhow!("strconv.Atoi: parsing {s:?}: invalid syntax"))?;
    u16::try_from(n).map_err(|_| anyhow!("invalid port {n}: must be between 0 and 65535"))
}

/// Parses one port argument as upstream's `parsePort`: the part before the first `/` is the
/// protocol, empty fields around `:` are ignored, the remote port defaults to the local one.
pub fn parse_port(arg: &str) -> Result<ForwardedPort> {
    let mut protocol = "tcp".to_string();
    let mut rest = arg;
    let parts: Vec<&str> = arg.split('/').collect();
    if parts.len() > 1 {
        protocol = parts[0].to_string();
        rest = parts[1];
    }
    let ports: Vec<&str> = rest.split(':').filter(|p| !p.is_empty()).collect();
    let Some(first) = ports.first() else {
        bail!("invalid port, missing local and/or remote port");
    };
    let local = atoi_port(first)?;
    let remote = match ports.get(1) {
        Some(p) => atoi_port(p)?,
        None => local,
    };
    if protocol != "tcp" && protocol != "udp" {
        bail!("unknown protocol: {protocol}");
    }
    Ok(ForwardedPort {
        local,
        remote,
        protocol,
    })
}

pub fn parse_ports(args: &[String]) -> Result<Vec<ForwardedPort>> {
    args.iter().map(|a| parse_port(a)).collect()
}

/// Upstream's argument check: at least a target and one port.
pub fn check_arg_count(args: &[String]) -> Result<()> {
    if args.len() < 2 {
        bail!(
            "fatal: Number of input parameters is incorrect, portforward requires at least 2 arg(s), received {}",
            args.len()
        );
    }
    Ok(())
}

/// Where the streams go: the target with its namespace resolved.
#[derive(Clone)]
struct Forwarder {
    session: Arc<Session>,
    kind: Kind,
    name: String,
    namespace: String,
}

impl Forwarder {
    async fn open(&self, port: &ForwardedPort) -> Result<Ws> {
        self.session
            .open_stream_at(
                &self.namespace,
                self.kind.resource(),
                &self.name,
                &format!("portforward/{}/{}", port.remote, port.protocol),
            )
            .await
            .with_context(|| {
                format!(
                    "can't access {}/{}.{}",
                    self.kind.as_str(),
                    self.name,
                    self.namespace
                )
            })
    }
}

/// Runs `virtctl port-forward` until Ctrl-C (or, with `--stdio`, until the stream ends).
pub async fn run(session: Session, args: &PortForwardArgs) -> Result<()> {
    check_arg_count(&args.args)?;
    let target = parse_target(&args.args[0])?;
    let ports = parse_ports(&args.args[1..])?;
    let namespace = if target.namespace.is_empty() {
        session.namespace.clone()
    } else {
        target.namespace.clone()
    };
    let fwd = Forwarder {
        session: Arc::new(session),
        kind: target.kind,
        name: target.name,
        namespace,
    };

    if args.stdio {
        let [port] = ports.as_slice() else {
            bail!("only one port supported when forwarding to stdout");
        };
        let ws = fwd.open(port).await?;
        return stdio_bridge(ws).await;
    }

    let ip = resolve_address(&args.address).await?;
    for port in &ports {
        match port.protocol.as_str() {
            "udp" => start_udp(&fwd, ip, port).await?,
            _ => start_tcp(&fwd, ip, port).await?,
        }
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

/// `--address` as upstream's `net.ResolveIPAddr`: an IP literal, else the first address the
/// name resolves to.
async fn resolve_address(address: &str) -> Result<IpAddr> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(ip);
    }
    tokio::net::lookup_host((address, 0))
        .await
        .with_context(|| format!("resolving address {address}"))?
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| anyhow!("resolving address {address}: no addresses"))
}

/// Upstream's per-port log line; the local port is the bound one, so port 0 shows what the
/// OS picked (tests read it from here).
fn log_forwarding(protocol: &str, local: SocketAddr, remote: u16) {
    eprintln!(
        "forwarding {protocol} {}:{} to {remote}",
        local.ip(),
        local.port()
    );
}

/// Errors that only say the other side went away are not worth a log line (upstream skips
/// "use of closed network connection").
fn log_connection_error(local: u16, e: &anyhow::Error) {
    let text = format!("{e:#}");
    let benign = ["Connection reset", "Broken pipe", "AlreadyClosed", "closed"];
    if !benign.iter().any(|b| text.contains(b)) {
        eprintln!("error handling connection for {local}: {text}");
    }
}

async fn start_tcp(fwd: &Forwarder, ip: IpAddr, port: &ForwardedPort) -> Result<()> {
    let listener = TcpListener::bind((ip, port.local))
        .await
        .with_context(|| format!("listen tcp {}", SocketAddr::new(ip, port.local)))?;
    let local = listener.local_addr()?;
    log_forwarding(&port.protocol, local, port.remote);
    let fwd = fwd.clone();
    let port = ForwardedPort {
        local: local.port(),
        ..port.clone()
    };
    tokio::spawn(async move {
        loop {
            let conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    eprintln!("error accepting connection: {e}");
                    return;
                }
            };
            let fwd = fwd.clone();
            let port = port.clone();
            // Unlike upstream, a refused tunnel drops only this connection; the listener
            // keeps serving (upstream stops accepting for good).
            tokio::spawn(async move {
                eprintln!("opening new tcp tunnel to {}", port.remote);
                let ws = match fwd.open(&port).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        eprintln!("{e:#}");
                        return;
                    }
                };
                eprintln!("handling tcp connection for {}", port.local);
                if let Err(e) = tcp_bridge(conn, ws).await {
                    log_connection_error(port.local, &e);
                }
            });
        }
    });
    Ok(())
}

/// The next bytes the tunnel carries (binary or text frames; control frames skipped), or
/// None once it closes.
async fn next_payload(ws_rx: &mut SplitStream<Ws>) -> Result<Option<Vec<u8>>> {
    while let Some(msg) = ws_rx.next().await {
        match msg.context("reading the tunnel")? {
            Message::Binary(b) => return Ok(Some(b.to_vec())),
            Message::Text(t) => return Ok(Some(t.as_bytes().to_vec())),
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(None)
}

/// Copies both ways until either side ends, then closes both (as upstream: no half-close).
async fn tcp_bridge(tcp: TcpStream, ws: Ws) -> Result<()> {
    let (mut rd, mut wr) = tcp.into_split();
    let (mut ws_tx, mut ws_rx) = ws.split();
    let up = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = rd
                .read(&mut buf)
                .await
                .context("reading local connection")?;
            if n == 0 {
                return anyhow::Ok(());
            }
            ws_tx
                .send(Message::Binary(buf[..n].to_vec().into()))
                .await
                .context("sending to the tunnel")?;
        }
    };
    let down = async {
        while let Some(data) = next_payload(&mut ws_rx).await? {
            wr.write_all(&data).await?;
        }
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = up => r,
        r = down => r,
    };
    // The local connection closes when its halves drop; the tunnel gets a close frame.
    let _ = ws_tx.close().await;
    result
}

/// Upstream reads datagrams into a 1500-byte buffer; this one takes any UDP datagram whole.
const UDP_BUF: usize = 65536;

async fn start_udp(fwd: &Forwarder, ip: IpAddr, port: &ForwardedPort) -> Result<()> {
    let socket = UdpSocket::bind((ip, port.local))
        .await
        .with_context(|| format!("listen udp {}", SocketAddr::new(ip, port.local)))?;
    let local = socket.local_addr()?;
    log_forwarding(&port.protocol, local, port.remote);
    let socket = Arc::new(socket);
    let fwd = fwd.clone();
    let port = port.clone();
    // One tunnel per client address; its sender feeds the tunnel, and it is removed when
    // the tunnel ends so the next datagram from that address opens a fresh one.
    let clients: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>>> = Arc::default();
    tokio::spawn(async move {
        let mut buf = vec![0u8; UDP_BUF];
        loop {
            let (n, client) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    continue;
                }
            };
            let datagram = buf[..n].to_vec();
            let known = clients.lock().ok().and_then(|c| c.get(&client).cloned());
            if let Some(tx) = known {
                if tx.send(datagram.clone()).is_ok() {
                    continue;
                }
            }
            eprintln!("opening new udp tunnel to {}", port.remote);
            let ws = match fwd.open(&port).await {
                Ok(ws) => ws,
                Err(e) => {
                    eprintln!("{e:#}");
                    continue;
                }
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(datagram);
            if let Ok(mut c) = clients.lock() {
                c.insert(client, tx);
            }
            let socket = socket.clone();
            let clients = clients.clone();
            tokio::spawn(async move {
                if let Err(e) = udp_client(ws, rx, &socket, client).await {
                    eprintln!("closing client: {e:#}");
                }
                if let Ok(mut c) = clients.lock() {
                    c.remove(&client);
                }
            });
        }
    });
    Ok(())
}

/// One UDP client's tunnel: its datagrams become frames, frames become datagrams back.
async fn udp_client(
    ws: Ws,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    socket: &UdpSocket,
    client: SocketAddr,
) -> Result<()> {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let up = async {
        while let Some(d) = rx.recv().await {
            ws_tx
                .send(Message::Binary(d.into()))
                .await
                .context("sending to the tunnel")?;
        }
        anyhow::Ok(())
    };
    let down = async {
        while let Some(data) = next_payload(&mut ws_rx).await? {
            socket
                .send_to(&data, client)
                .await
                .with_context(|| format!("sending to {client}"))?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

/// `--stdio`: stdin to the tunnel, the tunnel to stdout, until either ends (as upstream's
/// `Stream`). Stdin is read on a plain thread: a blocking read cannot be cancelled, and a
/// runtime-owned one would keep the process from exiting.
async fn stdio_bridge(ws: Ws) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let (mut ws_tx, mut ws_rx) = ws.split();
    let up = async {
        while let Some(chunk) = rx.recv().await {
            ws_tx
                .send(Message::Binary(chunk.into()))
                .await
                .context("sending to the tunnel")?;
        }
        let _ = ws_tx.close().await;
        anyhow::Ok(())
    };
    let down = async {
        let mut stdout = std::io::stdout();
        while let Some(data) = next_payload(&mut ws_rx).await? {
            stdout.write_all(&data).context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_err(s: &str) -> String {
        match parse_target(s) {
            Ok(t) => panic!("{s:?} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn t(kind: Kind, name: &str, namespace: &str) -> Target {
        Target {
            kind,
            name: name.into(),
            namespace: namespace.into(),
        }
    }

    #[test]
    fn targets_parse_as_upstream() {
        let ok = [
            ("vmi/testvmi", t(Kind::Vmi, "testvmi", "")),
            ("vmi/testvmi/default", t(Kind::Vmi, "testvmi", "default")),
            ("vm/testvm", t(Kind::Vm, "testvm", "")),
            ("vm/testvm/default", t(Kind::Vm, "testvm", "default")),
            (
                "vmi/testvmi.with.dots/default",
                t(Kind::Vmi, "testvmi.with.dots", "default"),
            ),
            (
                "vmi/testvmi/default.with.dots",
                t(Kind::Vmi, "testvmi", "default.with.dots"),
            ),
            // No legacy `name.namespace` parsing since upstream 1.7.
            ("vmi/testvmi.default", t(Kind::Vmi, "testvmi.default", "")),
            ("vm/testvm.default", t(Kind::Vm, "testvm.default", "")),
            ("vmis/x", t(Kind::Vmi, "x", "")),
            ("virtualmachineinstance/x", t(Kind::Vmi, "x", "")),
            ("virtualmachineinstances/x", t(Kind::Vmi, "x", "")),
            ("VMI/x", t(Kind::Vmi, "x", "")),
            ("vms/x", t(Kind::Vm, "x", "")),
            ("virtualmachine/x", t(Kind::Vm, "x", "")),
            ("virtualmachines/x", t(Kind::Vm, "x", "")),
        ];
        for (input, want) in ok {
            assert_eq!(parse_target(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn target_errors_match_upstream() {
        let cases = [
            (
                "testvmi",
                "target must contain type and name separated by '/'",
            ),
            ("vmi/testvmi/", "namespace cannot be empty"),
            (
                "vmi/testvmi/default/something",
                "target is not valid with more than two '/'",
            ),
            ("invalid/testvmi", "unsupported resource type 'invalid'"),
            (
                "invalid/testvmi/default",
                "unsupported resource type 'invalid'",
            ),
            ("vmi/", "name cannot be empty"),
            ("", "target cannot be empty"),
            ("/", "unsupported resource type ''"),
            ("//", "namespace cannot be empty"),
            (".", "target must contain type and name separated by '/'"),
            ("/.", "unsupported resource type ''"),
        ];
        for (input, want) in cases {
            assert_eq!(target_err(input), want, "{input}");
        }
    }

    fn p(local: u16, remote: u16, protocol: &str) -> ForwardedPort {
        ForwardedPort {
            local,
            remote,
            protocol: protocol.into(),
        }
    }

    #[test]
    fn ports_parse_as_upstream() {
        assert_eq!(parse_port("8080").unwrap(), p(8080, 8080, "tcp"));
        assert_eq!(parse_port("8080:8090").unwrap(), p(8080, 8090, "tcp"));
        assert_eq!(parse_port("udp/8080").unwrap(), p(8080, 8080, "udp"));
        assert_eq!(parse_port("udp/8080:8090").unwrap(), p(8080, 8090, "udp"));
        assert_eq!(parse_port("tcp/0:22").unwrap(), p(0, 22, "tcp"));
        assert_eq!(parse_port("0:22").unwrap(), p(0, 22, "tcp"));
        // Go's FieldsFunc drops empty fields.
        assert_eq!(parse_port(":8080").unwrap(), p(8080, 8080, "tcp"));
        assert_eq!(parse_port("8080:").unwrap(), p(8080, 8080, "tcp"));
        assert_eq!(
            parse_ports(&["1".into(), "udp/2:3".into()]).unwrap(),
            vec![p(1, 1, "tcp"), p(2, 3, "udp")]
        );
    }

    #[test]
    fn bad_ports_are_refused() {
        let err = |s: &str| parse_port(s).unwrap_err().to_string();
        assert_eq!(err("udp"), "strconv.Atoi: parsing \"udp\": invalid syntax");
        assert_eq!(
            err("udp/"),
            "invalid port, missing local and/or remote port"
        );
        assert_eq!(
            err("80C0:8X90"),
            "strconv.Atoi: parsing \"80C0\": invalid syntax"
        );
        assert_eq!(
            err("80:8X90"),
            "strconv.Atoi: parsing \"8X90\": invalid syntax"
        );
        assert_eq!(err("sctp/80"), "unknown protocol: sctp");
        assert_eq!(
            err("70000"),
            "invalid port 70000: must be between 0 and 65535"
        );
        assert_eq!(err("-1"), "invalid port -1: must be between 0 and 65535");
    }

    #[test]
    fn arg_count_is_checked() {
        assert!(check_arg_count(&["vmi/x".into(), "22".into()]).is_ok());
        assert_eq!(
            check_arg_count(&["vmi/x".into()]).unwrap_err().to_string(),
            "fatal: Number of input parameters is incorrect, portforward requires at least 2 arg(s), received 1"
        );
    }

    #[test]
    fn kinds_map_to_resources() {
        assert_eq!(Kind::Vm.resource(), "virtualmachines");
        assert_eq!(Kind::Vmi.resource(), "virtualmachineinstances");
        assert_eq!(Kind::Vm.as_str(), "vm");
        assert_eq!(Kind::Vmi.as_str(), "vmi");
    }
}
