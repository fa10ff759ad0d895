//! How a pool is cut into blocks, and where an address sits in them.

use std::net::Ipv4Addr;

use crate::ipnet::Ipv4Net;

/// How a pool is cut into blocks: 2^bits addresses each (4 to 64; 16 blocks or more when the
/// pool is large enough), so a /24 has 16 blocks of 16 and a /16 1024 blocks of 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    first: u32,
    last: u32,
    bits: u32,
    nlo: u32,
    nhi: u32,
}

impl Geometry {
    pub fn of(net: &Ipv4Net) -> Self {
        let host_bits = 32 - u32::from(net.prefix());
        let bits = host_bits.saturating_sub(4).clamp(2, 6).min(host_bits);
        let (nlo, nhi) = net.hosts();
        Self {
            first: net.first(),
            last: net.last(),
            bits,
            nlo,
            nhi,
        }
    }

    pub fn block_size(&self) -> u32 {
        1 << self.bits
    }

    pub fn blocks(&self) -> u32 {
        ((u64::from(self.last - self.first) + 1) >> self.bits) as u32
    }

    pub(super) fn index_of(&self, a: u32) -> u32 {
        (a - self.first) >> self.bits
    }

    /// Block index and bit of an address of the pool.
    pub fn locate(&self, ip: Ipv4Addr) -> Option<(u32, u32)> {
        let a = u32::from(ip);
        (self.first..=self.last).contains(&a).then(|| {
            let off = a - self.first;
            (off >> self.bits, off & (self.block_size() - 1))
        })
    }

    pub fn addr(&self, idx: u32, bit: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.first + (idx << self.bits) + bit)
    }

    /// Bits of block `idx` for usable addresses within [lo, hi].
    pub fn mask(&self, idx: u32, lo: u32, hi: u32) -> u64 {
        let start = self.first + (idx << self.bits);
        let end = start + (self.block_size() - 1);
        let a = lo.max(self.nlo).max(start);
        let b = hi.min(self.nhi).min(end);
        if a > b {
            return 0;
        }
        let (from, to) = (a - start, b - start);
        let upto = if to >= 63 {
            u64::MAX
        } else {
            (1u64 << (to + 1)) - 1
        };
        upto & !((1u64 << from) - 1)
    }
}
