//! `cargo xtask soak`: the live random-workload test (`tests/tests/live_random.rs`) with many
//! seeds and long operation sequences, per backend, against release builds. On failure it
//! repeats the replay command of each failing seed, with the operation count that found it.

use anyhow::bail;

use crate::{cargo, setup_and_report};

pub fn soak(seeds: u64, operations: u64) -> anyhow::Result<()> {
    let env = setup_and_report()?;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("xtask: warning: not root; the live tests need root (eBPF, fanotify, mounts)");
    }
    let mut command = cargo(&env);
    command
        .args(["test", "-p", "tests", "--test", "live_random", "--release"])
        .args(["--", "--test-threads=1"])
        .env("RT_LIVE_SEEDS", seeds.to_string())
        .env("RT_LIVE_OPS", operations.to_string());
    eprintln!("soak: {seeds} seeds of {operations} operations per backend");
    let mut replays = Vec::new();
    let status = crate::run_tee(&mut command, |line| {
        if let Some(replay) = replay_command(line, operations) {
            replays.push(replay);
        }
    })?;
    if status.success() {
        eprintln!("soak: passed ({seeds} seeds × {operations} operations per backend)");
        return Ok(());
    }
    if replays.is_empty() {
        eprintln!(
            "soak: no failing seed was reported; rerun everything with:\n  \
             RT_LIVE_SEEDS={seeds} RT_LIVE_OPS={operations} \
             cargo test -p tests --test live_random --release -- --test-threads=1"
        );
    } else {
        eprintln!("soak: replay the failures with:");
        for replay in &replays {
            eprintln!("  {replay}");
        }
    }
    bail!("the soak failed: {status}")
}

/// The test's own hint, `replay: RT_SEED=<seed> cargo test ... -- <backend>`, made to replay
/// the same operations (a seed's sequence is cut at `RT_LIVE_OPS`) in the same build.
fn replay_command(line: &str, operations: u64) -> Option<String> {
    let hint = &line[line.find("replay: RT_SEED=")? + "replay: RT_SEED=".len()..];
    let seed = hint.split_whitespace().next()?;
    let backend = hint.split_whitespace().last()?;
    Some(format!(
        "RT_SEED={seed} RT_LIVE_OPS={operations} cargo test -p tests --test live_random --release -- {backend}"
    ))
}

#[cfg(test)]
mod tests {
    use super::replay_command;

    #[test]
    fn replay_keeps_seed_backend_and_operations() {
        let line = "backend ebpf, seed 17: ...\nreplay: RT_SEED=17 cargo test -p tests --test live_random -- ebpf";
        let last = line.lines().last().map(|l| replay_command(l, 500));
        assert_eq!(
            last.flatten().as_deref(),
            Some(
                "RT_SEED=17 RT_LIVE_OPS=500 cargo test -p tests --test live_random --release -- ebpf"
            )
        );
        assert_eq!(replay_command("test live_random::ebpf ... ok", 500), None);
    }
}
