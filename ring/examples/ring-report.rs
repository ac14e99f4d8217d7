//! Prints one JSON object comparing the ring with the `hashring` crate (0.3, 100 virtual nodes
//! per member) on the same keys.
//!
//! `cargo run --release -p concord-ring --example ring-report -- --nodes N --partitions P`
//!
//! `--balance-factor PERCENT` (default 105) sets the ring's load cap (see
//! `RingConfig::balance_factor_percent`).
//!
//! Members are `node-0 .. node-{N-1}`. Ring movement is averaged over `TRIALS` single changes
//! each way: adding `node-N`, `node-{N+1}`, ... one at a time to the base set, and removing
//! members spread evenly over the id range one at a time (every member when N <= `TRIALS`; the
//! removed node's own load varies, 1-5 partitions at N = 1000, so few trials would be noisy).
//! The baseline's movement uses `HASHRING_TRIALS` changes (each rehashes a million keys). Ratios
//! are relative to the ideal (`P/(N+1)` partitions on add, `P/N` on remove; for hashring, the
//! fraction `1/(N+1)` of keys). `*_max` fields give the worst trial. Replica movement
//! (`copies_*`) counts copies to create over the whole preference list, relative to `R` times the
//! ideal.

#[path = "../benches/baseline/mod.rs"]
mod baseline;

use std::hint::black_box;
use std::time::Instant;

use baseline::{VNODES, VNode, arg, hashring_of, members};
use concord_ring::hash::splitmix64;
use concord_ring::{DEFAULT_BALANCE_FACTOR_PERCENT, Ring, RingConfig};
use hashring::HashRing;

const TRIALS: usize = 32;
const HASHRING_TRIALS: usize = 8;
const KEYS: usize = 1_000_000;

/// The member index owning `key` on the baseline ring (`usize::MAX` for an empty ring).
fn owner(ring: &HashRing<VNode>, key: &u64) -> usize {
    ring.get(key).map_or(usize::MAX, |v| v.node)
}

struct Stats {
    mean: f64,
    max: f64,
}

fn stats(values: &[f64]) -> Stats {
    Stats {
        mean: values.iter().sum::<f64>() / values.len().max(1) as f64,
        max: values.iter().copied().fold(0.0, f64::max),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--nodes", 100)? as usize;
    let partitions = arg(&args, "--partitions", 4096)?;
    let config = RingConfig {
        partitions,
        replication: 2,
        balance_factor_percent: arg(&args, "--balance-factor", DEFAULT_BALANCE_FACTOR_PERCENT)?,
    };
    if n == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let p = f64::from(partitions);

    // Build time: the median of several builds.
    let base = members(0..n);
    let ring = Ring::build(config, base.clone())?;
    let mut times = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        black_box(Ring::build(config, base.clone())?);
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let build_us = times[times.len() / 2];

    let loads = ring.loads();
    let mean = p / n as f64;
    let max_owned = loads.iter().map(|l| l.owned).max().unwrap_or(0);
    let min_owned = loads.iter().map(|l| l.owned).min().unwrap_or(0);
    let max_replicas = loads.iter().map(|l| l.replicas).max().unwrap_or(0);

    let mut add = Vec::new();
    let mut add_copies = Vec::new();
    for t in 0..TRIALS {
        let grown = Ring::build(config, members((0..n).chain([n + t])))?;
        let diff = Ring::diff(&ring, &grown)?;
        let ideal = p / (n + 1) as f64;
        add.push(diff.owner_changes() as f64 / ideal);
        add_copies.push(diff.copies_to_create() as f64 / (grown.list_len() as f64 * ideal));
    }
    let mut remove = Vec::new();
    let mut remove_copies = Vec::new();
    if n >= 2 {
        for t in 0..TRIALS.min(n) {
            let victim = t * n / TRIALS.min(n);
            let shrunk = Ring::build(config, members((0..n).filter(|&i| i != victim)))?;
            let diff = Ring::diff(&ring, &shrunk)?;
            let ideal = p / n as f64;
            remove.push(diff.owner_changes() as f64 / ideal);
            remove_copies.push(diff.copies_to_create() as f64 / (ring.list_len() as f64 * ideal));
        }
    }

    // Lookups: the same guild ids for both rings.
    let keys: Vec<u64> = (0..KEYS as u64).map(|i| splitmix64(i ^ 0xfeed)).collect();
    let start = Instant::now();
    let mut checksum = 0usize;
    for &k in &keys {
        checksum =
            checksum.wrapping_add(black_box(ring.owner_of_guild(black_box(k))).as_str().len());
    }
    let lookup_ns = start.elapsed().as_secs_f64() * 1e9 / KEYS as f64;

    let baseline = hashring_of(0..n);
    let start = Instant::now();
    for &k in &keys {
        checksum = checksum.wrapping_add(black_box(owner(&baseline, &black_box(k))));
    }
    let hashring_lookup_ns = start.elapsed().as_secs_f64() * 1e9 / KEYS as f64;
    black_box(checksum);

    let owners: Vec<usize> = keys.iter().map(|k| owner(&baseline, k)).collect();
    let mut counts = vec![0usize; n];
    for &o in &owners {
        if let Some(c) = counts.get_mut(o) {
            *c += 1;
        }
    }
    let key_mean = KEYS as f64 / n as f64;
    let hashring_max_over_mean = *counts.iter().max().unwrap_or(&0) as f64 / key_mean;
    let mut hashring_add = Vec::new();
    for t in 0..HASHRING_TRIALS {
        let grown = hashring_of((0..n).chain([n + t]));
        let moved = keys
            .iter()
            .zip(&owners)
            .filter(|(k, o)| owner(&grown, k) != **o)
            .count();
        hashring_add.push(moved as f64 / (KEYS as f64 / (n + 1) as f64));
    }
    let mut hashring_remove = Vec::new();
    if n >= 2 {
        for t in 0..HASHRING_TRIALS.min(n) {
            let victim = t * n / HASHRING_TRIALS.min(n);
            let shrunk = hashring_of((0..n).filter(|&i| i != victim));
            let moved = keys
                .iter()
                .zip(&owners)
                .filter(|(k, o)| owner(&shrunk, k) != **o)
                .count();
            hashring_remove.push(moved as f64 / (KEYS as f64 / n as f64));
        }
    }

    let (add, add_copies) = (stats(&add), stats(&add_copies));
    let (remove, remove_copies) = (stats(&remove), stats(&remove_copies));
    let (hashring_add, hashring_remove) = (stats(&hashring_add), stats(&hashring_remove));
    let opt = |s: &Stats, has: bool| {
        if has {
            format!("{:.4}", s.mean)
        } else {
            "null".to_owned()
        }
    };
    let opt_max = |s: &Stats, has: bool| {
        if has {
            format!("{:.4}", s.max)
        } else {
            "null".to_owned()
        }
    };
    let has_remove = n >= 2;
    println!(
        concat!(
            "{{\"nodes\":{},\"partitions\":{},\"replication\":2,\"balance_factor_percent\":{},",
            "\"max_over_mean_load\":{:.4},\"min_over_mean_load\":{:.4},",
            "\"replica_max_over_mean_load\":{:.4},",
            "\"moved_on_add_ratio\":{:.4},\"moved_on_add_ratio_max\":{:.4},",
            "\"moved_on_remove_ratio\":{},\"moved_on_remove_ratio_max\":{},",
            "\"copies_on_add_ratio\":{:.4},\"copies_on_remove_ratio\":{},",
            "\"lookup_ns\":{:.2},\"build_us\":{:.0},",
            "\"hashring_vnodes_per_member\":{},\"hashring_keys\":{},",
            "\"hashring_lookup_ns\":{:.2},\"hashring_max_over_mean_load\":{:.4},",
            "\"hashring_moved_on_add_ratio\":{:.4},\"hashring_moved_on_add_ratio_max\":{:.4},",
            "\"hashring_moved_on_remove_ratio\":{},\"trials\":{},\"hashring_trials\":{}}}"
        ),
        n,
        partitions,
        config.balance_factor_percent,
        max_owned as f64 / mean,
        min_owned as f64 / mean,
        if ring.list_len() > 1 {
            max_replicas as f64 / mean
        } else {
            0.0
        },
        add.mean,
        add.max,
        opt(&remove, has_remove),
        opt_max(&remove, has_remove),
        add_copies.mean,
        opt(&remove_copies, has_remove),
        lookup_ns,
        build_us,
        VNODES,
        KEYS,
        hashring_lookup_ns,
        hashring_max_over_mean,
        hashring_add.mean,
        hashring_add.max,
        opt(&hashring_remove, has_remove),
        TRIALS,
        HASHRING_TRIALS,
    );
    Ok(())
}
