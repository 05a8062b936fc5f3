//! `store-gc`: the unprivileged collector. Not built yet (issue 4); it only explains itself.
use clap::Parser;

/// An unprivileged garbage collector for Nix stores that gets its roots from root-tracker.
///
/// Not implemented yet: this binary only reserves the name and refuses to run.
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let Cli {} = Cli::parse();
    anyhow::bail!("store-gc is not implemented yet (see issue 4); nothing was done")
}
