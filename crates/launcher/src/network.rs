//! Pod network of the VM through `kubevirt-podnet`: masquerade (netns + tap + NAT + DHCP)
//! or passt. One pod-network interface per VM, as upstream.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kubevirt_hypervisor::{DomainConfig, NicBackend};
use kubevirt_podnet as podnet;

use crate::process::LauncherError;
use crate::protocol::{InterfaceStatus, VmiRef};
use crate::rundir::RunDir;
use crate::translate::NetPrep;

/// What was built for the VM's network; torn down when the VM ends.
#[derive(Default)]
pub struct NetState {
    handle: Option<podnet::PodNetworkHandle>,
    passt: Mutex<Option<podnet::Passt>>,
    dhcp: Mutex<Option<podnet::DhcpServer>>,
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
/// domain at it). Blocking: it runs `ip` and `nft`.
/// `vmm_user`: the VM's own user, when QEMU runs as one (passt runs as it too).
pub fn setup(
    vmi: &VmiRef,
    run_dir: &RunDir,
    networks: &[NetPrep],
    state_dir: &Path,
    vmm_user: Option<u32>,
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
    // A launcher killed -9 leaves its pod network behind: rebuild it.
    if let Ok(old) = pn.adopt(&vm_id) {
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
    let handle = pn.setup(cfg).map_err(err)?;
    let backend = match mode {
        podnet::PodMode::Masquerade => {
            match handle.dhcp_server() {
                Ok(d) => *st.dhcp.lock().unwrap_or_else(|p| p.into_inner()) = Some(d),
                Err(e) => {
                    let _ = handle.teardown();
                    return Err(err(e));
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

    /// Starts the DHCP server task (masquerade).
    pub fn spawn_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut out = Vec::new();
        if let Some(d) = self.dhcp.lock().unwrap_or_else(|p| p.into_inner()).take() {
            out.push(tokio::spawn(async move {
                if let Err(e) = d.serve().await {
                    tracing::error!(error = %e, "DHCP server stopped");
                }
            }));
        }
        out
    }

    /// Stops passt and removes the pod network. QEMU and the DHCP task must be gone.
    pub fn teardown(&self) {
        if let Some(mut p) = self.passt.lock().unwrap_or_else(|p| p.into_inner()).take() {
            p.stop();
        }
        self.dhcp.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = &self.handle {
            if let Err(e) = h.teardown() {
                tracing::warn!(error = %e, "pod network teardown");
            }
        }
    }
}
