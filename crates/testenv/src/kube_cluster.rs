//! A real Kubernetes control plane for the cluster-mode tests: Debian's etcd plus
//! kube-apiserver, kube-controller-manager and kube-scheduler built from Go modules by
//! `scripts/build-k8s.sh` (cached outside the clone). No kubelet, so no node: pods are
//! created by the controllers, seen by the scheduler and stay Pending.
//!
//! Everything listens on free loopback ports; certificates, kubeconfigs, etcd's data and
//! each component's log (`<name>.log`) live in one temporary directory that goes away
//! with the [`KubeCluster`]. Certificates are made with the `openssl` command line tool
//! (rcgen cannot put several `O=` attributes, i.e. groups, in one subject).

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The control-plane binaries `scripts/build-k8s.sh` puts in the cache directory.
pub const K8S_BINARIES: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];
/// Debian's `etcd-server` (3.4), installed by `scripts/install-host-deps.sh`.
const ETCD: &str = "/usr/bin/etcd";
/// Set (to anything but empty or `0`) to make [`KubeCluster::start_or_skip`] fail instead
/// of skipping when the binaries are missing.
pub const REQUIRE_K8S_ENV: &str = "KUBEVIRT_RS_REQUIRE_K8S";
/// How long each stage of the start may take (etcd, the API server, the two controllers).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace period between SIGTERM and SIGKILL when the cluster is dropped. The controllers
/// and etcd exit within 0.1 s; kube-apiserver stops serving at once but then often lingers
/// 3 to 14 s in its storage shutdown, which a throwaway test cluster need not wait for.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// The Service CIDR and the first address in it (the `kubernetes` Service's ClusterIP).
const SERVICE_CIDR: &str = "10.96.0.0/12";
const SERVICE_IP: &str = "10.96.0.1";

/// The host's address on its default route. An Endpoints address may not be loopback, so
/// processes standing in for pods listen there (see [`KubeCluster::serve_service_from`]).
pub fn host_ip() -> Result<String> {
    let out = Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output()
        .context("running ip route")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            if let Some(ip) = words.next() {
                return Ok(ip.to_string());
            }
        }
    }
    bail!("no default route to take a host address from: {text}")
}

/// A port free on `ip` now (another process may take it before it is used).
pub fn free_port(ip: &str) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Where `scripts/build-k8s.sh` caches the binaries: `$KUBEVIRT_RS_K8S`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs/k8s`.
pub fn k8s_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBEVIRT_RS_K8S").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".cache")
        });
    cache.join("kubevirt-rs/k8s")
}

/// What is missing to start a cluster (empty when everything is there).
pub fn missing_k8s_binaries() -> Vec<PathBuf> {
    let dir = k8s_bin_dir();
    let mut missing: Vec<PathBuf> = K8S_BINARIES
        .iter()
        .map(|b| dir.join(b))
        .filter(|p| !p.is_file())
        .collect();
    if !Path::new(ETCD).is_file() {
        missing.push(PathBuf::from(ETCD));
    }
    missing
}

/// One control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.
/// Dropping it stops them (SIGTERM, then SIGKILL after a grace period) and removes its
/// directory. A `KubeCluster` kept in a `static` is never dropped: its processes would
/// outlive the test binary, so keep one per test (or per test function group) instead.
pub struct KubeCluster {
    /// In start order; stopped in reverse.
    procs: Vec<Proc>,
    server_url: String,
    admin_kubeconfig: PathBuf,
    ca_pem: PathBuf,
    ca_key: PathBuf,
    users_made: AtomicU64,
    // Declared last: removed after the processes are gone.
    dir: tempfile::TempDir,
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// Free loopback ports, all distinct (their listeners are held until all are chosen).
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
    scheduler: u16,
}

impl Ports {
    fn pick() -> Result<Ports> {
        let listeners = (0..5)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()
            .context("picking free loopback ports")?;
        let p = |i: usize| -> Result<u16> { Ok(listeners[i].local_addr()?.port()) };
        Ok(Ports {
            etcd_client: p(0)?,
            etcd_peer: p(1)?,
            apiserver: p(2)?,
            controller_manager: p(3)?,
            scheduler: p(4)?,
        })
    }
}

impl KubeCluster {
    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler on free
    /// loopback ports and waits until the API server's `/readyz` and both controllers'
    /// `/healthz` answer 200. The binaries come from [`k8s_bin_dir`]; if they are missing
    /// the error says to run `scripts/build-k8s.sh`.
    pub fn start() -> Result<KubeCluster> {
        let missing = missing_k8s_binaries();
        if !missing.is_empty() {
            bail!("{}", missing_message(&missing));
        }
        // A port picked free can be taken by someone else before the component binds it:
        // start again on new ports when that happens.
        let mut attempt = 1;
        loop {
            match Self::start_once() {
                Ok(cluster) => return Ok(cluster),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("KubeCluster: a port was taken, starting again ({e:#})");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`KubeCluster::start`], or `None` (with a message on stderr) when the binaries are
    /// missing and `KUBEVIRT_RS_REQUIRE_K8S` is not set, so that a test can skip itself on a
    /// machine where `scripts/build-k8s.sh` has not run. `scripts/test.sh` builds them.
    pub fn start_or_skip() -> Result<Option<KubeCluster>> {
        let missing = missing_k8s_binaries();
        let required = std::env::var(REQUIRE_K8S_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        if !missing.is_empty() && !required {
            eprintln!(
                "skipping: {} ({REQUIRE_K8S_ENV}=1 makes this an error)",
                missing_message(&missing)
            );
            return Ok(None);
        }
        Self::start().map(Some)
    }

    fn start_once() -> Result<KubeCluster> {
        let bin = k8s_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("kubevirt-rs-kube-")
            .tempdir()
            .context("creating the cluster's directory")?;
        let root = dir.path().to_path_buf();
        let root = root.as_path();
        let pki = root.join("pki");
        std::fs::create_dir_all(&pki)?;
        let ports = Ports::pick()?;
        let server_url = format!("https://127.0.0.1:{}", ports.apiserver);

        // Certificates and keys.
        let ca = CertFiles::ca(&pki, "ca", "kubevirt-rs-test-ca")?;
        let front_proxy_ca = CertFiles::ca(&pki, "front-proxy-ca", "kubevirt-rs-front-proxy-ca")?;
        let sans = [
            format!("IP:127.0.0.1,IP:{SERVICE_IP},DNS:localhost,DNS:kubernetes"),
            "DNS:kubernetes.default,DNS:kubernetes.default.svc".to_string(),
            "DNS:kubernetes.default.svc.cluster.local".to_string(),
        ]
        .join(",");
        let serving = CertFiles::leaf(
            &pki,
            "apiserver",
            &ca,
            "kube-apiserver",
            &[],
            Usage::Server(&sans),
        )?;
        let admin = CertFiles::leaf(
            &pki,
            "admin",
            &ca,
            "kubernetes-admin",
            &["system:masters"],
            Usage::Client,
        )?;
        let cm_cert = CertFiles::leaf(
            &pki,
            "controller-manager",
            &ca,
            "system:kube-controller-manager",
            &[],
            Usage::Client,
        )?;
        let sched_cert = CertFiles::leaf(
            &pki,
            "scheduler",
            &ca,
            "system:kube-scheduler",
            &[],
            Usage::Client,
        )?;
        let proxy_client = CertFiles::leaf(
            &pki,
            "front-proxy-client",
            &front_proxy_ca,
            "front-proxy-client",
            &[],
            Usage::Client,
        )?;
        let sa_key = pki.join("sa.key");
        let sa_pub = pki.join("sa.pub");
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &s(&sa_key),
        ])?;
        openssl(&["pkey", "-in", &s(&sa_key), "-pubout", "-out", &s(&sa_pub)])?;

        let admin_kubeconfig = root.join("admin.kubeconfig");
        write_kubeconfig(&admin_kubeconfig, &server_url, &ca.crt, &admin, "admin")?;
        let cm_kubeconfig = root.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &cm_kubeconfig,
            &server_url,
            &ca.crt,
            &cm_cert,
            "system:kube-controller-manager",
        )?;
        let sched_kubeconfig = root.join("scheduler.kubeconfig");
        write_kubeconfig(
            &sched_kubeconfig,
            &server_url,
            &ca.crt,
            &sched_cert,
            "system:kube-scheduler",
        )?;

        let mut cluster = KubeCluster {
            procs: Vec::new(),
            server_url: server_url.clone(),
            admin_kubeconfig,
            ca_pem: ca.crt.clone(),
            ca_key: ca.key.clone(),
            users_made: AtomicU64::new(0),
            dir,
        };

        // etcd and the API server start together (the API server retries etcd).
        let etcd_client = format!("http://127.0.0.1:{}", ports.etcd_client);
        let etcd_peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
        let etcd_data = root.join("etcd");
        cluster.spawn(
            "etcd",
            Path::new(ETCD),
            &[
                "--name=default".into(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={etcd_client}"),
                format!("--advertise-client-urls={etcd_client}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=default={etcd_peer}"),
                "--initial-cluster-state=new".into(),
                "--logger=zap".into(),
                "--log-outputs=stderr".into(),
            ],
        )?;
        let apiserver_certs = root.join("apiserver");
        cluster.spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={}", ports.apiserver),
                format!("--cert-dir={}", apiserver_certs.display()),
                format!("--tls-cert-file={}", serving.crt.display()),
                format!("--tls-private-key-file={}", serving.key.display()),
                format!("--client-ca-file={}", ca.crt.display()),
                "--authorization-mode=Node,RBAC".into(),
                "--endpoint-reconciler-type=none".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", sa_pub.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                "--allow-privileged=true".into(),
                "--enable-aggregator-routing=true".into(),
                format!(
                    "--requestheader-client-ca-file={}",
                    front_proxy_ca.crt.display()
                ),
                "--requestheader-allowed-names=front-proxy-client".into(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-username-headers=X-Remote-User".into(),
                format!("--proxy-client-cert-file={}", proxy_client.crt.display()),
                format!("--proxy-client-key-file={}", proxy_client.key.display()),
                "--profiling=false".into(),
            ],
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        cluster.wait_ready("etcd", deadline, || {
            http_get(&format!("{etcd_client}/health"), Tls::None)
        })?;
        let readyz = format!("{server_url}/readyz");
        let tls = Tls::Client {
            ca: &ca.crt,
            cert: &admin.crt,
            key: &admin.key,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        cluster
            .wait_ready("kube-apiserver", deadline, || http_get(&readyz, tls))
            .map_err(|e| {
                // Say which checks are failing.
                match http_get(&format!("{readyz}?verbose"), tls) {
                    Ok((_, body)) => e.context(format!("/readyz?verbose:\n{}", tail(&body, 40))),
                    Err(_) => e,
                }
            })?;

        // The controllers give up if the API server is not healthy within seconds of their
        // start, hence after it is ready.
        let common = |kubeconfig: &Path, port: u16, certs: &str| -> Vec<String> {
            vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--authentication-kubeconfig={}", kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kubeconfig.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", root.join(certs).display()),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ]
        };
        let mut cm_args = common(
            &cm_kubeconfig,
            ports.controller_manager,
            "controller-manager",
        );
        cm_args.extend([
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", sa_key.display()),
            format!("--root-ca-file={}", ca.crt.display()),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--controllers=*".into(),
        ]);
        cluster.spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &cm_args,
        )?;
        cluster.spawn(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            &common(&sched_kubeconfig, ports.scheduler, "scheduler"),
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        for (name, port) in [
            ("kube-controller-manager", ports.controller_manager),
            ("kube-scheduler", ports.scheduler),
        ] {
            let url = format!("https://127.0.0.1:{port}/healthz");
            cluster.wait_ready(name, deadline, || http_get(&url, Tls::Insecure))?;
        }
        Ok(cluster)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        self.server_url.clone()
    }

    /// A kubeconfig for `kubernetes-admin` in `system:masters` (client certificate).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The cluster CA (PEM): it signed the API server's serving certificate and every
    /// client certificate the API server accepts.
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// The cluster's directory: `pki/`, the kubeconfigs, etcd's data and one
    /// `<component>.log` per process (`etcd`, `kube-apiserver`, ...).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig for `user` in `groups`, authenticated by a client certificate
    /// signed by the cluster CA, and returns its path. No RBAC binding is made.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let n = self.users_made.fetch_add(1, Ordering::Relaxed);
        let users = self.dir().join("users");
        std::fs::create_dir_all(&users)?;
        let safe: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = format!("{n}-{safe}");
        let ca = CertFiles {
            crt: self.ca_pem.clone(),
            key: self.ca_key.clone(),
        };
        let cert = CertFiles::leaf(&users, &base, &ca, user, groups, Usage::Client)?;
        let path = users.join(format!("{base}.kubeconfig"));
        write_kubeconfig(&path, &self.server_url, &self.ca_pem, &cert, user)?;
        Ok(path)
    }

    /// Points Service `namespace/name` at `ip:port` (its port named `https`) instead of
    /// its pods: the selector goes and an Endpoints object names the address. With no
    /// kubelet here, a component whose pods would back the Service runs as a process on
    /// the host; this stands in for the endpoints controller's view of those pods.
    pub fn serve_service_from(
        &self,
        namespace: &str,
        name: &str,
        ip: &str,
        port: u16,
    ) -> Result<()> {
        self.kubectl(
            &[
                "-n",
                namespace,
                "patch",
                "service",
                name,
                "--type",
                "json",
                "-p",
                r#"[{"op":"remove","path":"/spec/selector"}]"#,
            ],
            None,
        )?;
        let endpoints = format!(
            "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: {namespace}}}\nsubsets:\n- addresses: [{{ip: {ip}}}]\n  ports: [{{name: https, port: {port}, protocol: TCP}}]\n"
        );
        // The endpoints controller may still be working on the Service as it was (with its
        // selector) and write its own empty Endpoints over ours: apply until ours is seen
        // twice in a row.
        let want = format!("{ip}:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen < 2 {
            if Instant::now() > deadline {
                bail!("the Endpoints of {namespace}/{name} do not keep {want}");
            }
            let out = Command::new("kubectl")
                .args(["-n", namespace, "get", "endpoints", name, "-o"])
                .arg("jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}")
                .env("KUBECONFIG", &self.admin_kubeconfig)
                .output()
                .context("running kubectl")?;
            if String::from_utf8_lossy(&out.stdout) == want {
                seen += 1;
            } else {
                seen = 0;
                self.kubectl(&["apply", "-f", "-"], Some(&endpoints))?;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }

    /// Runs kubectl as the admin, with `stdin`; an error carries its stderr.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<()> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        child
            .stdin
            .take()
            .context("kubectl's stdin")?
            .write_all(stdin.unwrap_or_default().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The log of one component (`etcd`, `kube-apiserver`, `kube-controller-manager`,
    /// `kube-scheduler`).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir().join(format!("{component}.log"))
    }

    /// Process ids of the components, in start order, for tests that measure them.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.procs.iter().map(|p| (p.name, p.child.id())).collect()
    }

    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String]) -> Result<()> {
        let log = self.log_path(name);
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .current_dir(self.dir())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    /// Polls `check` until it answers 200, failing early (with the end of the component's
    /// log) if the component exits, and at `deadline`.
    fn wait_ready(
        &mut self,
        name: &str,
        deadline: Instant,
        check: impl Fn() -> Result<(u16, String)>,
    ) -> Result<()> {
        loop {
            let proc = self
                .procs
                .iter_mut()
                .find(|p| p.name == name)
                .ok_or_else(|| anyhow!("{name} was not started"))?;
            if let Some(status) = proc.child.try_wait()? {
                bail!(
                    "{name} exited during start ({status}); end of its log ({}):\n{}",
                    proc.log.display(),
                    log_tail(&proc.log)
                );
            }
            let last = match check() {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("HTTP {code}: {}", tail(&body, 5)),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "{name} not ready after {} s (last answer: {last}); end of its log ({}):\n{}",
                    READY_TIMEOUT.as_secs(),
                    proc.log.display(),
                    log_tail(&proc.log)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // The controllers first, then the API server, etcd last.
        let (mut servers, mut clients): (Vec<Proc>, Vec<Proc>) = std::mem::take(&mut self.procs)
            .into_iter()
            .partition(|p| p.name == "kube-apiserver" || p.name == "etcd");
        stop(&mut clients);
        while let Some(p) = servers.pop() {
            stop(&mut [p]);
        }
    }
}

/// SIGTERM to each, up to [`STOP_GRACE`] for all to exit, then SIGKILL; reaps them all.
fn stop(procs: &mut [Proc]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for p in procs.iter_mut() {
        if matches!(p.child.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for p in procs.iter_mut() {
        while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(p.child.try_wait(), Ok(None)) {
            let _ = p.child.kill();
        }
        let _ = p.child.wait();
    }
}

fn missing_message(missing: &[PathBuf]) -> String {
    let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
    let mut fix = Vec::new();
    if missing.iter().any(|p| p != Path::new(ETCD)) {
        fix.push(format!(
            "`bash scripts/build-k8s.sh` (builds kube-apiserver, kube-controller-manager and \
             kube-scheduler into {})",
            k8s_bin_dir().display()
        ));
    }
    if missing.iter().any(|p| p == Path::new(ETCD)) {
        fix.push("`bash scripts/install-host-deps.sh` (installs etcd-server)".to_string());
    }
    format!(
        "Kubernetes control plane not available: missing {}; run {}",
        list.join(", "),
        fix.join(" and ")
    )
}

/// A certificate and its key, PEM files.
struct CertFiles {
    crt: PathBuf,
    key: PathBuf,
}

enum Usage<'a> {
    /// serverAuth, with these `subjectAltName` entries (OpenSSL syntax).
    Server(&'a str),
    Client,
}

impl CertFiles {
    /// A self-signed CA.
    fn ca(dir: &Path, name: &str, cn: &str) -> Result<CertFiles> {
        let files = new_key_and_csr(dir, name, cn, &[])?;
        let ext = dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:TRUE\n\
             keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
             subjectKeyIdentifier=hash\n",
        )?;
        let csr = dir.join(format!("{name}.csr"));
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-key",
            &s(&files.key),
            "-extfile",
            &s(&ext),
            "-days",
            "3650",
            "-set_serial",
            &serial(),
            "-out",
            &s(&files.crt),
        ])?;
        Ok(files)
    }

    /// A certificate signed by `ca`, for `cn` (the user name) in the `orgs` groups.
    fn leaf(
        dir: &Path,
        name: &str,
        ca: &CertFiles,
        cn: &str,
        orgs: &[&str],
        usage: Usage,
    ) -> Result<CertFiles> {
        let files = new_key_and_csr(dir, name, cn, orgs)?;
        let mut ext = String::from(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             authorityKeyIdentifier=keyid\n",
        );
        match usage {
            Usage::Server(sans) => {
                ext.push_str("extendedKeyUsage=serverAuth\n");
                ext.push_str(&format!("subjectAltName={sans}\n"));
            }
            Usage::Client => ext.push_str("extendedKeyUsage=clientAuth\n"),
        }
        let ext_path = dir.join(format!("{name}.ext"));
        std::fs::write(&ext_path, ext)?;
        let csr = dir.join(format!("{name}.csr"));
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca.crt),
            "-CAkey",
            &s(&ca.key),
            "-extfile",
            &s(&ext_path),
            "-days",
            "3650",
            "-set_serial",
            &serial(),
            "-out",
            &s(&files.crt),
        ])?;
        Ok(files)
    }
}

/// A new P-256 key (`<name>.key`, PKCS#8) and a request for `/O=org.../CN=cn`.
fn new_key_and_csr(dir: &Path, name: &str, cn: &str, orgs: &[&str]) -> Result<CertFiles> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut subject = String::new();
    for o in orgs {
        subject.push_str(&format!("/O={}", escape_rdn(o)));
    }
    subject.push_str(&format!("/CN={}", escape_rdn(cn)));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &s(&key),
        "-subj",
        &subject,
        "-out",
        &s(&csr),
    ])?;
    Ok(CertFiles {
        crt: dir.join(format!("{name}.crt")),
        key,
    })
}

/// Escapes a value for `openssl req -subj`.
fn escape_rdn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if "\\/+=".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A fresh positive serial number.
fn serial() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    format!(
        "0x{:x}{:06x}{:04x}",
        nanos & 0xffff_ffff_ffff_ffff,
        std::process::id(),
        n & 0xffff
    )
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (Debian package openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A kubeconfig (JSON, which kubectl and client-go read as YAML) with file references.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    cert: &CertFiles,
    user: &str,
) -> Result<()> {
    let context = format!("{user}@kubevirt-rs-test");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "kubevirt-rs-test",
            "cluster": {"server": server, "certificate-authority": s(ca)},
        }],
        "users": [{
            "name": user,
            "user": {"client-certificate": s(&cert.crt), "client-key": s(&cert.key)},
        }],
        "contexts": [{
            "name": context,
            "context": {"cluster": "kubevirt-rs-test", "user": user},
        }],
        "current-context": context,
    });
    std::fs::write(path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[derive(Clone, Copy)]
enum Tls<'a> {
    None,
    /// Self-signed serving certificates (the controllers' own, made at their start).
    Insecure,
    Client {
        ca: &'a Path,
        cert: &'a Path,
        key: &'a Path,
    },
}

/// GET with `curl`: status code and body.
fn http_get(url: &str, tls: Tls) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"]);
    match tls {
        Tls::None => {}
        Tls::Insecure => {
            cmd.arg("-k");
        }
        Tls::Client { ca, cert, key } => {
            cmd.arg("--cacert")
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
    }
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code: u16 = code.trim().parse().unwrap_or(0);
    if code == 0 {
        bail!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((code, body.to_string()))
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The end of a log file (the last 40 lines, at most 8 KiB).
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(8192);
            tail(&String::from_utf8_lossy(&bytes[start..]), 40)
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdn_values_are_escaped() {
        assert_eq!(escape_rdn("system:masters"), "system:masters");
        assert_eq!(escape_rdn("a/b=c+d\\"), "a\\/b\\=c\\+d\\\\");
    }

    #[test]
    fn certificates_carry_every_group() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let ca = CertFiles::ca(dir.path(), "ca", "test-ca")?;
        let user = CertFiles::leaf(
            dir.path(),
            "u",
            &ca,
            "alice",
            &["team-a", "system:authenticated/x"],
            Usage::Client,
        )?;
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(&user.crt)
            .output()?;
        let subject = String::from_utf8_lossy(&out.stdout);
        assert!(subject.contains("CN=alice"), "{subject}");
        assert!(subject.contains("O=team-a"), "{subject}");
        assert!(subject.contains("O=system:authenticated/x"), "{subject}");
        let verify = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca.crt)
            .arg(&user.crt)
            .output()?;
        assert!(verify.status.success(), "{verify:?}");
        Ok(())
    }
}
