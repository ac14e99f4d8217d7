//! The explicit difference between two rings: which partitions move, from which preference list
//! to which. Handoff and replication are driven from it.

use std::collections::BTreeSet;

use crate::error::RingError;
use crate::member::NodeId;
use crate::ring::{PartitionId, Ring, RingVersion};

/// One partition whose preference list changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMove {
    /// The partition.
    pub partition: PartitionId,
    /// Its preference list in the old ring, owner first.
    pub from: Vec<NodeId>,
    /// Its preference list in the new ring, owner first.
    pub to: Vec<NodeId>,
}

impl PartitionMove {
    /// Whether the owner changed (a guild handoff), as opposed to replicas only.
    #[must_use]
    pub fn owner_changed(&self) -> bool {
        self.from.first() != self.to.first()
    }

    /// Nodes in the new list that were not in the old one: each must receive a copy.
    pub fn gained(&self) -> impl Iterator<Item = &NodeId> {
        self.to.iter().filter(|n| !self.from.contains(n))
    }

    /// Nodes in the old list that are not in the new one: each may drop its copy once the
    /// gainers have caught up.
    pub fn lost(&self) -> impl Iterator<Item = &NodeId> {
        self.from.iter().filter(|n| !self.to.contains(n))
    }
}

/// All moves from one ring to another, ascending by partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingDiff {
    /// Version of the ring the moves start from.
    pub from_version: RingVersion,
    /// Version of the ring the moves lead to.
    pub to_version: RingVersion,
    /// The moves, one per changed partition, ascending.
    pub moves: Vec<PartitionMove>,
}

impl RingDiff {
    pub(crate) fn between(old: &Ring, new: &Ring) -> Result<Self, RingError> {
        if old.partition_count() != new.partition_count() {
            return Err(RingError::PartitionCountMismatch {
                old: old.partition_count(),
                new: new.partition_count(),
            });
        }
        let mut moves = Vec::new();
        for p in 0..old.partition_count() {
            let partition = PartitionId(p);
            let (a, b) = (
                old.preference_list(partition),
                new.preference_list(partition),
            );
            if a.len() != b.len() || a.iter().zip(b.iter()).any(|(x, y)| x != y) {
                moves.push(PartitionMove {
                    partition,
                    from: a.to_vec(),
                    to: b.to_vec(),
                });
            }
        }
        Ok(Self {
            from_version: old.version(),
            to_version: new.version(),
            moves,
        })
    }

    /// Number of changed partitions.
    #[must_use]
    pub fn len(&self) -> usize {
        self.moves.len()
    }

    /// Whether nothing moves.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// Partitions whose owner changed.
    #[must_use]
    pub fn owner_changes(&self) -> usize {
        self.moves.iter().filter(|m| m.owner_changed()).count()
    }

    /// Copies to create: the sum over moves of nodes gained. This is the replica-set movement
    /// (data that must be transferred), counted over the whole preference list.
    #[must_use]
    pub fn copies_to_create(&self) -> usize {
        self.moves.iter().map(|m| m.gained().count()).sum()
    }

    /// Every node that appears in any move, sorted.
    #[must_use]
    pub fn nodes(&self) -> BTreeSet<&NodeId> {
        self.moves
            .iter()
            .flat_map(|m| m.from.iter().chain(&m.to))
            .collect()
    }
}

/// A ring's table in plain node ids, one preference list per partition. The target of
/// [`PartitionTable::apply`]; get one from [`Ring::table`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    lists: Vec<Vec<NodeId>>,
}

impl PartitionTable {
    pub(crate) fn new(lists: Vec<Vec<NodeId>>) -> Self {
        Self { lists }
    }

    /// Number of partitions.
    #[must_use]
    pub fn partition_count(&self) -> usize {
        self.lists.len()
    }

    /// The preference list of `partition`, if it exists.
    #[must_use]
    pub fn list(&self, partition: PartitionId) -> Option<&[NodeId]> {
        self.lists.get(partition.index()).map(Vec::as_slice)
    }

    /// Applies `diff`: every moved partition's list goes from `from` to `to`. All-or-nothing.
    ///
    /// # Errors
    /// [`RingError::DiffDoesNotApply`] if a moved partition is missing or its current list is
    /// not the move's `from`; the table is then unchanged.
    pub fn apply(&mut self, diff: &RingDiff) -> Result<(), RingError> {
        for m in &diff.moves {
            if self.list(m.partition) != Some(m.from.as_slice()) {
                return Err(RingError::DiffDoesNotApply {
                    partition: m.partition,
                });
            }
        }
        for m in &diff.moves {
            self.lists[m.partition.index()].clone_from(&m.to);
        }
        Ok(())
    }
}
