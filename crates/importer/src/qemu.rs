//! `qemu-img info`, `check` and `convert`, always told the format (never probing) and always
//! with `backing: null`, so even an image the inspector misjudged cannot make qemu-img open
//! another file.

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kubevirt_diskprep::inspect::ImageFormat;

use crate::error::{ImportError, ImportErrorKind, Result};
use crate::nbd::{self, Growing};

/// Where an image lies: a whole file, or a window of one (an OVA's member).
#[derive(Debug, Clone)]
pub(crate) struct Region<'a> {
    pub(crate) path: &'a Path,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// The whole file is the image.
    pub(crate) whole: bool,
}

impl Region<'_> {
    /// The `json:` pseudo-filename opening this region as `format`, with no backing file.
    fn json_filename(&self, format: ImageFormat) -> String {
        let file = serde_json::json!({
            "driver": "file",
            "filename": self.path.to_string_lossy(),
        });
        let protocol = if self.whole {
            file
        } else {
            serde_json::json!({
                "driver": "raw",
                "offset": self.offset,
                "size": self.len,
                "file": file,
            })
        };
        let mut opts = serde_json::json!({ "driver": format.as_str(), "file": protocol });
        if supports_backing(format) {
            opts["backing"] = serde_json::Value::Null;
        }
        format!("json:{opts}")
    }
}

/// What qemu-img reads: a local region, or a file still being downloaded, served over NBD.
pub(crate) enum Input<'a> {
    Local(Region<'a>),
    Growing {
        path: &'a Path,
        size: u64,
        growing: &'a Arc<Growing>,
    },
}

impl Input<'_> {
    /// The filename to give qemu-img and, for a growing file, the connection it inherits.
    fn open(
        &self,
        format: ImageFormat,
        cancel: &Arc<AtomicBool>,
    ) -> Result<(String, Option<UnixStream>)> {
        match self {
            Input::Local(region) => Ok((region.json_filename(format), None)),
            Input::Growing {
                path,
                size,
                growing,
            } => {
                let (conn, _server) = nbd::serve(path, *size, Arc::clone(growing), cancel.clone())
                    .map_err(|e| ImportError::io("serving", path, e))?;
                let file = serde_json::json!({
                    "driver": "nbd",
                    "server": { "type": "fd", "str": conn.as_raw_fd().to_string() },
                });
                let mut opts = serde_json::json!({ "driver": format.as_str(), "file": file });
                if supports_backing(format) {
                    opts["backing"] = serde_json::Value::Null;
                }
                Ok((format!("json:{opts}"), Some(conn)))
            }
        }
    }
}

/// Formats whose driver takes a `backing` option (QEMU's BlockdevOptionsGenericCOWFormat).
fn supports_backing(format: ImageFormat) -> bool {
    matches!(
        format,
        ImageFormat::Qcow2 | ImageFormat::Qcow | ImageFormat::Qed | ImageFormat::Vmdk
    )
}

/// What `qemu-img` printed when it failed, cut to a sane length, with our `json:` filename
/// replaced by the source's name.
struct Failure {
    stdout: Vec<u8>,
    stderr: String,
    status: String,
}

impl Failure {
    /// CDI's wording for a failed command (pkg/image/exec.go, `cmdExecError`).
    fn message(&self) -> String {
        format!(
            "qemu-img execution failed: {}: {}",
            self.stderr, self.status
        )
    }

    fn no_space(&self) -> bool {
        let s = self.stderr.to_ascii_lowercase();
        s.contains("no space left on device") || s.contains("disk quota exceeded")
    }
}

/// Runs qemu-img with `args`, polling `cancel`; stdout lines go to `on_stdout`.
fn run(
    args: &[String],
    conn: Option<UnixStream>,
    shown_as: (&str, &str),
    cancel: &AtomicBool,
    on_stdout: &(dyn Fn(&str) + Sync),
) -> Result<std::result::Result<Vec<u8>, Failure>> {
    let program = kubevirt_diskprep::qemu_img_program();
    tracing::debug!(args = ?args, "running qemu-img");
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(conn) = &conn {
        let fd = conn.as_raw_fd();
        // SAFETY: runs in the child between fork and exec and only calls fcntl, which is
        // async-signal-safe, on a descriptor open in the parent: qemu-img inherits exactly
        // this one connection (std opened it close-on-exec).
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let spawned = cmd.spawn();
    // qemu-img has its copy; ours must go so the server sees it leave.
    drop(conn);
    let mut child = spawned.map_err(|e| {
        ImportError::new(
            ImportErrorKind::Io,
            format!("qemu-img execution failed: starting {program}: {e}"),
        )
        .retryable(false)
    })?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ImportError::new(
            ImportErrorKind::Io,
            "qemu-img execution failed: no output pipes",
        ));
    };
    let (out, err, status) = std::thread::scope(|s| {
        let out = s.spawn(move || {
            // Progress arrives as "(12.34/100%)\r"; info and check print JSON.
            let mut all = Vec::new();
            let mut line = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        for &b in &buf[..n] {
                            if b == b'\r' || b == b'\n' {
                                on_stdout(&String::from_utf8_lossy(&line));
                                line.clear();
                            } else if line.len() < 4096 {
                                line.push(b);
                            }
                        }
                        if all.len() < (16 << 20) {
                            all.extend_from_slice(&buf[..n]);
                        }
                    }
                }
            }
            all
        });
        let err = s.spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) if kept.len() < 8192 => kept.extend_from_slice(&buf[..n]),
                    Ok(_) => {}
                }
            }
            kept
        });
        let status = loop {
            if cancel.load(Ordering::Relaxed) {
                let _ = child.kill();
            }
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    let _ = child.kill();
                    break Err(e);
                }
            }
        };
        (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
            status,
        )
    });
    if cancel.load(Ordering::Relaxed) {
        return Err(ImportError::cancelled());
    }
    let status = status.map_err(|e| {
        ImportError::new(
            ImportErrorKind::Io,
            format!("qemu-img execution failed: waiting: {e}"),
        )
    })?;
    if status.success() {
        return Ok(Ok(out));
    }
    // The first lines say it; qemu-img repeats itself for every failed request.
    let text = String::from_utf8_lossy(&err);
    let lines: Vec<&str> = text.trim().lines().collect();
    let mut stderr = lines.iter().take(3).copied().collect::<Vec<_>>().join("\n");
    if lines.len() > 3 {
        stderr.push_str(&format!(" (and {} more lines)", lines.len() - 3));
    }
    if let Some(cut) = stderr.char_indices().nth(2000).map(|(i, _)| i) {
        stderr.truncate(cut);
        stderr.push_str("...");
    }
    let stderr = stderr.replace(shown_as.0, shown_as.1);
    // As Go's exec.ExitError prints itself.
    let status = match status.code() {
        Some(code) => format!("exit status {code}"),
        None => format!("signal: {}", status),
    };
    Ok(Err(Failure {
        stdout: out,
        stderr,
        status,
    }))
}

/// The virtual size of the image in `region`, by `qemu-img info`.
pub(crate) fn virtual_size(
    input: &Input<'_>,
    format: ImageFormat,
    source: &str,
    cancel: &Arc<AtomicBool>,
) -> Result<u64> {
    let (name, conn) = input.open(format, cancel)?;
    let args = vec!["info".to_owned(), "--output=json".to_owned(), name.clone()];
    let out = run(&args, conn, (&name, source), cancel, &|_| {})?
        .map_err(|f| ImportError::new(ImportErrorKind::Corrupt, f.message()).retryable(false))?;
    let info: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
        ImportError::new(
            ImportErrorKind::Corrupt,
            format!("Invalid json for image {source}: {e}"),
        )
    })?;
    info.get("virtual-size")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            ImportError::new(
                ImportErrorKind::Corrupt,
                format!("Invalid json for image {source}: no virtual-size"),
            )
        })
}

/// `qemu-img check` for the formats it can check: a truncated or damaged qcow2 otherwise
/// converts "successfully" with zeros where the data was. Leaks are harmless and ignored.
pub(crate) fn check(
    region: &Region<'_>,
    format: ImageFormat,
    source: &str,
    cancel: &AtomicBool,
) -> Result<()> {
    if !matches!(
        format,
        ImageFormat::Qcow2 | ImageFormat::Vhdx | ImageFormat::Vdi
    ) {
        return Ok(());
    }
    let name = region.json_filename(format);
    let args = vec!["check".to_owned(), "--output=json".to_owned(), name.clone()];
    let failure = match run(&args, None, (&name, source), cancel, &|_| {})? {
        Ok(_) => return Ok(()),
        Err(f) => f,
    };
    match failure.status.as_str() {
        // Leaks only: harmless for a copy. 63: the format has no checks.
        "exit status 3" | "exit status 63" => Ok(()),
        // Corruptions found; the JSON report says how many.
        "exit status 2" => {
            let report: Option<serde_json::Value> = serde_json::from_slice(&failure.stdout).ok();
            let count = |key: &str| {
                report
                    .as_ref()
                    .and_then(|r| r.get(key))
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0)
            };
            Err(ImportError::new(
                ImportErrorKind::Corrupt,
                format!(
                    "qemu-img check found {} corruptions and {} check errors in {format} image {source}",
                    count("corruptions"),
                    count("check-errors")
                ),
            )
            .retryable(false))
        }
        _ => Err(ImportError::new(ImportErrorKind::Corrupt, failure.message()).retryable(false)),
    }
}

/// The target's cache mode: O_DIRECT ("none") where the filesystem has it, as CDI chooses, so
/// the conversion does not fill the page cache with the whole disk and our final fsync has
/// little left to do; elsewhere (tmpfs) "unsafe": no flushes, the final fsync makes it durable.
fn cache_mode(dest: &Path) -> &'static str {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(dest);
    match probe {
        Ok(_) => "none",
        Err(_) => "unsafe",
    }
}

/// Converts `region` (in `format`) to a sparse raw file at `dest`, which qemu-img creates.
/// Progress (0..=100 percent) is scaled onto `progress_scale` bytes into `counter`.
pub(crate) fn convert(
    input: &Input<'_>,
    format: ImageFormat,
    dest: &Path,
    source: &str,
    cancel: &Arc<AtomicBool>,
    progress: Option<(&AtomicU64, u64)>,
) -> Result<()> {
    let (name, conn) = input.open(format, cancel)?;
    let args = vec![
        "convert".to_owned(),
        "-p".to_owned(),
        "-t".to_owned(),
        cache_mode(dest).to_owned(),
        // Out-of-order writes with more coroutines: the target is a fresh file.
        "-W".to_owned(),
        "-m".to_owned(),
        "16".to_owned(),
        "-O".to_owned(),
        "raw".to_owned(),
        name.clone(),
        dest.to_string_lossy().into_owned(),
    ];
    let on_stdout = |line: &str| {
        let Some((counter, scale)) = progress else {
            return;
        };
        let pct = line
            .trim()
            .strip_prefix('(')
            .and_then(|l| l.split('/').next())
            .and_then(|p| p.parse::<f64>().ok());
        if let Some(pct) = pct {
            let done = (scale as f64 * pct.clamp(0.0, 100.0) / 100.0) as u64;
            counter.fetch_max(done, Ordering::Relaxed);
        }
    };
    run(&args, conn, (&name, source), cancel, &on_stdout)?.map_err(|f| {
        let kind = if f.no_space() {
            ImportErrorKind::NoSpace
        } else {
            ImportErrorKind::Corrupt
        };
        ImportError::new(
            kind,
            format!(
                "Conversion to Raw failed: could not convert image to raw: {}",
                f.message()
            ),
        )
        .retryable(false)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_filename_escapes_and_nulls_backing() {
        let p = Path::new("/tmp/a \"b\".img");
        let r = Region {
            path: p,
            offset: 512,
            len: 1024,
            whole: false,
        };
        let name = r.json_filename(ImageFormat::Vmdk);
        let v: serde_json::Value =
            serde_json::from_str(name.strip_prefix("json:").unwrap()).unwrap();
        assert_eq!(v["backing"], serde_json::Value::Null);
        assert_eq!(v["file"]["driver"], "raw");
        assert_eq!(v["file"]["offset"], 512);
        assert_eq!(v["file"]["file"]["filename"], "/tmp/a \"b\".img");
        let whole = Region { whole: true, ..r };
        let v: serde_json::Value = serde_json::from_str(
            whole
                .json_filename(ImageFormat::Vpc)
                .strip_prefix("json:")
                .unwrap(),
        )
        .unwrap();
        assert!(v.get("backing").is_none());
        assert_eq!(v["file"]["driver"], "file");
    }
}
