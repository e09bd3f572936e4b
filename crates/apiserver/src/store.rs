//! The durable store: a revision log in SQLite (one row per write, like kine), an in-memory
//! index of the latest revision of every key, and a ring of recent events for watches.
//!
//! All writes go through one writer thread. It takes every request waiting in its queue,
//! runs each request's mutation against the current state (so read-modify-write is atomic
//! without retries), writes the resulting rows in ONE transaction, commits (SQLite WAL with
//! `synchronous=FULL` fsyncs the WAL on commit), and only then publishes the new state,
//! notifies watchers and answers the callers (group commit).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, RwLock};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use crate::error::{ApiError, ApiResult};

/// Store failures outside a request's own logic.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening store database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("store database {path} failed its integrity check: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("decoding stored object {key} at revision {revision}: {source}")]
    Decode {
        key: String,
        revision: i64,
        source: serde_json::Error,
    },
    #[error("starting store writer thread: {source}")]
    Thread { source: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub rev: i64,
    pub key: String,
    pub kind: EventType,
    /// The new object (for a delete: the last state, with the delete's resourceVersion).
    pub obj: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

/// What a mutation decided to do with the key.
pub enum Mutation {
    Put(Value),
    Delete,
    /// Nothing changed: answer with this object, write nothing.
    Noop(Value),
}

/// Events still in memory and a receiver for later ones.
pub type WatchStart = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);
/// A keyed snapshot, its revision, and a receiver for later events.
pub type Snapshot = (
    Vec<(String, Arc<Value>)>,
    i64,
    broadcast::Receiver<Arc<Event>>,
);

pub type MutateFn = Box<dyn FnOnce(Option<&Value>) -> ApiResult<Mutation> + Send>;

/// Result of a committed write.
#[derive(Debug, Clone)]
pub struct Written {
    pub obj: Arc<Value>,
    pub deleted: bool,
    pub created: bool,
}

struct WriteReq {
    key: String,
    mutate: MutateFn,
    reply: oneshot::Sender<ApiResult<Written>>,
}

enum Cmd {
    Write(WriteReq),
    Compact,
    Stop,
}

struct State {
    objects: BTreeMap<String, Arc<Value>>,
    rev: i64,
    ring: VecDeque<Arc<Event>>,
    /// Watches may start from any revision >= this one.
    oldest_watchable: i64,
    /// The last revision that wrote each resource (`group/plural/`): lets caches derived
    /// from one resource (the RBAC policy) know cheaply whether they are current.
    resource_revs: HashMap<String, i64>,
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Events kept in memory for watch-from-resourceVersion (like kube-apiserver's watch
    /// cache: a watcher further behind gets 410 Gone and lists again). Each holds the old
    /// and new object, so this bounds the server's memory during bursts of writes.
    pub ring_size: usize,
    /// Superseded revisions older than `rev - compact_window` are deleted by compaction.
    pub compact_window: i64,
    /// Run compaction after this many written revisions.
    pub compact_every: i64,
    /// Largest object stored, in bytes of JSON: etcd's default `--max-request-bytes`
    /// (1.5 MiB). A write over it fails with 413 "etcdserver: request is too large".
    pub max_object_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            ring_size: 10_000,
            compact_window: 1_000,
            compact_every: 5_000,
            max_object_bytes: 1_572_864,
        }
    }
}

pub struct Store {
    state: Arc<RwLock<State>>,
    events: broadcast::Sender<Arc<Event>>,
    tx: std::sync::mpsc::Sender<Cmd>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Storage key of an object: `group/plural/namespace/name` (group `core` for the legacy
/// group, empty namespace for cluster-scoped objects).
pub fn key(group: &str, plural: &str, ns: Option<&str>, name: &str) -> String {
    let g = if group.is_empty() { "core" } else { group };
    format!("{g}/{plural}/{}/{name}", ns.unwrap_or(""))
}

/// Key prefix of a collection: one namespace, or (None) every namespace / cluster scope.
pub fn prefix(group: &str, plural: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("{}{ns}/", resource_prefix(group, plural)),
        None => resource_prefix(group, plural),
    }
}

/// Prefix of all objects of a resource in every namespace.
pub fn resource_prefix(group: &str, plural: &str) -> String {
    let g = if group.is_empty() { "core" } else { group };
    format!("{g}/{plural}/")
}

/// The namespace part of a storage key (`None` for cluster-scoped objects).
pub fn key_namespace(key: &str) -> Option<&str> {
    key.split('/').nth(2).filter(|ns| !ns.is_empty())
}

/// `group/plural/` of a storage key.
fn resource_of_key(key: &str) -> Option<&str> {
    let first = key.find('/')?;
    let second = key[first + 1..].find('/')? + first + 1;
    Some(&key[..=second])
}

fn lock_read(s: &RwLock<State>) -> std::sync::RwLockReadGuard<'_, State> {
    s.read().unwrap_or_else(|p| p.into_inner())
}

fn lock_write(s: &RwLock<State>) -> std::sync::RwLockWriteGuard<'_, State> {
    s.write().unwrap_or_else(|p| p.into_inner())
}

pub fn set_rv(v: &mut Value, rev: i64) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

pub fn get_rv(v: &Value) -> Option<i64> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

impl Store {
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Arc<Store>, StoreError> {
        let p = path.display().to_string();
        let open_err = |source| StoreError::Open {
            path: p.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(open_err)?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: p,
                detail: check,
            });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log (
                id INTEGER PRIMARY KEY,
                key TEXT NOT NULL,
                created INTEGER NOT NULL,
                deleted INTEGER NOT NULL,
                prev_revision INTEGER NOT NULL,
                value BLOB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS log_key_id ON log(key, id);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(open_err)?;
        let rev: i64 = conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM log", [], |r| r.get(0))
            .map_err(open_err)?;
        let mut objects = BTreeMap::new();
        {
            let mut stmt = conn
                .prepare(
                    "SELECT l.id, l.key, l.deleted, l.value FROM log l
                     JOIN (SELECT key, MAX(id) AS id FROM log GROUP BY key) m ON l.id = m.id",
                )
                .map_err(open_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                })
                .map_err(open_err)?;
            for row in rows {
                let (id, k, deleted, value) = row.map_err(open_err)?;
                if deleted != 0 {
                    continue;
                }
                let mut v: Value =
                    serde_json::from_slice(&value).map_err(|source| StoreError::Decode {
                        key: k.clone(),
                        revision: id,
                        source,
                    })?;
                set_rv(&mut v, id);
                objects.insert(k, Arc::new(v));
            }
        }
        let (ring, oldest_watchable) =
            hydrate_ring(&conn, rev, opts.ring_size).map_err(open_err)?;
        tracing::info!(path = %p, revision = rev, objects = objects.len(), events = ring.len(), "store opened");
        let state = Arc::new(RwLock::new(State {
            objects,
            rev,
            ring,
            oldest_watchable,
            resource_revs: HashMap::new(),
        }));
        let (events, _) = broadcast::channel(65_536);
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer {
            conn,
            state: state.clone(),
            events: events.clone(),
            opts,
            since_compact: 0,
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| StoreError::Thread { source })?;
        let store = Arc::new(Store {
            state,
            events,
            tx,
            writer: std::sync::Mutex::new(Some(handle)),
        });
        Ok(store)
    }

    /// Atomically read-modify-write one key. Answered after the change is on disk.
    pub async fn write(&self, key: String, mutate: MutateFn) -> ApiResult<Written> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Write(WriteReq { key, mutate, reply }))
            .map_err(|_| ApiError::internal("store is shut down"))?;
        rx.await
            .map_err(|_| ApiError::internal("store writer stopped"))?
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        lock_read(&self.state).objects.get(key).cloned()
    }

    /// All objects under a key prefix, and the store revision they were read at.
    pub fn list(&self, prefix: &str) -> (Vec<Arc<Value>>, i64) {
        let st = lock_read(&self.state);
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.rev)
    }

    /// Keys and objects under a prefix.
    pub fn list_keyed(&self, prefix: &str) -> (Vec<(String, Arc<Value>)>, i64) {
        let st = lock_read(&self.state);
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (items, st.rev)
    }

    pub fn revision(&self) -> i64 {
        lock_read(&self.state).rev
    }

    /// The revisions of the last writes to each of `resources` (prefixes from
    /// [`resource_prefix`]) in this process, 0 for none: equal answers mean nothing under
    /// them changed in between.
    pub fn resource_revisions<const N: usize>(&self, resources: &[&str; N]) -> [i64; N] {
        let st = lock_read(&self.state);
        resources.map(|r| st.resource_revs.get(r).copied().unwrap_or(0))
    }

    /// Events after `from` (exclusive) still in memory, plus a receiver for everything
    /// later, with no gap. `Err` (410 Expired) when `from` is older than what is kept.
    pub fn watch_from(&self, from: i64) -> ApiResult<WatchStart> {
        let st = lock_read(&self.state);
        if from < st.oldest_watchable {
            return Err(ApiError::expired(format!(
                "too old resource version: {from} ({})",
                st.oldest_watchable
            )));
        }
        let backlog = st.ring.iter().filter(|e| e.rev > from).cloned().collect();
        let rx = self.events.subscribe();
        Ok((backlog, rx))
    }

    /// Snapshot of a prefix and a receiver for every later event, with no gap.
    pub fn snapshot_and_watch(&self, prefix: &str) -> Snapshot {
        let st = lock_read(&self.state);
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let rx = self.events.subscribe();
        (items, st.rev, rx)
    }

    pub fn compact_now(&self) {
        let _ = self.tx.send(Cmd::Compact);
    }

    /// Stops the writer thread after the queued writes.
    pub fn close(&self) {
        let _ = self.tx.send(Cmd::Stop);
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Rebuilds the ring of recent events from the log, so watches resuming from a
/// resourceVersion seen before a restart continue instead of getting 410.
fn hydrate_ring(
    conn: &Connection,
    rev: i64,
    ring_size: usize,
) -> rusqlite::Result<(VecDeque<Arc<Event>>, i64)> {
    let compacted: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE name = 'compact_rev'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let start = (rev - ring_size as i64).max(compacted).max(0);
    let mut ring = VecDeque::new();
    let mut latest: HashMap<String, Arc<Value>> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT id, key, created, deleted, prev_revision, value FROM log WHERE id > ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![start], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Vec<u8>>(5)?,
        ))
    })?;
    for row in rows {
        let (id, key, created, deleted, prev_rev, value) = row?;
        let Ok(mut obj) = serde_json::from_slice::<Value>(&value) else {
            continue;
        };
        set_rv(&mut obj, id);
        let prev = match latest.get(&key) {
            Some(p) => Some(p.clone()),
            None if prev_rev > 0 => conn
                .query_row(
                    "SELECT value FROM log WHERE id = ?1",
                    params![prev_rev],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .optional()?
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .map(|mut v| {
                    set_rv(&mut v, prev_rev);
                    Arc::new(v)
                }),
            None => None,
        };
        let obj = Arc::new(obj);
        let kind = if deleted != 0 {
            latest.remove(&key);
            EventType::Deleted
        } else {
            latest.insert(key.clone(), obj.clone());
            if created != 0 {
                EventType::Added
            } else {
                EventType::Modified
            }
        };
        ring.push_back(Arc::new(Event {
            rev: id,
            key,
            kind,
            obj,
            prev,
        }));
    }
    Ok((ring, start))
}

struct Writer {
    conn: Connection,
    state: Arc<RwLock<State>>,
    events: broadcast::Sender<Arc<Event>>,
    opts: StoreOptions,
    since_compact: i64,
}

struct Pending {
    reply: oneshot::Sender<ApiResult<Written>>,
    result: ApiResult<Written>,
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Cmd>) {
        const MAX_BATCH: usize = 512;
        let mut stop = false;
        while !stop {
            let first = match rx.recv() {
                Ok(c) => c,
                Err(_) => break,
            };
            let mut batch = Vec::new();
            let mut compact = false;
            let mut next = Some(first);
            while let Some(c) = next.take() {
                match c {
                    Cmd::Write(w) => batch.push(w),
                    Cmd::Compact => compact = true,
                    Cmd::Stop => stop = true,
                }
                if batch.len() < MAX_BATCH && !stop {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(batch);
            }
            if compact || self.since_compact >= self.opts.compact_every {
                self.compact();
            }
        }
        tracing::debug!("store writer stopped");
    }

    fn commit_batch(&mut self, batch: Vec<WriteReq>) {
        let base_rev = lock_read(&self.state).rev;
        let mut next = base_rev + 1;
        let mut overlay: HashMap<String, Option<Arc<Value>>> = HashMap::new();
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut pending: Vec<Pending> = Vec::with_capacity(batch.len());
        let txn = match self.conn.transaction() {
            Ok(t) => t,
            Err(e) => {
                for req in batch {
                    let _ = req
                        .reply
                        .send(Err(ApiError::internal(format!("store: {e}"))));
                }
                return;
            }
        };
        let mut db_error: Option<String> = None;
        for req in batch {
            let current: Option<Arc<Value>> = match overlay.get(&req.key) {
                Some(v) => v.clone(),
                None => lock_read(&self.state).objects.get(&req.key).cloned(),
            };
            let outcome = (req.mutate)(current.as_deref());
            let result = match outcome {
                Err(e) => Err(e),
                Ok(Mutation::Noop(v)) => Ok(Written {
                    obj: Arc::new(v),
                    deleted: false,
                    created: false,
                }),
                Ok(Mutation::Put(mut v)) => 'put: {
                    let rev = next;
                    set_rv(&mut v, rev);
                    let prev_rev = current.as_deref().and_then(get_rv).unwrap_or(0);
                    let bytes = serde_json::to_vec(&v).unwrap_or_default();
                    if bytes.len() > self.opts.max_object_bytes {
                        break 'put Err(ApiError::object_too_large());
                    }
                    if let Err(e) = txn.execute(
                        "INSERT INTO log (id, key, created, deleted, prev_revision, value) VALUES (?1, ?2, ?3, 0, ?4, ?5)",
                        params![rev, req.key, current.is_none() as i64, prev_rev, bytes],
                    ) {
                        db_error = Some(e.to_string());
                    }
                    next += 1;
                    let obj = Arc::new(v);
                    overlay.insert(req.key.clone(), Some(obj.clone()));
                    events.push(Arc::new(Event {
                        rev,
                        key: req.key.clone(),
                        kind: if current.is_some() {
                            EventType::Modified
                        } else {
                            EventType::Added
                        },
                        obj: obj.clone(),
                        prev: current.clone(),
                    }));
                    Ok(Written {
                        obj,
                        deleted: false,
                        created: current.is_none(),
                    })
                }
                Ok(Mutation::Delete) => match current.clone() {
                    None => Err(ApiError::internal(format!(
                        "delete of missing key {}",
                        req.key
                    ))),
                    Some(cur) => {
                        let rev = next;
                        let mut last = (*cur).clone();
                        set_rv(&mut last, rev);
                        let prev_rev = get_rv(&cur).unwrap_or(0);
                        let bytes = serde_json::to_vec(&last).unwrap_or_default();
                        if let Err(e) = txn.execute(
                            "INSERT INTO log (id, key, created, deleted, prev_revision, value) VALUES (?1, ?2, 0, 1, ?3, ?4)",
                            params![rev, req.key, prev_rev, bytes],
                        ) {
                            db_error = Some(e.to_string());
                        }
                        next += 1;
                        let obj = Arc::new(last);
                        overlay.insert(req.key.clone(), None);
                        events.push(Arc::new(Event {
                            rev,
                            key: req.key.clone(),
                            kind: EventType::Deleted,
                            obj: obj.clone(),
                            prev: Some(cur),
                        }));
                        Ok(Written {
                            obj,
                            deleted: true,
                            created: false,
                        })
                    }
                },
            };
            pending.push(Pending {
                reply: req.reply,
                result,
            });
        }
        if db_error.is_none() && !events.is_empty() {
            if let Err(e) = txn.commit() {
                db_error = Some(e.to_string());
            }
        } else {
            // Nothing to write (or a failed insert): roll back.
            drop(txn);
        }
        if let Some(e) = db_error {
            tracing::error!(error = %e, "store commit failed; batch rejected");
            for p in pending {
                let result = match p.result {
                    Ok(_) => Err(ApiError::internal(format!("store commit failed: {e}"))),
                    Err(err) => Err(err),
                };
                let _ = p.reply.send(result);
            }
            return;
        }
        self.since_compact += events.len() as i64;
        {
            let mut st = lock_write(&self.state);
            for (k, v) in overlay {
                match v {
                    Some(v) => {
                        st.objects.insert(k, v);
                    }
                    None => {
                        st.objects.remove(&k);
                    }
                }
            }
            st.rev = next - 1;
            for ev in &events {
                if let Some(resource) = resource_of_key(&ev.key) {
                    match st.resource_revs.get_mut(resource) {
                        Some(r) => *r = ev.rev,
                        None => {
                            st.resource_revs.insert(resource.to_string(), ev.rev);
                        }
                    }
                }
                st.ring.push_back(ev.clone());
                // Send under the lock so watch registration (read lock) never sees a gap.
                let _ = self.events.send(ev.clone());
            }
            while st.ring.len() > self.opts.ring_size {
                if let Some(old) = st.ring.pop_front() {
                    st.oldest_watchable = old.rev;
                }
            }
        }
        for p in pending {
            let _ = p.reply.send(p.result);
        }
    }

    /// Deletes revisions superseded before `rev - window`, and tombstones that old.
    fn compact(&mut self) {
        self.since_compact = 0;
        let rev = lock_read(&self.state).rev;
        let target = rev - self.opts.compact_window.max(1);
        if target <= 0 {
            return;
        }
        let res = (|| -> rusqlite::Result<usize> {
            let txn = self.conn.transaction()?;
            let done: Option<i64> = txn
                .query_row(
                    "SELECT value FROM meta WHERE name = 'compact_rev'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if done.unwrap_or(0) >= target {
                return Ok(0);
            }
            let n = txn.execute(
                "DELETE FROM log WHERE id <= ?1 AND (deleted = 1 OR EXISTS
                   (SELECT 1 FROM log newer WHERE newer.key = log.key AND newer.id > log.id))",
                params![target],
            )?;
            txn.execute(
                "INSERT INTO meta (name, value) VALUES ('compact_rev', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![target],
            )?;
            txn.commit()?;
            Ok(n)
        })();
        match res {
            Ok(n) => tracing::debug!(removed = n, up_to = target, "store compacted"),
            Err(e) => tracing::warn!(error = %e, "store compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(v: Value) -> MutateFn {
        Box::new(move |_| Ok(Mutation::Put(v)))
    }

    #[tokio::test]
    async fn writes_survive_reopen_and_compaction_keeps_latest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let opts = StoreOptions {
            ring_size: 4,
            compact_window: 2,
            compact_every: 1_000_000,
            ..StoreOptions::default()
        };
        {
            let store = Store::open(&path, opts.clone()).unwrap();
            for i in 0..10 {
                store
                    .write(
                        "core/configmaps/default/a".into(),
                        put(json!({"metadata": {"name": "a"}, "data": {"i": i.to_string()}})),
                    )
                    .await
                    .unwrap();
            }
            store
                .write(
                    "core/configmaps/default/b".into(),
                    put(json!({"metadata": {"name": "b"}})),
                )
                .await
                .unwrap();
            store
                .write(
                    "core/configmaps/default/b".into(),
                    Box::new(|_| Ok(Mutation::Delete)),
                )
                .await
                .unwrap();
            assert_eq!(store.revision(), 12);
            // Old revisions fell out of the ring: watching from them is 410 Expired.
            let err = store.watch_from(1).unwrap_err();
            assert_eq!(err.code, http::StatusCode::GONE);
            let (backlog, _rx) = store.watch_from(10).unwrap();
            assert_eq!(
                backlog.iter().map(|e| e.rev).collect::<Vec<_>>(),
                vec![11, 12]
            );
            store.compact_now();
            store.close();
        }
        let conn = Connection::open(&path).unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0))
            .unwrap();
        assert!(rows < 12, "compaction removed superseded rows, {rows} left");
        drop(conn);
        let store = Store::open(&path, opts).unwrap();
        assert_eq!(store.revision(), 12);
        // The ring is rebuilt from the log: resuming a watch from before the restart works.
        let (backlog, _rx) = store.watch_from(11).unwrap();
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].kind, EventType::Deleted);
        assert_eq!(backlog[0].key, "core/configmaps/default/b");
        assert!(store.watch_from(1).is_err());
        let a = store.get("core/configmaps/default/a").unwrap();
        assert_eq!(a["data"]["i"], "9");
        assert_eq!(a["metadata"]["resourceVersion"], "10");
        assert!(store.get("core/configmaps/default/b").is_none());
        store.close();
    }

    #[tokio::test]
    async fn concurrent_writers_are_serialised() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.write(
                    "core/counters//c".into(),
                    Box::new(|cur| {
                        let n = cur.and_then(|v| v["n"].as_i64()).unwrap_or(0);
                        Ok(Mutation::Put(json!({"metadata": {}, "n": n + 1})))
                    }),
                )
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.get("core/counters//c").unwrap()["n"], 50);
        store.close();
    }
}
