//! The typed model of flows, matches, actions and meters, and their `ovs-ofctl`-style text.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

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

impl std::str::FromStr for Mac {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Mac> {
        let bad = || {
            crate::Error::invalid(
                "MAC address",
                "must be six hex octets like 02:00:00:00:00:01",
            )
        };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(':') {
            if n == 6 || part.is_empty() || part.len() > 2 {
                return Err(bad());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
            n += 1;
        }
        if n != 6 {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

/// Negotiated OpenFlow version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OfVersion {
    V1_3,
    V1_4,
    V1_5,
}

impl OfVersion {
    pub fn wire(self) -> u8 {
        match self {
            OfVersion::V1_3 => crate::wire::OFP13_VERSION,
            OfVersion::V1_4 => crate::wire::OFP14_VERSION,
            OfVersion::V1_5 => crate::wire::OFP15_VERSION,
        }
    }
    pub fn from_wire(v: u8) -> Option<OfVersion> {
        [OfVersion::V1_3, OfVersion::V1_4, OfVersion::V1_5]
            .into_iter()
            .find(|x| x.wire() == v)
    }
}

impl fmt::Display for OfVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OfVersion::V1_3 => "OpenFlow 1.3",
            OfVersion::V1_4 => "OpenFlow 1.4",
            OfVersion::V1_5 => "OpenFlow 1.5",
        })
    }
}

/// An output port: a number or one of the reserved ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    Number(u32),
    InPort,
    Normal,
    Flood,
    All,
    /// Send to the controller, at most this many bytes of the packet (65535 = whole packet).
    Controller(u16),
    Local,
}

pub(crate) const OFPP_IN_PORT: u32 = crate::wire::OFPP11_OFFSET + 0xfff8;
pub(crate) const OFPP_NORMAL: u32 = crate::wire::OFPP11_OFFSET + 0xfffa;
pub(crate) const OFPP_FLOOD: u32 = crate::wire::OFPP11_OFFSET + 0xfffb;
pub(crate) const OFPP_ALL: u32 = crate::wire::OFPP11_OFFSET + 0xfffc;
pub(crate) const OFPP_CONTROLLER: u32 = crate::wire::OFPP11_OFFSET + 0xfffd;
pub(crate) const OFPP_LOCAL: u32 = crate::wire::OFPP11_OFFSET + 0xfffe;
pub(crate) const OFPP_ANY: u32 = crate::wire::OFPP11_OFFSET + 0xffff;

impl Port {
    pub(crate) fn to_wire(self) -> (u32, u16) {
        match self {
            Port::Number(n) => (n, 0),
            Port::InPort => (OFPP_IN_PORT, 0),
            Port::Normal => (OFPP_NORMAL, 0),
            Port::Flood => (OFPP_FLOOD, 0),
            Port::All => (OFPP_ALL, 0),
            Port::Controller(m) => (OFPP_CONTROLLER, m),
            Port::Local => (OFPP_LOCAL, 0),
        }
    }
    pub(crate) fn from_wire(p: u32, max_len: u16) -> Port {
        match p {
            OFPP_IN_PORT => Port::InPort,
            OFPP_NORMAL => Port::Normal,
            OFPP_FLOOD => Port::Flood,
            OFPP_ALL => Port::All,
            OFPP_CONTROLLER => Port::Controller(max_len),
            OFPP_LOCAL => Port::Local,
            n => Port::Number(n),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(n) => write!(f, "output:{n}"),
            Port::InPort => f.write_str("IN_PORT"),
            Port::Normal => f.write_str("NORMAL"),
            Port::Flood => f.write_str("FLOOD"),
            Port::All => f.write_str("ALL"),
            Port::Controller(m) => write!(f, "CONTROLLER:{m}"),
            Port::Local => f.write_str("LOCAL"),
        }
    }
}

/// VLAN condition of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VlanMatch {
    /// No 802.1Q header.
    Untagged,
    /// Tagged with this VLAN id.
    Vid(u16),
}

pub(crate) const ETH_TYPE_IP: u16 = 0x0800;
pub(crate) const ETH_TYPE_ARP: u16 = 0x0806;

/// Match fields (OXM). Unset fields are wildcards. Setters of ARP or IPv4 fields also set the
/// `eth_type` they require when it is not set yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Match {
    pub in_port: Option<u32>,
    pub eth_dst: Option<Mac>,
    pub eth_src: Option<Mac>,
    pub eth_type: Option<u16>,
    pub vlan: Option<VlanMatch>,
    pub ip_proto: Option<u8>,
    /// Address and prefix length (32 = exact).
    pub ipv4_src: Option<(Ipv4Addr, u8)>,
    pub ipv4_dst: Option<(Ipv4Addr, u8)>,
    pub arp_op: Option<u16>,
    pub arp_spa: Option<Ipv4Addr>,
    pub arp_tpa: Option<Ipv4Addr>,
    pub arp_sha: Option<Mac>,
    pub arp_tha: Option<Mac>,
    /// Nicira registers `(n, value)`, n in 0..=15, sorted by n (set by earlier tables).
    pub regs: Vec<(u8, u32)>,
    /// OXM TLVs this model does not know, as received (decode only).
    pub other: Vec<Vec<u8>>,
}

impl Match {
    pub fn new() -> Match {
        Match::default()
    }
    pub fn in_port(mut self, p: u32) -> Self {
        self.in_port = Some(p);
        self
    }
    pub fn eth_src(mut self, m: Mac) -> Self {
        self.eth_src = Some(m);
        self
    }
    pub fn eth_dst(mut self, m: Mac) -> Self {
        self.eth_dst = Some(m);
        self
    }
    pub fn eth_type(mut self, t: u16) -> Self {
        self.eth_type = Some(t);
        self
    }
    pub fn arp(self) -> Self {
        self.eth_type(ETH_TYPE_ARP)
    }
    pub fn ipv4(self) -> Self {
        self.eth_type(ETH_TYPE_IP)
    }
    pub fn vlan_vid(mut self, vid: u16) -> Self {
        self.vlan = Some(VlanMatch::Vid(vid));
        self
    }
    pub fn untagged(mut self) -> Self {
        self.vlan = Some(VlanMatch::Untagged);
        self
    }
    /// Register `n` (0..=15) equal to `value`.
    pub fn reg(mut self, n: u8, value: u32) -> Self {
        self.regs.retain(|(r, _)| *r != n);
        self.regs.push((n, value));
        self.regs.sort_unstable();
        self
    }
    fn need(mut self, t: u16) -> Self {
        self.eth_type.get_or_insert(t);
        self
    }
    pub fn ip_proto(mut self, p: u8) -> Self {
        self.ip_proto = Some(p);
        self.need(ETH_TYPE_IP)
    }
    pub fn ipv4_src(mut self, a: Ipv4Addr, prefix: u8) -> Self {
        self.ipv4_src = Some((a, prefix));
        self.need(ETH_TYPE_IP)
    }
    pub fn ipv4_dst(mut self, a: Ipv4Addr, prefix: u8) -> Self {
        self.ipv4_dst = Some((a, prefix));
        self.need(ETH_TYPE_IP)
    }
    pub fn arp_op(mut self, op: u16) -> Self {
        self.arp_op = Some(op);
        self.need(ETH_TYPE_ARP)
    }
    pub fn arp_spa(mut self, a: Ipv4Addr) -> Self {
        self.arp_spa = Some(a);
        self.need(ETH_TYPE_ARP)
    }
    pub fn arp_tpa(mut self, a: Ipv4Addr) -> Self {
        self.arp_tpa = Some(a);
        self.need(ETH_TYPE_ARP)
    }
    pub fn arp_sha(mut self, m: Mac) -> Self {
        self.arp_sha = Some(m);
        self.need(ETH_TYPE_ARP)
    }
    pub fn arp_tha(mut self, m: Mac) -> Self {
        self.arp_tha = Some(m);
        self.need(ETH_TYPE_ARP)
    }

    /// Checks the OpenFlow prerequisites so the switch never sees an invalid match.
    pub fn validate(&self) -> crate::Result<()> {
        let arp = self.arp_op.is_some()
            || self.arp_spa.is_some()
            || self.arp_tpa.is_some()
            || self.arp_sha.is_some()
            || self.arp_tha.is_some();
        let ip = self.ip_proto.is_some() || self.ipv4_src.is_some() || self.ipv4_dst.is_some();
        if arp && self.eth_type != Some(ETH_TYPE_ARP) {
            return Err(crate::Error::invalid(
                "match",
                "arp_* fields need eth_type 0x0806",
            ));
        }
        if ip && self.eth_type != Some(ETH_TYPE_IP) {
            return Err(crate::Error::invalid(
                "match",
                "ip_proto and ipv4_* need eth_type 0x0800",
            ));
        }
        for (name, p) in [("ipv4_src", self.ipv4_src), ("ipv4_dst", self.ipv4_dst)] {
            if let Some((_, len)) = p {
                if len == 0 || len > 32 {
                    return Err(crate::Error::invalid(name, "prefix length must be 1..=32"));
                }
            }
        }
        if let Some(VlanMatch::Vid(v)) = self.vlan {
            if v > 4095 {
                return Err(crate::Error::invalid("vlan_vid", "must be 0..=4095"));
            }
        }
        if self.regs.iter().any(|(n, _)| *n > 15) {
            return Err(crate::Error::invalid("register", "must be 0..=15"));
        }
        Ok(())
    }

    /// `ovs-ofctl` match text (without priority), e.g. `arp,in_port=1,arp_tpa=10.0.0.1`.
    pub(crate) fn format(&self, out: &mut Vec<String>) {
        let mut skip_type = false;
        match self.eth_type {
            Some(ETH_TYPE_IP) => {
                skip_type = true;
                match self.ip_proto {
                    Some(1) => out.push("icmp".into()),
                    Some(6) => out.push("tcp".into()),
                    Some(17) => out.push("udp".into()),
                    Some(132) => out.push("sctp".into()),
                    _ => out.push("ip".into()),
                }
            }
            Some(ETH_TYPE_ARP) => {
                skip_type = true;
                out.push("arp".into());
            }
            _ => {}
        }
        for (n, v) in &self.regs {
            out.push(format!("reg{n}={v:#x}"));
        }
        if let Some(p) = self.in_port {
            out.push(format!("in_port={}", port_name(p)));
        }
        match self.vlan {
            Some(VlanMatch::Vid(v)) => out.push(format!("dl_vlan={v}")),
            Some(VlanMatch::Untagged) => out.push("vlan_tci=0x0000/0x1fff".into()),
            None => {}
        }
        if let Some(m) = self.eth_src {
            out.push(format!("dl_src={m}"));
        }
        if let Some(m) = self.eth_dst {
            out.push(format!("dl_dst={m}"));
        }
        if let (Some(t), false) = (self.eth_type, skip_type) {
            out.push(format!("dl_type=0x{t:04x}"));
        }
        let pfx = |(a, l): (Ipv4Addr, u8)| {
            if l >= 32 {
                a.to_string()
            } else {
                format!("{a}/{l}")
            }
        };
        if let Some(a) = self.ipv4_src {
            out.push(format!("nw_src={}", pfx(a)));
        }
        if let Some(a) = self.ipv4_dst {
            out.push(format!("nw_dst={}", pfx(a)));
        }
        if let Some(a) = self.arp_spa {
            out.push(format!("arp_spa={a}"));
        }
        if let Some(a) = self.arp_tpa {
            out.push(format!("arp_tpa={a}"));
        }
        if let Some(op) = self.arp_op {
            out.push(format!("arp_op={op}"));
        }
        if let (Some(p), true) = (
            self.ip_proto,
            !matches!(self.ip_proto, Some(1 | 6 | 17 | 132)),
        ) {
            out.push(format!("nw_proto={p}"));
        }
        if let Some(m) = self.arp_sha {
            out.push(format!("arp_sha={m}"));
        }
        if let Some(m) = self.arp_tha {
            out.push(format!("arp_tha={m}"));
        }
        for o in &self.other {
            out.push(format!("oxm={}", hex(o)));
        }
    }
}

fn port_name(p: u32) -> String {
    match p {
        OFPP_LOCAL => "LOCAL".into(),
        OFPP_IN_PORT => "IN_PORT".into(),
        OFPP_CONTROLLER => "CONTROLLER".into(),
        n => n.to_string(),
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A field that actions can write or copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    EthDst,
    EthSrc,
    EthType,
    VlanVid,
    IpProto,
    Ipv4Src,
    Ipv4Dst,
    ArpOp,
    ArpSpa,
    ArpTpa,
    ArpSha,
    ArpTha,
    /// Nicira register 0..=15.
    Reg(u8),
}

pub(crate) const OXM_CLASS_BASIC: u16 = 0x8000;
pub(crate) const NXM_CLASS_NX1: u16 = 0x0001;

impl Field {
    /// (OXM class, field, value length).
    pub(crate) fn oxm(self) -> (u16, u8, u8) {
        let b = OXM_CLASS_BASIC;
        match self {
            Field::EthDst => (b, 3, 6),
            Field::EthSrc => (b, 4, 6),
            Field::EthType => (b, 5, 2),
            Field::VlanVid => (b, 6, 2),
            Field::IpProto => (b, 10, 1),
            Field::Ipv4Src => (b, 11, 4),
            Field::Ipv4Dst => (b, 12, 4),
            Field::ArpOp => (b, 21, 2),
            Field::ArpSpa => (b, 22, 4),
            Field::ArpTpa => (b, 23, 4),
            Field::ArpSha => (b, 24, 6),
            Field::ArpTha => (b, 25, 6),
            Field::Reg(n) => (NXM_CLASS_NX1, n, 4),
        }
    }

    pub(crate) fn from_oxm(class: u16, field: u8) -> Option<Field> {
        if class == NXM_CLASS_NX1 && field < 16 {
            return Some(Field::Reg(field));
        }
        // OVS reports NXM_OF_* / NXM_NX_* headers for the same fields in Nicira actions.
        let f = match (class, field) {
            (OXM_CLASS_BASIC, 3) | (0, 1) => Field::EthDst,
            (OXM_CLASS_BASIC, 4) | (0, 2) => Field::EthSrc,
            (OXM_CLASS_BASIC, 5) | (0, 3) => Field::EthType,
            (OXM_CLASS_BASIC, 6) => Field::VlanVid,
            (OXM_CLASS_BASIC, 10) | (0, 6) => Field::IpProto,
            (OXM_CLASS_BASIC, 11) | (0, 7) => Field::Ipv4Src,
            (OXM_CLASS_BASIC, 12) | (0, 8) => Field::Ipv4Dst,
            (OXM_CLASS_BASIC, 21) | (0, 15) => Field::ArpOp,
            (OXM_CLASS_BASIC, 22) | (0, 16) => Field::ArpSpa,
            (OXM_CLASS_BASIC, 23) | (0, 17) => Field::ArpTpa,
            (OXM_CLASS_BASIC, 24) | (1, 17) => Field::ArpSha,
            (OXM_CLASS_BASIC, 25) | (1, 18) => Field::ArpTha,
            _ => return None,
        };
        Some(f)
    }

    pub fn bits(self) -> u16 {
        match self {
            Field::VlanVid => 12,
            other => u16::from(other.oxm().2) * 8,
        }
    }

    /// The name `ovs-ofctl` prints in `move:` actions.
    pub fn nxm_name(self) -> String {
        match self {
            Field::EthDst => "NXM_OF_ETH_DST".into(),
            Field::EthSrc => "NXM_OF_ETH_SRC".into(),
            Field::EthType => "NXM_OF_ETH_TYPE".into(),
            Field::VlanVid => "OXM_OF_VLAN_VID".into(),
            Field::IpProto => "NXM_OF_IP_PROTO".into(),
            Field::Ipv4Src => "NXM_OF_IP_SRC".into(),
            Field::Ipv4Dst => "NXM_OF_IP_DST".into(),
            Field::ArpOp => "NXM_OF_ARP_OP".into(),
            Field::ArpSpa => "NXM_OF_ARP_SPA".into(),
            Field::ArpTpa => "NXM_OF_ARP_TPA".into(),
            Field::ArpSha => "NXM_NX_ARP_SHA".into(),
            Field::ArpTha => "NXM_NX_ARP_THA".into(),
            Field::Reg(n) => format!("NXM_NX_REG{n}"),
        }
    }
}

/// A value written by a `set_field` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetField {
    EthDst(Mac),
    EthSrc(Mac),
    /// VLAN id (the OFPVID_PRESENT bit is added on the wire).
    VlanVid(u16),
    Ipv4Src(Ipv4Addr),
    Ipv4Dst(Ipv4Addr),
    ArpOp(u16),
    ArpSpa(Ipv4Addr),
    ArpTpa(Ipv4Addr),
    ArpSha(Mac),
    ArpTha(Mac),
    Reg(u8, u32),
}

impl SetField {
    pub(crate) fn field(self) -> Field {
        match self {
            SetField::EthDst(_) => Field::EthDst,
            SetField::EthSrc(_) => Field::EthSrc,
            SetField::VlanVid(_) => Field::VlanVid,
            SetField::Ipv4Src(_) => Field::Ipv4Src,
            SetField::Ipv4Dst(_) => Field::Ipv4Dst,
            SetField::ArpOp(_) => Field::ArpOp,
            SetField::ArpSpa(_) => Field::ArpSpa,
            SetField::ArpTpa(_) => Field::ArpTpa,
            SetField::ArpSha(_) => Field::ArpSha,
            SetField::ArpTha(_) => Field::ArpTha,
            SetField::Reg(n, _) => Field::Reg(n),
        }
    }
}

impl fmt::Display for SetField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetField::EthDst(m) => write!(f, "set_field:{m}->eth_dst"),
            SetField::EthSrc(m) => write!(f, "set_field:{m}->eth_src"),
            SetField::VlanVid(v) => {
                write!(f, "set_field:{}->vlan_vid", v | crate::wire::OFPVID_PRESENT)
            }
            SetField::Ipv4Src(a) => write!(f, "set_field:{a}->ip_src"),
            SetField::Ipv4Dst(a) => write!(f, "set_field:{a}->ip_dst"),
            SetField::ArpOp(o) => write!(f, "set_field:{o}->arp_op"),
            SetField::ArpSpa(a) => write!(f, "set_field:{a}->arp_spa"),
            SetField::ArpTpa(a) => write!(f, "set_field:{a}->arp_tpa"),
            SetField::ArpSha(m) => write!(f, "set_field:{m}->arp_sha"),
            SetField::ArpTha(m) => write!(f, "set_field:{m}->arp_tha"),
            SetField::Reg(n, v) => write!(f, "set_field:{v:#x}->reg{n}"),
        }
    }
}

/// An action (inside apply-actions or write-actions).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    Output(Port),
    SetField(SetField),
    /// Push an 802.1Q header with this TPID (0x8100).
    PushVlan(u16),
    PopVlan,
    /// Nicira `reg_move`: copy `n_bits` from `src[src_ofs..]` to `dst[dst_ofs..]`.
    Move {
        src: Field,
        dst: Field,
        n_bits: u16,
        src_ofs: u16,
        dst_ofs: u16,
    },
    /// OpenFlow 1.5 meter action (on 1.3/1.4 use [`Instruction::Meter`]).
    Meter(u32),
    /// An action this model does not know: its type and length, as received.
    Unknown {
        kind: u16,
        len: usize,
    },
}

impl Action {
    /// Rewrites an ARP request into the reply "`ip` is at `mac`", addressed back to its sender:
    /// what an ARP responder does before sending the packet out of `IN_PORT`.
    pub fn arp_reply(mac: Mac, ip: Ipv4Addr) -> Vec<Action> {
        vec![
            Action::move_field(Field::EthSrc, Field::EthDst),
            Action::SetField(SetField::EthSrc(mac)),
            Action::SetField(SetField::ArpOp(2)),
            Action::move_field(Field::ArpSha, Field::ArpTha),
            Action::SetField(SetField::ArpSha(mac)),
            Action::move_field(Field::ArpSpa, Field::ArpTpa),
            Action::SetField(SetField::ArpSpa(ip)),
        ]
    }

    /// `move:src[]->dst[]` of whole fields.
    pub fn move_field(src: Field, dst: Field) -> Action {
        Action::Move {
            src,
            dst,
            n_bits: src.bits().min(dst.bits()),
            src_ofs: 0,
            dst_ofs: 0,
        }
    }
}

/// A gratuitous ARP (a broadcast request from `mac` for its own `ip`), padded to the 60-byte
/// Ethernet minimum: sent in with [`OfClient::packet_out`](super::OfClient::packet_out) on a
/// port, it teaches every learning switch on the way that `mac` is now behind that port.
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f.resize(60, 0);
    f
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output(p) => write!(f, "{p}"),
            Action::SetField(s) => write!(f, "{s}"),
            Action::PushVlan(t) => write!(f, "push_vlan:0x{t:04x}"),
            Action::PopVlan => f.write_str("pop_vlan"),
            Action::Move {
                src,
                dst,
                n_bits,
                src_ofs,
                dst_ofs,
            } => {
                let r = |fld: &Field, ofs: u16| {
                    if ofs == 0 && *n_bits == fld.bits() {
                        format!("{}[]", fld.nxm_name())
                    } else if *n_bits == 1 {
                        format!("{}[{ofs}]", fld.nxm_name())
                    } else {
                        format!("{}[{}..{}]", fld.nxm_name(), ofs, ofs + n_bits - 1)
                    }
                };
                write!(f, "move:{}->{}", r(src, *src_ofs), r(dst, *dst_ofs))
            }
            Action::Meter(m) => write!(f, "meter:{m}"),
            Action::Unknown { kind, len } => write!(f, "unknown_action(type={kind},len={len})"),
        }
    }
}

/// An instruction of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Instruction {
    Meter(u32),
    ApplyActions(Vec<Action>),
    ClearActions,
    WriteActions(Vec<Action>),
    GotoTable(u8),
    Unknown(u16),
}

impl Instruction {
    /// The order OpenFlow executes (and OVS requires) instructions in.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Instruction::Meter(_) => 0,
            Instruction::ApplyActions(_) => 1,
            Instruction::ClearActions => 2,
            Instruction::WriteActions(_) => 3,
            Instruction::GotoTable(_) => 5,
            Instruction::Unknown(_) => 6,
        }
    }
}

pub(crate) const DEFAULT_PRIORITY: u16 = 0x8000;

/// A flow entry: where it lives, what it matches and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub matches: Match,
    pub instructions: Vec<Instruction>,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            table: 0,
            priority: DEFAULT_PRIORITY,
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
            matches: Match::default(),
            instructions: Vec::new(),
        }
    }
}

impl Flow {
    pub fn new(table: u8, priority: u16) -> Flow {
        Flow {
            table,
            priority,
            ..Default::default()
        }
    }
    pub fn cookie(mut self, c: u64) -> Self {
        self.cookie = c;
        self
    }
    pub fn idle_timeout(mut self, s: u16) -> Self {
        self.idle_timeout = s;
        self
    }
    pub fn hard_timeout(mut self, s: u16) -> Self {
        self.hard_timeout = s;
        self
    }
    pub fn matching(mut self, m: Match) -> Self {
        self.matches = m;
        self
    }
    /// Appends an apply-actions instruction.
    pub fn actions(mut self, a: Vec<Action>) -> Self {
        self.instructions.push(Instruction::ApplyActions(a));
        self
    }
    pub fn write_actions(mut self, a: Vec<Action>) -> Self {
        self.instructions.push(Instruction::WriteActions(a));
        self
    }
    pub fn meter(mut self, id: u32) -> Self {
        self.instructions.push(Instruction::Meter(id));
        self
    }
    pub fn goto_table(mut self, t: u8) -> Self {
        self.instructions.push(Instruction::GotoTable(t));
        self
    }

    /// The flow as `ovs-ofctl dump-flows --no-stats` prints it.
    pub fn to_ofctl(&self) -> String {
        let mut head = Vec::new();
        if self.cookie != 0 {
            head.push(format!("cookie={:#x}", self.cookie));
        }
        if self.table != 0 {
            head.push(format!("table={}", self.table));
        }
        if self.idle_timeout != 0 {
            head.push(format!("idle_timeout={}", self.idle_timeout));
        }
        if self.hard_timeout != 0 {
            head.push(format!("hard_timeout={}", self.hard_timeout));
        }
        let mut m = Vec::new();
        if self.priority != DEFAULT_PRIORITY {
            m.push(format!("priority={}", self.priority));
        }
        self.matches.format(&mut m);
        let mut s = head.join(", ");
        if !m.is_empty() {
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(&m.join(","));
        }
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str("actions=");
        s.push_str(&format_instructions(&self.instructions));
        s
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_ofctl())
    }
}

fn format_instructions(ins: &[Instruction]) -> String {
    let mut sorted: Vec<&Instruction> = ins.iter().collect();
    sorted.sort_by_key(|i| i.rank());
    let mut parts: Vec<String> = Vec::new();
    for i in sorted {
        match i {
            Instruction::Meter(m) => parts.push(format!("meter:{m}")),
            Instruction::ApplyActions(a) => parts.extend(a.iter().map(|x| x.to_string())),
            Instruction::ClearActions => parts.push("clear_actions".into()),
            Instruction::WriteActions(a) => parts.push(format!(
                "write_actions({})",
                a.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            Instruction::GotoTable(t) => parts.push(format!("goto_table:{t}")),
            Instruction::Unknown(t) => parts.push(format!("unknown_instruction({t})")),
        }
    }
    if parts.is_empty() {
        "drop".into()
    } else {
        parts.join(",")
    }
}

/// A flow with its counters, from a flow stats reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStats {
    pub flow: Flow,
    pub packet_count: u64,
    pub byte_count: u64,
    pub duration: std::time::Duration,
}

/// The totals of the flows matching a filter, from an aggregate stats reply: how many there
/// are, without transferring them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AggregateStats {
    pub flow_count: u32,
    pub packet_count: u64,
    pub byte_count: u64,
}

/// One flow table change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowMod {
    /// Add, replacing an identical match+priority (idempotent).
    Add(Flow),
    /// Replace the instructions of the flow with exactly this match and priority.
    ModifyStrict(Flow),
    /// Replace the instructions of every flow in `flow.table` whose cookie matches
    /// `flow.cookie` under `cookie_mask` and whose match is a superset of `flow.matches`.
    Modify { flow: Flow, cookie_mask: u64 },
    /// Delete the flow with exactly this table, priority and match.
    DeleteStrict {
        table: u8,
        priority: u16,
        matches: Match,
    },
    /// Delete flows (any table when `table` is `None`) by cookie under a mask and a match.
    Delete {
        table: Option<u8>,
        cookie: u64,
        cookie_mask: u64,
        matches: Match,
    },
}

/// Filter of a flow stats request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub table: Option<u8>,
    pub cookie: u64,
    pub cookie_mask: u64,
    pub matches: Match,
}

/// Meter band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    /// Drop what exceeds `rate` (kbit/s or packets/s per the meter's unit).
    Drop { rate: u32, burst_size: u32 },
    /// A band type this model does not know (decode only).
    Other {
        kind: u16,
        rate: u32,
        burst_size: u32,
    },
}

/// A meter (OpenFlow 1.3 meter_mod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    pub id: u32,
    /// Rates in packets/s instead of kbit/s.
    pub pktps: bool,
    /// Use the bands' burst sizes.
    pub burst: bool,
    /// Collect statistics.
    pub stats: bool,
    pub bands: Vec<Band>,
}

impl Meter {
    /// A kbit/s meter with one drop band.
    pub fn drop_kbps(id: u32, rate_kbps: u32, burst_kbits: Option<u32>) -> Meter {
        Meter {
            id,
            pktps: false,
            burst: burst_kbits.is_some(),
            stats: true,
            bands: vec![Band::Drop {
                rate: rate_kbps,
                burst_size: burst_kbits.unwrap_or(0),
            }],
        }
    }

    /// As `ovs-ofctl dump-meters` prints it, on one line.
    pub fn to_ofctl(&self) -> String {
        let mut s = format!(
            "meter={} {}",
            self.id,
            if self.pktps { "pktps" } else { "kbps" }
        );
        if self.burst {
            s.push_str(" burst");
        }
        if self.stats {
            s.push_str(" stats");
        }
        s.push_str(" bands=");
        let bands: Vec<String> = self
            .bands
            .iter()
            .map(|b| match b {
                Band::Drop { rate, burst_size } => {
                    let mut t = format!("type=drop rate={rate}");
                    if self.burst {
                        let _ = write!(t, " burst_size={burst_size}");
                    }
                    t
                }
                Band::Other {
                    kind,
                    rate,
                    burst_size,
                } => {
                    format!("type={kind} rate={rate} burst_size={burst_size}")
                }
            })
            .collect();
        s.push_str(&bands.join(" "));
        s
    }
}

/// Counters of one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterStats {
    pub id: u32,
    pub flow_count: u32,
    pub packet_in_count: u64,
    pub byte_in_count: u64,
    pub duration: std::time::Duration,
    /// (packets, bytes) handled by each band (i.e. dropped, for drop bands).
    pub bands: Vec<(u64, u64)>,
}
