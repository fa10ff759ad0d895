//! `volplugin volume ...`: list, inspect, and change IO limits live.

use anyhow::{bail, Context};
use clap::Subcommand;
use http::Method;
use plugin_transport::cli::print_table;

use volplugin::service::VolumeInfo;
use volplugin::spec::{human_size, validate_name};

use crate::config::AdminArgs;

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// List volumes with size, usage, mounts and device.
    Ls(AdminArgs),
    /// Show one volume in full.
    Inspect {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change a volume's IO limits, live: running containers using it follow within a second.
    /// `0` or `max` removes a limit; limits not given stay as they are.
    SetLimits {
        name: String,
        /// Read bandwidth, bytes/s with K/M/G suffixes (binary).
        #[arg(long)]
        read_bps: Option<String>,
        /// Write bandwidth, bytes/s with K/M/G suffixes (binary).
        #[arg(long)]
        write_bps: Option<String>,
        /// Read operations per second.
        #[arg(long)]
        read_iops: Option<String>,
        /// Write operations per second.
        #[arg(long)]
        write_iops: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Grow a volume to SIZE (`20G`, `1.5T`; binary units, rounded up to whole MiB) while
    /// containers use it: the storage, then the filesystem (online while mounted, else at
    /// once offline). Shrinking is refused.
    Resize {
        name: String,
        /// The new size; at least the current one.
        size: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Mount counts Docker no longer holds.
    #[command(subcommand)]
    Mounts(MountsCommand),
}

#[derive(Subcommand, Debug)]
pub enum MountsCommand {
    /// Drop every mount count of a volume and unmount it: for counts Docker will never release
    /// (a Mount it saw fail that still landed). Refused while Docker lists a running container
    /// using the volume.
    Clear {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

impl VolumeCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            VolumeCommand::Ls(admin) => ls(admin).await,
            VolumeCommand::Inspect { name, admin } => inspect(&name, admin).await,
            VolumeCommand::SetLimits {
                name,
                read_bps,
                write_bps,
                read_iops,
                write_iops,
                admin,
            } => {
                let limits = [
                    ("read_bps", read_bps),
                    ("write_bps", write_bps),
                    ("read_iops", read_iops),
                    ("write_iops", write_iops),
                ];
                set_limits(&name, &limits, admin).await
            }
            VolumeCommand::Resize { name, size, admin } => resize(&name, &size, admin).await,
            VolumeCommand::Mounts(MountsCommand::Clear { name, admin }) => {
                clear_mounts(&name, admin).await
            }
        }
    }
}

async fn resize(name: &str, size: &str, admin: AdminArgs) -> anyhow::Result<()> {
    validate_name(name)?;
    let body = serde_json::json!({ "size": size });
    let body = admin
        .call(
            Method::POST,
            &format!("/volumes/{name}/size"),
            Some(serde_json::to_vec(&body)?),
        )
        .await?;
    if let Some(info) = admin
        .decode::<VolumeInfo>(&body)
        .context("decoding the daemon's answer")?
    {
        println!(
            "{}: size now {} ({} bytes){}",
            info.name,
            human_size(info.size_bytes),
            info.size_bytes,
            if info.mounts > 0 {
                ", grown online"
            } else {
                ""
            }
        );
    }
    Ok(())
}

async fn clear_mounts(name: &str, admin: AdminArgs) -> anyhow::Result<()> {
    validate_name(name)?;
    let body = admin
        .call(Method::POST, &format!("/volumes/{name}/mounts/clear"), None)
        .await?;
    if let Some(answer) = admin
        .decode::<serde_json::Value>(&body)
        .context("decoding the daemon's answer")?
    {
        let dropped: Vec<&str> = answer["dropped"]
            .as_array()
            .map(|ids| ids.iter().filter_map(|i| i.as_str()).collect())
            .unwrap_or_default();
        if dropped.is_empty() {
            println!("{name}: no mount counts; unmounted if it was mounted");
        } else {
            println!(
                "{name}: dropped mount count(s) of {}; unmounted",
                dropped.join(", ")
            );
        }
    }
    Ok(())
}

async fn set_limits(
    name: &str,
    limits: &[(&str, Option<String>)],
    admin: AdminArgs,
) -> anyhow::Result<()> {
    validate_name(name)?;
    let change: serde_json::Map<String, serde_json::Value> = limits
        .iter()
        .filter_map(|(key, value)| {
            value
                .as_ref()
                .map(|v| (key.to_string(), serde_json::Value::String(v.clone())))
        })
        .collect();
    if change.is_empty() {
        bail!("nothing to change: give at least one of --read-bps, --write-bps, --read-iops, --write-iops");
    }
    let body = admin
        .call(
            Method::POST,
            &format!("/volumes/{name}/limits"),
            Some(serde_json::to_vec(&change)?),
        )
        .await?;
    if let Some(info) = admin
        .decode::<VolumeInfo>(&body)
        .context("decoding the daemon's answer")?
    {
        println!("{}: limits now {}", info.name, info.limits.describe());
    }
    Ok(())
}

async fn ls(admin: AdminArgs) -> anyhow::Result<()> {
    let body = admin.call(Method::GET, "/volumes", None).await?;
    let Some(volumes) = admin
        .decode::<Vec<VolumeInfo>>(&body)
        .context("decoding the daemon's answer")?
    else {
        return Ok(());
    };
    let rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                human_size(v.size_bytes),
                v.fs.clone(),
                v.allocated_bytes
                    .map(human_size)
                    .unwrap_or_else(|| "-".into()),
                v.used_bytes.map(human_size).unwrap_or_else(|| "-".into()),
                v.mounts.to_string(),
                v.device.clone().unwrap_or_else(|| "-".into()),
                v.created_at.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "SIZE",
            "FS",
            "ALLOCATED",
            "USED",
            "MOUNTS",
            "DEVICE",
            "CREATED",
        ],
        &rows,
    );
    Ok(())
}

async fn inspect(name: &str, admin: AdminArgs) -> anyhow::Result<()> {
    validate_name(name)?;
    let body = admin
        .call(Method::GET, &format!("/volumes/{name}"), None)
        .await?;
    let Some(info) = admin
        .decode::<VolumeInfo>(&body)
        .context("decoding the daemon's answer")?
    else {
        return Ok(());
    };
    let opt = |v: Option<u64>| {
        v.map(|b| format!("{} ({b} bytes)", human_size(b)))
            .unwrap_or_else(|| "-".into())
    };
    let rows = vec![
        vec!["Name".into(), info.name.clone()],
        vec!["State".into(), info.state.clone()],
        vec!["Backend".into(), info.backend.clone()],
        vec!["Filesystem".into(), info.fs.clone()],
        vec!["Size".into(), opt(Some(info.size_bytes))],
        vec!["Resizing to".into(), opt(info.resizing_to_bytes)],
        vec!["Allocated".into(), opt(info.allocated_bytes)],
        vec!["Used".into(), opt(info.used_bytes)],
        vec!["Free".into(), opt(info.free_bytes)],
        vec!["Mounts".into(), info.mounts.to_string()],
        vec![
            "Device".into(),
            info.device.clone().unwrap_or_else(|| "-".into()),
        ],
        vec!["Mountpoint".into(), info.mountpoint.clone()],
        vec!["Created".into(), info.created_at.clone()],
    ];
    for row in rows {
        println!("{:<12} {}", format!("{}:", row[0]), row[1]);
    }
    Ok(())
}
