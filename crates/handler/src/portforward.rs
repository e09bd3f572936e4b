//! The `portforward` subresource of VMIs and VMs: a websocket (`plain.kubevirt.io`, binary
//! frames) joined to a TCP connection or a UDP socket on the VMI's pod-network address,
//! as upstream virt-api serves it. `virtctl port-forward`, `ssh` and `scp` use it, so a
//! user reaches a guest's port with nothing but API access.
//!
//! The connection is dialled before the upgrade, so a refusal (VMI missing, paused, no
//! address, port closed) comes back as a `Status` with upstream's code and wording.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use kube::{Api, ResourceExt};
use kubevirt_api::v1::{vmi_condition, VirtualMachine, VirtualMachineInstance};
use tokio::net::{TcpStream, UdpSocket};

use crate::subresources::{bridge, ApiError, AppState, PLAIN_PROTOCOL};

/// Largest datagram relayed (the IPv4 UDP payload limit).
const MAX_DATAGRAM: usize = 65_507;

/// Which object the path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Vmi,
    Vm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
}

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

pub async fn vmi(
    State(state): State<AppState>,
    Path((ns, name, port)): Path<(String, String, String)>,
    ws: Upgrade,
) -> Result<Response, ApiError> {
    serve(&state, Target::Vmi, &ns, &name, &port, None, ws).await
}

pub async fn vmi_with_protocol(
    State(state): State<AppState>,
    Path((ns, name, port, protocol)): Path<(String, String, String, String)>,
    ws: Upgrade,
) -> Result<Response, ApiError> {
    serve(&state, Target::Vmi, &ns, &name, &port, Some(&protocol), ws).await
}

pub async fn vm(
    State(state): State<AppState>,
    Path((ns, name, port)): Path<(String, String, String)>,
    ws: Upgrade,
) -> Result<Response, ApiError> {
    serve(&state, Target::Vm, &ns, &name, &port, None, ws).await
}

pub async fn vm_with_protocol(
    State(state): State<AppState>,
    Path((ns, name, port, protocol)): Path<(String, String, String, String)>,
    ws: Upgrade,
) -> Result<Response, ApiError> {
    serve(&state, Target::Vm, &ns, &name, &port, Some(&protocol), ws).await
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn parse_port(port: &str) -> Result<u16, ApiError> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad_request(format!(
            "port: Invalid value: {port:?}: must be a number between 1 and 65535"
        ))),
    }
}

fn parse_protocol(protocol: Option<&str>) -> Result<Protocol, ApiError> {
    match protocol {
        None | Some("tcp") => Ok(Protocol::Tcp),
        Some("udp") => Ok(Protocol::Udp),
        Some(other) => Err(bad_request(format!(
            "protocol: Unsupported value: {other:?}: supported values: \"tcp\", \"udp\""
        ))),
    }
}

async fn serve(
    state: &AppState,
    target: Target,
    ns: &str,
    name: &str,
    port: &str,
    protocol: Option<&str>,
    ws: Upgrade,
) -> Result<Response, ApiError> {
    let port = parse_port(port)?;
    let protocol = parse_protocol(protocol)?;
    let ws = ws.map_err(|_| bad_request("portforward needs a websocket upgrade"))?;
    let vmi = fetch(state, target, ns, name).await?;
    if vmi.condition_true(vmi_condition::PAUSED) {
        return Err(ApiError::conflict(
            "virtualmachineinstance",
            name,
            "VMI is paused",
        ));
    }
    let ip = target_ip(&vmi)?;
    let addr = SocketAddr::new(ip, port);
    let upgrade = ws.protocols([PLAIN_PROTOCOL]);
    match protocol {
        Protocol::Tcp => {
            let conn = TcpStream::connect(addr)
                .await
                .map_err(|e| dial_failed("tcp", addr, e))?;
            Ok(upgrade.on_upgrade(move |socket| bridge(socket, conn)))
        }
        Protocol::Udp => {
            let local: SocketAddr = if ip.is_ipv4() {
                (IpAddr::from([0, 0, 0, 0]), 0).into()
            } else {
                (IpAddr::from([0u16; 8]), 0).into()
            };
            let sock = UdpSocket::bind(local)
                .await
                .map_err(|e| dial_failed("udp", addr, e))?;
            sock.connect(addr)
                .await
                .map_err(|e| dial_failed("udp", addr, e))?;
            Ok(upgrade.on_upgrade(move |socket| relay_udp(socket, sock)))
        }
    }
}

/// Upstream's wording: `Internal error occurred: dialing VM: dial tcp ADDR: ...`.
fn dial_failed(proto: &str, addr: SocketAddr, e: std::io::Error) -> ApiError {
    ApiError::internal(format!(
        "Internal error occurred: dialing VM: dial {proto} {addr}: {e}"
    ))
}

/// The VMI the path names: the VMI itself, or the VM's running VMI.
async fn fetch(
    state: &AppState,
    target: Target,
    ns: &str,
    name: &str,
) -> Result<VirtualMachineInstance, ApiError> {
    let client = state.client()?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    if target == Target::Vm {
        let vms: Api<VirtualMachine> = Api::namespaced(client, ns);
        let vm = vms
            .get_opt(name)
            .await
            .map_err(ApiError::from_kube)?
            .ok_or_else(|| ApiError::not_found("virtualmachine", name))?;
        if !vm.status.as_ref().and_then(|s| s.created).unwrap_or(false) {
            return Err(ApiError::conflict(
                "virtualmachine",
                name,
                "VMI is not started",
            ));
        }
        let vmi = vmis
            .get_opt(name)
            .await
            .map_err(ApiError::from_kube)?
            .ok_or_else(|| ApiError::not_found("virtualmachineinstance", name))?;
        let owned = vmi
            .owner_references()
            .iter()
            .any(|r| Some(&r.uid) == vm.metadata.uid.as_ref());
        if !owned {
            return Err(ApiError::internal(format!(
                "Internal error occurred: unable to retrieve vmi [{name}] for vm"
            )));
        }
        return Ok(vmi);
    }
    vmis.get_opt(name)
        .await
        .map_err(ApiError::from_kube)?
        .ok_or_else(|| ApiError::not_found("virtualmachineinstance", name))
}

/// The first interface's address, as upstream (the pod network's, where the launcher pod
/// forwards to the guest).
fn target_ip(vmi: &VirtualMachineInstance) -> Result<IpAddr, ApiError> {
    let interfaces = vmi
        .status
        .as_ref()
        .and_then(|s| s.interfaces.as_deref())
        .unwrap_or_default();
    let Some(first) = interfaces.first() else {
        return Err(bad_request("no network interfaces are present"));
    };
    let ip = first.ip_address.as_deref().unwrap_or_default();
    ip.parse().map_err(|_| {
        bad_request(format!(
            "interface {} has no usable address: {ip:?}",
            first.name.as_deref().unwrap_or_default()
        ))
    })
}

/// One frame is one datagram, each way, until the websocket closes.
async fn relay_udp(socket: WebSocket, sock: UdpSocket) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let to_ws = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match sock.recv(&mut buf).await {
                Ok(n) => {
                    let frame = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if ws_tx.send(frame).await.is_err() {
                        break;
                    }
                }
                // An ICMP refusal of an earlier datagram: the next may still pass.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(_) => break,
            }
        }
    };
    let from_ws = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            if data.len() > MAX_DATAGRAM {
                continue;
            }
            let _ = sock.send(&data).await;
        }
    };
    tokio::select! {
        _ = to_ws => {},
        _ = from_ws => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_protocols() {
        assert_eq!(parse_port("22").unwrap(), 22);
        for bad in ["0", "65536", "-1", "ssh", ""] {
            let e = parse_port(bad).unwrap_err();
            assert_eq!(e.code(), StatusCode::BAD_REQUEST, "{bad}");
        }
        assert_eq!(parse_protocol(None).unwrap(), Protocol::Tcp);
        assert_eq!(parse_protocol(Some("udp")).unwrap(), Protocol::Udp);
        assert!(parse_protocol(Some("sctp"))
            .unwrap_err()
            .message()
            .contains("supported values"));
    }

    #[test]
    fn first_interface_address() {
        let mut vmi = VirtualMachineInstance::test("v");
        let e = target_ip(&vmi).unwrap_err();
        assert_eq!(e.message(), "no network interfaces are present");
        let status = vmi.status.get_or_insert_with(Default::default);
        status.interfaces = Some(vec![Default::default()]);
        assert!(target_ip(&vmi).is_err());
        vmi.status.as_mut().unwrap().interfaces.as_mut().unwrap()[0].ip_address =
            Some("10.244.0.7".into());
        assert_eq!(target_ip(&vmi).unwrap().to_string(), "10.244.0.7");
    }
}
