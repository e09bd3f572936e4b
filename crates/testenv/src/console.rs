//! Reads a guest's serial console (a unix socket QEMU serves) in the background and lets a
//! test wait for what the guest prints, or type into its shell.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Everything the guest printed so far, shared with the reader thread.
#[derive(Default)]
struct Output {
    text: String,
    closed: bool,
}

pub struct Console {
    writer: UnixStream,
    output: Arc<(Mutex<Output>, Condvar)>,
}

impl Console {
    /// Connects to a serial socket, waiting up to `timeout` for it to appear.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Console> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("connecting to {}", path.display()))
                }
            }
        };
        Self::from_stream(stream)
    }

    /// Wraps an already connected stream (for example a console proxied by a launcher).
    pub fn from_stream(stream: UnixStream) -> Result<Console> {
        let mut reader = stream.try_clone().context("cloning console stream")?;
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let shared = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, cvar) = &*shared;
                let mut out = lock.lock().unwrap_or_else(|p| p.into_inner());
                if n == 0 {
                    out.closed = true;
                    cvar.notify_all();
                    return;
                }
                out.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                cvar.notify_all();
            }
        });
        Ok(Console {
            writer: stream,
            output,
        })
    }

    /// Waits until the output contains `needle` at least `count` times; returns the output.
    pub fn wait_for_count(&self, needle: &str, count: usize, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.output;
        let mut out = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if out.text.matches(needle).count() >= count {
                return Ok(out.text.clone());
            }
            let now = Instant::now();
            if out.closed || now >= deadline {
                bail!(
                    "console: {:?} seen {} of {count} times ({}); output so far:\n{}",
                    needle,
                    out.text.matches(needle).count(),
                    if out.closed {
                        "console closed"
                    } else {
                        "timed out"
                    },
                    out.text
                );
            }
            out = cvar
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until the output contains `needle`; returns the output.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_count(needle, 1, timeout)
    }

    /// Waits until the console is closed (the guest's QEMU exited); returns the output.
    pub fn wait_closed(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.output;
        let mut out = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !out.closed {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "console still open after {timeout:?}; output:\n{}",
                    out.text
                );
            }
            out = cvar
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(out.text.clone())
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        let (lock, _) = &*self.output;
        lock.lock().unwrap_or_else(|p| p.into_inner()).text.clone()
    }

    /// Types a line into the guest's shell.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .context("writing to console")
    }

    /// Types a command and waits for a marker the command prints; returns the output.
    /// The marker is assembled by the shell, so the echo of the typed line does not match.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let done = format!("DONE-{nonce}");
        self.send_line(&format!("{command}; echo DO''NE-{nonce}"))?;
        self.wait_for(&done, timeout)
    }
}
