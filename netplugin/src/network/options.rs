//! The driver options Docker passes through: network `-o` and endpoint `--driver-opt`. Add a
//! new option here (parse and name it in errors), then use it in the driver.

use std::collections::BTreeMap;

use crate::error::{NetError, NetResult};
use crate::state::RateLimits;

/// The `-o` options we know.
pub(super) const KNOWN_OPTIONS: &[&str] = &[
    "vlan",
    "mtu",
    "rate",
    "egress_rate",
    "ingress_rate",
    "rate_burst",
    "allow_spoofing",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NetOptions {
    pub vlan: Option<u16>,
    pub mtu: u32,
    pub limits: RateLimits,
    pub allow_spoofing: bool,
}

/// `100M` = 100 Mbit/s (decimal K, M, G; bits), as kbit/s; `0`, `off`, `max`: no limit.
pub(super) fn parse_bits(key: &str, value: &str) -> NetResult<Option<u32>> {
    let v = value.trim();
    if matches!(v, "0" | "off" | "max") {
        return Ok(None);
    }
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1e3),
        Some((i, 'm' | 'M')) => (&v[..i], 1e6),
        Some((i, 'g' | 'G')) => (&v[..i], 1e9),
        _ => (v, 1.0),
    };
    let kbps = num
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| n * mult / 1000.0)
        .filter(|k| (8.0..=f64::from(u32::MAX)).contains(k))
        .ok_or_else(|| {
            NetError::invalid(format!(
                "{key}={value}: bits per second from 8K to 4000G, like 500K, 100M or 1G (0 or max: no limit)"
            ))
        })?;
    Ok(Some(kbps.round() as u32))
}

/// The rate options among `options` (network `-o` or endpoint `--driver-opt`); `prefix` names
/// where they came from in errors.
pub(super) fn parse_limits<'a>(
    options: impl Iterator<Item = (&'a str, &'a str)>,
    prefix: &str,
) -> NetResult<RateLimits> {
    let mut both = RateLimits::default();
    let mut one = RateLimits::default();
    for (k, v) in options {
        let key = format!("{prefix}{k}");
        match k {
            "rate" => {
                let r = parse_bits(&key, v)?;
                both.egress_kbps = r;
                both.ingress_kbps = r;
            }
            "egress_rate" => one.egress_kbps = parse_bits(&key, v)?,
            "ingress_rate" => one.ingress_kbps = parse_bits(&key, v)?,
            "rate_burst" => one.burst_kbits = parse_bits(&key, v)?,
            _ => {}
        }
    }
    Ok(both.overridden_by(one))
}

pub(super) fn parse_options(
    generic: &BTreeMap<String, String>,
    default_mtu: u32,
) -> NetResult<NetOptions> {
    let mut out = NetOptions {
        vlan: None,
        mtu: default_mtu,
        limits: parse_limits(generic.iter().map(|(k, v)| (k.as_str(), v.as_str())), "-o ")?,
        allow_spoofing: false,
    };
    for (k, v) in generic {
        match k.as_str() {
            "vlan" => {
                let n: u16 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| (1..=4094).contains(n))
                    .ok_or_else(|| {
                        NetError::invalid(format!(
                            "-o vlan={v}: must be an integer from 1 to 4094 (or leave it out to get a free one)"
                        ))
                    })?;
                out.vlan = Some(n);
            }
            "mtu" => {
                out.mtu = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| (68..=9216).contains(n))
                    .ok_or_else(|| {
                        NetError::invalid(format!("-o mtu={v}: must be an integer from 68 to 9216"))
                    })?;
            }
            "allow_spoofing" => {
                out.allow_spoofing = match v.trim() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(NetError::invalid(format!(
                            "-o allow_spoofing={v}: must be true or false"
                        )))
                    }
                };
            }
            "rate" | "egress_rate" | "ingress_rate" | "rate_burst" => {}
            other if other.starts_with("com.docker.") => {}
            other => {
                return Err(NetError::invalid(format!(
                    "-o {other}: unknown option; berth-net knows: {}",
                    KNOWN_OPTIONS.join(", ")
                )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> NetResult<NetOptions> {
        let generic = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_options(&generic, 1500)
    }

    #[test]
    fn anti_spoofing_is_on_unless_turned_off() {
        assert!(!opts(&[]).unwrap().allow_spoofing);
        assert!(opts(&[("allow_spoofing", "true")]).unwrap().allow_spoofing);
        assert!(!opts(&[("allow_spoofing", "false")]).unwrap().allow_spoofing);
        let err = opts(&[("allow_spoofing", "yes")]).unwrap_err().to_string();
        assert!(err.contains("allow_spoofing=yes"), "{err}");
    }
}
