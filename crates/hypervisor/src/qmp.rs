//! A small typed QMP client over a blocking unix socket.
//!
//! Why not the `qapi` crate: its generated `qapi-qmp` schema crate is very large to compile on
//! the shared build machine and pulls an async stack we do not want in the launcher's RSS
//! budget; the launcher needs about a dozen commands. Each command here is a type implementing
//! [`QmpCommand`] with its argument and return types, so call sites stay typed.
//!
//! A reader thread owns the read half: command responses go to a channel (matched by `id`),
//! asynchronous events go to an [`EventLog`] that callers can wait on.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::DomainEvent;
use crate::error::{HypervisorError, Result};

/// A QMP command: its wire name, its arguments (`self`) and its return type.
pub trait QmpCommand: Serialize {
    const NAME: &'static str;
    type Return: DeserializeOwned;
}

macro_rules! unit_command {
    ($(#[$doc:meta])* $ty:ident, $name:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Serialize)]
        pub struct $ty;
        impl QmpCommand for $ty {
            const NAME: &'static str = $name;
            type Return = Empty;
        }
    };
}

/// The `{}` most commands return.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Empty {}

unit_command!(
    /// Leaves capabilities negotiation mode.
    QmpCapabilities,
    "qmp_capabilities"
);
unit_command!(
    /// Pauses the vCPUs.
    Stop,
    "stop"
);
unit_command!(
    /// Resumes the vCPUs.
    Cont,
    "cont"
);
unit_command!(
    /// ACPI power button.
    SystemPowerdown,
    "system_powerdown"
);
unit_command!(
    /// Hard reset.
    SystemReset,
    "system_reset"
);
unit_command!(
    /// Makes QEMU exit.
    Quit,
    "quit"
);

/// `query-status`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryStatus;
impl QmpCommand for QueryStatus {
    const NAME: &'static str = "query-status";
    type Return = StatusInfo;
}

/// Answer of `query-status`.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusInfo {
    pub running: bool,
    pub status: String,
}

/// `query-cpus-fast`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryCpusFast;
impl QmpCommand for QueryCpusFast {
    const NAME: &'static str = "query-cpus-fast";
    type Return = Vec<CpuInfoFast>;
}

/// One vCPU in `query-cpus-fast`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfoFast {
    pub cpu_index: u32,
    pub thread_id: i64,
}

/// `query-blockstats`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryBlockstats;
impl QmpCommand for QueryBlockstats {
    const NAME: &'static str = "query-blockstats";
    type Return = Vec<BlockStatsEntry>;
}

/// One entry of `query-blockstats`.
#[derive(Debug, Clone, Deserialize)]
pub struct BlockStatsEntry {
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub qdev: String,
    pub stats: BlockDeviceStats,
}

/// Counters of one block device.
#[derive(Debug, Clone, Deserialize)]
pub struct BlockDeviceStats {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
}

/// `migrate` to a URI.
#[derive(Debug, Clone, Serialize)]
pub struct Migrate {
    pub uri: String,
}
impl QmpCommand for Migrate {
    const NAME: &'static str = "migrate";
    type Return = Empty;
}

/// `migrate-incoming` on a URI (QEMU started with `-incoming defer`).
#[derive(Debug, Clone, Serialize)]
pub struct MigrateIncoming {
    pub uri: String,
}
impl QmpCommand for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Return = Empty;
}

/// `query-migrate`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryMigrate;
impl QmpCommand for QueryMigrate {
    const NAME: &'static str = "query-migrate";
    type Return = MigrationInfo;
}

/// Answer of `query-migrate`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub total_time: Option<u64>,
    #[serde(default)]
    pub downtime: Option<u64>,
    #[serde(default)]
    pub ram: Option<MigrationRam>,
    #[serde(default)]
    pub error_desc: Option<String>,
}

/// RAM counters of a migration.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MigrationRam {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
}

/// Asynchronous events, shared between the reader thread and callers.
#[derive(Default)]
pub struct EventLog {
    inner: Mutex<EventLogInner>,
    cond: Condvar,
    closed: AtomicBool,
    hook: Mutex<Option<crate::EventHook>>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("len", &self.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

#[derive(Debug, Default)]
struct EventLogInner {
    /// Number of events dropped from the front (so indexes stay absolute).
    dropped: usize,
    events: Vec<DomainEvent>,
}

const EVENT_LOG_CAP: usize = 1024;

impl EventLog {
    fn push(&self, ev: DomainEvent) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.events.len() >= EVENT_LOG_CAP {
            g.events.remove(0);
            g.dropped += 1;
        }
        g.events.push(ev);
        self.cond.notify_all();
        drop(g);
        self.call_hook();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.cond.notify_all();
        drop(g);
        self.call_hook();
    }

    fn call_hook(&self) {
        let hook = self.hook.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = hook {
            h();
        }
    }

    /// Calls `hook` after each event and when the connection ends (replacing any earlier
    /// hook). Runs on the reader thread: it must only wake someone up.
    pub fn set_hook(&self, hook: crate::EventHook) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Events with absolute index >= `after`, and the index the next event will have.
    pub fn since(&self, after: usize) -> (Vec<DomainEvent>, usize) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let start = after.saturating_sub(g.dropped);
        let events = g.events.iter().skip(start).cloned().collect();
        (events, g.dropped + g.events.len())
    }

    /// True once the connection ended (the VMM exited or closed QMP).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// All retained events; the first has absolute index `len() - returned.len()`.
    pub fn snapshot(&self) -> Vec<DomainEvent> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.events.clone()
    }

    /// Total number of events ever received.
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.dropped + g.events.len()
    }

    /// True if no event was ever received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for an event called `name` with absolute index >= `after`.
    pub fn wait_for(&self, name: &str, after: usize, timeout: Duration) -> Option<DomainEvent> {
        let deadline = Instant::now() + timeout;
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let start = after.saturating_sub(g.dropped);
            if let Some(ev) = g.events.iter().skip(start).find(|e| e.name == name) {
                return Some(ev.clone());
            }
            let now = Instant::now();
            if now >= deadline || self.is_closed() {
                return None;
            }
            g = match self.cond.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The last event called `name`, if any.
    pub fn last(&self, name: &str) -> Option<DomainEvent> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.events.iter().rev().find(|e| e.name == name).cloned()
    }
}

struct Conn {
    writer: UnixStream,
    responses: Receiver<Value>,
    next_id: u64,
}

/// A connected QMP session (capabilities already negotiated).
pub struct QmpClient {
    conn: Mutex<Conn>,
    events: Arc<EventLog>,
    /// QEMU version from the greeting, e.g. `10.0.2`.
    pub version: String,
    timeout: Duration,
}

static READER_SEQ: AtomicU64 = AtomicU64::new(0);

impl QmpClient {
    /// Connects to a QMP socket, retrying until `deadline` while the socket does not exist
    /// yet. `alive` is polled between retries so a VMM that died is reported at once.
    pub fn connect(
        path: &Path,
        deadline: Instant,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<QmpClient> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    alive()?;
                    if Instant::now() >= deadline {
                        return Err(HypervisorError::io(
                            format!("connecting to QMP socket {}", path.display()),
                            e,
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        Self::handshake(stream, Duration::from_secs(30))
    }

    /// Reads the greeting, starts the reader thread and negotiates capabilities.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<QmpClient> {
        let read_half = stream
            .try_clone()
            .map_err(|e| HypervisorError::io("cloning QMP socket", e))?;
        read_half
            .set_read_timeout(Some(timeout))
            .map_err(|e| HypervisorError::io("setting QMP read timeout", e))?;
        let mut reader = BufReader::new(read_half);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| HypervisorError::io("reading QMP greeting", e))?;
        let greeting: Value =
            serde_json::from_str(line.trim()).map_err(|e| HypervisorError::QmpProtocol {
                detail: format!("greeting is not JSON ({e}): {:?}", line.trim()),
            })?;
        let version = match greeting.pointer("/QMP/version/qemu") {
            Some(v) => format!(
                "{}.{}.{}",
                v["major"].as_u64().unwrap_or(0),
                v["minor"].as_u64().unwrap_or(0),
                v["micro"].as_u64().unwrap_or(0)
            ),
            None => {
                return Err(HypervisorError::QmpProtocol {
                    detail: format!("unexpected greeting {greeting}"),
                })
            }
        };
        // The reader blocks forever from here on; EOF ends it.
        reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|e| HypervisorError::io("clearing QMP read timeout", e))?;
        let (tx, rx) = mpsc::channel();
        let events = Arc::new(EventLog::default());
        let ev = events.clone();
        let seq = READER_SEQ.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(format!("qmp-reader-{seq}"))
            .stack_size(128 * 1024)
            .spawn(move || read_loop(reader, tx, ev))
            .map_err(|e| HypervisorError::io("spawning QMP reader thread", e))?;
        let client = QmpClient {
            conn: Mutex::new(Conn {
                writer: stream,
                responses: rx,
                next_id: 1,
            }),
            events,
            version,
            timeout,
        };
        client.execute(&QmpCapabilities)?;
        Ok(client)
    }

    /// The event log fed by this connection.
    pub fn events(&self) -> Arc<EventLog> {
        self.events.clone()
    }

    /// Runs a typed command.
    pub fn execute<C: QmpCommand>(&self, cmd: &C) -> Result<C::Return> {
        let args = serde_json::to_value(cmd).map_err(|e| HypervisorError::QmpProtocol {
            detail: format!("cannot encode {}: {e}", C::NAME),
        })?;
        let ret = self.execute_raw(C::NAME, args)?;
        serde_json::from_value(ret.clone()).map_err(|e| HypervisorError::QmpProtocol {
            detail: format!("unexpected {} answer {ret}: {e}", C::NAME),
        })
    }

    /// Runs a command by name with JSON arguments (`null` for none) and returns `return`.
    pub fn execute_raw(&self, name: &str, args: Value) -> Result<Value> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let id = conn.next_id;
        conn.next_id += 1;
        let mut msg = json!({ "execute": name, "id": id });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        conn.writer
            .write_all(&bytes)
            .map_err(|e| HypervisorError::io(format!("sending QMP {name}"), e))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match conn.responses.recv_timeout(left) {
                Ok(resp) => {
                    if resp.get("id").and_then(Value::as_u64) != Some(id) {
                        // A late answer to an earlier, timed-out command.
                        continue;
                    }
                    if let Some(err) = resp.get("error") {
                        return Err(HypervisorError::QmpCommand {
                            command: name.to_string(),
                            class: err["class"].as_str().unwrap_or("unknown").to_string(),
                            desc: err["desc"].as_str().unwrap_or("").to_string(),
                        });
                    }
                    return Ok(resp.get("return").cloned().unwrap_or(Value::Null));
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(HypervisorError::Timeout {
                        what: format!("QMP {name}"),
                        seconds: self.timeout.as_secs_f64(),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(HypervisorError::QmpProtocol {
                        detail: format!("connection closed while waiting for {name}"),
                    })
                }
            }
        }
    }
}

fn read_loop(mut reader: BufReader<UnixStream>, tx: mpsc::Sender<Value>, events: Arc<EventLog>) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(msg) = serde_json::from_str::<Value>(line.trim()) else {
            tracing::warn!(line = line.trim(), "ignoring non-JSON QMP line");
            continue;
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            tracing::debug!(event = name, "QMP event");
            events.push(DomainEvent {
                name: name.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            });
        } else if tx.send(msg).is_err() {
            break;
        }
    }
    events.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A scripted QMP peer on a socketpair: greeting, then answers each command by name.
    fn fake_qemu(peer: UnixStream) {
        let mut w = peer.try_clone().unwrap();
        w.write_all(
            b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": []}}\n",
        )
        .unwrap();
        let mut r = BufReader::new(peer);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let v: Value = serde_json::from_str(line.trim()).unwrap();
            let id = v["id"].clone();
            let reply = match v["execute"].as_str().unwrap() {
                "query-status" => {
                    w.write_all(b"{\"event\": \"STOP\", \"data\": {}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n").unwrap();
                    json!({"return": {"running": false, "status": "paused", "singlestep": false}, "id": id})
                }
                "bogus" => {
                    json!({"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": id})
                }
                _ => json!({"return": {}, "id": id}),
            };
            w.write_all(format!("{reply}\n").as_bytes()).unwrap();
            line.clear();
        }
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
    }

    #[test]
    fn typed_commands_errors_and_events() {
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || fake_qemu(b));
        let c = QmpClient::handshake(a, Duration::from_secs(5)).unwrap();
        assert_eq!(c.version, "10.0.2");
        let st = c.execute(&QueryStatus).unwrap();
        assert!(!st.running);
        assert_eq!(st.status, "paused");
        let ev = c
            .events()
            .wait_for("STOP", 0, Duration::from_secs(5))
            .unwrap();
        assert_eq!(ev.name, "STOP");
        match c.execute_raw("bogus", Value::Null) {
            Err(HypervisorError::QmpCommand { class, .. }) => assert_eq!(class, "CommandNotFound"),
            other => panic!("unexpected {other:?}"),
        }
        c.execute(&Stop).unwrap();
    }

    #[test]
    fn garbage_greeting_is_an_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"hello there\n").unwrap();
        let err = QmpClient::handshake(a, Duration::from_secs(2))
            .err()
            .unwrap();
        assert!(err.to_string().contains("greeting"), "{err}");
    }

    #[test]
    fn closed_peer_fails_commands() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut bw = b.try_clone().unwrap();
        std::thread::spawn(move || {
            bw.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 9}}, \"capabilities\": []}}\n").unwrap();
            let mut r = BufReader::new(b);
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            let v: Value = serde_json::from_str(l.trim()).unwrap();
            bw.write_all(format!("{}\n", json!({"return": {}, "id": v["id"]})).as_bytes())
                .unwrap();
            // then hang up
        });
        let c = QmpClient::handshake(a, Duration::from_secs(5)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(c.execute(&QueryStatus).is_err());
        assert!(c.events().is_closed());
    }
}
