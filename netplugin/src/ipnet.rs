//! IPv4 prefixes: parsing (`10.20.0.0/24`, `10.20.0.1/24` as Docker sends gateways), membership,
//! overlap and host ranges. Small enough to own rather than add a crate for.

use plugin_transport::input::quoted;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: the address is always the network address (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The network containing `addr` with `prefix` bits (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("prefix length /{prefix} is over 32"));
        }
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn first(&self) -> u32 {
        u32::from(self.addr)
    }

    pub fn last(&self) -> u32 {
        self.first() | !mask(self.prefix)
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.first()
    }

    /// True when `other` lies entirely inside `self`.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// Usable host addresses: all but the network and broadcast address (for /31 and /32, all).
    pub fn hosts(&self) -> (u32, u32) {
        if self.prefix >= 31 {
            (self.first(), self.last())
        } else {
            (self.first() + 1, self.last() - 1)
        }
    }

    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        let (lo, hi) = self.hosts();
        (lo..=hi).contains(&u32::from(ip))
    }

    /// The `index`-th subnet of length `prefix` inside this network.
    pub fn subnet(&self, prefix: u8, index: u64) -> Option<Ipv4Net> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if index >= count {
            return None;
        }
        let step = 1u64 << (32 - u32::from(prefix));
        let start = u64::from(self.first()) + index * step;
        Ipv4Net::new(Ipv4Addr::from(start as u32), prefix).ok()
    }

    pub fn subnet_count(&self, prefix: u8) -> u64 {
        if prefix < self.prefix || prefix > 32 {
            0
        } else {
            1u64 << (prefix - self.prefix)
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    /// Strict: `a.b.c.d/len` with no host bits set.
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = parse_cidr(s)?;
        let net = Ipv4Net::new(ip, prefix)?;
        if net.addr != ip {
            return Err(format!(
                "{s:?} has host bits set (the network address is {net})"
            ));
        }
        Ok(net)
    }
}

crate::mac::serde_as_string!(Ipv4Net, "IPv4 subnet");

/// An interface address in CIDR form, host bits kept (`10.20.0.5/24`): an endpoint's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4If {
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for Ipv4If {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

impl FromStr for Ipv4If {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_cidr(s).map(|(ip, prefix)| Ipv4If { ip, prefix })
    }
}

crate::mac::serde_as_string!(Ipv4If, "IPv4 address in CIDR form");

/// `a.b.c.d/len` → (address, prefix) with host bits kept (Docker sends gateways so).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{} is not in CIDR form a.b.c.d/len", quoted(s)))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{}: {} is not an IPv4 address", quoted(s), quoted(ip)))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{}: prefix length must be 0..=32", quoted(s)))?;
    Ok((ip, prefix))
}

/// An address given either plain (`10.0.0.5`) or in CIDR form (`10.0.0.5/24`).
pub fn parse_addr(s: &str) -> Result<Ipv4Addr, String> {
    if s.contains('/') {
        parse_cidr(s).map(|(ip, _)| ip)
    } else {
        s.parse()
            .map_err(|_| format!("{} is not an IPv4 address", quoted(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_ranges() {
        let n: Ipv4Net = "10.231.1.0/24".parse().unwrap();
        assert_eq!(n.hosts(), (n.first() + 1, n.first() + 254));
        assert!(n.contains("10.231.1.77".parse().unwrap()));
        assert!(!n.contains("10.231.2.1".parse().unwrap()));
        assert!("10.231.1.1/24".parse::<Ipv4Net>().is_err());
        assert!("10.231.1.0".parse::<Ipv4Net>().is_err());
        assert!("10.231.1.0/33".parse::<Ipv4Net>().is_err());
        assert!("300.1.1.0/24".parse::<Ipv4Net>().is_err());
        let big: Ipv4Net = "10.231.0.0/16".parse().unwrap();
        assert!(big.overlaps(&n) && n.overlaps(&big) && big.covers(&n) && !n.covers(&big));
        let other: Ipv4Net = "10.232.0.0/24".parse().unwrap();
        assert!(!other.overlaps(&n));
        assert_eq!(big.subnet(24, 1).unwrap().to_string(), "10.231.1.0/24");
        assert_eq!(big.subnet_count(24), 256);
        assert!(big.subnet(24, 256).is_none());
        assert_eq!(
            parse_addr("10.0.0.5/24").unwrap(),
            "10.0.0.5".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!("0.0.0.0/0".parse::<Ipv4Net>().unwrap().size(), 1 << 32);
    }
}
