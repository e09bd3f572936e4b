//! A real OCI registry on loopback (Debian's `docker-registry`), one per test that asks,
//! with its storage in a temporary directory. Images are pushed with `skopeo`.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub struct Registry {
    /// `127.0.0.1:PORT`, plain HTTP.
    pub addr: SocketAddr,
    child: Child,
    _storage: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until it answers `/v2/` with 200.
    pub fn start() -> Result<Registry> {
        Self::start_with("", "")
    }

    /// Starts a registry with more configuration: `http_extra` is YAML placed under `http:`
    /// (indented by two spaces, e.g. a `tls:` block), `sections` is top-level YAML (e.g. an
    /// `auth:` block). Files those name must outlive the registry. A configured registry is
    /// ready once it answers HTTP at all (401 with auth, 400 for plain HTTP to TLS).
    pub fn start_with(http_extra: &str, sections: &str) -> Result<Registry> {
        let storage = tempfile::tempdir().context("registry storage dir")?;
        // Ask the kernel for a free port, then hand it to the registry.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{http_extra}{sections}",
                storage.path().join("data").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (scripts/install-host-deps.sh installs it)")?;
        let plain = http_extra.is_empty() && sections.is_empty();
        let mut registry = Registry {
            addr,
            child,
            _storage: storage,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match registry.http_status("/v2/") {
                Ok(200) => return Ok(registry),
                Ok(_) if !plain => return Ok(registry),
                _ => {}
            }
            if let Some(status) = registry.child.try_wait()? {
                bail!("docker-registry exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not answer on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, the host part of image references served here.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Pushes an OCI image layout directory (tag `devel` inside it) as `repo_and_tag`
    /// (for example `kubevirt/cirros-container-disk-demo:devel`).
    pub fn push_oci_layout(&self, layout: &Path, repo_and_tag: &str) -> Result<()> {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:devel", layout.display()))
            .arg(format!("docker://{}/{repo_and_tag}", self.host()))
            .output()
            .context("running skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo copy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Pushes the test guest's containerDisk under `repo_and_tag`.
    pub fn push_guest_containerdisk(&self, repo_and_tag: &str) -> Result<()> {
        self.push_oci_layout(&crate::guests().containerdisk_oci, repo_and_tag)
    }

    /// Status code of a GET on the registry (accepting OCI and Docker v2 manifests).
    pub fn http_status(&self, path: &str) -> Result<u16> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: {OCI_MANIFEST}, {DOCKER_MANIFEST}\r\n\r\n",
            self.addr
        )?;
        let mut head = [0u8; 16];
        s.read_exact(&mut head)?;
        let line = String::from_utf8_lossy(&head);
        line.get(9..12)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad HTTP status line {line:?}"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
