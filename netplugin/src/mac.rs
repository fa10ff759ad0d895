//! Ethernet addresses as records and Docker show them: `02:b7:0a:e7:01:02`.

use plugin_transport::input::quoted;
use std::fmt;
use std::str::FromStr;

/// A unicast MAC address. Serializes as lower-case colon-separated hex, the form records have
/// always been stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A stable MAC from the IPv4 address (like Docker's bridge): 02:b7 + the four bytes.
    pub fn from_ip(ip: std::net::Ipv4Addr) -> Self {
        let o = ip.octets();
        Mac([0x02, 0xb7, o[0], o[1], o[2], o[3]])
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    /// Six colon-separated hex bytes; multicast addresses are refused (no container can own one).
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{} is not a MAC address like 02:42:0a:00:00:02",
                quoted(s)
            ));
        }
        let mut mac = [0u8; 6];
        for (m, p) in mac.iter_mut().zip(parts) {
            // from_str_radix alone would take "+f" and "" would fail later with less to say.
            if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "{} is not a MAC address like 02:42:0a:00:00:02",
                    quoted(s)
                ));
            }
            *m = u8::from_str_radix(p, 16).map_err(|_| {
                format!("{} is not a MAC address like 02:42:0a:00:00:02", quoted(s))
            })?;
        }
        if mac[0] & 1 == 1 {
            return Err(format!("{} is a multicast MAC address", quoted(s)));
        }
        Ok(Mac(mac))
    }
}

/// Serde through `Display`/`FromStr`, for the typed fields of records: the stored text stays
/// what it was, and a bad value names what it should have been.
macro_rules! serde_as_string {
    ($t:ty, $what:literal) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse()
                    .map_err(|e| serde::de::Error::custom(format!("{}: {e}", $what)))
            }
        }
    };
}
pub(crate) use serde_as_string;

serde_as_string!(Mac, "MAC address");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let mac: Mac = "02:b7:0a:e7:01:02".parse().unwrap();
        assert_eq!(mac, Mac::from_ip("10.231.1.2".parse().unwrap()));
        assert_eq!(mac.to_string(), "02:b7:0a:e7:01:02");
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            "\"02:b7:0a:e7:01:02\""
        );
        let e = serde_json::from_str::<Mac>("\"zz\"").unwrap_err();
        assert!(e.to_string().starts_with("MAC address: "), "{e}");
    }
}
