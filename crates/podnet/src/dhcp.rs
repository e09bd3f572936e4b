//! A DHCPv4 server for exactly one client: the VM behind `k6t-eth0`.
//!
//! Like KubeVirt's masquerade DHCP server it only answers the VM's MAC and always offers the
//! same address, so there is no lease database: restarting the server is harmless.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use dhcproto::v4::{
    Decodable, Decoder, DhcpOption, DhcpOptions, Encodable, Encoder, Message, MessageType, Opcode,
    OptionCode,
};
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn,
};

use crate::{MacAddr, PodNetError, Result};

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// What the guest is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Our address on the link; also the DHCP server identifier.
    pub server_ip: Ipv4Addr,
    /// The only client this server answers.
    pub client_mac: MacAddr,
    /// The address handed to it.
    pub client_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// DHCP option 12; the VM name.
    pub hostname: Option<String>,
    /// DHCP option 26.
    pub mtu: Option<u16>,
    pub lease_secs: u32,
}

impl DhcpConfig {
    fn netmask(&self) -> Ipv4Addr {
        let p = u32::from(self.prefix_len.min(32));
        Ipv4Addr::from(if p == 0 { 0 } else { u32::MAX << (32 - p) })
    }

    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.client_ip) | !u32::from(self.netmask()))
    }
}

/// Decodes a packet from the guest. dhcproto 0.15 has `debug_assert!`s and an unchecked
/// `len - 1` in some option decoders, so a crafted packet can panic it in debug builds;
/// the panic is contained here and the packet treated as malformed.
pub(crate) fn decode(bytes: &[u8]) -> Result<Message, String> {
    match std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes))) {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("option decoder panicked".into()),
    }
}

/// The reply to one client message, and where it goes; `None` means stay silent.
pub(crate) fn reply(cfg: &DhcpConfig, req: &Message) -> Option<(Message, SocketAddrV4)> {
    if req.opcode() != Opcode::BootRequest {
        return None;
    }
    // dhcproto's `chaddr()` slices by the untrusted `hlen` and panics above 16: check first.
    if req.hlen() != 6 || req.chaddr() != &cfg.client_mac.0[..] {
        tracing::debug!(
            hlen = req.hlen(),
            "DHCP request from another client, ignored"
        );
        return None;
    }
    let server_id = match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let (kind, yiaddr) = match req.opts().msg_type()? {
        MessageType::Discover => (MessageType::Offer, cfg.client_ip),
        MessageType::Request => {
            if server_id.is_some_and(|s| s != cfg.server_ip) {
                // The client picked another server's offer.
                return None;
            }
            let wanted = requested.unwrap_or(req.ciaddr());
            if wanted == cfg.client_ip || wanted.is_unspecified() {
                (MessageType::Ack, cfg.client_ip)
            } else {
                (MessageType::Nak, Ipv4Addr::UNSPECIFIED)
            }
        }
        MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
        _ => return None,
    };

    let mut msg = Message::new_with_id(
        req.xid(),
        req.ciaddr(),
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        &cfg.client_mac.0,
    );
    msg.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_flags(req.flags());

    let mut opts = DhcpOptions::new();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server_ip));
    if kind != MessageType::Nak {
        opts.insert(DhcpOption::SubnetMask(cfg.netmask()));
        opts.insert(DhcpOption::BroadcastAddr(cfg.broadcast()));
        if let Some(r) = cfg.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !cfg.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(cfg.dns.clone()));
        }
        if let Some(h) = cfg.hostname.as_deref().filter(|h| !h.is_empty()) {
            opts.insert(DhcpOption::Hostname(h.to_string()));
        }
        if let Some(mtu) = cfg.mtu {
            opts.insert(DhcpOption::InterfaceMtu(mtu));
        }
        if yiaddr != Ipv4Addr::UNSPECIFIED {
            opts.insert(DhcpOption::AddressLeaseTime(cfg.lease_secs));
            opts.insert(DhcpOption::Renewal(cfg.lease_secs / 2));
            opts.insert(DhcpOption::Rebinding(cfg.lease_secs / 8 * 7));
        }
    }
    msg.set_opts(opts);

    // No relays here. A configured client gets unicast; everyone else a broadcast, which
    // needs no ARP entry for an address the client does not have yet.
    let dest = if kind != MessageType::Nak && !req.ciaddr().is_unspecified() {
        SocketAddrV4::new(req.ciaddr(), CLIENT_PORT)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    };
    Some((msg, dest))
}

/// A DHCP server bound to one interface of one network namespace.
#[derive(Debug)]
pub struct DhcpServer {
    socket: UdpSocket,
    iface: String,
    netns: PathBuf,
    cfg: DhcpConfig,
}

fn make_socket(iface: &str) -> std::io::Result<UdpSocket> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::Udp,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::Broadcast, &true)?;
    setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(iface))?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT)),
    )?;
    Ok(UdpSocket::from(fd))
}

impl DhcpServer {
    /// Creates the server socket on `iface` inside the namespace at `netns_path`. The
    /// socket is made on a short-lived thread that enters the namespace; the caller's
    /// threads never change namespace. Call [`DhcpServer::serve`] on a tokio runtime.
    pub fn bind_in_netns(netns_path: &Path, iface: &str, cfg: DhcpConfig) -> Result<Self> {
        let name = iface.to_string();
        let socket = crate::netns::run_in_netns(netns_path, move || make_socket(&name))?.map_err(
            |source| PodNetError::DhcpSocket {
                netns: netns_path.to_path_buf(),
                iface: iface.to_string(),
                source,
            },
        )?;
        tracing::debug!(netns = %netns_path.display(), iface, "DHCP server bound");
        Ok(DhcpServer {
            socket,
            iface: iface.to_string(),
            netns: netns_path.to_path_buf(),
            cfg,
        })
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.cfg
    }

    /// Answers requests until the future is dropped (abort the task to stop it) or the
    /// socket fails. Malformed packets are logged and skipped.
    pub async fn serve(self) -> Result<()> {
        let sock_err = |source| PodNetError::DhcpSocket {
            netns: self.netns.clone(),
            iface: self.iface.clone(),
            source,
        };
        let socket = tokio::net::UdpSocket::from_std(self.socket).map_err(sock_err)?;
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.map_err(sock_err)?;
            let req = match decode(&buf[..n]) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%from, error = %e, "malformed DHCP packet ignored");
                    continue;
                }
            };
            // reply() reads fields through dhcproto accessors; never let one take the
            // server down.
            let answer =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reply(&self.cfg, &req)));
            let Ok(Some((resp, dest))) = answer else {
                continue;
            };
            let mut out = Vec::with_capacity(576);
            if let Err(e) = resp.encode(&mut Encoder::new(&mut out)) {
                tracing::warn!(error = %e, "could not encode DHCP reply");
                continue;
            }
            tracing::debug!(
                kind = ?resp.opts().msg_type(),
                ip = %resp.yiaddr(),
                %dest,
                "DHCP reply"
            );
            if let Err(e) = socket.send_to(&out, dest).await {
                tracing::warn!(%dest, error = %e, "could not send DHCP reply");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::Flags;

    fn cfg() -> DhcpConfig {
        DhcpConfig {
            server_ip: Ipv4Addr::new(10, 0, 2, 1),
            client_mac: "52:54:00:01:02:03".parse().unwrap(),
            client_ip: Ipv4Addr::new(10, 0, 2, 2),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 1)),
            dns: vec![Ipv4Addr::new(10, 255, 255, 53)],
            hostname: Some("testvm".into()),
            mtu: Some(1400),
            lease_secs: 86400,
        }
    }

    fn request(kind: MessageType, mac: [u8; 6], extra: &[DhcpOption]) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(0x1234, z, z, z, z, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in extra {
            m.opts_mut().insert(o.clone());
        }
        // Round-trip through the wire format so the test sees what a real client sends.
        let mut bytes = Vec::new();
        m.encode(&mut Encoder::new(&mut bytes)).unwrap();
        Message::decode(&mut Decoder::new(&bytes)).unwrap()
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];

    #[test]
    fn discover_gets_a_full_offer_by_broadcast() {
        let (m, dest) = reply(&cfg(), &request(MessageType::Discover, MAC, &[])).unwrap();
        assert_eq!(dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), 0x1234);
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(&m.chaddr()[..6], &MAC);
        let o = m.opts();
        assert_eq!(o.msg_type(), Some(MessageType::Offer));
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 1)]))
        );
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 255, 255, 53
            )]))
        );
        assert_eq!(
            o.get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("testvm".into()))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1400))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(86400))
        );
        assert_eq!(
            o.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 1)))
        );
        assert_eq!(
            o.get(OptionCode::BroadcastAddr),
            Some(&DhcpOption::BroadcastAddr(Ipv4Addr::new(10, 0, 2, 255)))
        );
    }

    #[test]
    fn request_for_our_address_is_acked_other_address_nakked() {
        let ours = [
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 2, 2)),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 1)),
        ];
        let (m, _) = reply(&cfg(), &request(MessageType::Request, MAC, &ours)).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 2, 2));

        let other = [DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 2, 9))];
        let (m, dest) = reply(&cfg(), &request(MessageType::Request, MAC, &other)).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(m.opts().get(OptionCode::Router).is_none());
        assert_eq!(dest.ip(), &Ipv4Addr::BROADCAST);
    }

    #[test]
    fn request_to_another_server_and_other_macs_are_ignored() {
        let other_server = [DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 254))];
        assert!(reply(&cfg(), &request(MessageType::Request, MAC, &other_server)).is_none());
        assert!(reply(
            &cfg(),
            &request(MessageType::Discover, [0x52, 0x54, 0, 9, 9, 9], &[])
        )
        .is_none());
        assert!(reply(&cfg(), &request(MessageType::Release, MAC, &[])).is_none());
        assert!(reply(&cfg(), &request(MessageType::Decline, MAC, &[])).is_none());
    }

    #[test]
    fn renewing_client_gets_unicast_and_inform_gets_no_lease() {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut renew = Message::new_with_id(7, Ipv4Addr::new(10, 0, 2, 2), z, z, z, &MAC);
        renew
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        renew.set_flags(Flags::default());
        let (m, dest) = reply(&cfg(), &renew).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(dest, SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 68));

        let mut inform = Message::new_with_id(8, Ipv4Addr::new(10, 0, 2, 2), z, z, z, &MAC);
        inform
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Inform));
        let (m, _) = reply(&cfg(), &inform).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(m.yiaddr(), z);
        assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
    }

    proptest::proptest! {
        /// Untrusted bytes from the guest: decoding may fail, answering must not panic,
        /// and an answer only ever offers the configured address to the configured MAC.
        #[test]
        fn random_packets_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..700)) {
            if let Ok(m) = decode(&bytes) {
                if let Some((r, _)) = reply(&cfg(), &m) {
                    proptest::prop_assert_eq!(&r.chaddr()[..6], &MAC[..]);
                    proptest::prop_assert!(r.yiaddr() == cfg().client_ip || r.yiaddr().is_unspecified());
                }
            }
        }

        /// Well-formed requests with random fields from our MAC get a reply that encodes.
        #[test]
        fn valid_requests_get_encodable_replies(xid in proptest::num::u32::ANY, kind in 1u8..=8, ciaddr in proptest::num::u32::ANY) {
            let z = Ipv4Addr::UNSPECIFIED;
            let mut m = Message::new_with_id(xid, Ipv4Addr::from(ciaddr), z, z, z, &MAC);
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::from(kind)));
            if let Some((r, _)) = reply(&cfg(), &m) {
                proptest::prop_assert_eq!(r.xid(), xid);
                let mut out = Vec::new();
                proptest::prop_assert!(r.encode(&mut Encoder::new(&mut out)).is_ok());
            }
        }
    }

    #[test]
    fn option_that_panics_the_decoder_is_just_malformed() {
        let mut bytes = Vec::new();
        request(MessageType::Discover, MAC, &[])
            .encode(&mut Encoder::new(&mut bytes))
            .unwrap();
        let end = bytes.iter().rposition(|b| *b == 0xff).unwrap();
        // Rapid commit (80) must be empty; with a payload dhcproto's debug_assert fires.
        bytes.splice(end..end, [80u8, 1, 0x41]);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn oversized_hardware_length_is_ignored_not_a_panic() {
        let mut bytes = Vec::new();
        request(MessageType::Discover, MAC, &[])
            .encode(&mut Encoder::new(&mut bytes))
            .unwrap();
        bytes[2] = 200; // hlen: dhcproto's chaddr() would slice 200 of 16 bytes
        let m = decode(&bytes).unwrap();
        assert!(reply(&cfg(), &m).is_none());
    }

    #[test]
    fn garbage_never_panics() {
        // Every prefix of a valid packet and some noise: decode may fail, reply must not panic.
        let mut bytes = Vec::new();
        request(MessageType::Discover, MAC, &[])
            .encode(&mut Encoder::new(&mut bytes))
            .unwrap();
        for n in 0..bytes.len() {
            if let Ok(m) = decode(&bytes[..n]) {
                let _ = reply(&cfg(), &m);
            }
        }
        let noise: Vec<u8> = (0..600u32).map(|i| (i * 7919 % 251) as u8).collect();
        if let Ok(m) = decode(&noise) {
            let _ = reply(&cfg(), &m);
        }
    }
}
