//! netplugin: Berth's libnetwork remote network + IPAM driver on Open vSwitch.
//!
//! The drivers are built by the netplugin issue; this binary already parses the public
//! command line of DESIGN.md so packaging and docs can rely on it.

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "netplugin",
    version,
    about = "Berth network + IPAM Docker plugin on Open vSwitch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (not implemented yet).
    Serve,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            bail!("netplugin serve is not implemented yet in this release; see the README")
        }
    }
}
