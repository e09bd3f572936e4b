//! QEMU guest agent client (`org.qemu.guest_agent.0` virtio-serial channel).
//!
//! The host side is a unix socket served by QEMU; one client at a time. Each call connects,
//! resynchronises with `guest-sync-delimited` (the agent prefixes its answer with a 0xFF byte,
//! which lets us skip stale bytes left by an earlier client), runs one command and disconnects.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{HypervisorError, Result};

/// Commands after which the agent sends no answer.
const NO_REPLY: &[&str] = &["guest-shutdown", "guest-suspend-disk", "guest-suspend-ram"];

/// Runs `command` through the agent socket at `path`.
pub fn guest_agent_command(
    path: &Path,
    command: &str,
    arguments: Option<Value>,
    timeout: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let fail = |desc: String| HypervisorError::GuestAgent {
        command: command.to_string(),
        desc,
    };
    let stream = UnixStream::connect(path)
        .map_err(|e| fail(format!("cannot connect to {}: {e}", path.display())))?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| fail(format!("cannot clone socket: {e}")))?;
    let mut reader = BufReader::new(stream);

    let sync_id: u64 = u64::from(std::process::id()) << 20 | u64::from(nanos() & 0xFFFFF);
    let sync = json!({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}});
    send(&mut writer, &sync).map_err(|e| fail(format!("write: {e}")))?;
    // Skip everything up to the 0xFF delimiter, then read the sync answer.
    loop {
        set_timeout(reader.get_ref(), deadline).map_err(|e| fail(e.to_string()))?;
        let mut skipped = Vec::new();
        reader
            .read_until(0xFF, &mut skipped)
            .map_err(|e| fail(format!("no answer to guest-sync ({e})")))?;
        if skipped.last() != Some(&0xFF) {
            return Err(fail("agent closed the channel during sync".into()));
        }
        let line = read_line(&mut reader, deadline).map_err(&fail)?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v.get("return").and_then(Value::as_u64) == Some(sync_id) {
            break;
        }
    }

    let mut msg = json!({ "execute": command });
    if let Some(args) = arguments {
        msg["arguments"] = args;
    }
    send(&mut writer, &msg).map_err(|e| fail(format!("write: {e}")))?;
    if NO_REPLY.contains(&command) {
        return Ok(Value::Null);
    }
    loop {
        let line = read_line(&mut reader, deadline).map_err(&fail)?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| fail(format!("answer is not JSON ({e}): {line:?}")))?;
        if let Some(err) = v.get("error") {
            return Err(fail(format!(
                "{}: {}",
                err["class"].as_str().unwrap_or("error"),
                err["desc"].as_str().unwrap_or("")
            )));
        }
        if let Some(ret) = v.get("return") {
            return Ok(ret.clone());
        }
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

fn send(w: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut bytes = v.to_string().into_bytes();
    bytes.push(b'\n');
    w.write_all(&bytes)
}

fn set_timeout(s: &UnixStream, deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "guest agent timed out",
        ));
    }
    s.set_read_timeout(Some(left))
}

fn read_line(r: &mut BufReader<UnixStream>, deadline: Instant) -> Result<String, String> {
    set_timeout(r.get_ref(), deadline).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // Bound the line so a misbehaving guest cannot make us allocate without limit.
    let n = r
        .by_ref()
        .take(4 << 20)
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("reading answer: {e}"))?;
    if n == 0 {
        return Err("agent closed the channel".into());
    }
    Ok(String::from_utf8_lossy(&buf).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn sync_skips_stale_bytes_and_returns_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            let id = v["arguments"]["id"].clone();
            w.write_all(b"{\"return\": 1}\n garbage").unwrap();
            w.write_all(&[0xFF]).unwrap();
            w.write_all(format!("{}\n", json!({"return": id})).as_bytes())
                .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("guest-get-osinfo"));
            w.write_all(b"{\"return\": {\"id\": \"busybox\"}}\n")
                .unwrap();
        });
        let v =
            guest_agent_command(&path, "guest-get-osinfo", None, Duration::from_secs(5)).unwrap();
        assert_eq!(v["id"], "busybox");
    }

    #[test]
    fn silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let l = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(s);
        });
        let err =
            guest_agent_command(&path, "guest-ping", None, Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("guest-ping"), "{err}");
        h.join().unwrap();
    }
}
