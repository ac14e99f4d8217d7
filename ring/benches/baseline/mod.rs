//! What `benches/ring.rs`, `examples/ring-report.rs` and `examples/ring-scan.rs` share: the
//! `hashring` crate (0.3) with `VNODES` virtual nodes per member as the comparison baseline,
//! members named `node-0 .. node-{N-1}`, so all of them measure the same rings on the same
//! keys, and the examples' flag parsing.

use std::hash::{Hash, Hasher};

use concord_ring::Member;
use hashring::HashRing;

/// Virtual nodes per member in the hashring baseline.
pub const VNODES: u32 = 100;

/// A virtual node for the hashring baseline: member index plus replica number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VNode {
    /// The member index (`node-{node}`).
    pub node: usize,
    /// The virtual node number.
    pub replica: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        format!("node-{}", self.node).hash(state);
        self.replica.hash(state);
    }
}

/// The ring members `node-{i}` for each `i`.
pub fn members(ids: impl Iterator<Item = usize>) -> Vec<Member> {
    ids.map(|i| Member::new(format!("node-{i}"))).collect()
}

/// The hashring baseline over the same members.
pub fn hashring_of(nodes: impl Iterator<Item = usize>) -> HashRing<VNode> {
    let mut ring = HashRing::new();
    ring.batch_add(
        nodes
            .flat_map(|node| (0..VNODES).map(move |replica| VNode { node, replica }))
            .collect(),
    );
    ring
}

/// The value of flag `name` in `args` (`--name 42`), or `default` when it is absent.
///
/// # Errors
/// A message naming the flag when its value is missing or not a non-negative integer.
#[allow(dead_code)] // the examples parse flags; the bench has none
pub fn arg(args: &[String], name: &str, default: u32) -> Result<u32, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a non-negative integer")),
    }
}
