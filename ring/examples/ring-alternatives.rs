//! The assignment schemes the ring was compared against, measured on the same members, so the
//! claims in the crate doc and in `BENCHMARKS.md` ("Ring") can be re-run.
//!
//! `cargo run --release -p concord-ring --example ring-alternatives -- --nodes 100 --trials 8`
//!
//! Every scheme maps `P = 4096` partitions (`--partitions`) to members `node-0 .. node-{N-1}`
//! with every cap at `ceil(1.05 * P / N)` (ring format 1's caps), then joins `node-N`,
//! `node-{N+1}`, ... and removes members spread over the id range, one change at a time, and
//! prints one JSON line per scheme: the mean owner moves per change over the ideal (`P/(N+1)` on
//! add, `P/N` on remove) and the largest load. The schemes, all written plainly here (quadratic
//! in places; fine up to N = 1000):
//! - `stable-node-rank`: what the ring does (each node ranks partitions by a rendezvous hash; a
//!   pair's key is that rank; bounded-load stable matching by key).
//! - `stable-raw-hash`: the same matching keyed by the raw rendezvous hash.
//! - `stable-partition-rank`: keyed by the rank of the node in the partition's own list.
//! - `partition-proposing`: partitions propose by rendezvous hash, nodes keep their best by an
//!   independent hash (deferred acceptance with preferences that differ on the two sides).
//! - `two-phase`: each partition first goes to its best node (nodes keep their best by key);
//!   what nodes refuse is then matched into the room left.
//! - `sequential`: nodes join one at a time in hash order, each taking partitions from the
//!   fullest nodes (perfect balance by construction).
//! - `concord-ring`: the crate itself (format 2 caps), for reference.

#[allow(dead_code)] // only the flag parsing is used here
#[path = "../benches/baseline/mod.rs"]
mod baseline;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use baseline::arg;
use concord_ring::hash::{hash_bytes, splitmix64};
use concord_ring::{Member, PartitionId, Ring, RingConfig};

/// A scheme: member names in, the owning member index of every partition out.
type Scheme = fn(&[String], u32) -> Vec<usize>;

/// Each member's rendezvous seed: the hash of its name.
fn seeds_of(names: &[String]) -> Vec<u64> {
    names.iter().map(|n| hash_bytes(n.as_bytes())).collect()
}

fn score(partition: u32, node_seed: u64) -> u64 {
    splitmix64(node_seed ^ splitmix64(u64::from(partition)))
}

fn cap(nodes: usize, partitions: u32) -> usize {
    (105 * partitions as usize).div_ceil(100 * nodes)
}

/// `rank[p * n + j]`: the rank of partition `p` in node `j`'s list (best first).
fn node_ranks(seeds: &[u64], partitions: u32) -> Vec<u32> {
    let n = seeds.len();
    let mut rank = vec![0u32; partitions as usize * n];
    for (j, &seed) in seeds.iter().enumerate() {
        let mut order: Vec<u32> = (0..partitions).collect();
        order.sort_by_key(|&p| Reverse(score(p, seed)));
        for (r, &p) in order.iter().enumerate() {
            rank[p as usize * n + j] = r as u32;
        }
    }
    rank
}

/// `rank[p * n + j]`: the rank of node `j` in partition `p`'s list (best first).
fn partition_ranks(seeds: &[u64], partitions: u32) -> Vec<u32> {
    let n = seeds.len();
    let mut rank = vec![0u32; partitions as usize * n];
    for p in 0..partitions {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&j| Reverse(score(p, seeds[j])));
        for (r, &j) in order.iter().enumerate() {
            rank[p as usize * n + j] = r as u32;
        }
    }
    rank
}

/// The stable matching of `parts` with per-node room `room` when both sides rank a pair by
/// the same key: walk all pairs from the best key down, take a pair when both are free.
fn greedy(
    seeds: &[u64],
    parts: &[u32],
    room: &mut [usize],
    owner: &mut [usize],
    key: impl Fn(u32, usize) -> u64,
) {
    let mut pairs: Vec<(u64, u64, u32, usize)> = Vec::with_capacity(parts.len() * seeds.len());
    for &p in parts {
        for (j, &seed) in seeds.iter().enumerate() {
            pairs.push((key(p, j), !score(p, seed), p, j));
        }
    }
    pairs.sort_unstable();
    for (_, _, p, j) in pairs {
        if owner[p as usize] == usize::MAX && room[j] > 0 {
            owner[p as usize] = j;
            room[j] -= 1;
        }
    }
}

fn stable_with(seeds: &[u64], partitions: u32, key: impl Fn(u32, usize) -> u64) -> Vec<usize> {
    let mut room = vec![cap(seeds.len(), partitions); seeds.len()];
    let mut owner = vec![usize::MAX; partitions as usize];
    let all: Vec<u32> = (0..partitions).collect();
    greedy(seeds, &all, &mut room, &mut owner, key);
    owner
}

fn stable_node_rank(names: &[String], partitions: u32) -> Vec<usize> {
    let seeds = &seeds_of(names);
    let (n, rank) = (seeds.len(), node_ranks(seeds, partitions));
    stable_with(seeds, partitions, |p, j| {
        u64::from(rank[p as usize * n + j])
    })
}

fn stable_raw_hash(names: &[String], partitions: u32) -> Vec<usize> {
    let seeds = &seeds_of(names);
    stable_with(seeds, partitions, |p, j| !score(p, seeds[j]))
}

fn stable_partition_rank(names: &[String], partitions: u32) -> Vec<usize> {
    let seeds = &seeds_of(names);
    let n = seeds.len();
    let (prank, nrank) = (
        partition_ranks(seeds, partitions),
        node_ranks(seeds, partitions),
    );
    stable_with(seeds, partitions, |p, j| {
        let i = p as usize * n + j;
        (u64::from(prank[i]) << 32) | u64::from(nrank[i])
    })
}

fn partition_proposing(names: &[String], partitions: u32) -> Vec<usize> {
    let seeds = &seeds_of(names);
    let n = seeds.len();
    let room = cap(n, partitions);
    let other: Vec<u64> = seeds.iter().map(|s| splitmix64(s ^ 0xabc)).collect();
    let node_rank = node_ranks(&other, partitions);
    let prefs: Vec<Vec<usize>> = (0..partitions)
        .map(|p| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&j| Reverse(score(p, seeds[j])));
            order
        })
        .collect();
    let mut next = vec![0usize; partitions as usize];
    let mut held: Vec<BinaryHeap<(u32, u32)>> = vec![BinaryHeap::new(); n];
    let mut free: Vec<u32> = (0..partitions).collect();
    while let Some(p) = free.pop() {
        // Every node has room for at least one partition and total room covers every
        // partition, so a partition never runs out of nodes to propose to.
        let Some(&j) = prefs[p as usize].get(next[p as usize]) else {
            continue;
        };
        next[p as usize] += 1;
        held[j].push((node_rank[p as usize * n + j], p));
        if held[j].len() > room
            && let Some((_, out)) = held[j].pop()
        {
            free.push(out);
        }
    }
    let mut owner = vec![usize::MAX; partitions as usize];
    for (j, heap) in held.iter().enumerate() {
        for &(_, p) in heap {
            owner[p as usize] = j;
        }
    }
    owner
}

fn two_phase(names: &[String], partitions: u32) -> Vec<usize> {
    let seeds = &seeds_of(names);
    let n = seeds.len();
    let rank = node_ranks(seeds, partitions);
    let key = |p: u32, j: usize| (rank[p as usize * n + j], !score(p, seeds[j]));
    let mut first: Vec<Vec<((u32, u64), u32)>> = vec![Vec::new(); n];
    for p in 0..partitions {
        if let Some(j) = (0..n).min_by_key(|&j| key(p, j)) {
            first[j].push((key(p, j), p));
        }
    }
    let mut room = vec![cap(n, partitions); n];
    let mut owner = vec![usize::MAX; partitions as usize];
    let mut overflow = Vec::new();
    for (j, wanted) in first.iter_mut().enumerate() {
        wanted.sort_unstable();
        for (i, &(_, p)) in wanted.iter().enumerate() {
            if i < room[j] {
                owner[p as usize] = j;
            } else {
                overflow.push(p);
            }
        }
        room[j] -= wanted.len().min(room[j]);
    }
    greedy(seeds, &overflow, &mut room, &mut owner, |p, j| {
        u64::from(rank[p as usize * n + j])
    });
    owner
}

fn sequential(names: &[String], partitions: u32) -> Vec<usize> {
    let seeds = &seeds_of(names);
    let mut order: Vec<usize> = (0..seeds.len()).collect();
    order.sort_by_key(|&j| splitmix64(seeds[j] ^ 0x5555));
    let total = partitions as usize;
    let mut holdings: Vec<Vec<u32>> = vec![(0..partitions).collect()];
    for k in 2..=order.len() {
        let joiner = seeds[order[k - 1]];
        let (quota, plus) = (total / k, total % k);
        let mut fullest: Vec<usize> = (0..k - 1).collect();
        fullest.sort_by_key(|&i| (Reverse(holdings[i].len()), splitmix64(seeds[order[i]])));
        let mut taken = Vec::new();
        for (place, &i) in fullest.iter().enumerate() {
            let keep = if place < plus { quota + 1 } else { quota };
            let held = &mut holdings[i];
            if held.len() > keep {
                held.sort_by_key(|&p| Reverse(score(p, joiner)));
                taken.extend(held.drain(..held.len() - keep));
            }
        }
        holdings.push(taken);
    }
    let mut owner = vec![usize::MAX; total];
    for (i, held) in holdings.iter().enumerate() {
        for &p in held {
            owner[p as usize] = order[i];
        }
    }
    owner
}

fn concord_ring(names: &[String], partitions: u32) -> Vec<usize> {
    let config = RingConfig {
        partitions,
        ..RingConfig::default()
    };
    let Ok(ring) = Ring::build(config, names.iter().map(|n| Member::new(n.as_str()))) else {
        return vec![usize::MAX; partitions as usize];
    };
    (0..partitions)
        .map(|p| {
            let id = ring.owner(PartitionId(p)).as_str();
            names.iter().position(|n| n == id).unwrap_or(usize::MAX)
        })
        .collect()
}

/// Owner changes between two tables whose member lists differ only by `node-{extra}` at the
/// end (indices of the common members are equal), or by the removed index `gone`.
fn moves(before: &[usize], after: &[usize], gone: Option<usize>) -> usize {
    let shift = |j: usize| match gone {
        Some(g) if j != usize::MAX && j > g => j - 1,
        _ => j,
    };
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| match gone {
            Some(g) if **b == g => true,
            _ => shift(**b) != **a,
        })
        .count()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--nodes", 100)?.max(2) as usize;
    let partitions = arg(&args, "--partitions", 4096)?.max(1);
    let trials = arg(&args, "--trials", 8)?.max(1) as usize;
    let name = |i: usize| format!("node-{i}");
    let names: Vec<String> = (0..n).map(name).collect();
    let p = f64::from(partitions);
    let schemes: [(&str, Scheme); 7] = [
        ("stable-node-rank", stable_node_rank),
        ("stable-raw-hash", stable_raw_hash),
        ("stable-partition-rank", stable_partition_rank),
        ("partition-proposing", partition_proposing),
        ("two-phase", two_phase),
        ("sequential", sequential),
        ("concord-ring", concord_ring),
    ];
    for (label, scheme) in schemes {
        let base = scheme(&names, partitions);
        let mut max_load = vec![0usize; n];
        for &j in &base {
            if let Some(l) = max_load.get_mut(j) {
                *l += 1;
            }
        }
        let (mut add, mut remove) = (0.0, 0.0);
        for t in 0..trials {
            let mut grown = names.clone();
            grown.push(name(n + t));
            let after = scheme(&grown, partitions);
            add += moves(&base, &after, None) as f64 / (p / (n + 1) as f64);
            let gone = t * n / trials;
            let fewer: Vec<String> = (0..n).filter(|&i| i != gone).map(name).collect();
            let after = scheme(&fewer, partitions);
            remove += moves(&base, &after, Some(gone)) as f64 / (p / n as f64);
        }
        println!(
            "{{\"scheme\":\"{label}\",\"nodes\":{n},\"partitions\":{partitions},\"cap\":{},\"max_load\":{},\"moved_on_add_ratio\":{:.3},\"moved_on_remove_ratio\":{:.3},\"trials\":{trials}}}",
            cap(n, partitions),
            max_load.iter().max().unwrap_or(&0),
            add / trials as f64,
            remove / trials as f64,
        );
    }
    Ok(())
}
