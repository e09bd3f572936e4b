//! `virtctl console`: the serial console over a websocket, raw terminal, `^]` to leave.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Session;

/// Ctrl+] ends the session, as in upstream virtctl and telnet.
const ESCAPE: u8 = 0x1d;

/// Puts the terminal in raw mode and restores it when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enable() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Splits input at the escape byte: the bytes to send, and whether the user escaped.
pub fn split_escape(chunk: &[u8]) -> (&[u8], bool) {
    match chunk.iter().position(|&b| b == ESCAPE) {
        Some(i) => (&chunk[..i], true),
        None => (chunk, false),
    }
}

pub async fn run(s: &Session, vmi: &str, timeout: Duration) -> Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let ws = loop {
        match s.open_stream(vmi, "console").await {
            Ok(ws) => break ws,
            // Like upstream, wait for the VMI to exist and run.
            Err(e)
                if Instant::now() < deadline
                    && (e.to_string().contains("not running")
                        || e.to_string().contains("not found")) =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context("Can't access VMI ".to_string() + vmi)),
        }
    };
    eprint!("Successfully connected to {vmi} console. The escape sequence is ^]\r\n");
    let raw = RawMode::enable();
    let interactive = raw.is_some();

    let (tx, mut rx) = mpsc::channel::<Option<Vec<u8>>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    break;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let (mut ws_tx, mut ws_rx) = ws.split();
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = ws_rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b).context("writing to stdout")?;
                    stdout.flush().context("writing to stdout")?;
                }
                Some(Ok(Message::Text(t))) => {
                    stdout.write_all(t.as_bytes()).context("writing to stdout")?;
                    stdout.flush().context("writing to stdout")?;
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    drop(raw);
                    return Err(anyhow::anyhow!(e).context("console connection"));
                }
            },
            input = rx.recv(), if stdin_open => match input {
                Some(Some(chunk)) => {
                    let (data, escaped) = split_escape(&chunk);
                    if !data.is_empty() {
                        ws_tx.send(Message::Binary(data.to_vec().into())).await.context("sending to console")?;
                    }
                    if escaped {
                        break;
                    }
                }
                // End of piped input: keep showing output until the console closes.
                _ => {
                    stdin_open = false;
                    if interactive {
                        break;
                    }
                }
            },
        }
    }
    let _ = ws_tx.close().await;
    drop(raw);
    eprintln!();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_cuts_input() {
        assert_eq!(split_escape(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_escape(b"\x1d"), (&b""[..], true));
    }
}
