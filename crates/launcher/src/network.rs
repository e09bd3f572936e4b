//! Pod network of the VM through `kubevirt-podnet`: masquerade (netns + tap + NAT + DHCP)
//! or passt. One pod-network interface per VM, as upstream.
//!
//! The network is the VMI's (podnet keys it by the VMI UID), not the launcher's: the
//! target of a live migration on this node joins the one its source built, on a tap of its
//! own, and whichever launcher's QEMU ends leaves it to the other
//! ([`NetState::release`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kubevirt_hypervisor::{DomainConfig, NicBackend};
use kubevirt_podnet as podnet;

use crate::process::LauncherError;
use crate::protocol::{InterfaceStatus, VmiRef};
use crate::rundir::RunDir;
use crate::translate::NetPrep;

/// What was built or joined for the VM's network; released when the VM ends here.
#[derive(Default)]
pub struct NetState {
    /// The pod network, naming this launcher's tap.
    handle: Option<podnet::PodNetworkHandle>,
    passt: Mutex<Option<podnet::Passt>>,
    /// Bound during setup, so a VM whose DHCP port cannot be had fails before it starts.
    dhcp: Mutex<Option<podnet::DhcpServer>>,
    dhcp_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    interfaces: Vec<InterfaceStatus>,
    /// The namespace QEMU must start in.
    netns: Option<PathBuf>,
    /// The pod-network NIC: its name, backend and MAC.
    nic: Option<(String, NicBackend, String)>,
}

fn err(e: impl std::fmt::Display) -> LauncherError {
    LauncherError::Network {
        reason: e.to_string(),
    }
}

/// Builds the pod network the translation asks for ([`NetState::apply`] then points the
/// domain at it), or with `join` (a migration target) joins the one this VMI has. Blocking:
/// it runs `ip` and `nft`.
/// `vmm_user`: the VM's own user, when QEMU runs as one (passt runs as it too).
/// Whether a launcher joins the VMI's pod network (keyed by the VMI's UID) or builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Build it (a stale one left by a killed launcher is removed).
    No,
    /// A migration target of a source on this node: the network is the source's.
    Required,
    /// A migration target of a source on another node: this host may have the network (a
    /// pod network shared by the nodes of one host), else it is built.
    IfPresent,
}

pub fn setup(
    vmi: &VmiRef,
    run_dir: &RunDir,
    networks: &[NetPrep],
    state_dir: &Path,
    vmm_user: Option<u32>,
    join: Join,
) -> Result<NetState, LauncherError> {
    let mut st = NetState::default();
    let prep = match networks {
        [] => return Ok(st),
        [one] => one.clone(),
        _ => {
            return Err(err(
                "only one interface can use the pod network (spec.domain.devices.interfaces)",
            ))
        }
    };
    let (nic, mac, ports, mode, binding) = match &prep {
        NetPrep::Masquerade { nic, mac, ports } => (
            nic.clone(),
            mac.clone(),
            ports.clone(),
            podnet::PodMode::Masquerade,
            "masquerade",
        ),
        NetPrep::Passt { nic, mac } => (
            nic.clone(),
            mac.clone(),
            Vec::new(),
            podnet::PodMode::Passt,
            "passt",
        ),
    };
    let pn = podnet::PodNetwork::new(podnet::PodNetworkConfig {
        state_dir: state_dir.to_path_buf(),
        ..Default::default()
    })
    .map_err(err)?;
    let vm_id = if vmi.uid.is_empty() {
        format!("{}/{}", vmi.namespace, vmi.name)
    } else {
        vmi.uid.clone()
    };
    let present = match join {
        Join::No => None,
        Join::Required => Some(
            pn.adopt(&vm_id)
                .map_err(|e| err(format!("no pod network to join as migration target: {e}")))?,
        ),
        Join::IfPresent => pn.adopt(&vm_id).ok(),
    };
    let handle = if let Some(pod) = present {
        // Same MAC and addresses: the record's, which the source's guest has. (A passt
        // network has no taps: passt VMIs are not migrated.)
        pod.add_tap().map_err(err)?
    } else {
        if let Ok(old) = pn.adopt(&vm_id) {
            // A running QEMU holds one of its taps: another launcher of this VMI runs the
            // guest on it (e.g. the target its source migrated to). Not ours to remove.
            let in_use = old.taps_in_use().map_err(err)?;
            if !in_use.is_empty() {
                return Err(err(format!(
                    "the pod network of this VMI is in use by another QEMU (on {})",
                    in_use.join(", ")
                )));
            }
            // A launcher killed -9 leaves its pod network behind: rebuild it.
            tracing::warn!(vm_id, "removing a stale pod network");
            let _ = old.teardown();
        }
        let mut cfg = podnet::MasqueradeConfig::new(vm_id, vmi.name.clone());
        cfg.mode = mode;
        cfg.mac = match &mac {
            Some(m) => Some(
                m.parse()
                    .map_err(|e| err(format!("macAddress {m:?}: {e}")))?,
            ),
            None => None,
        };
        cfg.ports = ports
            .iter()
            .map(|p| podnet::PortForward {
                protocol: podnet::Protocol::Tcp,
                port: *p,
            })
            .collect();
        pn.setup(cfg).map_err(err)?
    };
    let backend = match handle.mode {
        podnet::PodMode::Masquerade => {
            // A target's guest keeps the lease the source's server gave it; its own server
            // starts when the guest arrived ([`NetState::start_dhcp`]).
            if join == Join::No {
                match handle.dhcp_server() {
                    Ok(d) => *st.dhcp.lock().unwrap_or_else(|p| p.into_inner()) = Some(d),
                    Err(e) => {
                        let _ = handle.teardown();
                        return Err(err(e));
                    }
                }
            }
            st.netns = Some(handle.netns_path.clone());
            NicBackend::Tap {
                ifname: handle.tap_name.clone(),
            }
        }
        podnet::PodMode::Passt => {
            let dir = run_dir.path().join("passt");
            let mut pc = podnet::PasstConfig::new(Some(handle.netns_path.clone()), dir);
            pc.ports = handle.ports.clone();
            pc.run_as = vmm_user.map(|u| (u, u));
            match podnet::Passt::start(&pc) {
                Ok(p) => {
                    let sock = p.socket_path().to_path_buf();
                    *st.passt.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
                    NicBackend::Passt { socket: sock }
                }
                Err(e) => {
                    let _ = handle.teardown();
                    return Err(err(e));
                }
            }
        }
    };
    st.nic = Some((nic.clone(), backend, handle.mac.to_string()));
    st.interfaces.push(InterfaceStatus {
        name: nic,
        mac: Some(handle.mac.to_string()),
        ip_address: Some(handle.vmi_status_ip().to_string()),
        binding: binding.to_string(),
    });
    st.handle = Some(handle);
    Ok(st)
}

impl NetState {
    /// Points the domain at the network: its namespace and the NIC's backend and MAC.
    pub fn apply(&self, dom: &mut DomainConfig) {
        if self.netns.is_some() {
            dom.netns = self.netns.clone();
        }
        if let Some((name, backend, mac)) = &self.nic {
            for n in dom.nics.iter_mut().filter(|n| &n.name == name) {
                n.backend = backend.clone();
                n.mac = Some(mac.clone());
            }
        }
    }

    /// Interfaces for the VMI status.
    pub fn interfaces(&self) -> Vec<InterfaceStatus> {
        self.interfaces.clone()
    }

    /// Starts the DHCP server (masquerade) once the guest runs here: at start, or on a
    /// migration target when the guest arrived (then binding now; the source's server may
    /// still be up for a moment, which the socket's `SO_REUSEADDR` allows). A target that
    /// cannot bind logs it: the guest keeps the lease it has.
    pub async fn start_dhcp(&self) {
        let bound = self.dhcp.lock().unwrap_or_else(|p| p.into_inner()).take();
        let server = match (bound, &self.handle) {
            (Some(d), _) => d,
            (None, Some(h)) if h.mode == podnet::PodMode::Masquerade => {
                let h = h.clone();
                match tokio::task::spawn_blocking(move || h.dhcp_server()).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(error)) => {
                        tracing::error!(%error, "cannot start the DHCP server");
                        return;
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot start the DHCP server");
                        return;
                    }
                }
            }
            _ => return,
        };
        let task = tokio::spawn(async move {
            if let Err(e) = server.serve().await {
                tracing::error!(error = %e, "DHCP server stopped");
            }
        });
        *self.dhcp_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Stops passt and the DHCP server and leaves the pod network: removes this launcher's
    /// tap, and the whole network unless another QEMU of this VMI still uses it (the other
    /// side of a live migration on this node). QEMU must be gone.
    pub fn release(&self) {
        if let Some(mut p) = self.passt.lock().unwrap_or_else(|p| p.into_inner()).take() {
            p.stop();
        }
        if let Some(t) = self
            .dhcp_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
        self.dhcp.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = &self.handle {
            match h.release() {
                Ok(true) => {}
                Ok(false) => tracing::info!(
                    tap = h.tap_name,
                    "left the pod network to the other QEMU of this VMI"
                ),
                Err(e) => tracing::warn!(error = %e, "pod network release"),
            }
        }
    }
}
