//! Encoding and decoding of OpenFlow messages. Decoders take untrusted bytes: every length is
//! checked, and anything malformed is an `Err(String)` describing it, never a panic.

use super::types::*;
use crate::wire::{self, off, sz, Reader, Short, Writer};
use std::net::Ipv4Addr;

pub(crate) type DResult<T> = std::result::Result<T, String>;

impl From<Short> for String {
    fn from(s: Short) -> String {
        format!("truncated: needed {} bytes, have {}", s.need, s.have)
    }
}

pub(crate) const HDR: usize = sz!(ofp_header);

/// Starts a message: header with a placeholder length.
pub(crate) fn header(w: &mut Writer, version: u8, typ: u8, xid: u32) {
    let h = w.reserve(HDR);
    w.set_u8(h + off!(ofp_header.version), version);
    w.set_u8(h + off!(ofp_header.type_), typ);
    w.set_u32(h + off!(ofp_header.xid), xid);
}

/// Fills in the length of the message that starts at `start`.
pub(crate) fn finish(w: &mut Writer, start: usize) -> crate::Result<()> {
    let len = w.len() - start;
    let len16 = u16::try_from(len).map_err(|_| {
        crate::Error::invalid("OpenFlow message", format!("{len} bytes exceeds 65535"))
    })?;
    w.set_u16(start + off!(ofp_header.length), len16);
    Ok(())
}

/// A received frame: header fields and body.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub version: u8,
    pub typ: u8,
    pub xid: u32,
    pub body: Vec<u8>,
}

/// Parses the 8-byte header; returns (version, type, total length, xid).
pub(crate) fn parse_header(h: &[u8]) -> DResult<(u8, u8, usize, u32)> {
    let r = Reader::new(h);
    let len = usize::from(r.u16(off!(ofp_header.length))?);
    if len < HDR {
        return Err(format!("message length {len} shorter than the header"));
    }
    Ok((
        r.u8(off!(ofp_header.version))?,
        r.u8(off!(ofp_header.type_))?,
        len,
        r.u32(off!(ofp_header.xid))?,
    ))
}

pub(crate) fn hello(versions: &[OfVersion], xid: u32) -> Vec<u8> {
    let max = versions.iter().max().copied().unwrap_or(OfVersion::V1_3);
    let mut w = Writer::new();
    header(&mut w, max.wire(), wire::OFPT_HELLO, xid);
    let e = w.reserve(sz!(ofp_hello_elem_header));
    w.set_u16(
        e + off!(ofp_hello_elem_header.type_),
        wire::OFPHET_VERSIONBITMAP,
    );
    w.set_u16(e + off!(ofp_hello_elem_header.length), 8);
    let bitmap = versions.iter().fold(0u32, |b, v| b | (1 << v.wire()));
    w.put_u32(bitmap);
    let _ = finish(&mut w, 0);
    w.buf
}

/// The highest version both sides speak, from the peer's hello.
pub(crate) fn negotiate(ours: &[OfVersion], hello: &Frame) -> DResult<OfVersion> {
    let mut theirs: u32 = 0;
    let r = Reader::new(&hello.body);
    let mut at = 0;
    while at + 4 <= r.len() {
        let t = r.u16(at)?;
        let l = usize::from(r.u16(at + 2)?);
        if l < 4 {
            return Err(format!("hello element length {l}"));
        }
        if t == wire::OFPHET_VERSIONBITMAP {
            let mut i = at + 4;
            let mut word = 0;
            while i + 4 <= at + l && i + 4 <= r.len() {
                if word == 0 {
                    theirs |= r.u32(i)?;
                }
                word += 1;
                i += 4;
            }
        }
        at += l.div_ceil(8) * 8;
    }
    let common = ours
        .iter()
        .copied()
        .filter(|v| {
            if theirs != 0 {
                theirs & (1 << v.wire()) != 0
            } else {
                v.wire() <= hello.version
            }
        })
        .max();
    common.ok_or_else(|| {
        format!(
            "no common OpenFlow version (switch offers version {:#x}, bitmap {theirs:#x})",
            hello.version
        )
    })
}

pub(crate) fn simple(version: OfVersion, typ: u8, xid: u32, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, version.wire(), typ, xid);
    w.put(body);
    let _ = finish(&mut w, 0);
    w.buf
}

fn put_oxm(w: &mut Writer, class: u16, field: u8, value: &[u8], mask: Option<&[u8]>) {
    let len = value.len() + mask.map_or(0, |m| m.len());
    let hdr = (u32::from(class) << 16)
        | (u32::from(field) << 9)
        | (u32::from(mask.is_some()) << 8)
        | (len as u32);
    w.put_u32(hdr);
    w.put(value);
    if let Some(m) = mask {
        w.put(m);
    }
}

fn prefix_mask(len: u8) -> [u8; 4] {
    let m: u32 = if len >= 32 {
        u32::MAX
    } else {
        !(u32::MAX >> len)
    };
    m.to_be_bytes()
}

/// `struct ofp_match` with OXM fields, padded to 8 bytes.
pub(crate) fn put_match(w: &mut Writer, m: &Match) -> crate::Result<()> {
    m.validate()?;
    let start = w.reserve(sz!(ofp11_match_header));
    w.set_u16(start + off!(ofp11_match_header.type_), wire::OFPMT_OXM);
    let b = OXM_CLASS_BASIC;
    if let Some(p) = m.in_port {
        put_oxm(w, b, 0, &p.to_be_bytes(), None);
    }
    if let Some(x) = m.eth_dst {
        put_oxm(w, b, 3, &x.0, None);
    }
    if let Some(x) = m.eth_src {
        put_oxm(w, b, 4, &x.0, None);
    }
    if let Some(t) = m.eth_type {
        put_oxm(w, b, 5, &t.to_be_bytes(), None);
    }
    match m.vlan {
        Some(VlanMatch::Vid(v)) => {
            put_oxm(w, b, 6, &(v | wire::OFPVID_PRESENT).to_be_bytes(), None)
        }
        Some(VlanMatch::Untagged) => put_oxm(w, b, 6, &0u16.to_be_bytes(), None),
        None => {}
    }
    if let Some(p) = m.ip_proto {
        put_oxm(w, b, 10, &[p], None);
    }
    for (field, v) in [(11u8, m.ipv4_src), (12, m.ipv4_dst)] {
        if let Some((a, len)) = v {
            let mask = prefix_mask(len);
            let masked = (u32::from(a) & u32::from_be_bytes(mask)).to_be_bytes();
            put_oxm(w, b, field, &masked, (len < 32).then_some(&mask[..]));
        }
    }
    if let Some(op) = m.arp_op {
        put_oxm(w, b, 21, &op.to_be_bytes(), None);
    }
    if let Some(a) = m.arp_spa {
        put_oxm(w, b, 22, &a.octets(), None);
    }
    if let Some(a) = m.arp_tpa {
        put_oxm(w, b, 23, &a.octets(), None);
    }
    if let Some(x) = m.arp_sha {
        put_oxm(w, b, 24, &x.0, None);
    }
    if let Some(x) = m.arp_tha {
        put_oxm(w, b, 25, &x.0, None);
    }
    for (n, v) in &m.regs {
        put_oxm(w, NXM_CLASS_NX1, *n, &v.to_be_bytes(), None);
    }
    let len = (w.len() - start) as u16;
    w.set_u16(start + off!(ofp11_match_header.length), len);
    w.pad8();
    Ok(())
}

fn mac(b: &[u8]) -> DResult<Mac> {
    <[u8; 6]>::try_from(b)
        .map(Mac)
        .map_err(|_| format!("MAC of {} bytes", b.len()))
}

fn ip(b: &[u8]) -> DResult<Ipv4Addr> {
    <[u8; 4]>::try_from(b)
        .map(Ipv4Addr::from)
        .map_err(|_| format!("IPv4 address of {} bytes", b.len()))
}

fn be16(b: &[u8]) -> DResult<u16> {
    <[u8; 2]>::try_from(b)
        .map(u16::from_be_bytes)
        .map_err(|_| format!("16-bit field of {} bytes", b.len()))
}

fn be32(b: &[u8]) -> DResult<u32> {
    <[u8; 4]>::try_from(b)
        .map(u32::from_be_bytes)
        .map_err(|_| format!("32-bit field of {} bytes", b.len()))
}

fn mask_prefix(m: &[u8]) -> Option<u8> {
    let v = be32(m).ok()?;
    let ones = v.leading_ones();
    (v.count_ones() == ones).then_some(ones as u8)
}

/// Parses an `ofp_match` at the start of `r`; returns it and the padded length it used.
pub(crate) fn parse_match(r: Reader<'_>) -> DResult<(Match, usize)> {
    let typ = r.u16(off!(ofp11_match_header.type_))?;
    let len = usize::from(r.u16(off!(ofp11_match_header.length))?);
    if typ != wire::OFPMT_OXM {
        return Err(format!("match type {typ} is not OXM"));
    }
    if len < 4 {
        return Err(format!("match length {len}"));
    }
    let body = r.sub(4, len - 4)?;
    let mut m = Match::default();
    let mut at = 0;
    while at < body.len() {
        let hdr = body.u32(at)?;
        let class = (hdr >> 16) as u16;
        let field = ((hdr >> 9) & 0x7f) as u8;
        let has_mask = hdr & 0x100 != 0;
        let l = (hdr & 0xff) as usize;
        let tlv = body.slice(at, 4 + l)?;
        let payload = &tlv[4..];
        let (v, mask) = if has_mask {
            if !l.is_multiple_of(2) {
                return Err(format!("masked OXM of odd length {l}"));
            }
            (&payload[..l / 2], Some(&payload[l / 2..]))
        } else {
            (payload, None)
        };
        let known = class == OXM_CLASS_BASIC
            && match (field, mask) {
                (0, None) => {
                    m.in_port = Some(be32(v)?);
                    true
                }
                (3, None) => {
                    m.eth_dst = Some(mac(v)?);
                    true
                }
                (4, None) => {
                    m.eth_src = Some(mac(v)?);
                    true
                }
                (5, None) => {
                    m.eth_type = Some(be16(v)?);
                    true
                }
                (6, None) => {
                    let vid = be16(v)?;
                    m.vlan = Some(if vid & wire::OFPVID_PRESENT != 0 {
                        VlanMatch::Vid(vid & 0x0fff)
                    } else {
                        VlanMatch::Untagged
                    });
                    true
                }
                (10, None) => {
                    m.ip_proto = Some(*v.first().ok_or("empty ip_proto")?);
                    true
                }
                (11 | 12, _) => {
                    let plen = match mask {
                        None => 32,
                        Some(mk) => match mask_prefix(mk) {
                            Some(p) => p,
                            None => return Err("non-prefix IPv4 mask".into()),
                        },
                    };
                    let a = (ip(v)?, plen);
                    if field == 11 {
                        m.ipv4_src = Some(a);
                    } else {
                        m.ipv4_dst = Some(a);
                    }
                    true
                }
                (21, None) => {
                    m.arp_op = Some(be16(v)?);
                    true
                }
                (22, None) => {
                    m.arp_spa = Some(ip(v)?);
                    true
                }
                (23, None) => {
                    m.arp_tpa = Some(ip(v)?);
                    true
                }
                (24, None) => {
                    m.arp_sha = Some(mac(v)?);
                    true
                }
                (25, None) => {
                    m.arp_tha = Some(mac(v)?);
                    true
                }
                _ => false,
            };
        let known = known
            || (class == NXM_CLASS_NX1 && field < 16 && mask.is_none() && {
                m = std::mem::take(&mut m).reg(field, be32(v)?);
                true
            });
        if !known {
            m.other.push(tlv.to_vec());
        }
        at += 4 + l;
    }
    Ok((m, len.div_ceil(8) * 8))
}

fn put_action(w: &mut Writer, v: OfVersion, a: &Action) -> crate::Result<()> {
    let start = w.len();
    match a {
        Action::Output(p) => {
            let (port, max_len) = p.to_wire();
            w.put_u16(wire::OFPAT_OUTPUT);
            w.put_u16(16);
            w.put_u32(port);
            w.put_u16(if matches!(p, Port::Controller(_)) {
                max_len
            } else {
                0
            });
            w.reserve(6);
        }
        Action::SetField(s) => {
            w.put_u16(wire::OFPAT_SET_FIELD);
            w.put_u16(0);
            let (class, field, _) = s.field().oxm();
            let val: Vec<u8> = match *s {
                SetField::EthDst(m)
                | SetField::EthSrc(m)
                | SetField::ArpSha(m)
                | SetField::ArpTha(m) => m.0.to_vec(),
                SetField::VlanVid(v) => {
                    if v > 4095 {
                        return Err(crate::Error::invalid(
                            "set_field vlan_vid",
                            "must be 0..=4095",
                        ));
                    }
                    (v | wire::OFPVID_PRESENT).to_be_bytes().to_vec()
                }
                SetField::Ipv4Src(a)
                | SetField::Ipv4Dst(a)
                | SetField::ArpSpa(a)
                | SetField::ArpTpa(a) => a.octets().to_vec(),
                SetField::ArpOp(o) => o.to_be_bytes().to_vec(),
                SetField::Reg(n, v) => {
                    if n > 15 {
                        return Err(crate::Error::invalid("register", "must be 0..=15"));
                    }
                    v.to_be_bytes().to_vec()
                }
            };
            put_oxm(w, class, field, &val, None);
            w.pad8();
        }
        Action::PushVlan(t) => {
            w.put_u16(wire::OFPAT_PUSH_VLAN);
            w.put_u16(8);
            w.put_u16(*t);
            w.reserve(2);
        }
        Action::PopVlan => {
            w.put_u16(wire::OFPAT_POP_VLAN);
            w.put_u16(8);
            w.reserve(4);
        }
        Action::Meter(m) => {
            w.put_u16(wire::OFPAT15_METER);
            w.put_u16(8);
            w.put_u32(*m);
        }
        Action::Move {
            src,
            dst,
            n_bits,
            src_ofs,
            dst_ofs,
        } => {
            if *n_bits == 0
                || u32::from(*src_ofs) + u32::from(*n_bits) > u32::from(src.bits())
                || u32::from(*dst_ofs) + u32::from(*n_bits) > u32::from(dst.bits())
            {
                return Err(crate::Error::invalid(
                    "move",
                    "bit range outside the fields",
                ));
            }
            if v >= OfVersion::V1_5 {
                // OpenFlow 1.5 copy_field (OVS accepts NXAST_REG_MOVE only up to 1.4):
                // type, len, n_bits, src_offset, dst_offset, pad[2], then the field headers.
                w.put_u16(wire::OFPAT15_COPY_FIELD);
                w.put_u16(0);
                w.put_u16(*n_bits);
                w.put_u16(*src_ofs);
                w.put_u16(*dst_ofs);
                w.reserve(2);
            } else {
                // struct nx_action_reg_move: experimenter action header, subtype, n_bits,
                // src_ofs, dst_ofs, then the two field headers.
                w.put_u16(wire::OFPAT_EXPERIMENTER);
                w.put_u16(0);
                w.put_u32(wire::NX_VENDOR_ID);
                w.put_u16(wire::NXAST_REG_MOVE);
                w.put_u16(*n_bits);
                w.put_u16(*src_ofs);
                w.put_u16(*dst_ofs);
            }
            for f in [src, dst] {
                let (class, field, len) = f.oxm();
                w.put_u32((u32::from(class) << 16) | (u32::from(field) << 9) | u32::from(len));
            }
            w.pad8();
        }
        Action::Unknown { .. } => {
            return Err(crate::Error::invalid(
                "action",
                "unknown actions cannot be sent",
            ))
        }
    }
    let len = (w.len() - start) as u16;
    w.set_u16(start + 2, len);
    Ok(())
}

pub(crate) fn parse_actions(r: Reader<'_>) -> DResult<Vec<Action>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < r.len() {
        let typ = r.u16(at)?;
        let len = usize::from(r.u16(at + 2)?);
        if len < 8 || len % 8 != 0 {
            return Err(format!("action type {typ} with length {len}"));
        }
        let a = r.sub(at, len)?;
        let act = match typ {
            wire::OFPAT_OUTPUT => Action::Output(Port::from_wire(a.u32(4)?, a.u16(8)?)),
            wire::OFPAT_PUSH_VLAN => Action::PushVlan(a.u16(4)?),
            wire::OFPAT_POP_VLAN => Action::PopVlan,
            wire::OFPAT15_METER => Action::Meter(a.u32(4)?),
            wire::OFPAT_SET_FIELD => {
                let hdr = a.u32(4)?;
                let class = (hdr >> 16) as u16;
                let field = ((hdr >> 9) & 0x7f) as u8;
                let l = (hdr & 0xff) as usize;
                let v = a.slice(8, l)?;
                match Field::from_oxm(class, field) {
                    Some(f) => Action::SetField(match f {
                        Field::EthDst => SetField::EthDst(mac(v)?),
                        Field::EthSrc => SetField::EthSrc(mac(v)?),
                        Field::VlanVid => SetField::VlanVid(be16(v)? & 0x0fff),
                        Field::Ipv4Src => SetField::Ipv4Src(ip(v)?),
                        Field::Ipv4Dst => SetField::Ipv4Dst(ip(v)?),
                        Field::ArpOp => SetField::ArpOp(be16(v)?),
                        Field::ArpSpa => SetField::ArpSpa(ip(v)?),
                        Field::ArpTpa => SetField::ArpTpa(ip(v)?),
                        Field::ArpSha => SetField::ArpSha(mac(v)?),
                        Field::ArpTha => SetField::ArpTha(mac(v)?),
                        Field::Reg(n) => SetField::Reg(n, be32(v)?),
                        Field::EthType | Field::IpProto => {
                            Action::Unknown { kind: typ, len }.into_set_field_or_unknown()?
                        }
                    }),
                    None => Action::Unknown { kind: typ, len },
                }
            }
            wire::OFPAT15_COPY_FIELD => parse_move(a, typ, len, 4, 12)?,
            wire::OFPAT_EXPERIMENTER
                if a.u32(4)? == wire::NX_VENDOR_ID && a.u16(8)? == wire::NXAST_REG_MOVE =>
            {
                parse_move(a, typ, len, 10, 16)?
            }
            _ => Action::Unknown { kind: typ, len },
        };
        out.push(act);
        at += len;
    }
    Ok(out)
}

/// reg_move / copy_field: n_bits, src_ofs, dst_ofs at `nums`, field headers at `hdrs`.
fn parse_move(a: Reader<'_>, typ: u16, len: usize, nums: usize, hdrs: usize) -> DResult<Action> {
    let hdr = |at: usize| -> DResult<Option<Field>> {
        let h = a.u32(at)?;
        // Experimenter OXM headers (class 0xffff) carry 8 bytes; not modelled.
        Ok(Field::from_oxm((h >> 16) as u16, ((h >> 9) & 0x7f) as u8))
    };
    Ok(match (hdr(hdrs)?, hdr(hdrs + 4)?) {
        (Some(src), Some(dst)) => Action::Move {
            src,
            dst,
            n_bits: a.u16(nums)?,
            src_ofs: a.u16(nums + 2)?,
            dst_ofs: a.u16(nums + 4)?,
        },
        _ => Action::Unknown { kind: typ, len },
    })
}

trait IntoSetField {
    fn into_set_field_or_unknown(self) -> DResult<SetField>;
}
impl IntoSetField for Action {
    fn into_set_field_or_unknown(self) -> DResult<SetField> {
        Err("set_field of eth_type/ip_proto is not supported".into())
    }
}

fn put_instructions(w: &mut Writer, v: OfVersion, ins: &[Instruction]) -> crate::Result<()> {
    let mut sorted: Vec<&Instruction> = ins.iter().collect();
    sorted.sort_by_key(|i| i.rank());
    // OpenFlow 1.5 replaced the meter instruction by a meter action at the front.
    let meter15 = if v >= OfVersion::V1_5 {
        sorted.iter().find_map(|i| match i {
            Instruction::Meter(m) => Some(*m),
            _ => None,
        })
    } else {
        None
    };
    let mut apply_seen = false;
    let emit_apply =
        |w: &mut Writer, actions: &[Action], meter: Option<u32>| -> crate::Result<()> {
            let s = w.reserve(sz!(ofp11_instruction_actions));
            w.set_u16(
                s + off!(ofp11_instruction_actions.type_),
                wire::OFPIT_APPLY_ACTIONS,
            );
            if let Some(m) = meter {
                put_action(w, v, &Action::Meter(m))?;
            }
            for a in actions {
                put_action(w, v, a)?;
            }
            let len = (w.len() - s) as u16;
            w.set_u16(s + off!(ofp11_instruction_actions.len), len);
            Ok(())
        };
    for i in &sorted {
        match i {
            Instruction::Meter(m) => {
                if meter15.is_none() {
                    let s = w.reserve(sz!(ofp13_instruction_meter));
                    w.set_u16(s + off!(ofp13_instruction_meter.type_), wire::OFPIT_METER);
                    w.set_u16(s + off!(ofp13_instruction_meter.len), 8);
                    w.set_u32(s + off!(ofp13_instruction_meter.meter_id), *m);
                }
            }
            Instruction::ApplyActions(a) => {
                if apply_seen {
                    return Err(crate::Error::invalid(
                        "instructions",
                        "at most one apply-actions",
                    ));
                }
                apply_seen = true;
                emit_apply(w, a, meter15)?;
            }
            Instruction::ClearActions => {
                let s = w.reserve(sz!(ofp11_instruction_actions));
                w.set_u16(
                    s + off!(ofp11_instruction_actions.type_),
                    wire::OFPIT_CLEAR_ACTIONS,
                );
                w.set_u16(s + off!(ofp11_instruction_actions.len), 8);
            }
            Instruction::WriteActions(a) => {
                if meter15.is_some() && !apply_seen {
                    apply_seen = true;
                    emit_apply(w, &[], meter15)?;
                }
                let s = w.reserve(sz!(ofp11_instruction_actions));
                w.set_u16(
                    s + off!(ofp11_instruction_actions.type_),
                    wire::OFPIT_WRITE_ACTIONS,
                );
                for x in a {
                    put_action(w, v, x)?;
                }
                let len = (w.len() - s) as u16;
                w.set_u16(s + off!(ofp11_instruction_actions.len), len);
            }
            Instruction::GotoTable(t) => {
                if meter15.is_some() && !apply_seen {
                    apply_seen = true;
                    emit_apply(w, &[], meter15)?;
                }
                let s = w.reserve(sz!(ofp11_instruction_goto_table));
                w.set_u16(
                    s + off!(ofp11_instruction_goto_table.type_),
                    wire::OFPIT_GOTO_TABLE,
                );
                w.set_u16(s + off!(ofp11_instruction_goto_table.len), 8);
                w.set_u8(s + off!(ofp11_instruction_goto_table.table_id), *t);
            }
            Instruction::Unknown(_) => {
                return Err(crate::Error::invalid(
                    "instruction",
                    "unknown instructions cannot be sent",
                ))
            }
        }
    }
    if meter15.is_some() && !apply_seen {
        emit_apply(w, &[], meter15)?;
    }
    Ok(())
}

pub(crate) fn parse_instructions(r: Reader<'_>) -> DResult<Vec<Instruction>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < r.len() {
        let typ = r.u16(at)?;
        let len = usize::from(r.u16(at + 2)?);
        if len < 8 || len % 8 != 0 {
            return Err(format!("instruction type {typ} with length {len}"));
        }
        let i = r.sub(at, len)?;
        let ins = match typ {
            wire::OFPIT_GOTO_TABLE => {
                Instruction::GotoTable(i.u8(off!(ofp11_instruction_goto_table.table_id))?)
            }
            wire::OFPIT_METER => Instruction::Meter(i.u32(off!(ofp13_instruction_meter.meter_id))?),
            wire::OFPIT_CLEAR_ACTIONS => Instruction::ClearActions,
            wire::OFPIT_APPLY_ACTIONS | wire::OFPIT_WRITE_ACTIONS => {
                let mut acts = parse_actions(i.rest(sz!(ofp11_instruction_actions))?)?;
                if typ == wire::OFPIT_WRITE_ACTIONS {
                    Instruction::WriteActions(acts)
                } else {
                    // Normalize the 1.5 meter action back into the instruction form.
                    let mut metered = Vec::new();
                    while let Some(Action::Meter(m)) = acts.first() {
                        metered.push(Instruction::Meter(*m));
                        acts.remove(0);
                    }
                    out.extend(metered);
                    if acts.is_empty() {
                        at += len;
                        continue;
                    }
                    Instruction::ApplyActions(acts)
                }
            }
            other => Instruction::Unknown(other),
        };
        out.push(ins);
        at += len;
    }
    Ok(out)
}

/// Parameters of one flow_mod on the wire.
pub(crate) struct FlowModWire<'a> {
    pub command: u8,
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    pub cookie_mask: u64,
    pub idle: u16,
    pub hard: u16,
    pub matches: &'a Match,
    pub instructions: &'a [Instruction],
}

impl<'a> FlowModWire<'a> {
    pub fn from(fm: &'a FlowMod) -> FlowModWire<'a> {
        const NONE: &[Instruction] = &[];
        match fm {
            FlowMod::Add(f) | FlowMod::ModifyStrict(f) => FlowModWire {
                command: if matches!(fm, FlowMod::Add(_)) {
                    wire::OFPFC_ADD
                } else {
                    wire::OFPFC_MODIFY_STRICT
                },
                table: f.table,
                priority: f.priority,
                cookie: f.cookie,
                cookie_mask: 0,
                idle: f.idle_timeout,
                hard: f.hard_timeout,
                matches: &f.matches,
                instructions: &f.instructions,
            },
            FlowMod::Modify { flow, cookie_mask } => FlowModWire {
                command: wire::OFPFC_MODIFY,
                table: flow.table,
                priority: flow.priority,
                cookie: flow.cookie,
                cookie_mask: *cookie_mask,
                idle: 0,
                hard: 0,
                matches: &flow.matches,
                instructions: &flow.instructions,
            },
            FlowMod::DeleteStrict {
                table,
                priority,
                matches,
            } => FlowModWire {
                command: wire::OFPFC_DELETE_STRICT,
                table: *table,
                priority: *priority,
                cookie: 0,
                cookie_mask: 0,
                idle: 0,
                hard: 0,
                matches,
                instructions: NONE,
            },
            FlowMod::Delete {
                table,
                cookie,
                cookie_mask,
                matches,
            } => FlowModWire {
                command: wire::OFPFC_DELETE,
                table: table.unwrap_or(wire::OFPTT_ALL),
                priority: 0,
                cookie: *cookie,
                cookie_mask: *cookie_mask,
                idle: 0,
                hard: 0,
                matches,
                instructions: NONE,
            },
        }
    }
}

pub(crate) fn flow_mod(v: OfVersion, xid: u32, fm: &FlowMod) -> crate::Result<Vec<u8>> {
    let f = FlowModWire::from(fm);
    let mut w = Writer::new();
    header(&mut w, v.wire(), wire::OFPT_FLOW_MOD, xid);
    let b = w.reserve(sz!(ofp11_flow_mod));
    w.set_u64(b + off!(ofp11_flow_mod.cookie), f.cookie);
    w.set_u64(b + off!(ofp11_flow_mod.cookie_mask), f.cookie_mask);
    w.set_u8(b + off!(ofp11_flow_mod.table_id), f.table);
    w.set_u8(b + off!(ofp11_flow_mod.command), f.command);
    w.set_u16(b + off!(ofp11_flow_mod.idle_timeout), f.idle);
    w.set_u16(b + off!(ofp11_flow_mod.hard_timeout), f.hard);
    w.set_u16(b + off!(ofp11_flow_mod.priority), f.priority);
    w.set_u32(b + off!(ofp11_flow_mod.buffer_id), wire::OFP_NO_BUFFER);
    w.set_u32(b + off!(ofp11_flow_mod.out_port), OFPP_ANY);
    w.set_u32(b + off!(ofp11_flow_mod.out_group), wire::OFPG_ANY);
    put_match(&mut w, f.matches)?;
    put_instructions(&mut w, v, f.instructions)?;
    finish(&mut w, 0)?;
    Ok(w.buf)
}

/// OFPT_PACKET_OUT: the Ethernet frame `data` enters the pipeline as if received on `in_port`
/// and goes through `actions` (OpenFlow 1.3/1.4 carry the port in the message, 1.5 in a match).
pub(crate) fn packet_out(
    v: OfVersion,
    xid: u32,
    in_port: u32,
    actions: &[Action],
    data: &[u8],
) -> crate::Result<Vec<u8>> {
    let mut w = Writer::new();
    header(&mut w, v.wire(), wire::OFPT_PACKET_OUT, xid);
    let len_at = if v == OfVersion::V1_5 {
        let b = w.reserve(sz!(ofp15_packet_out));
        w.set_u32(b + off!(ofp15_packet_out.buffer_id), wire::OFP_NO_BUFFER);
        put_match(&mut w, &Match::new().in_port(in_port))?;
        b + off!(ofp15_packet_out.actions_len)
    } else {
        let b = w.reserve(sz!(ofp11_packet_out));
        w.set_u32(b + off!(ofp11_packet_out.buffer_id), wire::OFP_NO_BUFFER);
        w.set_u32(b + off!(ofp11_packet_out.in_port), in_port);
        b + off!(ofp11_packet_out.actions_len)
    };
    let start = w.len();
    for a in actions {
        put_action(&mut w, v, a)?;
    }
    let alen = u16::try_from(w.len() - start)
        .map_err(|_| crate::Error::invalid("packet_out actions", "longer than 65535 bytes"))?;
    w.set_u16(len_at, alen);
    w.put(data);
    finish(&mut w, 0)?;
    Ok(w.buf)
}

pub(crate) fn multipart_request(v: OfVersion, xid: u32, mp_type: u16, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    header(&mut w, v.wire(), wire::OFPT_MULTIPART_REQUEST, xid);
    w.put_u16(mp_type);
    w.put_u16(0);
    w.reserve(4);
    w.put(body);
    let _ = finish(&mut w, 0);
    w.buf
}

pub(crate) fn flow_stats_request(v: OfVersion, xid: u32, f: &FlowFilter) -> crate::Result<Vec<u8>> {
    let mut w = Writer::new();
    let b = w.reserve(sz!(ofp11_flow_stats_request));
    w.set_u8(
        b + off!(ofp11_flow_stats_request.table_id),
        f.table.unwrap_or(wire::OFPTT_ALL),
    );
    w.set_u32(b + off!(ofp11_flow_stats_request.out_port), OFPP_ANY);
    w.set_u32(b + off!(ofp11_flow_stats_request.out_group), wire::OFPG_ANY);
    w.set_u64(b + off!(ofp11_flow_stats_request.cookie), f.cookie);
    w.set_u64(
        b + off!(ofp11_flow_stats_request.cookie_mask),
        f.cookie_mask,
    );
    put_match(&mut w, &f.matches)?;
    Ok(multipart_request(v, xid, wire::OFPMP_FLOW, &w.buf))
}

/// An aggregate stats request: its body has the layout of a flow stats request on 1.1 and later.
pub(crate) fn aggregate_stats_request(
    v: OfVersion,
    xid: u32,
    f: &FlowFilter,
) -> crate::Result<Vec<u8>> {
    let mut flow = flow_stats_request(v, xid, f)?;
    // Same message but for the multipart type (after ofp_header).
    flow[HDR..HDR + 2].copy_from_slice(&wire::OFPMP_AGGREGATE.to_be_bytes());
    Ok(flow)
}

/// Parses the body of an aggregate stats reply (after the multipart header): the fixed
/// `ofp_aggregate_stats_reply` before 1.5, an `ofp_stats` of OXS fields from 1.5 on.
pub(crate) fn parse_aggregate_stats(v: OfVersion, body: &[u8]) -> DResult<AggregateStats> {
    let r = Reader::new(body);
    if v < OfVersion::V1_5 {
        return Ok(AggregateStats {
            packet_count: r.u64(off!(ofp_aggregate_stats_reply.packet_count))?,
            byte_count: r.u64(off!(ofp_aggregate_stats_reply.byte_count))?,
            flow_count: r.u32(off!(ofp_aggregate_stats_reply.flow_count))?,
        });
    }
    let slen = usize::from(r.u16(2)?);
    if slen < 4 {
        return Err(format!("aggregate stats OXS length {slen}"));
    }
    let stats = r.sub(4, slen - 4)?;
    let mut out = AggregateStats::default();
    let mut i = 0;
    while i < stats.len() {
        let hdr = stats.u32(i)?;
        let field = ((hdr >> 9) & 0x7f) as u8;
        let l = (hdr & 0xff) as usize;
        match (field, l) {
            (3, 4) => out.flow_count = stats.u32(i + 4)?,
            (4, 8) => out.packet_count = stats.u64(i + 4)?,
            (5, 8) => out.byte_count = stats.u64(i + 4)?,
            _ => {}
        }
        i += 4 + l;
    }
    Ok(out)
}

/// Parses the body of flow stats replies (after the multipart header).
pub(crate) fn parse_flow_stats(v: OfVersion, body: &[u8]) -> DResult<Vec<FlowStats>> {
    let r = Reader::new(body);
    let mut out = Vec::new();
    let mut at = 0;
    while at < r.len() {
        let len = usize::from(r.u16(at)?);
        let fixed = if v >= OfVersion::V1_5 {
            sz!(ofp15_flow_desc)
        } else {
            sz!(ofp11_flow_stats)
        };
        if len < fixed + 8 {
            return Err(format!("flow stats entry of length {len}"));
        }
        let e = r.sub(at, len)?;
        let (mut flow, packets, bytes, dur, rest_at) = if v >= OfVersion::V1_5 {
            let flow = Flow {
                table: e.u8(off!(ofp15_flow_desc.table_id))?,
                priority: e.u16(off!(ofp15_flow_desc.priority))?,
                cookie: e.u64(off!(ofp15_flow_desc.cookie))?,
                idle_timeout: e.u16(off!(ofp15_flow_desc.idle_timeout))?,
                hard_timeout: e.u16(off!(ofp15_flow_desc.hard_timeout))?,
                ..Default::default()
            };
            let (m, mlen) = parse_match(e.rest(fixed)?)?;
            let flow = Flow { matches: m, ..flow };
            // struct ofp_oxs_stat: reserved, length, then OXS TLVs (class 0x8002).
            let s_at = fixed + mlen;
            let slen = usize::from(e.u16(s_at + 2)?);
            if slen < 4 {
                return Err(format!("flow stats OXS length {slen}"));
            }
            let stats = e.sub(s_at + 4, slen - 4)?;
            let (mut p, mut b, mut d) = (0, 0, std::time::Duration::ZERO);
            let mut i = 0;
            while i < stats.len() {
                let hdr = stats.u32(i)?;
                let field = ((hdr >> 9) & 0x7f) as u8;
                let l = (hdr & 0xff) as usize;
                match (field, l) {
                    (0, 8) => {
                        d = std::time::Duration::new(
                            u64::from(stats.u32(i + 4)?),
                            stats.u32(i + 8)?.min(999_999_999),
                        )
                    }
                    (4, 8) => p = stats.u64(i + 4)?,
                    (5, 8) => b = stats.u64(i + 4)?,
                    _ => {}
                }
                i += 4 + l;
            }
            (flow, p, b, d, s_at + slen.div_ceil(8) * 8)
        } else {
            let flow = Flow {
                table: e.u8(off!(ofp11_flow_stats.table_id))?,
                priority: e.u16(off!(ofp11_flow_stats.priority))?,
                cookie: e.u64(off!(ofp11_flow_stats.cookie))?,
                idle_timeout: e.u16(off!(ofp11_flow_stats.idle_timeout))?,
                hard_timeout: e.u16(off!(ofp11_flow_stats.hard_timeout))?,
                ..Default::default()
            };
            let d = std::time::Duration::new(
                u64::from(e.u32(off!(ofp11_flow_stats.duration_sec))?),
                e.u32(off!(ofp11_flow_stats.duration_nsec))?
                    .min(999_999_999),
            );
            let p = e.u64(off!(ofp11_flow_stats.packet_count))?;
            let b = e.u64(off!(ofp11_flow_stats.byte_count))?;
            let (m, mlen) = parse_match(e.rest(fixed)?)?;
            (Flow { matches: m, ..flow }, p, b, d, fixed + mlen)
        };
        flow.instructions = parse_instructions(e.rest(rest_at)?)?;
        out.push(FlowStats {
            flow,
            packet_count: packets,
            byte_count: bytes,
            duration: dur,
        });
        at += len;
    }
    Ok(out)
}

pub(crate) fn meter_mod(v: OfVersion, xid: u32, command: u16, m: &Meter) -> crate::Result<Vec<u8>> {
    if m.id == 0 || m.id > 0xffff_0000 {
        return Err(crate::Error::invalid("meter id", "must be 1..=0xffff0000"));
    }
    let mut w = Writer::new();
    header(&mut w, v.wire(), wire::OFPT_METER_MOD, xid);
    let b = w.reserve(sz!(ofp13_meter_mod));
    let mut flags = if m.pktps {
        wire::OFPMF_PKTPS
    } else {
        wire::OFPMF_KBPS
    };
    if m.burst {
        flags |= wire::OFPMF_BURST;
    }
    if m.stats {
        flags |= wire::OFPMF_STATS;
    }
    w.set_u16(b + off!(ofp13_meter_mod.command), command);
    w.set_u16(b + off!(ofp13_meter_mod.flags), flags);
    w.set_u32(b + off!(ofp13_meter_mod.meter_id), m.id);
    if command != wire::OFPMC_DELETE {
        if m.bands.is_empty() {
            return Err(crate::Error::invalid("meter bands", "at least one band"));
        }
        for band in &m.bands {
            let Band::Drop { rate, burst_size } = *band else {
                return Err(crate::Error::invalid(
                    "meter band",
                    "only drop bands can be sent",
                ));
            };
            if rate == 0 {
                return Err(crate::Error::invalid("meter band rate", "must be > 0"));
            }
            let s = w.reserve(sz!(ofp13_meter_band_drop));
            w.set_u16(s + off!(ofp13_meter_band_drop.type_), wire::OFPMBT_DROP);
            w.set_u16(
                s + off!(ofp13_meter_band_drop.len),
                sz!(ofp13_meter_band_drop) as u16,
            );
            w.set_u32(s + off!(ofp13_meter_band_drop.rate), rate);
            w.set_u32(s + off!(ofp13_meter_band_drop.burst_size), burst_size);
        }
    }
    finish(&mut w, 0)?;
    Ok(w.buf)
}

pub(crate) fn meter_request(v: OfVersion, xid: u32, mp_type: u16, id: Option<u32>) -> Vec<u8> {
    let mut w = Writer::new();
    let b = w.reserve(sz!(ofp13_meter_multipart_request));
    w.set_u32(
        b + off!(ofp13_meter_multipart_request.meter_id),
        id.unwrap_or(wire::OFPM_ALL),
    );
    multipart_request(v, xid, mp_type, &w.buf)
}

pub(crate) fn parse_meter_configs(body: &[u8]) -> DResult<Vec<Meter>> {
    let r = Reader::new(body);
    let mut out = Vec::new();
    let mut at = 0;
    while at < r.len() {
        let len = usize::from(r.u16(at + off!(ofp13_meter_config.length))?);
        if len < sz!(ofp13_meter_config) {
            return Err(format!("meter config of length {len}"));
        }
        let e = r.sub(at, len)?;
        let flags = e.u16(off!(ofp13_meter_config.flags))?;
        let mut bands = Vec::new();
        let mut i = sz!(ofp13_meter_config);
        while i < e.len() {
            let bt = e.u16(i + off!(ofp13_meter_band_drop.type_))?;
            let bl = usize::from(e.u16(i + off!(ofp13_meter_band_drop.len))?);
            if bl < sz!(ofp13_meter_band_header) {
                return Err(format!("meter band of length {bl}"));
            }
            let rate = e.u32(i + off!(ofp13_meter_band_drop.rate))?;
            let burst_size = e.u32(i + off!(ofp13_meter_band_drop.burst_size))?;
            bands.push(if bt == wire::OFPMBT_DROP {
                Band::Drop { rate, burst_size }
            } else {
                Band::Other {
                    kind: bt,
                    rate,
                    burst_size,
                }
            });
            i += bl;
        }
        let burst = flags & wire::OFPMF_BURST != 0;
        if !burst {
            // Without the BURST flag the burst size means nothing (OVS reports the rate there).
            for b in &mut bands {
                if let Band::Drop { burst_size, .. } = b {
                    *burst_size = 0;
                }
            }
        }
        out.push(Meter {
            id: e.u32(off!(ofp13_meter_config.meter_id))?,
            pktps: flags & wire::OFPMF_PKTPS != 0,
            burst,
            stats: flags & wire::OFPMF_STATS != 0,
            bands,
        });
        at += len;
    }
    Ok(out)
}

pub(crate) fn parse_meter_stats(body: &[u8]) -> DResult<Vec<MeterStats>> {
    let r = Reader::new(body);
    let mut out = Vec::new();
    let mut at = 0;
    let fixed = sz!(ofp13_meter_stats);
    while at < r.len() {
        let len = usize::from(r.u16(at + off!(ofp13_meter_stats.len))?);
        if len < fixed {
            return Err(format!("meter stats of length {len}"));
        }
        let e = r.sub(at, len)?;
        let mut bands = Vec::new();
        let mut i = fixed;
        while i + sz!(ofp13_meter_band_stats) <= e.len() {
            bands.push((
                e.u64(i + off!(ofp13_meter_band_stats.packet_band_count))?,
                e.u64(i + off!(ofp13_meter_band_stats.byte_band_count))?,
            ));
            i += sz!(ofp13_meter_band_stats);
        }
        out.push(MeterStats {
            id: e.u32(off!(ofp13_meter_stats.meter_id))?,
            flow_count: e.u32(off!(ofp13_meter_stats.flow_count))?,
            packet_in_count: e.u64(off!(ofp13_meter_stats.packet_in_count))?,
            byte_in_count: e.u64(off!(ofp13_meter_stats.byte_in_count))?,
            duration: std::time::Duration::new(
                u64::from(e.u32(off!(ofp13_meter_stats.duration_sec))?),
                e.u32(off!(ofp13_meter_stats.duration_nsec))?
                    .min(999_999_999),
            ),
            bands,
        });
        at += len;
    }
    Ok(out)
}

/// A bundle control message (OpenFlow 1.4+ native, 1.3 as the ONF extension).
pub(crate) fn bundle_ctrl(v: OfVersion, xid: u32, bundle_id: u32, typ: u16, flags: u16) -> Vec<u8> {
    let mut w = Writer::new();
    bundle_header(&mut w, v, xid, true);
    let b = w.reserve(sz!(ofp14_bundle_ctrl_msg));
    w.set_u32(b + off!(ofp14_bundle_ctrl_msg.bundle_id), bundle_id);
    w.set_u16(b + off!(ofp14_bundle_ctrl_msg.type_), typ);
    w.set_u16(b + off!(ofp14_bundle_ctrl_msg.flags), flags);
    let _ = finish(&mut w, 0);
    w.buf
}

fn bundle_header(w: &mut Writer, v: OfVersion, xid: u32, control: bool) {
    if v >= OfVersion::V1_4 {
        let t = if control {
            wire::OFPT14_BUNDLE_CONTROL
        } else {
            wire::OFPT14_BUNDLE_ADD_MESSAGE
        };
        header(w, v.wire(), t, xid);
    } else {
        header(w, v.wire(), wire::OFPT_EXPERIMENTER, xid);
        w.put_u32(wire::ONF_EXPERIMENTER_ID);
        w.put_u32(if control {
            wire::ONFT13_BUNDLE_CONTROL
        } else {
            wire::ONFT13_BUNDLE_ADD_MESSAGE
        });
    }
}

/// Wraps `inner` (a complete message with the same xid) into a bundle add message.
pub(crate) fn bundle_add(
    v: OfVersion,
    xid: u32,
    bundle_id: u32,
    flags: u16,
    inner: &[u8],
) -> crate::Result<Vec<u8>> {
    let mut w = Writer::new();
    bundle_header(&mut w, v, xid, false);
    let b = w.reserve(sz!(ofp14_bundle_ctrl_msg));
    w.set_u32(b + off!(ofp14_bundle_ctrl_msg.bundle_id), bundle_id);
    w.set_u16(b + off!(ofp14_bundle_ctrl_msg.flags), flags);
    w.put(inner);
    finish(&mut w, 0)?;
    Ok(w.buf)
}

/// Bundle control type of a reply body (after the experimenter header on 1.3).
pub(crate) fn bundle_reply_type(v: OfVersion, f: &Frame) -> DResult<Option<u16>> {
    let r = Reader::new(&f.body);
    let base = if v >= OfVersion::V1_4 {
        if f.typ != wire::OFPT14_BUNDLE_CONTROL {
            return Ok(None);
        }
        0
    } else {
        if f.typ != wire::OFPT_EXPERIMENTER
            || r.u32(0)? != wire::ONF_EXPERIMENTER_ID
            || r.u32(4)? != wire::ONFT13_BUNDLE_CONTROL
        {
            return Ok(None);
        }
        8
    };
    Ok(Some(r.u16(base + off!(ofp14_bundle_ctrl_msg.type_))?))
}

/// An error message from the switch, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfError {
    pub typ: u16,
    pub code: u16,
    /// Experimenter id for experimenter errors (type 0xffff).
    pub experimenter: Option<u32>,
    /// OVS's name for it, e.g. `OFPFMFC_BAD_COMMAND`.
    pub name: Option<&'static str>,
    pub description: Option<&'static str>,
    /// What it answers, e.g. `flow_mod`.
    pub request: String,
}

impl std::fmt::Display for OfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.name, self.experimenter) {
            (Some(n), _) => write!(f, "{n} (type {}, code {})", self.typ, self.code)?,
            (None, Some(e)) => write!(
                f,
                "experimenter {e:#x} error type {} code {}",
                self.typ, self.code
            )?,
            (None, None) => write!(f, "error type {} code {}", self.typ, self.code)?,
        }
        if let Some(d) = self.description.filter(|d| !d.is_empty()) {
            write!(f, ": {d}")?;
        }
        if !self.request.is_empty() {
            write!(f, " [in reply to {}]", self.request)?;
        }
        Ok(())
    }
}

pub(crate) fn msg_name(typ: u8) -> &'static str {
    match typ {
        wire::OFPT_HELLO => "hello",
        wire::OFPT_ECHO_REQUEST => "echo_request",
        wire::OFPT_EXPERIMENTER => "experimenter",
        wire::OFPT_FEATURES_REQUEST => "features_request",
        wire::OFPT_FLOW_MOD => "flow_mod",
        wire::OFPT_MULTIPART_REQUEST => "multipart_request",
        wire::OFPT_BARRIER_REQUEST => "barrier_request",
        wire::OFPT_METER_MOD => "meter_mod",
        wire::OFPT14_BUNDLE_CONTROL => "bundle_control",
        wire::OFPT14_BUNDLE_ADD_MESSAGE => "bundle_add_message",
        _ => "message",
    }
}

pub(crate) fn parse_error(v: u8, body: &[u8]) -> DResult<OfError> {
    let r = Reader::new(body);
    let typ = r.u16(off!(ofp_error_msg.type_))?;
    let code = r.u16(off!(ofp_error_msg.code))?;
    let (experimenter, data_at) = if typ == 0xffff {
        (Some(r.u32(4)?), 8)
    } else {
        (None, sz!(ofp_error_msg))
    };
    let minor = v.saturating_sub(1);
    let entry = if experimenter.is_none() {
        crate::wire::errors::OF_ERRORS
            .iter()
            .find(|(t, c, lo, hi, _, _)| *t == typ && *c == code && *lo <= minor && minor <= *hi)
    } else {
        None
    };
    // The data starts with the header of the offending request.
    let request = r
        .slice(data_at + off!(ofp_header.type_), 1)
        .map(|t| msg_name(t[0]).to_string())
        .unwrap_or_default();
    Ok(OfError {
        typ,
        code,
        experimenter,
        name: entry.map(|e| e.4),
        description: entry.map(|e| e.5),
        request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arp_responder() -> Flow {
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        Flow::new(0, 100)
            .cookie(5)
            .matching(Match::new().in_port(1).vlan_vid(10).arp_tpa(ip).arp_op(1))
            .meter(3)
            .actions(
                [
                    Action::arp_reply(mac, ip),
                    vec![Action::Output(Port::InPort)],
                ]
                .concat(),
            )
            .goto_table(2)
    }

    #[test]
    fn flow_mod_round_trips_through_stats_decoding() {
        for v in [OfVersion::V1_3, OfVersion::V1_4, OfVersion::V1_5] {
            let flow = arp_responder();
            let msg = flow_mod(v, 7, &FlowMod::Add(flow.clone())).unwrap();
            assert_eq!(msg.len() % 8, 0);
            assert_eq!(usize::from(u16::from_be_bytes([msg[2], msg[3]])), msg.len());
            // Turn the flow_mod body into a flow stats entry and decode it back.
            let body = &msg[HDR + sz!(ofp11_flow_mod)..];
            let mut entry = Writer::new();
            if v >= OfVersion::V1_5 {
                let b = entry.reserve(sz!(ofp15_flow_desc));
                entry.set_u8(b + off!(ofp15_flow_desc.table_id), 0);
                entry.set_u16(b + off!(ofp15_flow_desc.priority), 100);
                entry.set_u64(b + off!(ofp15_flow_desc.cookie), 5);
                let (_, mlen) = parse_match(Reader::new(body)).unwrap();
                entry.put(&body[..mlen]);
                entry.put(&[0, 0, 0, 4, 0, 0, 0, 0]); // empty ofp_oxs_stat, padded
                entry.put(&body[mlen..]);
            } else {
                let b = entry.reserve(sz!(ofp11_flow_stats));
                entry.set_u16(b + off!(ofp11_flow_stats.priority), 100);
                entry.set_u64(b + off!(ofp11_flow_stats.cookie), 5);
                entry.put(body);
            }
            let l = entry.len() as u16;
            entry.set_u16(0, l);
            let got = parse_flow_stats(v, &entry.buf).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].flow, flow, "{v}");
        }
    }

    #[test]
    fn text_form_matches_ovs_ofctl() {
        assert_eq!(
            arp_responder().to_ofctl(),
            "cookie=0x5, priority=100,arp,in_port=1,dl_vlan=10,arp_tpa=10.0.0.1,arp_op=1 \
             actions=meter:3,move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:02:00:00:00:00:01->eth_src,\
             set_field:2->arp_op,move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],set_field:02:00:00:00:00:01->arp_sha,\
             move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],set_field:10.0.0.1->arp_spa,IN_PORT,goto_table:2"
        );
        assert_eq!(Flow::default().to_ofctl(), "actions=drop");
    }

    #[test]
    fn register_matches_round_trip() {
        let m = Match::new()
            .reg(0, 3001)
            .eth_dst(Mac([2, 0, 0, 0, 0, 1]))
            .reg(1, 7);
        let mut w = Writer::new();
        put_match(&mut w, &m).unwrap();
        let (got, _) = parse_match(Reader::new(&w.buf)).unwrap();
        assert_eq!(got, m);
        assert!(got.other.is_empty());
        assert_eq!(
            Flow::new(1, 40).matching(m).to_ofctl(),
            "table=1, priority=40,reg0=0xbb9,reg1=0x7,dl_dst=02:00:00:00:00:01 actions=drop"
        );
        assert!(put_match(&mut Writer::new(), &Match::new().reg(16, 1)).is_err());
    }

    #[test]
    fn invalid_matches_rejected() {
        let mut m = Match::new();
        m.arp_tpa = Some(Ipv4Addr::new(1, 2, 3, 4));
        assert!(put_match(&mut Writer::new(), &m).is_err());
        let m = Match::new().ipv4_src(Ipv4Addr::new(1, 2, 3, 4), 33);
        assert!(put_match(&mut Writer::new(), &m).is_err());
    }

    #[test]
    fn packet_out_layout() {
        let frame = gratuitous_arp(Mac([2, 0xb7, 1, 2, 3, 4]), Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[28..32], &[1, 2, 3, 4]);
        assert_eq!(&frame[38..42], &[1, 2, 3, 4]);
        let actions = [Action::Output(Port::Normal)];
        // 1.3: header, buffer_id, in_port, actions_len + pad, one 16-byte output action, data.
        let m = packet_out(OfVersion::V1_3, 7, 5, &actions, &frame).unwrap();
        assert_eq!(m.len(), 8 + 16 + 16 + 60);
        assert_eq!(m[1], wire::OFPT_PACKET_OUT);
        assert_eq!(&m[8..12], &[0xff; 4]);
        assert_eq!(&m[12..16], &[0, 0, 0, 5]);
        assert_eq!(&m[16..18], &[0, 16]);
        assert_eq!(&m[40..], &frame[..]);
        // 1.5: header, buffer_id, actions_len + pad, a match (in_port), the action, data.
        let m = packet_out(OfVersion::V1_5, 7, 5, &actions, &frame).unwrap();
        assert_eq!(&m[12..14], &[0, 16]);
        assert_eq!(&m[m.len() - 60..], &frame[..]);
        assert_eq!(usize::from(u16::from_be_bytes([m[2], m[3]])), m.len());
    }

    #[test]
    fn error_names() {
        let e = parse_error(4, &[0, 5, 0, 6, 4, 14, 0, 8, 0, 0, 0, 1]).unwrap();
        assert_eq!(e.name, Some("OFPFMFC_BAD_COMMAND"));
        assert!(e.to_string().contains("flow_mod"), "{e}");
    }
}
