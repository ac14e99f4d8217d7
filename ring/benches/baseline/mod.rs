//! The comparison baseline shared by `benches/ring.rs` and `examples/ring-report.rs`: the
//! `hashring` crate (0.3) with `VNODES` virtual nodes per member, and members named
//! `node-0 .. node-{N-1}`, so both measure the same rings on the same keys.

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
