//! Scans member counts for the worst single-change movement, ring only (no baseline).
//!
//! `cargo run --release -p concord-ring --example ring-scan -- --from 2 --to 1000 --step 1`
//!
//! For every member count `N` in the range (members `node-0 .. node-{N-1}`, `P = 4096` unless
//! `--partitions`), it adds `TRIALS` joiners and removes `TRIALS` members, one at a time, and
//! prints one JSON line per `N` with the mean and worst owner-move ratio against the ideal, then a
//! summary line with the worst `N` in each direction. It exists to catch cliffs: member counts
//! where one join or leave moves far more than the ideal (rounding every cap up made N = 860 ->
//! 861 move 78x the ideal).

// Only the member naming and the flag parsing are used here, not the hashring baseline.
#[allow(dead_code)]
#[path = "../benches/baseline/mod.rs"]
mod baseline;

use baseline::{arg, members};
use concord_ring::{DEFAULT_BALANCE_FACTOR_PERCENT, Ring, RingConfig};

const TRIALS: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let from = arg(&args, "--from", 2)?.max(2) as usize;
    let to = arg(&args, "--to", 1000)? as usize;
    let step = arg(&args, "--step", 1)?.max(1) as usize;
    let config = RingConfig {
        partitions: arg(&args, "--partitions", 4096)?,
        balance_factor_percent: arg(&args, "--balance-factor", DEFAULT_BALANCE_FACTOR_PERCENT)?,
        ..RingConfig::default()
    };
    let p = f64::from(config.partitions);
    let (mut worst_add, mut worst_remove) = ((0.0, 0), (0.0, 0));
    let (mut sum_add, mut sum_remove, mut counts) = (0.0, 0.0, 0usize);
    for n in (from..=to).step_by(step) {
        let ring = Ring::build(config, members(0..n))?;
        let (mut add, mut add_max, mut remove, mut remove_max) = (0.0, 0.0f64, 0.0, 0.0f64);
        for t in 0..TRIALS {
            let grown = Ring::build(config, members((0..n).chain([n + t])))?;
            let ratio = Ring::diff(&ring, &grown)?.owner_changes() as f64 / (p / (n + 1) as f64);
            add += ratio / TRIALS as f64;
            add_max = add_max.max(ratio);
            let victim = t * n / TRIALS;
            let shrunk = Ring::build(config, members((0..n).filter(|&i| i != victim)))?;
            let ratio = Ring::diff(&ring, &shrunk)?.owner_changes() as f64 / (p / n as f64);
            remove += ratio / TRIALS as f64;
            remove_max = remove_max.max(ratio);
        }
        println!(
            "{{\"nodes\":{n},\"add\":{add:.3},\"add_max\":{add_max:.3},\"remove\":{remove:.3},\"remove_max\":{remove_max:.3}}}"
        );
        if add_max > worst_add.0 {
            worst_add = (add_max, n);
        }
        if remove_max > worst_remove.0 {
            worst_remove = (remove_max, n);
        }
        sum_add += add;
        sum_remove += remove;
        counts += 1;
    }
    let counts = counts.max(1) as f64;
    println!(
        "{{\"summary\":true,\"balance_factor_percent\":{},\"mean_add\":{:.3},\"mean_remove\":{:.3},\"worst_add\":{:.3},\"worst_add_nodes\":{},\"worst_remove\":{:.3},\"worst_remove_nodes\":{}}}",
        config.balance_factor_percent,
        sum_add / counts,
        sum_remove / counts,
        worst_add.0,
        worst_add.1,
        worst_remove.0,
        worst_remove.1
    );
    Ok(())
}
