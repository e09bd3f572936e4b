//! Upload throughput: `virtctl image-upload` of a raw image into a DataVolume through the
//! server's upload proxy (TLS, token, importer, sparse write, fsync) against `curl` posting
//! the same file to a plain HTTP sink that discards it, measured in the same run (medians
//! of `--runs`, default 3). Prints MiB/s and the ratio.
//!
//! `cargo build --release -p kubevirt-rs --bins --examples && target/release/examples/upload_bench [SIZE_MIB] [RUNS]`

mod bench_support;

use std::convert::Infallible;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench_support::{server_binary, BenchServer};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

/// A plain HTTP/1.1 sink: reads each request body to the end and answers 200.
async fn sink() -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut body = req.into_body();
                        while let Some(frame) = body.frame().await {
                            if frame.is_err() {
                                break;
                            }
                        }
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Empty::<
                            bytes::Bytes,
                        >::new()))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(port)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: u64 = args.get(1).map_or(Ok(512), |s| s.parse())?;
    let runs: usize = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let bin = server_binary()?;
    let virtctl = bin.with_file_name("virtctl");
    let tmp = tempfile::Builder::new()
        .prefix("kvrs-upload-bench")
        .tempdir()?;
    // Incompressible, non-zero data: what a real disk image costs to move.
    let image = tmp.path().join("image.raw");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&image)?);
        let mut block = vec![0u8; 1 << 20];
        for i in 0..size_mib {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u64).wrapping_mul(2654435761).wrapping_add(i) as u8 | 1;
            }
            f.write_all(&block)?;
        }
    }
    let bytes = size_mib << 20;
    let port = sink().await?;
    let server = BenchServer::start(&bin, tmp.path()).await?;
    let kubeconfig = tmp.path().join("data/kubeconfig");

    let mut curl = Vec::new();
    let mut upload = Vec::new();
    let mut copy = Vec::new();
    for run in 0..runs {
        // The floor set by the disk: the same bytes written beside the volumes and fsynced.
        let dest = tmp.path().join("data/copy.raw");
        let t = Instant::now();
        std::fs::copy(&image, &dest)?;
        std::fs::File::open(&dest)?.sync_all()?;
        copy.push(mib_s(bytes, t.elapsed()));
        std::fs::remove_file(&dest)?;

        let t = Instant::now();
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-H", "Expect:", "--data-binary"])
            .arg(format!("@{}", image.display()))
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .context("curl")?;
        if !out.status.success() {
            bail!("curl failed: {out:?}");
        }
        curl.push(mib_s(bytes, t.elapsed()));

        let name = format!("up{run}");
        let t = Instant::now();
        let out = Command::new(&virtctl)
            .args(["image-upload", "dv", &name, "--insecure"])
            .arg(format!("--size={}Mi", size_mib + 16))
            .arg(format!("--image-path={}", image.display()))
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .context("virtctl")?;
        if !out.status.success() {
            bail!(
                "virtctl image-upload failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        upload.push(mib_s(bytes, t.elapsed()));
        let _ = Command::new("kubectl")
            .args(["delete", "dv", &name, "--wait=true"])
            .env("KUBECONFIG", &kubeconfig)
            .output();
    }
    let (c, u, w) = (median(curl), median(upload), median(copy));
    println!("upload of {size_mib} MiB, median of {runs}:");
    println!("  curl -> plain HTTP sink:            {c:8.1} MiB/s");
    println!("  copy to the data dir + fsync:       {w:8.1} MiB/s (the disk's floor)");
    println!("  virtctl image-upload -> DataVolume: {u:8.1} MiB/s (whole command: create, wait, token, upload, processing)");
    println!(
        "  ratio upload/curl: {:.2}x, upload/(copy+fsync): {:.2}x",
        u / c,
        u / w
    );
    server.finish().await?;
    Ok(())
}
