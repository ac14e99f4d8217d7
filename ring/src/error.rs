//! The ring's typed errors.

use crate::{NodeId, PartitionId};

/// Why a ring could not be built, compared or applied.
///
/// Every error is permanent for its input (retrying with the same input gives the same error)
/// and none of them changes any state: a failed build leaves no ring, a failed
/// [`PartitionTable::apply`](crate::PartitionTable::apply) leaves the table as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The member set was empty: a ring needs at least one node. Permanent; nothing built.
    #[error("a ring needs at least one member")]
    NoMembers,
    /// Two members had the same node id. Permanent; nothing built.
    #[error("node id {0} appears more than once in the member set")]
    DuplicateNode(NodeId),
    /// A member had an empty node id. Permanent; nothing built.
    #[error("a member has an empty node id")]
    EmptyNodeId,
    /// A member had weight 0; weights must be at least 1. Permanent; nothing built.
    #[error("member {0} has weight 0")]
    ZeroWeight(NodeId),
    /// The configuration asked for zero partitions. Permanent; nothing built.
    #[error("the partition count must be at least 1")]
    ZeroPartitions,
    /// The configuration asked for more partitions than the ring supports. Permanent; nothing
    /// built.
    #[error("{requested} partitions requested, at most {max} are supported")]
    TooManyPartitions {
        /// The partition count asked for.
        requested: u32,
        /// The largest supported partition count.
        max: u32,
    },
    /// The configuration asked for a replication factor of zero (each partition needs at least
    /// an owner). Permanent; nothing built.
    #[error("the replication factor must be at least 1")]
    ZeroReplication,
    /// The configuration's balance factor was outside the supported range. Permanent; nothing
    /// built.
    #[error("balance factor {requested}% is outside {min}%..={max}%")]
    BalanceFactorOutOfRange {
        /// The balance factor asked for, in percent.
        requested: u32,
        /// The smallest supported factor.
        min: u32,
        /// The largest supported factor.
        max: u32,
    },
    /// Two rings (or a ring and a table) with different partition counts were compared: partitions
    /// of different rings are then different key ranges, so no list of moves relates them.
    /// Permanent; nothing changed.
    #[error("partition counts differ: {old} vs {new}")]
    PartitionCountMismatch {
        /// Partitions of the old ring or table.
        old: u32,
        /// Partitions of the new ring.
        new: u32,
    },
    /// A diff was applied to a table whose preference list for `partition` is not the diff's
    /// starting point: the diff was computed from another ring. Permanent; the table is unchanged.
    #[error("the diff does not apply: {partition} does not match the diff's old preference list")]
    DiffDoesNotApply {
        /// The first partition that did not match.
        partition: PartitionId,
    },
}
