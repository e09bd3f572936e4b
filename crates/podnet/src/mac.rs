use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address, written `52:54:00:12:34:56`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A stable, locally administered unicast address derived from `seed` (the VM id), so
    /// a re-adopted VM keeps its MAC. Prefix 52:54:00 like QEMU's defaults.
    pub fn derived_from(seed: &str) -> Self {
        use sha2::Digest;
        let h = sha2::Sha256::digest(seed.as_bytes());
        MacAddr([0x52, 0x54, 0x00, h[0], h[1], h[2]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address (six hex octets)"));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC address (six hex octets)"));
            }
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (six hex octets)"))?;
        }
        if out[0] & 1 == 1 {
            return Err(format!("{s:?} is a multicast address, not a unicast MAC"));
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<MacAddr>().unwrap(), m);
    }

    #[test]
    fn rejects_garbage_and_multicast() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f1",
            "zz:54:00:ab:cd:0f",
            "01:00:5e:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_is_stable_and_unicast() {
        let a = MacAddr::derived_from("vm-a");
        assert_eq!(a, MacAddr::derived_from("vm-a"));
        assert_ne!(a, MacAddr::derived_from("vm-b"));
        assert_eq!(a.0[0] & 1, 0);
    }
}
