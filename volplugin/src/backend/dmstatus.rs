//! Device-mapper status of thin devices and thin pools, read by ioctl through the
//! `devicemapper` crate: no fork on Get or a metrics scrape. Read only: LVM owns the pool, so
//! no message is ever sent to it.

use devicemapper::{DevId, DmName, DmOptions, DM};

/// `<transaction id> <used meta>/<total meta> <used data>/<total data> <held root> ro|rw|
/// out_of_data_space [no_]discard_passdown error|queue_if_no_space needs_check|- [lowwater]`
/// (Documentation/admin-guide/device-mapper/thin-provisioning.rst), or `Fail`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStatus {
    pub used_meta_blocks: u64,
    pub total_meta_blocks: u64,
    pub used_data_blocks: u64,
    pub total_data_blocks: u64,
    /// rw, ro, out_of_data_space, needs_check (when flagged, whatever the mode), fail.
    pub mode: String,
    pub error_if_no_space: bool,
}

impl PoolStatus {
    pub fn data_percent(&self) -> f64 {
        percent(self.used_data_blocks, self.total_data_blocks)
    }

    pub fn metadata_percent(&self) -> f64 {
        percent(self.used_meta_blocks, self.total_meta_blocks)
    }
}

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    // Two decimals, as lvs shows them.
    (used as f64 * 10000.0 / total as f64).round() / 100.0
}

fn fraction(field: &str) -> Option<(u64, u64)> {
    let (used, total) = field.split_once('/')?;
    Some((used.parse().ok()?, total.parse().ok()?))
}

pub fn parse_pool_status(params: &str) -> Result<PoolStatus, String> {
    let fields: Vec<&str> = params.split_whitespace().collect();
    if fields.first() == Some(&"Fail") {
        return Ok(PoolStatus {
            used_meta_blocks: 0,
            total_meta_blocks: 0,
            used_data_blocks: 0,
            total_data_blocks: 0,
            mode: "fail".into(),
            error_if_no_space: true,
        });
    }
    if fields.len() < 8 {
        return Err(format!("thin-pool status {params:?} has too few fields"));
    }
    let (used_meta_blocks, total_meta_blocks) =
        fraction(fields[1]).ok_or_else(|| format!("metadata usage {:?}", fields[1]))?;
    let (used_data_blocks, total_data_blocks) =
        fraction(fields[2]).ok_or_else(|| format!("data usage {:?}", fields[2]))?;
    let mode = match fields[4] {
        m @ ("rw" | "ro" | "out_of_data_space") => m,
        other => return Err(format!("unknown thin-pool mode {other:?}")),
    };
    let needs_check = fields[7] == "needs_check";
    Ok(PoolStatus {
        used_meta_blocks,
        total_meta_blocks,
        used_data_blocks,
        total_data_blocks,
        mode: if needs_check { "needs_check" } else { mode }.into(),
        error_if_no_space: fields[6] == "error_if_no_space",
    })
}

/// A thin device: `<nr mapped sectors> <highest mapped sector>`, `-` when nothing is mapped
/// yet (highest), or `Fail`.
pub fn parse_thin_status(params: &str) -> Result<u64, String> {
    let first = params.split_whitespace().next().unwrap_or("");
    if first == "Fail" {
        return Err("the thin device has failed (Fail status)".into());
    }
    first
        .parse::<u64>()
        .map_err(|_| format!("thin status {params:?} is not understood"))
}

/// The device-mapper name LVM gives `vg/lv`: each `-` doubled, joined with `-`.
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// (target type, params) of a device's single target, by name; None if the device is absent.
pub fn target_status(name: &str) -> Result<Option<(String, String)>, String> {
    let dm = DM::new().map_err(|e| format!("device-mapper is not available: {e}"))?;
    let dm_name = DmName::new(name).map_err(|e| format!("dm name {name:?}: {e}"))?;
    match dm.table_status(&DevId::Name(dm_name), DmOptions::default()) {
        Ok((_, targets)) => Ok(targets
            .into_iter()
            .next()
            .map(|(_, _, kind, params)| (kind, params))),
        Err(e) => {
            // ENXIO: no such device. Anything else is reported.
            let text = e.to_string();
            if text.contains("No such device") || text.contains("ENXIO") {
                Ok(None)
            } else {
                Err(format!("status of {name}: {text}"))
            }
        }
    }
}

/// Bytes mapped in a thin device (what it really takes in the pool).
pub fn thin_mapped_bytes(name: &str) -> Result<u64, String> {
    match target_status(name)? {
        Some((kind, params)) if kind == "thin" => Ok(parse_thin_status(&params)? * 512),
        Some((kind, _)) => Err(format!("{name} is a {kind} device, not thin")),
        None => Err(format!("{name} is not active")),
    }
}

/// The pool's status. LVM keeps the thin-pool target in `<vg>-<pool>-tpool` while thin LVs
/// are active (and `<vg>-<pool>` is then a linear layer over it); an unused pool may be active
/// as `<vg>-<pool>` itself.
pub fn pool_status(vg: &str, pool: &str) -> Result<Option<PoolStatus>, String> {
    let base = dm_name(vg, pool);
    for name in [format!("{base}-tpool"), base] {
        if let Some((kind, params)) = target_status(&name)? {
            if kind == "thin-pool" {
                return parse_pool_status(&params).map(Some);
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_status_lines() {
        let s = parse_pool_status(
            "3 186/4096 1638/32768 - rw no_discard_passdown queue_if_no_space - 1024",
        )
        .unwrap();
        assert_eq!(s.mode, "rw");
        assert_eq!(s.data_percent(), 5.0);
        assert_eq!(s.metadata_percent(), 4.54);
        assert!(!s.error_if_no_space);
        let s = parse_pool_status(
            "7 10/100 100/100 - out_of_data_space discard_passdown error_if_no_space -",
        )
        .unwrap();
        assert_eq!(
            (s.mode.as_str(), s.data_percent()),
            ("out_of_data_space", 100.0)
        );
        assert!(s.error_if_no_space);
        let s =
            parse_pool_status("7 10/100 1/100 - ro discard_passdown queue_if_no_space needs_check")
                .unwrap();
        assert_eq!(s.mode, "needs_check");
        assert_eq!(parse_pool_status("Fail").unwrap().mode, "fail");
        assert!(parse_pool_status("1 2/3").is_err());
        assert!(parse_pool_status("1 x/3 1/2 - rw a b -").is_err());
        assert!(parse_pool_status("1 1/3 1/2 - weird a b -").is_err());
    }

    #[test]
    fn thin_status_lines() {
        assert_eq!(parse_thin_status("2048 4095").unwrap(), 2048);
        assert_eq!(parse_thin_status("0 -").unwrap(), 0);
        assert!(parse_thin_status("Fail").is_err());
        assert!(parse_thin_status("").is_err());
    }

    #[test]
    fn dm_names() {
        assert_eq!(dm_name("vg0", "berth_db"), "vg0-berth_db");
        assert_eq!(
            dm_name("my-vg", "berth_mysql-data"),
            "my--vg-berth_mysql--data"
        );
    }
}
