//! `netplugin pool ...`: pools, who holds which address, and the admin's holds and releases.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use plugin_transport::cli::print_table;

use netplugin::fleet::{AddressChange, ReclaimReport};
use netplugin::network::PoolView;
use netplugin::state::short;

use crate::config::AdminArgs;

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// List pools with allocated and free counts.
    Ls(AdminArgs),
    /// One pool (by pool id, subnet or network id) with every held address and its holder.
    Show {
        pool: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hold IP for the admin: never handed out until unreserved.
    Reserve(AddressArgs),
    /// Give back an address held by `pool reserve`.
    Unreserve(AddressArgs),
    /// Free IP whoever holds it (a leak after a crash); says what held it.
    Release(AddressArgs),
    /// Release every address, endpoint and block affinity of a dead host.
    Reclaim {
        /// The host id (see `netplugin host ls`).
        #[arg(long)]
        host: String,
        /// Even if the host's lease is alive (its containers lose their addresses' guarantee).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args, Debug)]
pub struct AddressArgs {
    ip: String,
    /// The pool (id, subnet or network id) when several contain IP.
    #[arg(long)]
    pool: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

impl PoolCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            PoolCommand::Ls(admin) => ls(admin).await,
            PoolCommand::Show { pool, admin } => show(&pool, admin).await,
            PoolCommand::Reserve(a) => address_admin("reserve", a).await,
            PoolCommand::Unreserve(a) => address_admin("unreserve", a).await,
            PoolCommand::Release(a) => address_admin("release", a).await,
            PoolCommand::Reclaim { host, force, admin } => reclaim(&host, force, admin).await,
        }
    }
}

async fn ls(admin: AdminArgs) -> anyhow::Result<()> {
    let body = super::get(&admin, "/pools").await?;
    let Some(list) = admin
        .decode::<Vec<PoolView>>(&body)
        .context("decoding the answer")?
    else {
        return Ok(());
    };
    let rows = list
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.subnet.clone(),
                p.ip_range.clone().unwrap_or_else(|| "-".into()),
                if p.auto { "auto" } else { "explicit" }.into(),
                p.network_id
                    .as_deref()
                    .map(short)
                    .unwrap_or("-")
                    .to_string(),
                p.allocated.to_string(),
                p.free.to_string(),
                p.address_space.clone(),
                p.hosts.join(","),
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &[
            "POOL",
            "SUBNET",
            "IP-RANGE",
            "KIND",
            "NETWORK",
            "ALLOCATED",
            "FREE",
            "SPACE",
            "HOSTS",
        ],
        &rows,
    );
    Ok(())
}

async fn show(pool: &str, admin: AdminArgs) -> anyhow::Result<()> {
    if pool.is_empty() || pool.contains(['?', '#', ' ']) {
        bail!("POOL {pool:?}: give a pool id, a subnet or a network id");
    }
    let path = format!("/pools/{}", pool.replace('/', "%2F"));
    let body = super::get(&admin, &path).await?;
    let Some(p) = admin
        .decode::<PoolView>(&body)
        .context("decoding the answer")?
    else {
        return Ok(());
    };
    println!("Pool:       {}", p.id);
    println!("Subnet:     {}", p.subnet);
    println!("IP range:   {}", p.ip_range.as_deref().unwrap_or("-"));
    println!("Kind:       {}", if p.auto { "auto" } else { "explicit" });
    println!("Network:    {}", p.network_id.as_deref().unwrap_or("-"));
    println!("Space:      {}", p.address_space);
    println!("Allocated:  {}", p.allocated);
    println!("Free:       {}", p.free);
    println!("Hosts:      {}", p.hosts.join(", "));
    println!();
    let rows = p
        .addresses
        .iter()
        .map(|a| {
            vec![
                a.address.clone(),
                a.held_by.clone(),
                a.mac.clone().unwrap_or_else(|| "-".into()),
                a.host.clone(),
            ]
        })
        .collect::<Vec<_>>();
    print_table(&["ADDRESS", "HELD BY", "MAC", "HOST"], &rows);
    Ok(())
}

async fn address_admin(action: &str, a: AddressArgs) -> anyhow::Result<()> {
    let body = super::post(
        &a.admin,
        &format!("/addresses/{action}"),
        serde_json::json!({ "ip": a.ip, "pool": a.pool }),
    )
    .await?;
    let Some(c) = a
        .admin
        .decode::<AddressChange>(&body)
        .context("decoding the answer")?
    else {
        return Ok(());
    };
    match c.action.as_str() {
        "reserved" => println!(
            "reserved {} in pool {} ({}): it is never handed out until `netplugin pool unreserve {}`",
            c.address, c.pool_id, c.subnet, c.address
        ),
        action => println!(
            "{action} {} in pool {} ({}); it was held by {}",
            c.address, c.pool_id, c.subnet, c.held_by
        ),
    }
    Ok(())
}

async fn reclaim(host: &str, force: bool, admin: AdminArgs) -> anyhow::Result<()> {
    let body = super::post(
        &admin,
        "/hosts/reclaim",
        serde_json::json!({ "host": host, "force": force }),
    )
    .await?;
    let Some(r) = admin
        .decode::<ReclaimReport>(&body)
        .context("decoding the answer")?
    else {
        return Ok(());
    };
    println!(
        "host {}: released {} addresses, removed {} endpoint records, freed {} blocks",
        r.host,
        r.addresses.len(),
        r.endpoints.len(),
        r.blocks
    );
    if !r.addresses.is_empty() {
        let rows = r
            .addresses
            .iter()
            .map(|a| {
                vec![
                    a.address.clone(),
                    a.pool_id.clone(),
                    a.subnet.clone(),
                    a.held_by.clone(),
                ]
            })
            .collect::<Vec<_>>();
        println!();
        print_table(&["RELEASED", "POOL", "SUBNET", "WAS HELD BY"], &rows);
    }
    Ok(())
}
