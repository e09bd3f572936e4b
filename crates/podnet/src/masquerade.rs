//! The masquerade pod network: KubeVirt's layout, with podnet playing the part of the pod.
//!
//! ```text
//! host:  kvrs0 10.244.0.1/16 ── kvh<id> ═veth═ eth0 10.244.x.y/16   (netns kvrs-<id>)
//!                                                  │ NAT (nft table kubevirt_masq)
//!                                  k6t-eth0 10.0.2.1/24 ── tap0 ── QEMU ── guest 10.0.2.2
//!                                                      └── tap1 ── QEMU (migration target)
//! ```
//!
//! A live migration on this node runs a second QEMU of the same VM beside the first, on a
//! tap of its own on the same bridge ([`PodNetworkHandle::add_tap`]): same MAC, same
//! addresses, and only one of them runs the guest at a time. Whoever's QEMU ends leaves
//! with [`PodNetworkHandle::release`], which removes the network only once no QEMU uses a
//! tap on the bridge any more.

use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::cmd::{ip, ip_batch, ip_in, link_exists, nft};
use crate::ipam::Ipam;
use crate::{nft as rules, DhcpConfig, MacAddr, PodNetError, PortForward, Result};

/// The pod-side interface in the VM's namespace, as in a real pod.
pub const POD_IFACE: &str = "eth0";
/// The bridge in the VM's namespace that the tap hangs off (KubeVirt's name).
pub const NETNS_BRIDGE: &str = "k6t-eth0";
/// The tap QEMU opens (`-netdev tap,ifname=tap0,script=no,downscript=no,vhost=off`);
/// further taps (migration targets) are `tap1`, `tap2`, ...
pub const TAP_NAME: &str = "tap0";

/// How many taps one namespace bridge may get (a migration needs two).
const MAX_TAPS: u32 = 8;

/// The guest's address, handed out by DHCP.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The gateway the guest sees (`k6t-eth0`).
pub const GUEST_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
pub const GUEST_PREFIX_LEN: u8 = 24;

const NETNS_DIR: &str = "/run/netns";

/// Node-wide settings: the host bridge and the pod address range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworkConfig {
    /// Host bridge every pod's veth joins (`kvrs0`).
    pub bridge: String,
    /// The bridge's address, which is also every pod's default gateway.
    pub gateway: Ipv4Addr,
    /// Prefix length of the pod range around `gateway`.
    pub prefix_len: u8,
    /// Where allocations and per-VM records live; on tmpfs, like the namespaces themselves.
    pub state_dir: PathBuf,
    /// Network namespace names are `<netns_prefix><8 hex digits of sha256(vm_id)>`.
    pub netns_prefix: String,
    /// Turn on the host's `net.ipv4.ip_forward` so pods can leave the node.
    pub host_forwarding: bool,
}

impl Default for PodNetworkConfig {
    fn default() -> Self {
        PodNetworkConfig {
            bridge: "kvrs0".into(),
            gateway: Ipv4Addr::new(10, 244, 0, 1),
            prefix_len: 16,
            state_dir: PathBuf::from("/run/kubevirt-rs/podnet"),
            netns_prefix: "kvrs-".into(),
            host_forwarding: true,
        }
    }
}

/// What lives inside the pod namespace besides `eth0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum PodMode {
    /// `k6t-eth0`, `tap0` and the NAT rules: the guest is 10.0.2.2 behind the pod IP.
    #[default]
    Masquerade,
    /// Only the pod (`eth0` with the pod IP): [`crate::Passt`] runs in it and gives the
    /// guest the pod IP itself.
    Passt,
}

/// One VM's pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeConfig {
    /// Stable identity (the VMI uid, or namespace/name); names the namespace and the IP lease.
    pub vm_id: String,
    /// Sent to the guest as its DHCP hostname.
    pub vm_name: String,
    /// The guest NIC's MAC; derived from `vm_id` when absent.
    pub mac: Option<MacAddr>,
    /// Pod-IP ports forwarded to the guest; empty forwards every port (as upstream).
    pub ports: Vec<PortForward>,
    /// MTU of every link on the path and of the guest (DHCP option 26).
    pub mtu: u16,
    /// Masquerade (default) or a bare pod for passt.
    pub mode: PodMode,
}

impl MasqueradeConfig {
    pub fn new(vm_id: impl Into<String>, vm_name: impl Into<String>) -> Self {
        MasqueradeConfig {
            vm_id: vm_id.into(),
            vm_name: vm_name.into(),
            mac: None,
            ports: Vec::new(),
            mtu: 1500,
            mode: PodMode::Masquerade,
        }
    }
}

/// Everything the launcher needs about a VM's pod network; also its on-disk record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodNetworkHandle {
    pub vm_id: String,
    pub vm_name: String,
    pub netns_name: String,
    /// `/run/netns/<netns_name>`: pass to [`crate::enter_netns_for_child`].
    pub netns_path: PathBuf,
    pub host_bridge: String,
    pub host_veth: String,
    pub pod_iface: String,
    pub pod_ip: Ipv4Addr,
    pub pod_prefix_len: u8,
    pub pod_gateway: Ipv4Addr,
    pub netns_bridge: String,
    /// The tap this handle's QEMU uses. In the on-disk record: the one setup made (which
    /// may be gone once a migration target took over on a tap of its own).
    pub tap_name: String,
    pub guest_ip: Ipv4Addr,
    pub guest_gateway: Ipv4Addr,
    pub guest_prefix_len: u8,
    pub mac: MacAddr,
    pub mtu: u16,
    pub ports: Vec<PortForward>,
    pub dns: Vec<Ipv4Addr>,
    pub state_dir: PathBuf,
    pub mode: PodMode,
}

impl PodNetworkHandle {
    /// The address to report in the VMI status (`status.interfaces[].ipAddress`): as
    /// upstream does for masquerade, the pod IP, which is how others reach the VM.
    pub fn vmi_status_ip(&self) -> Ipv4Addr {
        self.pod_ip
    }

    /// What the DHCP server on [`NETNS_BRIDGE`] tells the guest.
    pub fn dhcp_config(&self) -> DhcpConfig {
        DhcpConfig {
            server_ip: self.guest_gateway,
            client_mac: self.mac,
            client_ip: self.guest_ip,
            prefix_len: self.guest_prefix_len,
            router: Some(self.guest_gateway),
            dns: self.dns.clone(),
            hostname: Some(self.vm_name.clone()),
            mtu: Some(self.mtu),
            lease_secs: 86400,
        }
    }

    /// Binds the DHCP server for this VM (run `serve()` on it, stop it before teardown).
    pub fn dhcp_server(&self) -> Result<crate::DhcpServer> {
        crate::DhcpServer::bind_in_netns(&self.netns_path, &self.netns_bridge, self.dhcp_config())
    }

    /// QEMU arguments for this NIC ([`PodMode::Masquerade`]); QEMU must run inside
    /// `netns_path`.
    pub fn qemu_args(&self, id: &str) -> Vec<String> {
        vec![
            "-netdev".into(),
            format!(
                "tap,id={id},ifname={},script=no,downscript=no,vhost=off",
                self.tap_name
            ),
            "-device".into(),
            format!(
                "virtio-net-pci,netdev={id},mac={},host_mtu={}",
                self.mac, self.mtu
            ),
        ]
    }

    fn record_path(&self) -> PathBuf {
        record_path(&self.state_dir, &self.vm_id)
    }

    /// Adds a tap to the namespace bridge for another QEMU of this VM (the target of a live
    /// migration on this node) and returns a handle naming it; MAC, addresses and the
    /// on-disk record stay as they are. The name is the first free `tapN`. One target at a
    /// time: two callers racing for a name could get the same tap.
    ///
    /// The bridge's own MAC (the guest's gateway, in its ARP cache) is pinned first: a
    /// bridge nobody gave an address takes its lowest port's, so it would change as taps
    /// come and go, and the guest would lose its gateway until its ARP entry expires.
    pub fn add_tap(&self) -> Result<PodNetworkHandle> {
        if self.mode != PodMode::Masquerade {
            return Err(PodNetError::InvalidConfig {
                field: "mode".into(),
                reason: "only a masquerade pod network has taps".into(),
            });
        }
        let ns = self.netns_name.as_str();
        let links = links_in(&ip_in(ns, &["-j", "link", "show"])?)?;
        let bridge_mac = links
            .iter()
            .find(|l| l.ifname == self.netns_bridge)
            .and_then(|l| l.address.clone())
            .ok_or_else(|| PodNetError::NotFound {
                vm_id: self.vm_id.clone(),
                reason: format!("{ns} has no {}", self.netns_bridge),
            })?;
        let name = (0..MAX_TAPS)
            .map(|n| format!("tap{n}"))
            .find(|n| !links.iter().any(|l| &l.ifname == n))
            .ok_or_else(|| PodNetError::InvalidConfig {
                field: "tapName".into(),
                reason: format!("{ns} already has {MAX_TAPS} taps"),
            })?;
        let mtu = self.mtu.to_string();
        let bridge = self.netns_bridge.as_str();
        let added = ip_batch(
            Some(ns),
            &[
                vec!["link", "set", "dev", bridge, "address", &bridge_mac],
                vec!["tuntap", "add", "dev", &name, "mode", "tap"],
                vec![
                    "link", "set", "dev", &name, "mtu", &mtu, "master", bridge, "up",
                ],
            ],
        );
        if let Err(e) = added {
            if link_exists(Some(ns), &name) {
                let _ = ip_in(ns, &["link", "del", "dev", &name]);
            }
            return Err(e);
        }
        tracing::info!(vm_id = %self.vm_id, netns = ns, tap = name, "tap added");
        Ok(PodNetworkHandle {
            tap_name: name,
            ..self.clone()
        })
    }

    /// Removes this handle's tap (nothing to do if it, or the namespace, is gone).
    pub fn remove_tap(&self) -> Result<()> {
        if self.mode != PodMode::Masquerade
            || !self.netns_path.exists()
            || !link_exists(Some(&self.netns_name), &self.tap_name)
        {
            return Ok(());
        }
        ip_in(&self.netns_name, &["link", "del", "dev", &self.tap_name])?;
        Ok(())
    }

    /// The taps on the namespace bridge that a process holds open (a running QEMU): the
    /// kernel turns a tap's carrier on while it is attached (`LOWER_UP`), and off when the
    /// last descriptor closes, whoever held it and however it died.
    pub fn taps_in_use(&self) -> Result<Vec<String>> {
        if self.mode != PodMode::Masquerade
            || !self.netns_path.exists()
            || !link_exists(Some(&self.netns_name), &self.netns_bridge)
        {
            return Ok(Vec::new());
        }
        let ports = ip_in(
            &self.netns_name,
            &["-j", "link", "show", "master", &self.netns_bridge],
        )?;
        Ok(links_in(&ports)?
            .into_iter()
            .filter(|l| l.flags.iter().any(|f| f == "LOWER_UP"))
            .map(|l| l.ifname)
            .collect())
    }

    /// Leaves the pod network once this handle's QEMU is gone: removes its tap and, unless
    /// another QEMU still uses a tap on the bridge (the other side of a live migration on
    /// this node), tears the whole network down. Returns whether it did. Stop the DHCP
    /// server first. A passt network has one user and is torn down.
    pub fn release(&self) -> Result<bool> {
        self.remove_tap()?;
        let in_use = self.taps_in_use()?;
        if !in_use.is_empty() {
            tracing::info!(vm_id = %self.vm_id, taps = ?in_use, "pod network kept: another QEMU of this VM uses it");
            return Ok(false);
        }
        self.teardown()?;
        Ok(true)
    }

    /// Removes the namespace (with its tap, bridge and nft rules), the host veth, the IP
    /// lease and the record. Safe to call again, or on a half-built network. Stop QEMU and
    /// the DHCP server first: they hold the namespace open.
    pub fn teardown(&self) -> Result<()> {
        let mut first_err = None;
        if Path::new(&self.netns_path).exists() {
            if let Err(e) = ip(&["netns", "del", &self.netns_name]) {
                if Path::new(&self.netns_path).exists() {
                    first_err.get_or_insert(e);
                }
            }
        }
        // Deleting the namespace destroys the veth pair only once nothing holds the
        // namespace; delete our end now so the host is clean either way.
        if link_exists(None, &self.host_veth) {
            if let Err(e) = ip(&["link", "del", "dev", &self.host_veth]) {
                if link_exists(None, &self.host_veth) {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ipam::new(&self.state_dir, self.pod_gateway, self.pod_prefix_len)
            .release(self.pod_ip, &self.vm_id)?;
        let path = self.record_path();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(PodNetError::State { path, source }),
        }
        tracing::info!(vm_id = %self.vm_id, netns = %self.netns_name, "pod network removed");
        Ok(())
    }
}

/// A link as `ip -j link show` prints it (the fields we read).
#[derive(serde::Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    /// The MAC, for Ethernet-like links.
    #[serde(default)]
    address: Option<String>,
}

fn links_in(json: &str) -> Result<Vec<Link>> {
    serde_json::from_str(json).map_err(|e| PodNetError::CommandFailed {
        command: "ip -j link show".into(),
        status: "unexpected output".into(),
        stderr: e.to_string(),
    })
}

fn short_id(vm_id: &str) -> String {
    hex::encode(&sha2::Sha256::digest(vm_id.as_bytes())[..4])
}

fn record_path(state_dir: &Path, vm_id: &str) -> PathBuf {
    state_dir
        .join("vms")
        .join(format!("{}.json", short_id(vm_id)))
}

fn read_record(path: &Path) -> Result<Option<PodNetworkHandle>> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| PodNetError::StateCorrupt {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PodNetError::State {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_record(h: &PodNetworkHandle) -> Result<()> {
    let path = h.record_path();
    let state = |source| PodNetError::State {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(state)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(h).map_err(|source| PodNetError::StateCorrupt {
        path: path.clone(),
        source,
    })?;
    fs::write(&tmp, bytes).map_err(state)?;
    fs::rename(&tmp, &path).map_err(state)
}

/// The guest's resolvers: the host's own IPv4 nameservers (unless loopback, which the
/// guest cannot reach), else the gateway.
fn host_dns(resolv_conf: &str) -> Vec<Ipv4Addr> {
    let found: Vec<Ipv4Addr> = resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect();
    if found.is_empty() {
        vec![GUEST_GATEWAY]
    } else {
        found
    }
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Writes a per-namespace sysctl from a thread inside `netns` (net sysctls follow the
/// writer's namespace).
fn sysctl_in(netns: Option<&Path>, key: &str, value: &str) -> Result<()> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_string();
    let p = path.clone();
    let write = move || fs::write(&p, value);
    let r = match netns {
        Some(ns) => crate::netns::run_in_netns(ns, write)?,
        None => write(),
    };
    r.map_err(|source| PodNetError::State { path, source })
}

/// Builds and removes pod networks on this node.
#[derive(Debug, Clone, Default)]
pub struct PodNetwork {
    cfg: PodNetworkConfig,
}

impl PodNetwork {
    pub fn new(cfg: PodNetworkConfig) -> Result<Self> {
        let bad = |field: &str, reason: String| PodNetError::InvalidConfig {
            field: field.into(),
            reason,
        };
        if !valid_ifname(&cfg.bridge) {
            return Err(bad(
                "bridge",
                format!(
                    "{:?} is not an interface name (1-15 of [A-Za-z0-9._-])",
                    cfg.bridge
                ),
            ));
        }
        if !(8..=30).contains(&cfg.prefix_len) {
            return Err(bad(
                "prefixLen",
                format!("{} is outside 8..=30", cfg.prefix_len),
            ));
        }
        let host_bits = u32::MAX >> cfg.prefix_len;
        let g = u32::from(cfg.gateway) & host_bits;
        if g == 0 || g == host_bits {
            return Err(bad(
                "gateway",
                format!(
                    "{} is the network or broadcast address of its /{}",
                    cfg.gateway, cfg.prefix_len
                ),
            ));
        }
        if cfg.netns_prefix.len() > 32
            || !cfg
                .netns_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(bad(
                "netnsPrefix",
                format!("{:?} must be up to 32 of [A-Za-z0-9-]", cfg.netns_prefix),
            ));
        }
        Ok(PodNetwork { cfg })
    }

    pub fn config(&self) -> &PodNetworkConfig {
        &self.cfg
    }

    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cfg.gateway) & !(u32::MAX >> self.cfg.prefix_len))
    }

    fn ipam(&self) -> Ipam {
        Ipam::new(&self.cfg.state_dir, self.cfg.gateway, self.cfg.prefix_len)
    }

    /// Creates the host bridge, its address, the host NAT table and forwarding. Idempotent
    /// and safe against a concurrent caller.
    pub fn ensure_host(&self) -> Result<()> {
        let br = &self.cfg.bridge;
        if !link_exists(None, br) {
            if let Err(e) = ip(&["link", "add", "name", br, "type", "bridge"]) {
                // Lost a race with another launcher: fine if the bridge now exists.
                if !link_exists(None, br) {
                    return Err(e);
                }
            }
        }
        let addr = format!("{}/{}", self.cfg.gateway, self.cfg.prefix_len);
        ip_batch(
            None,
            &[
                vec!["addr", "replace", &addr, "dev", br],
                vec!["link", "set", "dev", br, "up"],
            ],
        )?;
        nft(
            None,
            &rules::host_ruleset(br, self.network(), self.cfg.prefix_len),
        )?;
        if self.cfg.host_forwarding {
            sysctl_in(None, "net.ipv4.ip_forward", "1")?;
        }
        Ok(())
    }

    /// Removes the host bridge and the host NAT table, unless VMs still use them (then
    /// returns `Ok(false)`). Forwarding is left on: other software may rely on it.
    pub fn teardown_host(&self) -> Result<bool> {
        if !self.list()?.is_empty() {
            return Ok(false);
        }
        nft(
            None,
            &rules::delete_table(&rules::host_table(&self.cfg.bridge)),
        )?;
        if link_exists(None, &self.cfg.bridge) {
            ip(&["link", "del", "dev", &self.cfg.bridge])?;
        }
        Ok(true)
    }

    /// Pod networks recorded in the state directory (for a node agent adopting its VMs).
    pub fn list(&self) -> Result<Vec<PodNetworkHandle>> {
        let dir = self.cfg.state_dir.join("vms");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(PodNetError::State { path: dir, source }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PodNetError::State {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match read_record(&path) {
                Ok(Some(h)) => out.push(h),
                Ok(None) => {}
                Err(PodNetError::StateCorrupt { path, source }) => {
                    tracing::warn!(path = %path.display(), error = %source, "skipping a corrupt pod network record");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Builds the pod network of one VM. Fails with [`PodNetError::AlreadySetUp`] if it
    /// exists (use [`PodNetwork::adopt`]); leftovers of a crashed setup are cleaned first.
    /// On failure, whatever was built is removed again.
    pub fn setup(&self, cfg: MasqueradeConfig) -> Result<PodNetworkHandle> {
        if cfg.vm_id.is_empty() {
            return Err(PodNetError::InvalidConfig {
                field: "vmId".into(),
                reason: "must not be empty".into(),
            });
        }
        if cfg.mtu < 576 {
            return Err(PodNetError::InvalidConfig {
                field: "mtu".into(),
                reason: format!("{} is below the IPv4 minimum of 576", cfg.mtu),
            });
        }
        let short = short_id(&cfg.vm_id);
        let netns_name = format!("{}{short}", self.cfg.netns_prefix);
        let netns_path = Path::new(NETNS_DIR).join(&netns_name);

        let record = record_path(&self.cfg.state_dir, &cfg.vm_id);
        let previous = match read_record(&record) {
            Err(PodNetError::StateCorrupt { path, source }) => {
                // Torn write or manual damage: build() below removes a namespace and veth of
                // this name anyway, and the IP lease is found again by VM id.
                tracing::warn!(path = %path.display(), error = %source, "discarding a corrupt pod network record");
                fs::remove_file(&path).map_err(|source| PodNetError::State { path, source })?;
                None
            }
            other => other?,
        };
        if let Some(old) = previous {
            if old.netns_path.exists() {
                return Err(PodNetError::AlreadySetUp {
                    vm_id: cfg.vm_id,
                    netns: old.netns_name,
                });
            }
            tracing::warn!(vm_id = %cfg.vm_id, "removing leftovers of an earlier pod network");
            old.teardown()?;
        }

        self.ensure_host()?;
        let pod_ip = self.ipam().allocate(&cfg.vm_id)?;
        let resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let handle = PodNetworkHandle {
            netns_name,
            netns_path,
            host_bridge: self.cfg.bridge.clone(),
            host_veth: format!("kvh{short}"),
            pod_iface: POD_IFACE.into(),
            pod_ip,
            pod_prefix_len: self.cfg.prefix_len,
            pod_gateway: self.cfg.gateway,
            netns_bridge: NETNS_BRIDGE.into(),
            tap_name: TAP_NAME.into(),
            guest_ip: GUEST_IP,
            guest_gateway: GUEST_GATEWAY,
            guest_prefix_len: GUEST_PREFIX_LEN,
            mac: cfg.mac.unwrap_or_else(|| MacAddr::derived_from(&cfg.vm_id)),
            mtu: cfg.mtu,
            ports: cfg.ports,
            dns: host_dns(&resolv),
            state_dir: self.cfg.state_dir.clone(),
            mode: cfg.mode,
            vm_id: cfg.vm_id,
            vm_name: cfg.vm_name,
        };
        // Record first, so a crash half-way leaves something teardown can find.
        write_record(&handle)?;
        if let Err(e) = self.build(&handle) {
            tracing::error!(vm_id = %handle.vm_id, error = %e, "pod network setup failed");
            if let Err(cleanup) = handle.teardown() {
                tracing::warn!(vm_id = %handle.vm_id, error = %cleanup, "cleanup after failed setup");
            }
            return Err(e);
        }
        tracing::info!(
            vm_id = %handle.vm_id,
            netns = %handle.netns_name,
            pod_ip = %handle.pod_ip,
            "pod network ready"
        );
        Ok(handle)
    }

    /// Builds the pod network with as few processes as possible (each costs milliseconds on
    /// a VM's start path): one `ip` batch on the host, one in the namespace, one `nft`.
    fn build(&self, h: &PodNetworkHandle) -> Result<()> {
        let ns = h.netns_name.as_str();
        let mtu = h.mtu.to_string();
        if h.netns_path.exists() {
            // A namespace by our name without a record: an interrupted setup of this VM.
            ip(&["netns", "del", ns])?;
        }
        if link_exists(None, &h.host_veth) {
            ip(&["link", "del", "dev", &h.host_veth])?;
        }
        let pod_ip = h.pod_ip.to_string();
        ip_batch(
            None,
            &[
                // An address can come back to a new pod within seconds: the host must not
                // keep sending to the old pod's MAC until its neighbour entry ages out.
                vec!["neigh", "flush", "to", &pod_ip, "dev", &h.host_bridge],
                vec!["netns", "add", ns],
                vec![
                    "link",
                    "add",
                    "name",
                    &h.host_veth,
                    "mtu",
                    &mtu,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &h.pod_iface,
                    "mtu",
                    &mtu,
                    "netns",
                    ns,
                ],
                vec![
                    "link",
                    "set",
                    "dev",
                    &h.host_veth,
                    "master",
                    &h.host_bridge,
                    "up",
                ],
            ],
        )?;

        let pod_addr = format!("{}/{}", h.pod_ip, h.pod_prefix_len);
        let gw = h.pod_gateway.to_string();
        let mut in_ns: Vec<Vec<&str>> = vec![
            vec!["link", "set", "dev", "lo", "up"],
            vec!["addr", "add", &pod_addr, "dev", &h.pod_iface],
            vec!["link", "set", "dev", &h.pod_iface, "up"],
            vec!["route", "add", "default", "via", &gw, "dev", &h.pod_iface],
        ];
        if h.mode == PodMode::Passt {
            return ip_batch(Some(ns), &in_ns);
        }
        let guest_gw = format!("{}/{}", h.guest_gateway, h.guest_prefix_len);
        in_ns.extend([
            vec![
                "link",
                "add",
                "name",
                &h.netns_bridge,
                "mtu",
                &mtu,
                "type",
                "bridge",
            ],
            vec!["addr", "add", &guest_gw, "dev", &h.netns_bridge],
            vec!["tuntap", "add", "dev", &h.tap_name, "mode", "tap"],
            vec![
                "link",
                "set",
                "dev",
                &h.tap_name,
                "mtu",
                &mtu,
                "master",
                &h.netns_bridge,
                "up",
            ],
            vec!["link", "set", "dev", &h.netns_bridge, "up"],
        ]);
        ip_batch(Some(ns), &in_ns)?;
        sysctl_in(Some(&h.netns_path), "net.ipv4.ip_forward", "1")?;
        nft(
            Some(&h.netns_path),
            &rules::netns_ruleset(
                &h.pod_iface,
                h.pod_ip,
                &h.netns_bridge,
                h.guest_gateway,
                h.guest_ip,
                &h.ports,
            ),
        )
    }

    /// Finds the pod network of `vm_id` built by an earlier process. The DHCP server must
    /// be bound again ([`PodNetworkHandle::dhcp_server`]).
    pub fn adopt(&self, vm_id: &str) -> Result<PodNetworkHandle> {
        let not_found = |reason: String| PodNetError::NotFound {
            vm_id: vm_id.to_string(),
            reason,
        };
        let path = record_path(&self.cfg.state_dir, vm_id);
        let h = read_record(&path)?
            .ok_or_else(|| not_found(format!("no record at {}", path.display())))?;
        if h.vm_id != vm_id {
            return Err(not_found(format!(
                "{} belongs to VM {}",
                path.display(),
                h.vm_id
            )));
        }
        if !h.netns_path.exists() {
            return Err(not_found(format!("{} is gone", h.netns_path.display())));
        }
        // The bridge, not the tap the record names: a migration target on another tap may
        // have taken over since.
        if h.mode == PodMode::Masquerade && !link_exists(Some(&h.netns_name), &h.netns_bridge) {
            return Err(not_found(format!(
                "{} has no {}",
                h.netns_name, h.netns_bridge
            )));
        }
        if !link_exists(None, &h.host_veth) {
            return Err(not_found(format!("host veth {} is gone", h.host_veth)));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_comes_from_resolv_conf_without_loopback() {
        assert_eq!(
            host_dns("# x\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver fd00::1\nsearch a\n"),
            vec![Ipv4Addr::new(10, 255, 255, 53)]
        );
        assert_eq!(host_dns("nameserver 127.0.0.1\n"), vec![GUEST_GATEWAY]);
        assert_eq!(host_dns(""), vec![GUEST_GATEWAY]);
    }

    #[test]
    fn config_is_validated_with_field_names() {
        let with = |f: fn(&mut PodNetworkConfig)| {
            let mut c = PodNetworkConfig::default();
            f(&mut c);
            PodNetwork::new(c).unwrap_err().to_string()
        };
        assert!(
            with(|c| c.bridge = "a-very-long-bridge-name".into()).starts_with("invalid bridge:")
        );
        assert!(with(|c| c.bridge = "br 0".into()).starts_with("invalid bridge:"));
        assert!(with(|c| c.prefix_len = 31).starts_with("invalid prefixLen:"));
        assert!(with(|c| c.gateway = Ipv4Addr::new(10, 244, 0, 0)).starts_with("invalid gateway:"));
        assert!(
            with(|c| c.gateway = Ipv4Addr::new(10, 244, 255, 255)).starts_with("invalid gateway:")
        );
        assert!(with(|c| c.netns_prefix = "a/b".into()).starts_with("invalid netnsPrefix:"));
        assert!(PodNetwork::new(PodNetworkConfig::default()).is_ok());
    }

    #[test]
    fn names_fit_linux_limits() {
        let s = short_id("default/some-very-long-vm-name-0123456789");
        assert_eq!(s.len(), 8);
        assert!(format!("kvh{s}").len() <= 15);
    }

    #[test]
    fn qemu_args_use_the_tap_without_vhost() {
        let h = PodNetworkHandle {
            vm_id: "id".into(),
            vm_name: "vm".into(),
            netns_name: "kvrs-1".into(),
            netns_path: "/run/netns/kvrs-1".into(),
            host_bridge: "kvrs0".into(),
            host_veth: "kvh1".into(),
            pod_iface: POD_IFACE.into(),
            pod_ip: Ipv4Addr::new(10, 244, 0, 2),
            pod_prefix_len: 16,
            pod_gateway: Ipv4Addr::new(10, 244, 0, 1),
            netns_bridge: NETNS_BRIDGE.into(),
            tap_name: TAP_NAME.into(),
            guest_ip: GUEST_IP,
            guest_gateway: GUEST_GATEWAY,
            guest_prefix_len: 24,
            mac: "52:54:00:00:00:01".parse().unwrap(),
            mtu: 1500,
            ports: vec![],
            dns: vec![],
            state_dir: "/tmp/x".into(),
            mode: PodMode::Masquerade,
        };
        assert_eq!(
            h.qemu_args("net0"),
            [
                "-netdev",
                "tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off",
                "-device",
                "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,host_mtu=1500"
            ]
        );
        assert_eq!(h.vmi_status_ip(), Ipv4Addr::new(10, 244, 0, 2));
        let d = h.dhcp_config();
        assert_eq!(
            (d.client_ip, d.server_ip, d.hostname.as_deref()),
            (GUEST_IP, GUEST_GATEWAY, Some("vm"))
        );
        // The record round-trips.
        let back: PodNetworkHandle =
            serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }
}
