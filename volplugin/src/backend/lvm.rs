//! The fleet backend: each volume is a thin LV in a thin pool that ops made with
//! `lvcreate --type thin-pool`. LVM stays the owner of the pool: volumes are created, cloned,
//! activated and removed with LVM's own tools (`lvm lvcreate`, ...), tagged `berth-vol` so
//! that volplugin touches only its own LVs, and listed with `lvs --reportformat json`. Status
//! figures (mapped sectors, pool fill and mode) are read by ioctl, never by messages to the
//! pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use super::dmstatus::{self, PoolStatus};
use super::{fs_usage, fsops, mountinfo, Attachment, Backend, BackendError, PoolFigures, Usage};
use crate::spec::{human_size, Filesystem, VolumeSpec};

/// The LVM tag on every LV volplugin made; LVs without it are never touched.
pub const TAG: &str = "berth-vol";
/// LV name = prefix + volume name: no clash with LVM's reserved prefixes (`snapshot`,
/// `pvmove`), and an admin sees at once whose LVs these are.
pub const LV_PREFIX: &str = "berth_";
/// Longest device-mapper name (DM_NAME_LEN 128, with the NUL).
const DM_NAME_MAX: usize = 127;
/// What LVM accepts for `vg/lv` (see `lv_name`).
const LVM_NAME_MAX: usize = 127;
/// Substrings LVM keeps for its internal LVs (lvm2 `apply_lvname_restrictions`).
const RESERVED: &[&str] = &[
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_imeta", "_iorig", "_mimage", "_mlog",
    "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
];

/// Settings of the backend (flags of `volplugin serve`).
#[derive(Debug, Clone)]
pub struct LvmConfig {
    pub vg: String,
    pub pool: String,
    /// New volumes are refused while the pool's data usage is over this percentage.
    pub data_max_percent: f64,
    /// ... or its metadata usage over this one.
    pub metadata_max_percent: f64,
    /// ... or when the sum of thin LV sizes would pass this multiple of the pool's data size.
    pub max_overcommit: Option<f64>,
    /// Bound of every LVM command.
    pub command_timeout: Duration,
    /// Temporary mount points (log replay of XFS clones).
    pub scratch: PathBuf,
    /// The `lvm` binary.
    pub lvm: PathBuf,
}

impl LvmConfig {
    pub fn new(vg: &str, pool: &str, scratch: PathBuf) -> Self {
        Self {
            vg: vg.into(),
            pool: pool.into(),
            data_max_percent: 80.0,
            metadata_max_percent: 80.0,
            max_overcommit: None,
            command_timeout: Duration::from_secs(30),
            scratch,
            lvm: PathBuf::from("lvm"),
        }
    }
}

pub struct LvmThinBackend {
    cfg: LvmConfig,
    /// Held from the capacity check to the end of lvcreate, so concurrent creates cannot all
    /// pass the check and together overfill the pool.
    capacity: Mutex<()>,
}

/// VG and pool names as LVM accepts them: `[A-Za-z0-9+_.-]`, not starting with `-`, not `.`
/// or `..`.
pub fn validate_lvm_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.starts_with('-') {
        return Err(format!("{what} {name:?} is not a valid LVM name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-')))
    {
        return Err(format!(
            "{what} {name:?}: {c:?} is not allowed in LVM names (letters, digits, + _ . -)"
        ));
    }
    if name.len() > DM_NAME_MAX {
        return Err(format!("{what} {name:?} is too long"));
    }
    Ok(())
}

/// The LV of a volume (a validated volume name), or a clear refusal where LVM would not take
/// it.
pub fn lv_name(vg: &str, volume: &str) -> Result<String, BackendError> {
    let lv = format!("{LV_PREFIX}{volume}");
    if let Some(r) = RESERVED.iter().find(|r| lv.contains(*r)) {
        return Err(BackendError::Refused(format!(
            "volume name {volume:?} contains {r:?}, which LVM reserves for its internal volumes; \
             choose another name"
        )));
    }
    // LVM refuses "vg/lv" past its own limit (measured: lvcreate counts len(vg) + len(lv) + 3
    // against 128), device-mapper a dm name past DM_NAME_MAX; both are checked.
    let lvm_len = vg.len() + lv.len() + 3;
    if lvm_len > LVM_NAME_MAX {
        return Err(BackendError::Refused(format!(
            "volume name {volume:?} is too long for LVM: with VG {vg:?} volume names may have at \
             most {} characters",
            (LVM_NAME_MAX - 3).saturating_sub(vg.len() + LV_PREFIX.len())
        )));
    }
    let dm = dmstatus::dm_name(vg, &lv);
    if dm.len() > DM_NAME_MAX {
        // The dm name doubles every '-': count what is left for the volume name.
        let overhead = dm.len() - volume.replace('-', "--").len();
        return Err(BackendError::Refused(format!(
            "volume name {volume:?} is too long for LVM: its device-mapper name {dm:?} would have \
             {} characters (limit {DM_NAME_MAX}); with VG {vg:?} volume names may have at most {} \
             characters, each '-' counting twice",
            dm.len(),
            DM_NAME_MAX - overhead
        )));
    }
    Ok(lv)
}

/// One LV of `lvs --reportformat json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct LvRow {
    pub lv_name: String,
    pub lv_attr: String,
    /// Bytes (`--units b --nosuffix`).
    pub lv_size: String,
    pub lv_tags: String,
    #[serde(default)]
    pub pool_lv: String,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub data_percent: String,
    #[serde(default)]
    pub metadata_percent: String,
    /// Bytes; set for thin pools.
    #[serde(default)]
    pub chunk_size: String,
}

impl LvRow {
    pub fn tagged(&self) -> bool {
        self.lv_tags.split(',').any(|t| t == TAG)
    }

    pub fn size(&self) -> u64 {
        self.lv_size.trim().parse::<f64>().unwrap_or(0.0) as u64
    }

    pub fn is_thin_pool(&self) -> bool {
        self.lv_attr.starts_with('t')
    }

    pub fn is_active(&self) -> bool {
        self.lv_attr.chars().nth(4) == Some('a')
    }
}

fn pct(text: &str) -> f64 {
    text.trim().parse().unwrap_or(0.0)
}

/// The LVs of the (one) VG in an `lvs --reportformat json` answer.
pub fn parse_lvs(json: &str) -> Result<Vec<LvRow>, String> {
    #[derive(serde::Deserialize)]
    struct Report {
        report: Vec<Section>,
    }
    #[derive(serde::Deserialize)]
    struct Section {
        #[serde(default)]
        lv: Vec<LvRow>,
    }
    let report: Report =
        serde_json::from_str(json).map_err(|e| format!("lvs answer is not understood: {e}"))?;
    Ok(report.report.into_iter().flat_map(|s| s.lv).collect())
}

/// The capacity rules, apart from how the figures are read (unit-tested).
pub fn check_capacity(
    cfg: &LvmConfig,
    pool: &str,
    status: &PoolFigures,
    pool_size: u64,
    provisioned: u64,
    new_size: u64,
) -> Result<(), String> {
    if matches!(
        status.mode.as_str(),
        "ro" | "out_of_data_space" | "needs_check" | "fail"
    ) {
        return Err(format!(
            "thin pool {pool} is in mode {} (data {:.2}%, metadata {:.2}%); new volumes are \
             refused until an administrator repairs or extends it",
            status.mode, status.data_percent, status.metadata_percent
        ));
    }
    if status.data_percent > cfg.data_max_percent {
        return Err(format!(
            "thin pool {pool} data is {:.2}% full, over the limit of {}% \
             (--pool-data-max-percent); extend the pool (lvextend) or remove volumes",
            status.data_percent, cfg.data_max_percent
        ));
    }
    if status.metadata_percent > cfg.metadata_max_percent {
        return Err(format!(
            "thin pool {pool} metadata is {:.2}% full, over the limit of {}% \
             (--pool-metadata-max-percent); extend the pool metadata (lvextend --poolmetadatasize) \
             or remove volumes",
            status.metadata_percent, cfg.metadata_max_percent
        ));
    }
    if let Some(cap) = cfg.max_overcommit {
        let after = provisioned.saturating_add(new_size);
        let ratio = after as f64 / pool_size.max(1) as f64;
        if ratio > cap {
            return Err(format!(
                "thin pool {pool} would be overcommitted {ratio:.2}x ({} of thin volumes, with \
                 this {}, on {} of data space), over the cap of {cap}x (--max-overcommit)",
                human_size(after),
                human_size(new_size),
                human_size(pool_size)
            ));
        }
    }
    Ok(())
}

/// Pools with smaller chunks get a warning at start.
const SMALL_CHUNK: u64 = 256 << 10;

impl LvmThinBackend {
    /// Checks the names; the pool itself is checked on every create (it may come later).
    pub fn new(cfg: LvmConfig) -> Result<Self, BackendError> {
        validate_lvm_name("--vg", &cfg.vg).map_err(BackendError::Refused)?;
        validate_lvm_name("--thin-pool", &cfg.pool).map_err(BackendError::Refused)?;
        for (flag, v) in [
            ("--pool-data-max-percent", cfg.data_max_percent),
            ("--pool-metadata-max-percent", cfg.metadata_max_percent),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(BackendError::Refused(format!(
                    "{flag} {v} is not a percentage (0-100)"
                )));
            }
        }
        if cfg
            .max_overcommit
            .is_some_and(|c| !(c > 0.0 && c.is_finite()))
        {
            return Err(BackendError::Refused(
                "--max-overcommit must be a positive ratio like 4 or 1.5".into(),
            ));
        }
        Ok(Self {
            cfg,
            capacity: Mutex::new(()),
        })
    }

    /// Checks that the VG and the thin pool exist (for the daemon's start).
    pub fn check_pool(&self) -> Result<(), BackendError> {
        let rows = self.lvs()?;
        match rows.iter().find(|r| r.lv_name == self.cfg.pool) {
            Some(r) if r.is_thin_pool() => {
                let chunk = r.chunk_size.trim().parse::<f64>().unwrap_or(0.0) as u64;
                if chunk > 0 && chunk < SMALL_CHUNK {
                    // dm-thin splits every IO at chunk boundaries: a 1 MiB direct read on a
                    // 64 KiB-chunk pool becomes 16 IOs (measured: 0.66 of a linear LV's rate).
                    tracing::warn!(
                        pool = %self.pool_path(),
                        chunk_kib = chunk / 1024,
                        "thin pool chunk size below 256 KiB splits large database IO; \
                         see the README (lvcreate --chunksize 512k)"
                    );
                }
                Ok(())
            }
            Some(r) => Err(BackendError::Refused(format!(
                "{} is not a thin pool (lv_attr {}); create one with lvcreate --type thin-pool",
                self.pool_path(),
                r.lv_attr
            ))),
            None => Err(BackendError::Refused(format!(
                "thin pool {} does not exist; create it with lvcreate --type thin-pool -L SIZE -n {} {}",
                self.pool_path(),
                self.cfg.pool,
                self.cfg.vg
            ))),
        }
    }

    fn pool_path(&self) -> String {
        format!("{}/{}", self.cfg.vg, self.cfg.pool)
    }

    fn lvm(&self, args: &[&str]) -> Result<String, BackendError> {
        let mut command = Command::new(&self.cfg.lvm);
        command
            .args(args)
            // volplugin's sockets are close-on-exec; this only silences LVM's warning about
            // inherited descriptors of a test harness.
            .env("LVM_SUPPRESS_FD_WARNINGS", "1");
        fsops::run_bounded(&mut command, self.cfg.command_timeout)
    }

    /// Every LV of the VG (ours are filtered by tag by the callers).
    pub fn lvs(&self) -> Result<Vec<LvRow>, BackendError> {
        let out = self.lvm(&[
            "lvs",
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_name,lv_attr,lv_size,lv_tags,pool_lv,origin,data_percent,metadata_percent,chunk_size",
            &self.cfg.vg,
        ])?;
        parse_lvs(&out).map_err(BackendError::Refused)
    }

    fn dm_name(&self, lv: &str) -> String {
        dmstatus::dm_name(&self.cfg.vg, lv)
    }

    fn node(&self, lv: &str) -> PathBuf {
        Path::new("/dev/mapper").join(self.dm_name(lv))
    }

    fn pool_figures(&self, rows: Option<&[LvRow]>) -> Option<PoolFigures> {
        let pool = self.pool_path();
        match dmstatus::pool_status(&self.cfg.vg, &self.cfg.pool) {
            Ok(Some(s)) => return Some(figures(pool, &s)),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "pool status by ioctl"),
        }
        // The pool is not active (no thin LV active): LVM's own report.
        let row = rows?.iter().find(|r| r.lv_name == self.cfg.pool)?.clone();
        Some(PoolFigures {
            pool,
            data_percent: pct(&row.data_percent),
            metadata_percent: pct(&row.metadata_percent),
            mode: "inactive".into(),
        })
    }

    /// Refuses a new volume of `size` where the pool is too full, unhealthy or would be
    /// overcommitted past the cap. The pool's fill is read by ioctl; LVM's report (a fork) is
    /// read only for the overcommit cap (it needs every thin LV's size) or when the pool is
    /// not active.
    fn check_room(&self, size: u64) -> Result<(), BackendError> {
        let pool = self.pool_path();
        let live = match dmstatus::pool_status(&self.cfg.vg, &self.cfg.pool) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "pool status by ioctl");
                None
            }
        };
        let (status, pool_size, provisioned) = match (&live, self.cfg.max_overcommit) {
            (Some(s), None) => (figures(pool.clone(), s), 0, 0),
            _ => {
                let rows = self.lvs()?;
                let pool_row = rows
                    .iter()
                    .find(|r| r.lv_name == self.cfg.pool && r.is_thin_pool())
                    .ok_or_else(|| {
                        BackendError::Refused(format!(
                            "thin pool {pool} does not exist (or is not a thin pool)"
                        ))
                    })?;
                let status = match &live {
                    Some(s) => figures(pool.clone(), s),
                    None => PoolFigures {
                        pool: pool.clone(),
                        data_percent: pct(&pool_row.data_percent),
                        metadata_percent: pct(&pool_row.metadata_percent),
                        mode: "inactive".into(),
                    },
                };
                let provisioned = rows
                    .iter()
                    .filter(|r| r.pool_lv == self.cfg.pool)
                    .map(LvRow::size)
                    .sum();
                (status, pool_row.size(), provisioned)
            }
        };
        check_capacity(&self.cfg, &pool, &status, pool_size, provisioned, size)
            .map_err(BackendError::Refused)
    }

    /// The size of a volume's LV: by ioctl on its device while active (the service only
    /// resizes volumes with a record, whose LV is ours), else from LVM's report, refused
    /// unless the LV carries our tag.
    fn lv_size(&self, lv: &str) -> Result<u64, BackendError> {
        match fsops::block_device_size(&self.node(lv)) {
            Ok(size) => Ok(size),
            Err(_) => Ok(self.own_lv(lv)?.size()),
        }
    }

    /// The LV of a volume, refused unless it carries our tag.
    fn own_lv(&self, lv: &str) -> Result<LvRow, BackendError> {
        self.lvs()?
            .into_iter()
            .find(|r| r.lv_name == lv && r.tagged())
            .ok_or_else(|| {
                BackendError::Refused(format!(
                    "LV {}/{lv} is missing or not tagged {TAG}",
                    self.cfg.vg
                ))
            })
    }

    /// The pool rules of a new volume, for a volume growing by `growth` bytes.
    fn check_growth_room(&self, name: &str, growth: u64) -> Result<(), BackendError> {
        self.check_room(growth).map_err(|e| {
            BackendError::Refused(format!(
                "growing {name} by {} is refused: {e}",
                human_size(growth)
            ))
        })
    }

    /// lvcreate refuses an existing name itself; its refusal is made to say whose LV it is
    /// not.
    fn explain_existing(&self, lv: &str, e: BackendError) -> BackendError {
        match &e {
            BackendError::Command { stderr, .. } if stderr.contains("already exists") => {
                BackendError::Refused(format!(
                    "LV {}/{lv} already exists but belongs to no volume; volplugin never \
                     reuses an LV it did not create for this volume: remove or rename it to \
                     reuse the name",
                    self.cfg.vg
                ))
            }
            _ => e,
        }
    }

    /// Removes the LV if it carries our tag: the LV is named (LVM looks at it alone) and the
    /// selection keeps an LV that is not ours as it is. Absent is success.
    fn remove_lv(&self, lv: &str) -> Result<(), BackendError> {
        let select = format!("lv_tags={{{TAG}}}");
        let path = format!("{}/{lv}", self.cfg.vg);
        match self.lvm(&["lvremove", "--yes", "--select", &select, &path]) {
            Ok(_) => Ok(()),
            Err(BackendError::Command { stderr, .. })
                if stderr.contains("Failed to find logical volume") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn activate(&self, lv: &str) -> Result<(), BackendError> {
        if self.node(lv).exists() {
            return Ok(());
        }
        // -K: activate even where the activation-skip flag is set (a clone made by hand).
        self.lvm(&["lvchange", "-ay", "-K", &format!("{}/{lv}", self.cfg.vg)])
            .map(drop)
    }

    /// The attachment when `target` is a mount of this LV's device.
    fn mounted_attachment(
        &self,
        lv: &str,
        target: &Path,
    ) -> Result<Option<Attachment>, BackendError> {
        let Some(entry) =
            mountinfo::find(target).map_err(BackendError::io("read /proc/self/mountinfo"))?
        else {
            return Ok(None);
        };
        let Ok(device) = fsops::device_number(&self.node(lv)) else {
            return Ok(None);
        };
        Ok((entry.device == device).then_some(Attachment {
            source: self.node(lv).display().to_string(),
            device,
        }))
    }
}

fn figures(pool: String, s: &PoolStatus) -> PoolFigures {
    PoolFigures {
        pool,
        data_percent: s.data_percent(),
        metadata_percent: s.metadata_percent(),
        mode: s.mode.clone(),
    }
}

impl Backend for LvmThinBackend {
    fn kind(&self) -> &'static str {
        "lvm-thin"
    }

    fn provision(&self, name: &str, spec: &VolumeSpec) -> Result<(), BackendError> {
        let lv = lv_name(&self.cfg.vg, name)?;
        {
            let _room = plugin_transport::sync::lock(&self.capacity);
            self.check_room(spec.size_bytes)?;
            let size = format!("{}m", spec.size_bytes.div_ceil(1 << 20));
            self.lvm(&[
                "lvcreate",
                "--yes",
                "--quiet",
                "-V",
                &size,
                "-T",
                &self.pool_path(),
                "-n",
                &lv,
                "--addtag",
                TAG,
            ])
            .map_err(|e| self.explain_existing(&lv, e))?;
        }
        let made = self
            .activate(&lv)
            .and_then(|()| fsops::mkfs(spec.fs, &self.node(&lv)));
        if let Err(e) = made {
            let _ = self.remove_lv(&lv);
            return Err(e);
        }
        Ok(())
    }

    fn clone_volume(
        &self,
        name: &str,
        source: &str,
        spec: &VolumeSpec,
    ) -> Result<(), BackendError> {
        let lv = lv_name(&self.cfg.vg, name)?;
        let source_lv = lv_name(&self.cfg.vg, source)?;
        {
            let _room = plugin_transport::sync::lock(&self.capacity);
            // The source is a Ready volume (the service checked its record), so its LV is ours.
            self.check_room(spec.size_bytes)?;
            // A thin snapshot: metadata only, O(1) whatever the data. -kn: no activation
            // skip, so it activates (writable) like any volume.
            self.lvm(&[
                "lvcreate",
                "--yes",
                "--quiet",
                "-s",
                "-kn",
                "-n",
                &lv,
                "--addtag",
                TAG,
                &format!("{}/{source_lv}", self.cfg.vg),
            ])
            .map_err(|e| self.explain_existing(&lv, e))?;
        }
        let made = self.activate(&lv).and_then(|()| match spec.fs {
            Filesystem::Xfs => fsops::fresh_xfs_uuid(&self.node(&lv), &self.cfg.scratch.join(name)),
            // ext4 mounts fine with its source's UUID.
            Filesystem::Ext4 => Ok(()),
        });
        if let Err(e) = made {
            let _ = self.remove_lv(&lv);
            return Err(e);
        }
        Ok(())
    }

    fn check_grow(
        &self,
        name: &str,
        spec: &VolumeSpec,
        new_size: u64,
        mounted: bool,
    ) -> Result<(), BackendError> {
        if mounted {
            fsops::check_online_grow(spec.fs)?;
        }
        let lv = lv_name(&self.cfg.vg, name)?;
        let current = self.lv_size(&lv)?;
        if current < new_size {
            let _room = plugin_transport::sync::lock(&self.capacity);
            self.check_growth_room(name, new_size - current)?;
        }
        Ok(())
    }

    /// lvextend (within the pool rules new volumes obey, for the growth), then the filesystem:
    /// online through the mount, else offline.
    fn grow(
        &self,
        name: &str,
        spec: &VolumeSpec,
        mounted_at: Option<&Path>,
    ) -> Result<(), BackendError> {
        let lv = lv_name(&self.cfg.vg, name)?;
        {
            // Held from the check to the end of lvextend, as for lvcreate.
            let _room = plugin_transport::sync::lock(&self.capacity);
            let current = self.lv_size(&lv)?;
            if current < spec.size_bytes {
                self.check_growth_room(name, spec.size_bytes - current)?;
                let size = format!("{}m", spec.size_bytes.div_ceil(1 << 20));
                // One step in LVM's metadata: a crash leaves the LV at one size or the other.
                self.lvm(&[
                    "lvextend",
                    "--quiet",
                    "-L",
                    &size,
                    &format!("{}/{lv}", self.cfg.vg),
                ])?;
            }
        }
        self.activate(&lv)?;
        let node = self.node(&lv);
        match mounted_at {
            Some(target) => {
                if self.mounted_attachment(&lv, target)?.is_none() {
                    return Err(BackendError::Refused(format!(
                        "{name} is no longer mounted at {}",
                        target.display()
                    )));
                }
                fsops::grow_mounted(spec.fs, &node, target)
            }
            None => match spec.fs {
                Filesystem::Ext4 => fsops::grow_ext4_offline(&node),
                Filesystem::Xfs => {
                    fsops::grow_xfs_offline(&node, &self.cfg.scratch.join("grow").join(name))
                }
            },
        }
    }

    fn storage_size(&self, name: &str) -> Result<u64, BackendError> {
        let lv = lv_name(&self.cfg.vg, name)?;
        self.lv_size(&lv)
    }

    /// Only an LV tagged berth-vol is removed; absent is success.
    fn deprovision(&self, name: &str) -> Result<(), BackendError> {
        let lv = lv_name(&self.cfg.vg, name)?;
        self.remove_lv(&lv)
    }

    fn stored(&self) -> Result<Vec<String>, BackendError> {
        Ok(self
            .lvs()?
            .into_iter()
            .filter(|r| r.tagged() && r.pool_lv == self.cfg.pool)
            .filter_map(|r| r.lv_name.strip_prefix(LV_PREFIX).map(str::to_string))
            .collect())
    }

    fn mount(
        &self,
        name: &str,
        spec: &VolumeSpec,
        target: &Path,
    ) -> Result<Attachment, BackendError> {
        let lv = lv_name(&self.cfg.vg, name)?;
        if let Some(current) = self.mounted_attachment(&lv, target)? {
            return Ok(current);
        }
        // Active from creation on; after a reboot without LVM autoactivation it may not be.
        self.activate(&lv)?;
        let node = self.node(&lv);
        fsops::mount(&node, target, spec.fs, None)?;
        let device = fsops::device_number(&node)
            .map_err(BackendError::io(format!("stat {}", node.display())))?;
        Ok(Attachment {
            source: node.display().to_string(),
            device,
        })
    }

    /// The LV stays active (as LVM's autoactivation leaves it at boot): Status can read its
    /// mapped sectors, and the next Mount needs no fork.
    fn unmount(&self, name: &str, target: &Path) -> Result<(), BackendError> {
        let lv = lv_name(&self.cfg.vg, name)?;
        if self.mounted_attachment(&lv, target)?.is_none() {
            return Ok(());
        }
        fsops::unmount(target)
    }

    fn attachment(&self, name: &str, target: &Path) -> Result<Option<Attachment>, BackendError> {
        let lv = lv_name(&self.cfg.vg, name)?;
        self.mounted_attachment(&lv, target)
    }

    fn usage(&self, name: &str, mounted_at: Option<&Path>) -> Result<Usage, BackendError> {
        let lv = lv_name(&self.cfg.vg, name)?;
        let allocated =
            dmstatus::thin_mapped_bytes(&self.dm_name(&lv)).map_err(BackendError::Refused)?;
        let mut usage = Usage {
            allocated_bytes: allocated,
            ..Usage::default()
        };
        if let Some(target) = mounted_at {
            let (used, free) = fs_usage(target)?;
            usage.used_bytes = Some(used);
            usage.free_bytes = Some(free);
        }
        Ok(usage)
    }

    /// Active LVs are LVM's normal state, not strays: nothing to release.
    fn clear_scratch_mounts(&self) -> Result<Vec<String>, BackendError> {
        fsops::clear_scratch(&self.cfg.scratch)
    }

    fn release_stray_devices(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }

    fn status_extra(&self, name: &str) -> BTreeMap<String, serde_json::Value> {
        let mut map = BTreeMap::new();
        if let Ok(lv) = lv_name(&self.cfg.vg, name) {
            map.insert("lv".into(), json!(format!("{}/{lv}", self.cfg.vg)));
        }
        map.insert("pool".into(), json!(self.pool_path()));
        if let Some(f) = self.pool_figures(None) {
            map.insert("pool_data_percent".into(), json!(f.data_percent));
            map.insert("pool_metadata_percent".into(), json!(f.metadata_percent));
            map.insert("pool_mode".into(), json!(f.mode));
        }
        map
    }

    fn pools(&self) -> Vec<PoolFigures> {
        self.pool_figures(None).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_lvs() {
        assert_eq!(lv_name("vg0", "mysql-data").unwrap(), "berth_mysql-data");
        // LVM refuses LV names starting with "snapshot"; the prefix makes these fine.
        assert_eq!(lv_name("vg0", "snapshot1").unwrap(), "berth_snapshot1");
        let err = lv_name("vg0", "db_tmeta").unwrap_err().to_string();
        assert!(err.contains("_tmeta") && err.contains("reserves"), "{err}");
        let long = "a".repeat(120);
        let err = lv_name("vg0", &long).unwrap_err().to_string();
        assert!(
            err.contains("too long") && err.contains("at most 115"),
            "{err}"
        );
        lv_name("vg0", &"a".repeat(115)).unwrap();
        assert!(lv_name("vg0", &"a".repeat(116)).is_err());
        let dashes = "a-".repeat(50);
        assert!(lv_name("vg0", &dashes)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn lvm_names() {
        for ok in ["vg0", "data_vg", "vg.1", "a+b", "pool-1"] {
            validate_lvm_name("--vg", ok).unwrap();
        }
        for bad in ["", ".", "..", "-vg", "vg/0", "vg 0", "vg;rm", "ä"] {
            assert!(validate_lvm_name("--vg", bad).is_err(), "{bad:?}");
        }
    }

    const LVS: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"berth_db", "lv_attr":"Vwi-aotz--", "lv_size":"1073741824", "lv_tags":"berth-vol", "pool_lv":"pool", "origin":"", "data_percent":"2.47", "metadata_percent":""},
                  {"lv_name":"berth_db2", "lv_attr":"Vwi-a-tz-k", "lv_size":"1073741824", "lv_tags":"other,berth-vol", "pool_lv":"pool", "origin":"berth_db", "data_percent":"2.47", "metadata_percent":""},
                  {"lv_name":"pool", "lv_attr":"twi-aotz--", "lv_size":"2147483648", "lv_tags":"", "pool_lv":"", "origin":"", "data_percent":"3.10", "metadata_percent":"11.52"},
                  {"lv_name":"state", "lv_attr":"-wi-ao----", "lv_size":"268435456", "lv_tags":"", "pool_lv":"", "origin":"", "data_percent":"", "metadata_percent":""},
                  {"lv_name":"berth_fake", "lv_attr":"Vwi-a-tz--", "lv_size":"1073741824", "lv_tags":"berth-volume", "pool_lv":"pool", "origin":"", "data_percent":"0.00", "metadata_percent":""}
              ]
          }
      ]
      ,
      "log": [
      ]
  }"#;

    #[test]
    fn parses_lvs_json() {
        let rows = parse_lvs(LVS).unwrap();
        assert_eq!(rows.len(), 5);
        assert!(rows[0].tagged() && rows[1].tagged());
        assert!(!rows[4].tagged(), "a tag is matched whole, not by prefix");
        assert_eq!(rows[0].size(), 1 << 30);
        assert!(rows[2].is_thin_pool() && rows[2].is_active());
        assert_eq!(rows[1].origin, "berth_db");
        assert_eq!(pct(&rows[2].metadata_percent), 11.52);
        assert!(parse_lvs("garbage").is_err());
        assert!(parse_lvs(r#"{"report":[{}]}"#).unwrap().is_empty());
    }

    fn cfg() -> LvmConfig {
        let mut c = LvmConfig::new("vg0", "pool", PathBuf::from("/tmp"));
        c.data_max_percent = 80.0;
        c.metadata_max_percent = 70.0;
        c.max_overcommit = Some(4.0);
        c
    }

    fn fig(data: f64, meta: f64, mode: &str) -> PoolFigures {
        PoolFigures {
            pool: "vg0/pool".into(),
            data_percent: data,
            metadata_percent: meta,
            mode: mode.into(),
        }
    }

    #[test]
    fn capacity_rules() {
        let c = cfg();
        let g = 1u64 << 30;
        check_capacity(&c, "vg0/pool", &fig(10.0, 10.0, "rw"), 2 * g, 4 * g, g).unwrap();
        let err = check_capacity(&c, "vg0/pool", &fig(80.5, 10.0, "rw"), 2 * g, 0, g).unwrap_err();
        assert!(
            err.contains("vg0/pool") && err.contains("80.50%") && err.contains("80%"),
            "{err}"
        );
        let err = check_capacity(&c, "vg0/pool", &fig(1.0, 71.0, "rw"), 2 * g, 0, g).unwrap_err();
        assert!(err.contains("metadata") && err.contains("71.00%"), "{err}");
        let err =
            check_capacity(&c, "vg0/pool", &fig(1.0, 1.0, "rw"), 2 * g, 7 * g, 2 * g).unwrap_err();
        assert!(
            err.contains("4.50x") && err.contains("9G") && err.contains("2G"),
            "{err}"
        );
        let err = check_capacity(
            &c,
            "vg0/pool",
            &fig(1.0, 1.0, "out_of_data_space"),
            2 * g,
            0,
            g,
        )
        .unwrap_err();
        assert!(err.contains("out_of_data_space"), "{err}");
        let mut no_cap = cfg();
        no_cap.max_overcommit = None;
        check_capacity(&no_cap, "vg0/pool", &fig(1.0, 1.0, "rw"), g, 100 * g, g).unwrap();
    }

    #[test]
    fn config_is_checked() {
        assert!(LvmThinBackend::new(LvmConfig::new("vg0", "pool", "/tmp".into())).is_ok());
        assert!(LvmThinBackend::new(LvmConfig::new("vg0;x", "pool", "/tmp".into())).is_err());
        let mut c = cfg();
        c.data_max_percent = 150.0;
        assert!(LvmThinBackend::new(c).is_err());
        let mut c = cfg();
        c.max_overcommit = Some(0.0);
        assert!(LvmThinBackend::new(c).is_err());
    }
}
