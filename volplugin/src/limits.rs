//! Per-volume IO limits: what `-o read_bps=...` and `volume set-limits` configure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::VolError;
use crate::spec::{human_size, parse_size};

/// Limits of one volume, applied to every container that mounts it. `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_bps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<u64>,
}

pub const LIMIT_OPTIONS: &[&str] = &["read_bps", "write_bps", "read_iops", "write_iops"];

/// `0` and `max` mean no limit; bps take K/M/G suffixes (binary), iops plain numbers (K/M too).
pub fn parse_limit(option: &str, value: &str) -> Result<Option<u64>, VolError> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("max") || v == "0" {
        return Ok(None);
    }
    if option.ends_with("_iops") && v.contains('.') {
        return Err(VolError::InvalidOption {
            option: option.to_string(),
            why: format!("{v:?}: operations per second are a whole number"),
        });
    }
    let parsed = parse_size(v).map_err(|why| VolError::InvalidOption {
        option: option.to_string(),
        why,
    })?;
    Ok(Some(parsed).filter(|n| *n > 0))
}

impl IoLimits {
    /// Reads the limit keys of Docker's `Opts`; other keys are the caller's business.
    pub fn from_options(opts: &BTreeMap<String, String>) -> Result<IoLimits, VolError> {
        let mut limits = IoLimits::default();
        for (key, value) in opts {
            let slot = match key.as_str() {
                "read_bps" => &mut limits.read_bps,
                "write_bps" => &mut limits.write_bps,
                "read_iops" => &mut limits.read_iops,
                "write_iops" => &mut limits.write_iops,
                _ => continue,
            };
            *slot = parse_limit(key, value)?;
        }
        Ok(limits)
    }

    pub fn is_unlimited(&self) -> bool {
        *self == IoLimits::default()
    }

    /// For logs and errors: `read_bps=10M write_iops=500`, or `none`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let bps = |name: &str, v: Option<u64>, parts: &mut Vec<String>| {
            if let Some(v) = v {
                parts.push(format!("{name}={}", human_size(v)));
            }
        };
        bps("read_bps", self.read_bps, &mut parts);
        bps("write_bps", self.write_bps, &mut parts);
        if let Some(v) = self.read_iops {
            parts.push(format!("read_iops={v}"));
        }
        if let Some(v) = self.write_iops {
            parts.push(format!("write_iops={v}"));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits() {
        let opts: BTreeMap<String, String> = [
            ("write_bps", "50M"),
            ("read_iops", "1000"),
            ("read_bps", "max"),
            ("size", "1G"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let limits = IoLimits::from_options(&opts).unwrap();
        assert_eq!(
            limits,
            IoLimits {
                read_bps: None,
                write_bps: Some(50 << 20),
                read_iops: Some(1000),
                write_iops: None
            }
        );
        assert_eq!(limits.describe(), "write_bps=50M read_iops=1000");
        assert!(parse_limit("write_bps", "fast")
            .unwrap_err()
            .to_string()
            .contains("write_bps"));
        assert_eq!(parse_limit("write_iops", "0").unwrap(), None);
        let e = parse_limit("read_iops", "1.5").unwrap_err().to_string();
        assert!(e.contains("read_iops") && e.contains("whole number"), "{e}");
        assert_eq!(parse_limit("read_bps", "1.5M").unwrap(), Some(3 << 19));
    }
}
