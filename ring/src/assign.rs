//! The assignment of partitions to ordered preference lists (see the crate doc for why).
//!
//! 1. **Keys.** For each node `n` and partition `p`, `h(p, n) = splitmix64(seed(n) ^ pseed(p))`
//!    with `seed(n) = hash_bytes(id)` and `pseed(p) = splitmix64(p)`. Each node ranks its best
//!    `depth(n) = min(P, 16 * ceil(P * w / W) + 16)` partitions exactly, by the top 48 bits of
//!    `h` descending (ties by partition id); any other pair gets the rank estimate
//!    `max(depth(n), floor(P * u))` with `u` = top 48 bits of `!h` over `2^48`. A pair's key is
//!    that rank when all weights are equal, else `E(rank) / weight(n)` with
//!    `E(r) = -ln(1 - (r + 0.5) / P)`, the exponential quantile of the rank (weighted rendezvous
//!    on the rank). Ties are broken by larger `h`, then by node index. Smaller keys are better for
//!    both sides: the partition prefers the node, and the node prefers the partition.
//! 2. **Owners.** Every node gets a capacity of `floor(c)` or `ceil(c)`, where
//!    `c = factor * P * w / W` is its share with the balance factor (default 1.05): see
//!    [`capacities`] for who gets the extra unit and why caps are not simply all rounded up.
//!    Partitions and nodes are matched by deferred acceptance (Gale-Shapley, partitions
//!    proposing in key order, each node keeping its best `capacity` proposals). Because both sides rank by the same key, the stable
//!    matching is unique: it equals the greedy that walks all pairs from the best key down and
//!    takes a pair when the partition is free and the node has room. So the result does not
//!    depend on the order of proposals.
//! 3. **Replicas.** Slot `s = 1..R` runs the same matching with its own capacities, over the nodes
//!    not yet in the partition's list, restricted to the best non-empty zone tier: nodes in a zone
//!    not yet used by the list, else nodes outside the owner's zone, else any node. A partition
//!    whose whole tier is full goes to its best node in that tier beyond capacity (the zone rule
//!    wins over balance; this only happens with lopsided zones or tiny rings).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::hash::{hash_bytes, ln, splitmix64};
use crate::member::Member;

/// Candidates a partition keeps sorted at a time; most partitions are placed by their first few.
const CHUNK: usize = 4;

/// The order of a (partition, node) pair; smaller is better. Unique for every pair.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Key {
    primary: u64,
    tiebreak: u64,
    node: u32,
}

/// How fast the extra unit of capacity is withdrawn: every member whose exact share `c` has a
/// fractional part of at least `1 / CAP_RAMP` may hold `ceil(c)`; below that, the number of
/// members allowed `ceil(c)` falls linearly to zero as `c` approaches the integer below.
const CAP_RAMP: u128 = 2;

/// The per-slot load cap of each member. Its exact share is `c = factor / 100 * P * w / W`; the
/// balance bound allows `ceil(c)`. Rounding every cap up gives the most room (the fewest full
/// nodes, the shortest rejection chains), but as the member count grows `ceil(c)` drops by one
/// for everybody at once: the join that takes it from 6 to 5 at N = 861 made every node holding
/// 6 shed one and moved 78x the ideal. So each member gets `floor(c)`, plus one for the first
/// `ceil(sum min(1, CAP_RAMP * frac(c)))` members in order of natural demand (partitions whose
/// best key is theirs, highest first: they are the ones that would fill an extra unit), then of
/// a hash of the node id. While `frac(c) >= 1 / CAP_RAMP` every member has `ceil(c)`; below
/// that, members lose the extra unit a few per join, least demanding first, instead of all
/// at once. The caps never exceed `ceil(c)` and add up to at least `sum c >= P`.
pub(crate) fn capacities(
    members: &[Member],
    partitions: u32,
    factor_percent: u32,
    demand: &[u32],
) -> Vec<usize> {
    let total: u128 = members.iter().map(|m| u128::from(m.weight())).sum();
    let den = 100 * total.max(1);
    let shares: Vec<(u128, u128)> = members
        .iter()
        .map(|m| {
            let num = u128::from(factor_percent) * u128::from(partitions) * u128::from(m.weight());
            (num / den, num % den)
        })
        .collect();
    let boosted: u128 = shares
        .iter()
        .map(|&(_, rem)| (CAP_RAMP * rem).min(den))
        .sum();
    let mut extra = boosted.div_ceil(den);
    let mut order: Vec<usize> = (0..members.len()).filter(|&i| shares[i].1 > 0).collect();
    order.sort_by_cached_key(|&i| (Reverse(demand[i]), cap_priority(&members[i]), i));
    let mut caps: Vec<u128> = shares.iter().map(|&(whole, _)| whole).collect();
    for i in order {
        if extra == 0 {
            break;
        }
        caps[i] += 1;
        extra -= 1;
    }
    // Capped at the partition count (no node can hold more), so it fits in usize.
    caps.into_iter()
        .map(|c| c.min(u128::from(partitions)) as usize)
        .collect()
}

/// The order in which members receive the extra unit of capacity: a hash of the node id alone,
/// so a member keeps its place whoever else joins or leaves.
fn cap_priority(member: &Member) -> u64 {
    splitmix64(hash_bytes(member.id().as_str().as_bytes()) ^ 0xca9a_c17e)
}

/// Builds the partition table: `partitions * list_len` member indices, row per partition,
/// owner first. `members` must be sorted, non-empty, with weights >= 1; `list_len <= len`.
pub(crate) fn assign(
    members: &[Member],
    partitions: u32,
    list_len: usize,
    factor_percent: u32,
) -> Vec<u32> {
    let scores = Scores::new(members, partitions);
    let zones = ZoneGroups::new(members);
    let caps = capacities(
        members,
        partitions,
        factor_percent,
        &scores.natural_demand(),
    );
    let p_count = partitions as usize;
    let mut table = vec![0u32; p_count * list_len];
    for slot in 0..list_len {
        let placed = fill_slot(&scores, &zones, &caps, &table, list_len, slot);
        for (p, node) in placed.into_iter().enumerate() {
            table[p * list_len + slot] = node;
        }
    }
    table
}

/// How deep each node's exact ranking goes, in multiples of its fair share. Partitions almost
/// always land within their first few candidates, which rank them far above this depth.
const RANK_DEPTH_SHARES: u128 = 16;

/// Extra exact ranks on top of `RANK_DEPTH_SHARES` fair shares, for tiny shares.
const RANK_DEPTH_EXTRA: u32 = 16;

/// Per-pair keys. Each node ranks exactly its best `depth(n)` partitions; those pairs are kept
/// per partition (a sparse "top" table). Every other pair gets the rank estimate
/// `max(depth(n), P * u)` from its own hash (`u = top 48 bits of !h / 2^48`), which preserves
/// the node's own order and ranks it below all its exact ranks.
struct Scores {
    nodes: usize,
    partitions: u32,
    node_seeds: Vec<u64>,
    partition_seeds: Vec<u64>,
    depth: Vec<u32>,
    /// Sparse top table: pairs of partition `p` are `top[top_start[p]..top_start[p + 1]]`, as
    /// `(node, exact rank)`.
    top_start: Vec<u32>,
    top: Vec<(u32, u32)>,
    /// The smallest primary any pair outside the top table can have.
    floor_primary: u64,
    /// `Some((E table, weights))` when weights differ, `None` when ranks alone order the pairs.
    weighted: Option<(Vec<f64>, Vec<f64>)>,
}

impl Scores {
    fn new(members: &[Member], partitions: u32) -> Self {
        let nodes = members.len();
        let p_count = partitions as usize;
        let node_seeds: Vec<u64> = members
            .iter()
            .map(|m| hash_bytes(m.id().as_str().as_bytes()))
            .collect();
        let partition_seeds: Vec<u64> = (0..u64::from(partitions)).map(splitmix64).collect();
        let total: u128 = members.iter().map(|m| u128::from(m.weight())).sum();
        let depth: Vec<u32> = members
            .iter()
            .map(|m| {
                let share =
                    (u128::from(partitions) * u128::from(m.weight())).div_ceil(total.max(1));
                let d = (RANK_DEPTH_SHARES * share).min(u128::from(partitions)) as u32;
                d.saturating_add(RANK_DEPTH_EXTRA).min(partitions)
            })
            .collect();
        let mut ranker = Ranker::new(partitions);
        let mut per_node: Vec<Vec<u32>> = Vec::with_capacity(nodes);
        let mut counts = vec![0u32; p_count + 1];
        for (n, &seed) in node_seeds.iter().enumerate() {
            let best = ranker.best(seed, &partition_seeds, depth[n]).to_vec();
            for &p in &best {
                counts[p as usize + 1] += 1;
            }
            per_node.push(best);
        }
        for i in 1..counts.len() {
            counts[i] += counts[i - 1];
        }
        let top_start = counts.clone();
        let mut top = vec![(0u32, 0u32); counts[p_count] as usize];
        for (n, best) in per_node.iter().enumerate() {
            for (rank, &p) in best.iter().enumerate() {
                let at = &mut counts[p as usize];
                // Member counts and ranks fit in u32.
                top[*at as usize] = (n as u32, rank as u32);
                *at += 1;
            }
        }
        let first_weight = members.first().map_or(0, Member::weight);
        let weighted = if members.iter().all(|m| m.weight() == first_weight) {
            None
        } else {
            let p = f64::from(partitions);
            let quantiles = (0..partitions)
                .map(|r| -ln((p - f64::from(r) - 0.5) / p))
                .collect();
            let weights = members.iter().map(|m| f64::from(m.weight())).collect();
            Some((quantiles, weights))
        };
        let mut scores = Self {
            nodes,
            partitions,
            node_seeds,
            partition_seeds,
            depth,
            top_start,
            top,
            floor_primary: 0,
            weighted,
        };
        scores.floor_primary = (0..nodes)
            .map(|n| scores.primary_of_rank(n, scores.depth[n]))
            .min()
            .unwrap_or(0);
        scores
    }

    fn h(&self, p: usize, n: usize) -> u64 {
        splitmix64(self.node_seeds[n] ^ self.partition_seeds[p])
    }

    fn primary_of_rank(&self, n: usize, rank: u32) -> u64 {
        let rank = rank.min(self.partitions - 1);
        match &self.weighted {
            None => u64::from(rank),
            // Positive finite f64 order equals the order of their bit patterns.
            Some((quantiles, weights)) => (quantiles[rank as usize] / weights[n]).to_bits(),
        }
    }

    fn top_of(&self, p: usize) -> &[(u32, u32)] {
        &self.top[self.top_start[p] as usize..self.top_start[p + 1] as usize]
    }

    fn key_with_rank(&self, p: usize, n: usize, rank: u32) -> Key {
        Key {
            primary: self.primary_of_rank(n, rank),
            tiebreak: !self.h(p, n),
            // Member counts fit in u32 (the table stores u32 indices).
            node: n as u32,
        }
    }

    /// How many partitions have each node as their best key: the owners rendezvous hashing on
    /// the ranks would pick with no cap.
    fn natural_demand(&self) -> Vec<u32> {
        let mut demand = vec![0u32; self.nodes];
        for p in 0..self.partitions as usize {
            let best_top = self
                .top_of(p)
                .iter()
                .map(|&(n, rank)| self.key_with_rank(p, n as usize, rank))
                .min();
            let best = match best_top {
                Some(key) if key.primary < self.floor_primary => Some(key),
                _ => (0..self.nodes).map(|n| self.key(p, n)).min(),
            };
            if let Some(key) = best {
                demand[key.node as usize] += 1;
            }
        }
        demand
    }

    /// The key of any pair: exact rank from the top table, else the estimate.
    fn key(&self, p: usize, n: usize) -> Key {
        let rank = match self.top_of(p).iter().find(|&&(m, _)| m as usize == n) {
            Some(&(_, rank)) => rank,
            None => {
                let u = (!self.h(p, n)) >> 16;
                let estimate = ((u128::from(u) * u128::from(self.partitions)) >> 48) as u32;
                estimate.max(self.depth[n])
            }
        };
        self.key_with_rank(p, n, rank)
    }
}

/// Finds one node's best partitions, in order: by the top 48 bits of `h` descending, ties by
/// partition id.
struct Ranker {
    candidates: Vec<u64>,
    order: Vec<u32>,
}

impl Ranker {
    fn new(partitions: u32) -> Self {
        Self {
            candidates: Vec::with_capacity(partitions as usize),
            order: Vec::with_capacity(partitions as usize),
        }
    }

    fn best(&mut self, seed: u64, partition_seeds: &[u64], depth: u32) -> &[u32] {
        let p_count = partition_seeds.len() as u128;
        // Keep values under a threshold expected to let through 1.5 * depth + 32 of them, a
        // multiple of 2^16 so that the kept set is a prefix of the sort order; retry wider in
        // the rare case too few pass.
        let mut want = (u128::from(depth) * 3 / 2 + 32).min(p_count);
        loop {
            let threshold = if want >= p_count {
                u64::MAX
            } else {
                (((want << 64) / p_count) as u64) & !0xffff
            };
            self.candidates.clear();
            for (p, &ps) in partition_seeds.iter().enumerate() {
                let v = !splitmix64(seed ^ ps);
                if v < threshold || threshold == u64::MAX {
                    // Sort value: top 48 bits of `!h` above the partition id (< 2^16).
                    self.candidates.push((v & !0xffff) | p as u64);
                }
            }
            if self.candidates.len() >= depth as usize || want >= p_count {
                break;
            }
            want = (want * 2).min(p_count);
        }
        self.candidates.sort_unstable();
        self.order.clear();
        self.order.extend(
            self.candidates
                .iter()
                .take(depth as usize)
                .map(|&v| (v & 0xffff) as u32),
        );
        &self.order
    }
}

/// Zone groups as small integers: group 0 is "no zone", each distinct zone gets its own.
struct ZoneGroups {
    group: Vec<u32>,
    size: Vec<u32>,
    non_empty: usize,
}

impl ZoneGroups {
    fn new(members: &[Member]) -> Self {
        let mut names: Vec<&str> = members
            .iter()
            .filter_map(|m| m.zone().map(|z| z.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let group: Vec<u32> = members
            .iter()
            .map(|m| match m.zone() {
                None => 0,
                // Found: the names came from these members. Group index fits in u32.
                Some(z) => names.binary_search(&z.as_str()).map_or(0, |i| i as u32 + 1),
            })
            .collect();
        let mut size = vec![0u32; names.len() + 1];
        for &g in &group {
            size[g as usize] += 1;
        }
        let non_empty = size.iter().filter(|&&s| s > 0).count();
        Self {
            group,
            size,
            non_empty,
        }
    }
}

/// Which nodes a partition may use in a slot: not already in its list, and in its best
/// non-empty zone tier.
struct Eligibility<'a> {
    list: &'a [u32],
    tier: u8,
    zones: &'a ZoneGroups,
}

impl<'a> Eligibility<'a> {
    fn new(list: &'a [u32], zones: &'a ZoneGroups, nodes: usize) -> Self {
        let tier = match list.first() {
            None => 2,
            Some(&owner) => {
                let owner_group = zones.group[owner as usize];
                let mut used: Vec<u32> = list.iter().map(|&n| zones.group[n as usize]).collect();
                used.sort_unstable();
                used.dedup();
                let outside_owner = nodes - zones.size[owner_group as usize] as usize;
                let listed_outside = list
                    .iter()
                    .filter(|&&n| zones.group[n as usize] != owner_group)
                    .count();
                if zones.non_empty > used.len() {
                    0
                } else if outside_owner > listed_outside {
                    1
                } else {
                    2
                }
            }
        };
        Self { list, tier, zones }
    }

    fn allows(&self, n: usize) -> bool {
        // Members fit in u32.
        if self.list.contains(&(n as u32)) {
            return false;
        }
        let Some(&owner) = self.list.first() else {
            return true;
        };
        let g = self.zones.group[n];
        let tier = if !self.list.iter().any(|&m| self.zones.group[m as usize] == g) {
            0
        } else if g != self.zones.group[owner as usize] {
            1
        } else {
            2
        };
        tier == self.tier
    }
}

/// The `CHUNK` best eligible candidates with a key strictly after `after`.
fn best_after(
    scores: &Scores,
    eligibility: &Eligibility<'_>,
    p: usize,
    after: Option<Key>,
) -> Vec<Key> {
    let mut best: Vec<Key> = scores
        .top_of(p)
        .iter()
        .filter(|&&(n, _)| eligibility.allows(n as usize))
        .map(|&(n, rank)| scores.key_with_rank(p, n as usize, rank))
        .filter(|k| after.is_none_or(|a| *k > a))
        .collect();
    best.sort_unstable();
    best.truncate(CHUNK);
    // Enough from the top table, and all of them better than any pair outside it: done.
    if best.len() == CHUNK
        && best
            .last()
            .is_some_and(|k| k.primary < scores.floor_primary)
    {
        return best;
    }
    best.clear();
    for n in 0..scores.nodes {
        if !eligibility.allows(n) {
            continue;
        }
        let key = scores.key(p, n);
        if after.is_some_and(|a| key <= a) {
            continue;
        }
        let at = best.partition_point(|k| *k < key);
        if at < CHUNK {
            best.insert(at, key);
            best.truncate(CHUNK);
        }
    }
    best
}

/// Places every partition's slot `slot` by deferred acceptance; returns one node per partition.
fn fill_slot(
    scores: &Scores,
    zones: &ZoneGroups,
    caps: &[usize],
    table: &[u32],
    list_len: usize,
    slot: usize,
) -> Vec<u32> {
    let p_count = scores.partition_seeds.len();
    let eligibility = |p: usize| {
        let row = &table[p * list_len..p * list_len + slot];
        Eligibility::new(row, zones, scores.nodes)
    };
    let mut candidates: Vec<Vec<Key>> = vec![Vec::new(); p_count];
    let mut cursor = vec![0usize; p_count];
    let mut exhausted = vec![false; p_count];
    // Node side: a max-heap of held (primary, tiebreak, partition), the worst on top.
    let mut held: Vec<BinaryHeap<(u64, u64, u32)>> = vec![BinaryHeap::new(); scores.nodes];
    let mut placed = vec![u32::MAX; p_count];
    let mut forced = Vec::new();
    // Partition ids fit in u32 (partitions <= 65536).
    let mut free: Vec<u32> = (0..p_count as u32).rev().collect();
    while let Some(p32) = free.pop() {
        let p = p32 as usize;
        loop {
            if cursor[p] == candidates[p].len() {
                let after = candidates[p].last().copied();
                let next = if exhausted[p] {
                    Vec::new()
                } else {
                    best_after(scores, &eligibility(p), p, after)
                };
                exhausted[p] = next.len() < CHUNK;
                if next.is_empty() {
                    forced.push(p);
                    break;
                }
                candidates[p] = next;
                cursor[p] = 0;
            }
            let key = candidates[p][cursor[p]];
            cursor[p] += 1;
            let n = key.node as usize;
            let entry = (key.primary, key.tiebreak, p32);
            let heap = &mut held[n];
            if heap.len() < caps[n] {
                heap.push(entry);
                placed[p] = key.node;
                break;
            }
            if let Some(&worst) = heap.peek()
                && entry < worst
            {
                heap.pop();
                heap.push(entry);
                placed[p] = key.node;
                placed[worst.2 as usize] = u32::MAX;
                free.push(worst.2);
                break;
            }
        }
    }
    for p in forced {
        // Every tier chosen by `Eligibility` has at least one node, so a best node exists.
        if let Some(best) = best_after(scores, &eligibility(p), p, None).first() {
            placed[p] = best.node;
        }
    }
    placed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        let mut m: Vec<Member> = (0..n).map(|i| Member::new(format!("node-{i}"))).collect();
        m.sort_by(|a, b| a.id().cmp(b.id()));
        m
    }

    /// The reference: walk all pairs from the best key down, take a pair when both sides are
    /// free. Deferred acceptance must give exactly this.
    fn greedy(members: &[Member], partitions: u32) -> Vec<u32> {
        let scores = Scores::new(members, partitions);
        let caps = capacities(members, partitions, 105, &scores.natural_demand());
        let mut pairs = Vec::new();
        for p in 0..partitions as usize {
            for n in 0..members.len() {
                pairs.push((scores.key(p, n), p));
            }
        }
        pairs.sort();
        let mut load = vec![0; members.len()];
        let mut out = vec![u32::MAX; partitions as usize];
        for (key, p) in pairs {
            let n = key.node as usize;
            if out[p] == u32::MAX && load[n] < caps[n] {
                out[p] = key.node;
                load[n] += 1;
            }
        }
        out
    }

    #[test]
    fn deferred_acceptance_equals_the_global_greedy() {
        for (n, p) in [(1, 64), (2, 64), (3, 100), (7, 512), (40, 256), (130, 512)] {
            let m = members(n);
            assert_eq!(assign(&m, p, 1, 105), greedy(&m, p), "n={n} p={p}");
        }
        let weighted: Vec<Member> = members(9)
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.with_weight(50 + 25 * i as u32))
            .collect();
        assert_eq!(assign(&weighted, 300, 1, 105), greedy(&weighted, 300));
    }

    #[test]
    fn top_ranks_are_exact() {
        for n in [3, 50] {
            let m = members(n);
            let s = Scores::new(&m, 1000);
            for node in 0..n {
                let mut by_h: Vec<(u64, usize)> =
                    (0..1000).map(|p| ((!s.h(p, node)) & !0xffff, p)).collect();
                by_h.sort();
                for (rank, &(_, p)) in by_h.iter().enumerate().take(s.depth[node] as usize) {
                    assert_eq!(s.key(p, node).primary, rank as u64);
                }
                for &(_, p) in by_h.iter().skip(s.depth[node] as usize) {
                    assert!(s.key(p, node).primary >= u64::from(s.depth[node]));
                }
            }
        }
    }

    #[test]
    fn capacities_follow_the_bound() {
        let m = members(1000);
        // 1.05 * 4096 / 1000 = 4.3008: the fraction 0.3008 is below 1/2, so 2 * 0.3008 of the
        // members (602) may hold 5, the rest 4.
        let flat = vec![0; 1000];
        let caps = capacities(&m, 4096, 105, &flat);
        assert_eq!(caps.iter().filter(|&&c| c == 5).count(), 602);
        assert_eq!(caps.iter().filter(|&&c| c == 4).count(), 398);
        // 1.2 * 4096 / 1000 = 4.9152: above the ramp, everybody may hold 5.
        assert!(capacities(&m, 4096, 120, &flat).iter().all(|&c| c == 5));
        // The most demanding members get the extra unit first.
        let demand: Vec<u32> = (0..1000).collect();
        let caps = capacities(&m, 4096, 105, &demand);
        assert!(caps[398..].iter().all(|&c| c == 5) && caps[..398].iter().all(|&c| c == 4));
        let m = members(100);
        // 43.008: 2 * 0.008 * 100 = 1.6, so two members may hold 44.
        let caps = capacities(&m, 4096, 105, &flat[..100]);
        assert_eq!(caps.iter().filter(|&&c| c == 44).count(), 2);
        assert!(
            capacities(&m, 4096, 100, &flat[..100])
                .iter()
                .all(|&c| c == 41)
        );
        assert_eq!(capacities(&members(1), 4096, 105, &[0]), vec![4096]);
    }
}
