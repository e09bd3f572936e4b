//! The embedded kubelet's container probes for launcher pods: the compute container's
//! readiness and liveness probes, as upstream's virt-controller renders them from the
//! VMI's (`kubevirt_api::launcher_pod::container_probe`). `httpGet` and `tcpSocket` go to
//! the pod IP, where the pod network forwards them to the guest; `virt-probe` commands
//! (the VMI's `exec` and `guestAgentPing`) go to the guest agent through the launcher.
//!
//! As a kubelet: a probe starts after its initial delay, runs every period with its
//! timeout, and flips after `successThreshold` successes or `failureThreshold` failures;
//! the container is not ready until its readiness probe passed; every failed try is a
//! `Warning Unhealthy` event on the pod; a liveness probe that flips to failure kills the
//! container (the launcher gets SIGTERM), and as launcher pods never restart, the pod
//! fails and the VM's run strategy decides what comes next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubevirt_api::launcher_pod::VIRT_PROBE;
use kubevirt_launcher::GuestExecRequest;
use kubevirt_reconcile::events::{EventRecorder, EventType};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::launchers::Launcher;

/// The answer of a kubelet probe's HTTP request carries this agent.
const USER_AGENT: &str = "kube-probe/1.33";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Readiness,
    Liveness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }
}

/// The probes running for one pod; dropped (and stopped) with it.
struct PodProbes {
    /// The readiness probe's verdict: false until it first passed.
    ready: Arc<Mutex<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for PodProbes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Probes of the launcher pods of this node, by pod UID.
#[derive(Default)]
pub struct Probes {
    pods: Mutex<HashMap<String, PodProbes>>,
}

impl Probes {
    /// Starts `pod`'s probes once its container runs (does nothing when they run already
    /// or the container has none).
    /// `wake` asks for the pod's status to be written again (readiness changed).
    pub fn ensure(
        &self,
        pod: &Pod,
        launcher: &Arc<Launcher>,
        recorder: &EventRecorder,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        if pods.contains_key(&uid) {
            return;
        }
        let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.first()) else {
            return;
        };
        let ready = Arc::new(Mutex::new(container.readiness_probe.is_none()));
        let mut tasks = Vec::new();
        for (kind, probe) in [
            (Kind::Readiness, &container.readiness_probe),
            (Kind::Liveness, &container.liveness_probe),
        ] {
            if let Some(probe) = probe {
                tasks.push(tokio::spawn(run(Worker {
                    kind,
                    probe: probe.clone(),
                    container: container.clone(),
                    pod: pod.clone(),
                    launcher: launcher.clone(),
                    recorder: recorder.clone(),
                    ready: ready.clone(),
                    wake: wake.clone(),
                })));
            }
        }
        if !tasks.is_empty() {
            pods.insert(uid, PodProbes { ready, tasks });
        }
    }

    /// Whether the pod's container passed its readiness probe (true without one).
    pub fn ready(&self, pod_uid: &str) -> bool {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.get(pod_uid)
            .is_none_or(|p| *p.ready.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Stops the pod's probes (its container ended or the pod is gone).
    pub fn remove(&self, pod_uid: &str) {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_uid);
    }
}

fn seconds(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.filter(|v| *v >= 1).unwrap_or(default) as u64)
}

/// One probe of one container and what it reports to.
struct Worker {
    kind: Kind,
    probe: Probe,
    container: Container,
    pod: Pod,
    launcher: Arc<Launcher>,
    recorder: EventRecorder,
    /// The readiness verdict the pod status reads.
    ready: Arc<Mutex<bool>>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

async fn run(w: Worker) {
    let Worker {
        kind,
        probe,
        container,
        pod,
        launcher,
        recorder,
        ready,
        wake,
    } = w;
    let initial = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    let period = seconds(probe.period_seconds, 10);
    let timeout = seconds(probe.timeout_seconds, 1);
    let success_threshold = probe.success_threshold.filter(|v| *v >= 1).unwrap_or(1);
    let failure_threshold = probe.failure_threshold.filter(|v| *v >= 1).unwrap_or(3);
    tokio::time::sleep(initial).await;
    let (mut successes, mut failures) = (0, 0);
    let mut passing = kind == Kind::Liveness;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if launcher.exited() {
            return;
        }
        let pod_ip = launcher
            .observed()
            .status
            .and_then(|s| s.interfaces.iter().find_map(|i| i.ip_address.clone()));
        let outcome = match tokio::time::timeout(
            timeout,
            check(&probe, &container, pod_ip.as_deref(), &launcher, timeout),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
        };
        match outcome {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if !passing && successes >= success_threshold {
                    passing = true;
                    if kind == Kind::Readiness {
                        *ready.lock().unwrap_or_else(|p| p.into_inner()) = true;
                        wake();
                    }
                }
            }
            Err(reason) => {
                failures += 1;
                successes = 0;
                recorder
                    .publish(
                        &pod,
                        EventType::Warning,
                        "Unhealthy",
                        &format!("{} probe failed: {reason}", kind.name()),
                    )
                    .await;
                if passing && failures >= failure_threshold {
                    passing = false;
                    match kind {
                        Kind::Readiness => {
                            *ready.lock().unwrap_or_else(|p| p.into_inner()) = false;
                            wake();
                        }
                        Kind::Liveness => {
                            recorder
                                .publish(
                                    &pod,
                                    EventType::Normal,
                                    "Killing",
                                    "Container compute failed liveness probe, will be restarted",
                                )
                                .await;
                            launcher.signal(Signal::SIGTERM);
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// One try of `probe`; `Err` says why it failed, in the kubelet's words where it has them.
async fn check(
    probe: &Probe,
    container: &Container,
    pod_ip: Option<&str>,
    launcher: &Launcher,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        return virt_probe(
            exec.command.as_deref().unwrap_or_default(),
            launcher,
            timeout,
        )
        .await;
    }
    let ip = pod_ip.ok_or("the pod has no IP yet")?;
    if let Some(tcp) = &probe.tcp_socket {
        let port = port(&tcp.port, container)?;
        let host = tcp.host.as_deref().unwrap_or(ip);
        return TcpStream::connect((host, port))
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"));
    }
    if let Some(http) = &probe.http_get {
        let port = port(&http.port, container)?;
        let host = http.host.as_deref().unwrap_or(ip);
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported by the embedded node".into());
        }
        let path = http
            .path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        return http_get(
            host,
            port,
            path,
            http.http_headers.as_deref().unwrap_or_default(),
        )
        .await;
    }
    Err("the probe has no handler".into())
}

/// A container port: a number, or the name of one of the container's ports.
fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("port {name:?} is not a port of the container"))?,
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n != 0)
        .ok_or_else(|| format!("invalid port {n}"))
}

/// An HTTP/1.1 GET as the kubelet sends it; 200-399 passes.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[k8s_openapi::api::core::v1::HTTPHeader],
) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    let mut has_agent = false;
    for h in headers {
        // Header names and values come from the VMI author: no line breaks in them.
        if h.name.contains(['\r', '\n', ':']) || h.value.contains(['\r', '\n']) {
            return Err(format!("invalid header {:?}", h.name));
        }
        has_agent |= h.name.eq_ignore_ascii_case("user-agent");
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    if !has_agent {
        req.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    req.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: {e}"))?;
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    // The status line is all that matters; read at most a little of the answer.
    let mut head = vec![0u8; 1024];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        match stream.read(&mut head[len..]).await {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("Get \"{url}\": {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let code: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// A `virt-probe` command: a guest agent ping, or a command the agent runs in the guest.
async fn virt_probe(
    command: &[String],
    launcher: &Launcher,
    timeout: Duration,
) -> Result<(), String> {
    match parse_virt_probe(command)? {
        VirtProbe::Ping => launcher
            .client
            .guest_ping()
            .await
            .map_err(|e| format!("guest agent ping failed: {e}")),
        VirtProbe::Exec { command, args } => {
            let req = GuestExecRequest {
                command,
                args,
                timeout_seconds: timeout.as_secs().max(1),
            };
            match launcher.client.guest_exec(&req).await {
                Ok(r) => match r.exit_code {
                    Some(0) => Ok(()),
                    Some(code) => Err(format!("command {:?} exited with {code}", req.command)),
                    None => Err(format!(
                        "command {:?} timed out after {}s",
                        req.command, req.timeout_seconds
                    )),
                },
                Err(e) => Err(format!("guest agent: {e}")),
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum VirtProbe {
    Ping,
    Exec { command: String, args: Vec<String> },
}

/// Reads upstream's `virt-probe` arguments (`--guestAgentPing`, or `--command C -- ARGS`);
/// other programs cannot run: a launcher pod's container has only the launcher.
fn parse_virt_probe(command: &[String]) -> Result<VirtProbe, String> {
    match command.first() {
        Some(p) if p == VIRT_PROBE => {}
        _ => {
            return Err(format!(
                "exec probes of launcher pods run through {VIRT_PROBE}; {command:?} cannot run"
            ))
        }
    }
    let mut args = command[1..].iter();
    let mut exec = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--guestAgentPing" => return Ok(VirtProbe::Ping),
            "--command" => exec = args.next().cloned(),
            "--" => break,
            "--domainName" | "--timeoutSeconds" => {
                args.next();
            }
            other => return Err(format!("{VIRT_PROBE}: unknown argument {other:?}")),
        }
    }
    match exec {
        Some(command) => Ok(VirtProbe::Exec {
            command,
            args: args.cloned().collect(),
        }),
        None => Err(format!(
            "{VIRT_PROBE}: no --command and no --guestAgentPing"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn virt_probe_arguments() {
        assert_eq!(
            parse_virt_probe(&words(
                "virt-probe --domainName a_b --timeoutSeconds 2 --guestAgentPing"
            )),
            Ok(VirtProbe::Ping)
        );
        assert_eq!(
            parse_virt_probe(&words(
                "virt-probe --domainName a_b --timeoutSeconds 2 --command cat -- /tmp/x -n"
            )),
            Ok(VirtProbe::Exec {
                command: "cat".into(),
                args: words("/tmp/x -n")
            })
        );
        assert!(parse_virt_probe(&words("cat /etc/passwd")).is_err());
        assert!(parse_virt_probe(&words("virt-probe --bogus")).is_err());
        assert!(parse_virt_probe(&words("virt-probe --domainName a_b")).is_err());
        assert!(parse_virt_probe(&[]).is_err());
    }

    /// One HTTP exchange on a real socket: what the probe sent, and its verdict on `reply`.
    async fn probe_against(
        reply: &'static str,
        headers: &[k8s_openapi::api::core::v1::HTTPHeader],
    ) -> (String, Result<(), String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            conn.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8(req).unwrap()
        });
        let verdict = http_get("127.0.0.1", port, "/healthz", headers).await;
        (server.await.unwrap(), verdict)
    }

    #[tokio::test]
    async fn http_probes_send_the_kubelets_request_and_judge_the_status() {
        let header = |name: &str, value: &str| k8s_openapi::api::core::v1::HTTPHeader {
            name: name.into(),
            value: value.into(),
        };
        let (req, verdict) = probe_against(
            "HTTP/1.1 204 No Content\r\n\r\n",
            &[header("X-Probe", "yes")],
        )
        .await;
        assert_eq!(verdict, Ok(()));
        assert!(
            req.starts_with("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{req}"
        );
        assert!(req.contains("\r\nX-Probe: yes\r\n"), "{req}");
        assert!(
            req.contains(&format!("\r\nUser-Agent: {USER_AGENT}\r\n")),
            "{req}"
        );
        // The author's User-Agent replaces the kubelet's.
        let (req, _) = probe_against(
            "HTTP/1.1 302 Found\r\n\r\n",
            &[header("user-agent", "mine")],
        )
        .await;
        assert!(
            req.contains("user-agent: mine") && !req.contains(USER_AGENT),
            "{req}"
        );
        let (_, verdict) = probe_against("HTTP/1.1 500 Oops\r\n\r\n", &[]).await;
        assert_eq!(
            verdict,
            Err("HTTP probe failed with statuscode: 500".to_string())
        );
        let (_, verdict) = probe_against("garbage\r\n\r\n", &[]).await;
        assert!(verdict.unwrap_err().contains("malformed HTTP response"));
    }

    #[tokio::test]
    async fn http_probe_headers_cannot_smuggle_lines() {
        for (name, value) in [
            ("X-A", "b\r\nHost: evil"),
            ("X-A\r\nEvil", "b"),
            ("X:A", "b"),
        ] {
            let header = k8s_openapi::api::core::v1::HTTPHeader {
                name: name.into(),
                value: value.into(),
            };
            // Refused before any connection: nothing listens on port 9.
            let err = http_get("127.0.0.1", 9, "/", &[header]).await.unwrap_err();
            assert!(err.starts_with("invalid header"), "{err}");
        }
    }

    #[test]
    fn ports_by_number_and_name() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "compute", "ports": [{"name": "http", "containerPort": 8080}]
        }))
        .unwrap();
        assert_eq!(port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(port(&IntOrString::String("http".into()), &c), Ok(8080));
        assert!(port(&IntOrString::String("ssh".into()), &c).is_err());
        assert!(port(&IntOrString::Int(0), &c).is_err());
        assert!(port(&IntOrString::Int(70000), &c).is_err());
    }
}
