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
use std::os::fd::{AsRawFd, BorrowedFd};
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
    #[serde(default)]
    pub flush_operations: u64,
    #[serde(default)]
    pub rd_total_time_ns: u64,
    #[serde(default)]
    pub wr_total_time_ns: u64,
    #[serde(default)]
    pub flush_total_time_ns: u64,
}

/// `query-balloon`: the balloon's current size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryBalloon;
impl QmpCommand for QueryBalloon {
    const NAME: &'static str = "query-balloon";
    type Return = BalloonInfo;
}

/// Answer of `query-balloon`.
#[derive(Debug, Clone, Deserialize)]
pub struct BalloonInfo {
    /// Bytes of memory the guest has now.
    pub actual: u64,
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
#[serde(rename_all = "kebab-case")]
pub struct MigrateIncoming {
    pub uri: String,
    /// `false`: a failed migration leaves QEMU running (status `failed`, with the error)
    /// instead of exiting, so the supervisor learns why.
    pub exit_on_error: bool,
}
impl QmpCommand for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Return = Empty;
}

unit_command!(
    /// Aborts the outgoing migration.
    MigrateCancel,
    "migrate_cancel"
);
unit_command!(
    /// Switches the outgoing migration to post-copy.
    MigrateStartPostcopy,
    "migrate-start-postcopy"
);

/// `migrate-set-capabilities`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateSetCapabilities {
    pub capabilities: Vec<MigrationCapability>,
}
impl QmpCommand for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    type Return = Empty;
}

impl MigrateSetCapabilities {
    /// The capabilities named, each on or off.
    pub fn of(caps: &[(&str, bool)]) -> Self {
        MigrateSetCapabilities {
            capabilities: caps
                .iter()
                .map(|(c, on)| MigrationCapability {
                    capability: c.to_string(),
                    state: *on,
                })
                .collect(),
        }
    }
}

/// One migration capability (`events`, `postcopy-ram`, `auto-converge`, ...).
#[derive(Debug, Clone, Serialize)]
pub struct MigrationCapability {
    pub capability: String,
    pub state: bool,
}

/// `migrate-set-parameters` (only the ones we set; `None` leaves one as it is).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrateSetParameters {
    /// Bytes per second; 0 turns the rate limit off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// Milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
}
impl QmpCommand for MigrateSetParameters {
    const NAME: &'static str = "migrate-set-parameters";
    type Return = Empty;
}

/// `getfd`: names the descriptor sent with the command (see
/// [`QmpClient::execute_with_fd`]), for commands that take an fd by name (`fd:NAME` URIs).
#[derive(Debug, Clone, Serialize)]
pub struct GetFd {
    pub fdname: String,
}
impl QmpCommand for GetFd {
    const NAME: &'static str = "getfd";
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

/// `query-migrate-parameters` (only the ones we read).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryMigrateParameters;
impl QmpCommand for QueryMigrateParameters {
    const NAME: &'static str = "query-migrate-parameters";
    type Return = MigrationParameters;
}

/// Answer of `query-migrate-parameters`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationParameters {
    /// Milliseconds.
    #[serde(default)]
    pub downtime_limit: Option<u64>,
}

/// RAM counters of a migration.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MigrationRam {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    /// Pages dirtied per second.
    #[serde(default, rename = "dirty-pages-rate")]
    pub dirty_pages_rate: u64,
    #[serde(default, rename = "page-size")]
    pub page_size: u64,
    /// Throughput in megabits per second.
    #[serde(default)]
    pub mbps: f64,
}

/// `add-fd`: adds the descriptor sent with the command (see [`QmpClient::execute_with_fd`])
/// to fd set `fdset_id`, creating the set if needed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AddFd {
    pub fdset_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opaque: Option<String>,
}
impl QmpCommand for AddFd {
    const NAME: &'static str = "add-fd";
    type Return = AddFdInfo;
}

/// Answer of `add-fd`: the set and QEMU's number of its copy of the descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AddFdInfo {
    pub fdset_id: u32,
    pub fd: i64,
}

/// `remove-fd`: drops a set (or one descriptor of it); QEMU closes each descriptor once
/// nothing uses a copy of it any more.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RemoveFd {
    pub fdset_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i64>,
}
impl QmpCommand for RemoveFd {
    const NAME: &'static str = "remove-fd";
    type Return = Empty;
}

/// `blockdev-add`: its arguments are a block node's options, which vary by driver.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct BlockdevAdd(pub Value);
impl QmpCommand for BlockdevAdd {
    const NAME: &'static str = "blockdev-add";
    type Return = Empty;
}

/// `blockdev-del` of a node added with `blockdev-add` (or `-blockdev`) that nothing uses.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevDel {
    pub node_name: String,
}
impl QmpCommand for BlockdevDel {
    const NAME: &'static str = "blockdev-del";
    type Return = Empty;
}

/// `device_add`: the driver, id and the driver's properties.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct DeviceAdd(pub Value);
impl QmpCommand for DeviceAdd {
    const NAME: &'static str = "device_add";
    type Return = Empty;
}

/// `device_del`: asks for the removal; `DEVICE_DELETED` says when it is gone (for PCI
/// devices, once the guest released it).
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDel {
    pub id: String,
}
impl QmpCommand for DeviceDel {
    const NAME: &'static str = "device_del";
    type Return = Empty;
}

/// `block_resize` of a node to `size` bytes; the guest device hears of the new size.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockResize {
    pub node_name: String,
    pub size: u64,
}
impl QmpCommand for BlockResize {
    const NAME: &'static str = "block_resize";
    type Return = Empty;
}

/// `blockdev-open-tray` of a removable-media device (by qdev id).
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevOpenTray {
    pub id: String,
    /// Open even if the guest locked the tray.
    pub force: bool,
}
impl QmpCommand for BlockdevOpenTray {
    const NAME: &'static str = "blockdev-open-tray";
    type Return = Empty;
}

/// `blockdev-close-tray`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevCloseTray {
    pub id: String,
}
impl QmpCommand for BlockdevCloseTray {
    const NAME: &'static str = "blockdev-close-tray";
    type Return = Empty;
}

/// `blockdev-remove-medium` (the tray must be open).
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevRemoveMedium {
    pub id: String,
}
impl QmpCommand for BlockdevRemoveMedium {
    const NAME: &'static str = "blockdev-remove-medium";
    type Return = Empty;
}

/// `blockdev-insert-medium` (the tray must be open and empty).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevInsertMedium {
    pub id: String,
    pub node_name: String,
}
impl QmpCommand for BlockdevInsertMedium {
    const NAME: &'static str = "blockdev-insert-medium";
    type Return = Empty;
}

/// `nbd-server-start` on a unix socket (a migration target's disks, for its source).
#[derive(Debug, Clone, Serialize)]
pub struct NbdServerStart {
    pub addr: Value,
}
impl QmpCommand for NbdServerStart {
    const NAME: &'static str = "nbd-server-start";
    type Return = Empty;
}

/// `nbd-server-stop`: removes the exports and closes their connections.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NbdServerStop;
impl QmpCommand for NbdServerStop {
    const NAME: &'static str = "nbd-server-stop";
    type Return = Empty;
}

/// `block-export-add`: its arguments are the export's options, which vary by type.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct BlockExportAdd(pub Value);
impl QmpCommand for BlockExportAdd {
    const NAME: &'static str = "block-export-add";
    type Return = Empty;
}

/// `blockdev-mirror`: copies what `device` reads to the node `target`, and from then on
/// every write too.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevMirror {
    pub job_id: String,
    pub device: String,
    pub target: String,
    /// `full`: all the guest sees, whatever image it comes from.
    pub sync: String,
    /// `write-blocking`: a guest write completes once the target has it too.
    pub copy_mode: String,
}
impl QmpCommand for BlockdevMirror {
    const NAME: &'static str = "blockdev-mirror";
    type Return = Empty;
}

/// `query-block-jobs`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryBlockJobs;
impl QmpCommand for QueryBlockJobs {
    const NAME: &'static str = "query-block-jobs";
    type Return = Vec<BlockJobInfo>;
}

/// One block job, as `query-block-jobs` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct BlockJobInfo {
    /// The job id.
    pub device: String,
    /// A mirror copied everything and now follows the writes.
    pub ready: bool,
    pub offset: u64,
    pub len: u64,
    #[serde(default)]
    pub error: Option<String>,
}

/// `block-job-cancel`: a ready mirror stops with its target a consistent copy; `force`
/// stops any job at once.
#[derive(Debug, Clone, Serialize)]
pub struct BlockJobCancel {
    pub device: String,
    pub force: bool,
}
impl QmpCommand for BlockJobCancel {
    const NAME: &'static str = "block-job-cancel";
    type Return = Empty;
}

/// `migrate-continue` from state `pre-switchover` (capability `pause-before-switchover`).
#[derive(Debug, Clone, Serialize)]
pub struct MigrateContinue {
    pub state: String,
}
impl QmpCommand for MigrateContinue {
    const NAME: &'static str = "migrate-continue";
    type Return = Empty;
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
        self.wait_for_match(name, after, timeout, |_| true)
    }

    /// Waits for an event called `name` with absolute index >= `after` for which `matches`
    /// holds (e.g. the `DEVICE_DELETED` of one device).
    pub fn wait_for_match(
        &self,
        name: &str,
        after: usize,
        timeout: Duration,
        matches: impl Fn(&DomainEvent) -> bool,
    ) -> Option<DomainEvent> {
        let deadline = Instant::now() + timeout;
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let start = after.saturating_sub(g.dropped);
            if let Some(ev) = g
                .events
                .iter()
                .skip(start)
                .find(|e| e.name == name && matches(e))
            {
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

    /// Runs a typed command with a descriptor attached (`SCM_RIGHTS`), for the commands
    /// that take one from the monitor connection (`add-fd`, `getfd`). QEMU gets its own
    /// copy; the caller keeps `fd`.
    pub fn execute_with_fd<C: QmpCommand>(&self, cmd: &C, fd: BorrowedFd<'_>) -> Result<C::Return> {
        let args = serde_json::to_value(cmd).map_err(|e| HypervisorError::QmpProtocol {
            detail: format!("cannot encode {}: {e}", C::NAME),
        })?;
        let ret = self.send_and_wait(C::NAME, args, Some(fd))?;
        serde_json::from_value(ret.clone()).map_err(|e| HypervisorError::QmpProtocol {
            detail: format!("unexpected {} answer {ret}: {e}", C::NAME),
        })
    }

    /// Runs a command by name with JSON arguments (`null` for none) and returns `return`.
    pub fn execute_raw(&self, name: &str, args: Value) -> Result<Value> {
        self.send_and_wait(name, args, None)
    }

    fn send_and_wait(&self, name: &str, args: Value, fd: Option<BorrowedFd<'_>>) -> Result<Value> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let id = conn.next_id;
        conn.next_id += 1;
        let mut msg = json!({ "execute": name, "id": id });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        let sent = match fd {
            None => conn.writer.write_all(&bytes),
            Some(fd) => send_with_fd(&mut conn.writer, &bytes, fd),
        };
        sent.map_err(|e| HypervisorError::io(format!("sending QMP {name}"), e))?;
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

/// Writes `bytes` with `fd` riding along the first chunk; the rest follows as plain data.
fn send_with_fd(w: &mut UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(bytes)];
    let n = loop {
        match sendmsg::<()>(w.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    w.write_all(&bytes[n..])
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
    fn a_descriptor_rides_along_its_command() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::fs::MetadataExt;
        let (a, b) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut w = b.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 10}}, \"capabilities\": []}}\n").unwrap();
            let mut got = None;
            let mut text = Vec::new();
            // qmp_capabilities, then add-fd with its descriptor.
            while text.iter().filter(|&&c| c == b'\n').count() < 2 {
                let mut buf = [0u8; 4096];
                let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let msg =
                    recvmsg::<()>(b.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
                        .unwrap();
                for c in msg.cmsgs().unwrap() {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        // SAFETY: the descriptor was just received and is owned by nobody else.
                        got = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
                    }
                }
                let n = msg.bytes;
                text.extend_from_slice(&buf[..n]);
                let lines: Vec<Value> = String::from_utf8_lossy(&text)
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                if let Some(last) = lines.last() {
                    if text.ends_with(b"\n") {
                        let reply = if last["execute"] == "add-fd" {
                            json!({"return": {"fdset-id": last["arguments"]["fdset-id"], "fd": 42}, "id": last["id"]})
                        } else {
                            json!({"return": {}, "id": last["id"]})
                        };
                        w.write_all(format!("{reply}\n").as_bytes()).unwrap();
                    }
                }
            }
            got
        });
        let c = QmpClient::handshake(a, Duration::from_secs(5)).unwrap();
        let file = tempfile::tempfile().unwrap();
        let info = c
            .execute_with_fd(
                &AddFd {
                    fdset_id: 1000,
                    opaque: None,
                },
                file.as_fd(),
            )
            .unwrap();
        assert_eq!((info.fdset_id, info.fd), (1000, 42));
        let received = peer.join().unwrap().expect("no descriptor received");
        let theirs = std::fs::File::from(received).metadata().unwrap();
        let ours = file.metadata().unwrap();
        assert_eq!((theirs.dev(), theirs.ino()), (ours.dev(), ours.ino()));
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
