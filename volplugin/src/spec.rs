//! Validation of what requests carry: volume names, `-o` options, sizes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::VolError;

pub const NAME_MAX: usize = 128;

/// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$` (docs/design.md, Errors input and safety). Names become
/// file names and mount points, so nothing else (no `/`, no leading `.`) may pass.
pub fn validate_name(name: &str) -> Result<(), VolError> {
    let bad = |why: &str| VolError::InvalidName {
        name: name.chars().take(160).collect(),
        why: why.to_string(),
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(bad("it is empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(bad("it must start with a letter or digit"))
        }
        Some(_) => {}
    }
    if name.len() > NAME_MAX {
        return Err(bad(&format!("it is longer than {NAME_MAX} characters")));
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(bad(&format!(
            "{c:?} is not allowed (only letters, digits, '_', '.', '-')"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Xfs,
    Ext4,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Xfs => "xfs",
            Filesystem::Ext4 => "ext4",
        }
    }

    /// The smallest volume mkfs accepts (xfsprogs 5.19+ refuses filesystems under 300 MiB).
    pub fn min_size(self) -> u64 {
        match self {
            Filesystem::Xfs => 300 << 20,
            Filesystem::Ext4 => 16 << 20,
        }
    }
}

impl std::str::FromStr for Filesystem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xfs" => Ok(Filesystem::Xfs),
            "ext4" => Ok(Filesystem::Ext4),
            other => Err(format!(
                "{other:?} is not a supported filesystem (xfs, ext4)"
            )),
        }
    }
}

/// What a volume is made of, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub size_bytes: u64,
    pub fs: Filesystem,
}

/// Daemon-wide defaults and limits applied to `-o` options.
#[derive(Debug, Clone)]
pub struct SpecPolicy {
    pub default_size: u64,
    pub max_size: u64,
    pub default_fs: Filesystem,
}

/// Every `-o` option a volume accepts (the limit keys are parsed by `limits`).
pub const VALID_OPTIONS: &[&str] = &[
    "size",
    "fs",
    "read_bps",
    "write_bps",
    "read_iops",
    "write_iops",
    // -o from=SOURCE: a clone of SOURCE (handled by the service; the spec is SOURCE's).
    "from",
];

impl SpecPolicy {
    /// Turns Docker's `Opts` into a spec; every problem names the option and the rule.
    pub fn parse(&self, opts: &BTreeMap<String, String>) -> Result<VolumeSpec, VolError> {
        if let Some(unknown) = opts.keys().find(|k| !VALID_OPTIONS.contains(&k.as_str())) {
            return Err(VolError::InvalidOption {
                option: unknown.chars().take(64).collect(),
                why: format!(
                    "unknown option; valid options are: {}",
                    VALID_OPTIONS.join(", ")
                ),
            });
        }
        let fs = match opts.get("fs") {
            Some(v) => v.parse().map_err(|why| VolError::InvalidOption {
                option: "fs".into(),
                why,
            })?,
            None => self.default_fs,
        };
        let size_bytes = match opts.get("size") {
            Some(v) => parse_size(v).map_err(|why| VolError::InvalidOption {
                option: "size".into(),
                why,
            })?,
            None => self.default_size,
        };
        // Whole MiB: loop devices and LVM extents both want aligned sizes.
        let size_bytes = round_up_to_mib(size_bytes).ok_or_else(|| VolError::InvalidOption {
            option: "size".into(),
            why: format!("{size_bytes} bytes is too large"),
        })?;
        if size_bytes > self.max_size {
            return Err(VolError::InvalidOption {
                option: "size".into(),
                why: format!(
                    "{} is over this host's maximum of {}",
                    human_size(size_bytes),
                    human_size(self.max_size)
                ),
            });
        }
        if size_bytes < fs.min_size() {
            return Err(VolError::InvalidOption {
                option: "size".into(),
                why: format!(
                    "{} is too small for {} (minimum {})",
                    human_size(size_bytes),
                    fs.as_str(),
                    human_size(fs.min_size())
                ),
            });
        }
        Ok(VolumeSpec { size_bytes, fs })
    }
}

/// `10G`, `512M`, `1.5T`, `4096`, `20GiB`, `20gb`: binary units (K = 1024).
/// `bytes` rounded up to whole MiB, or None where that does not fit in 64 bits (near 2^64 the
/// product wraps to 0 in a release build, and a huge size would read as "too small").
pub fn round_up_to_mib(bytes: u64) -> Option<u64> {
    bytes.div_ceil(1 << 20).checked_mul(1 << 20)
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{text:?} is not a size (examples: 10G, 512M, 1T)")),
    };
    if number.is_empty() {
        return Err(format!("{text:?} is not a size (examples: 10G, 512M, 1T)"));
    }
    let too_big = || format!("{text:?} is too large");
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(1u64 << shift).ok_or_else(too_big);
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 10G, 512M, 1T)"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(too_big());
    }
    Ok(bytes.ceil() as u64)
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{}{}", value as u64, UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SpecPolicy {
        SpecPolicy {
            default_size: 10 << 30,
            max_size: 1 << 40,
            default_fs: Filesystem::Xfs,
        }
    }

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names() {
        for ok in ["a", "mysql-data", "db_1.backup", "A9", &"x".repeat(128)] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            "../../etc",
            "a/b",
            "-x",
            "_x",
            ".hidden",
            "a b",
            "ä",
            "a\0b",
            &"x".repeat(129),
        ] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("volume name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5T").unwrap(), 3 << 39);
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in [
            "",
            "G",
            "ten",
            "10X",
            "-1G",
            "99999999999999999999T",
            "1e400G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_near_2_to_the_64_are_too_large_not_zero() {
        let p = SpecPolicy {
            max_size: u64::MAX,
            ..policy()
        };
        for huge in [u64::MAX.to_string(), (u64::MAX - (1 << 19)).to_string()] {
            let e = p.parse(&opts(&[("size", &huge)])).unwrap_err();
            assert!(e.to_string().contains("too large"), "{huge}: {e}");
        }
        assert_eq!(round_up_to_mib(1), Some(1 << 20));
        assert_eq!(
            round_up_to_mib(u64::MAX - (1 << 20) + 1),
            Some(u64::MAX - (1 << 20) + 1)
        );
    }

    #[test]
    fn options() {
        let p = policy();
        assert_eq!(
            p.parse(&opts(&[])).unwrap(),
            VolumeSpec {
                size_bytes: 10 << 30,
                fs: Filesystem::Xfs
            }
        );
        assert_eq!(
            p.parse(&opts(&[("size", "1G"), ("fs", "ext4")])).unwrap(),
            VolumeSpec {
                size_bytes: 1 << 30,
                fs: Filesystem::Ext4
            }
        );
        assert!(
            p.parse(&opts(&[("size", "1000K")])).is_err(),
            "under xfs minimum"
        );
        let err = p
            .parse(&opts(&[("colour", "blue")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("colour") && err.contains("size, fs, read_bps"),
            "{err}"
        );
        let err = p.parse(&opts(&[("size", "2T")])).unwrap_err().to_string();
        assert!(err.contains("size") && err.contains("maximum"), "{err}");
        let err = p.parse(&opts(&[("fs", "btrfs")])).unwrap_err().to_string();
        assert!(err.contains("fs") && err.contains("btrfs"), "{err}");
        assert_eq!(
            p.parse(&opts(&[("size", "300.5M")])).unwrap().size_bytes,
            301 << 20
        );
    }
}
