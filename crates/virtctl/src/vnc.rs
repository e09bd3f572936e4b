//! `virtctl vnc`: a local TCP proxy to the VMI's VNC websocket.

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Session;

pub async fn run(s: &Session, vmi: &str, proxy_only: bool, address: &str, port: u16) -> Result<()> {
    // Fail early, before printing a port, when the VMI cannot be reached.
    let first = s
        .open_stream(vmi, "vnc")
        .await
        .map_err(|e| e.context(format!("Can't access VMI {vmi}")))?;
    let listener = TcpListener::bind((address, port))
        .await
        .with_context(|| format!("listening on {address}:{port}"))?;
    let local = listener.local_addr()?;
    if proxy_only {
        println!("{}", serde_json::json!({"port": local.port()}));
    } else {
        eprintln!(
            "No VNC viewer is started by this virtctl; connect one to {local} (e.g. `vncviewer {}::{}`)",
            local.ip(),
            local.port()
        );
    }
    let mut pending = Some(first);
    loop {
        let (tcp, _) = listener.accept().await.context("accepting a VNC client")?;
        let ws = match pending.take() {
            Some(ws) => ws,
            None => s.open_stream(vmi, "vnc").await?,
        };
        tokio::spawn(async move {
            if let Err(e) = bridge(tcp, ws).await {
                eprintln!("vnc connection ended: {e:#}");
            }
        });
    }
}

async fn bridge(tcp: TcpStream, ws: crate::client::Ws) -> Result<()> {
    let (mut rd, mut wr) = tcp.into_split();
    let (mut ws_tx, mut ws_rx) = ws.split();
    let up = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            ws_tx
                .send(Message::Binary(buf[..n].to_vec().into()))
                .await?;
        }
        let _ = ws_tx.close().await;
        anyhow::Ok(())
    };
    let down = async {
        while let Some(msg) = ws_rx.next().await {
            match msg? {
                Message::Binary(b) => wr.write_all(&b).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}
