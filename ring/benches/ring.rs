//! Criterion benchmarks: lookups per second and build time at N = 3, 100 and 1000, against the
//! `hashring` crate (0.3) with 100 virtual nodes per member on the same guild ids. Before timing,
//! prints the placement figures (max/mean load, partitions or keys moved on add and remove)
//! that criterion cannot time.
//!
//! `cargo bench -p concord-ring --bench ring`

mod baseline;

use std::hint::black_box;

use baseline::{VNODES, VNode, hashring_of, members};
use concord_ring::hash::splitmix64;
use concord_ring::{Ring, RingConfig};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hashring::HashRing;

const SIZES: [usize; 3] = [3, 100, 1000];
const LOOKUPS: usize = 4096;

fn keys() -> Vec<u64> {
    (0..LOOKUPS as u64)
        .map(|i| splitmix64(i ^ 0xbeef))
        .collect()
}

/// The figures criterion does not time, printed once per size.
fn placement_figures() {
    let keys: Vec<u64> = (0..200_000u64).map(|i| splitmix64(i ^ 0xfeed)).collect();
    for n in SIZES {
        let ring = Ring::build(RingConfig::default(), members(0..n)).expect("valid ring input");
        let grown = Ring::build(RingConfig::default(), members(0..=n)).expect("valid ring input");
        let shrunk = Ring::build(RingConfig::default(), members(1..n)).expect("valid ring input");
        let p = f64::from(ring.partition_count());
        let max = ring.loads().iter().map(|l| l.owned).max().unwrap_or(0) as f64;
        let add = Ring::diff(&ring, &grown)
            .expect("valid ring input")
            .owner_changes() as f64
            / (p / (n + 1) as f64);
        let remove = Ring::diff(&ring, &shrunk)
            .expect("valid ring input")
            .owner_changes() as f64
            / (p / n as f64);

        let base = hashring_of(0..n);
        let owners: Vec<usize> = keys
            .iter()
            .map(|k| base.get(k).expect("valid ring input").node)
            .collect();
        let mut counts = vec![0usize; n];
        owners.iter().for_each(|&o| counts[o] += 1);
        let hr_max = *counts.iter().max().unwrap_or(&0) as f64 / (keys.len() as f64 / n as f64);
        let moved = |other: &HashRing<VNode>| {
            keys.iter()
                .zip(&owners)
                .filter(|(k, o)| other.get(*k).expect("valid ring input").node != **o)
                .count() as f64
        };
        let hr_add = moved(&hashring_of(0..=n)) / (keys.len() as f64 / (n + 1) as f64);
        let hr_remove = moved(&hashring_of(1..n)) / (keys.len() as f64 / n as f64);
        eprintln!(
            "N={n}: ring max/mean {:.3}, moved on add {add:.3}x, on remove {remove:.3}x | \
             hashring({VNODES} vnodes) max/mean {hr_max:.3}, moved on add {hr_add:.3}x, \
             on remove {hr_remove:.3}x",
            max / (p / n as f64),
        );
    }
}

fn lookups(c: &mut Criterion) {
    placement_figures();
    let keys = keys();
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    for n in SIZES {
        let ring = Ring::build(RingConfig::default(), members(0..n)).expect("valid ring input");
        group.bench_with_input(BenchmarkId::new("concord-ring", n), &ring, |b, ring| {
            b.iter(|| {
                let mut sum = 0usize;
                for &k in &keys {
                    sum = sum.wrapping_add(ring.owner_of_guild(black_box(k)).as_str().len());
                }
                sum
            });
        });
        let baseline = hashring_of(0..n);
        group.bench_with_input(BenchmarkId::new("hashring", n), &baseline, |b, ring| {
            b.iter(|| {
                let mut sum = 0usize;
                for &k in &keys {
                    sum = sum.wrapping_add(ring.get(&black_box(k)).expect("valid ring input").node);
                }
                sum
            });
        });
    }
    group.finish();
}

fn builds(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for n in SIZES {
        let given = members(0..n);
        group.bench_with_input(BenchmarkId::new("concord-ring", n), &given, |b, given| {
            b.iter(|| {
                Ring::build(RingConfig::default(), given.iter().cloned()).expect("valid ring input")
            });
        });
        group.bench_with_input(BenchmarkId::new("hashring", n), &n, |b, &n| {
            b.iter(|| hashring_of(0..n));
        });
    }
    group.finish();
}

criterion_group!(benches, lookups, builds);
criterion_main!(benches);
