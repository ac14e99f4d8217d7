//! The [`Ring`]: an immutable partition table built from a member set, with O(1) lookups.

use std::fmt;

use crate::assign::assign;
use crate::diff::{PartitionTable, RingDiff};
use crate::error::RingError;
use crate::hash::{hash_bytes, hash_u64, reduce};
use crate::member::{Member, NodeId};

/// The ring format version. It is hashed into every [`RingVersion`]; bump it whenever a change
/// (hash functions, key order, capacities, matching, tie-breaks) could place any partition
/// differently for the same members and configuration, so that nodes running different formats
/// see different versions instead of silently disagreeing.
pub const FORMAT_VERSION: u32 = 2;

/// The default number of partitions.
pub const DEFAULT_PARTITIONS: u32 = 4096;

/// The default replication factor: an owner plus one replica.
pub const DEFAULT_REPLICATION: u32 = 2;

/// The default balance factor, in percent: no node holds more than `ceil(1.05 * P * w / W)`
/// partitions per list position.
pub const DEFAULT_BALANCE_FACTOR_PERCENT: u32 = 105;

/// The smallest balance factor, the default: tighter caps leave the replica positions too
/// little room to keep every replica off its partition's owner within the caps (at 100% the
/// caps add up to exactly the partition count).
pub const MIN_BALANCE_FACTOR_PERCENT: u32 = 105;

/// The largest balance factor accepted (100x the fair share: no cap binds).
pub const MAX_BALANCE_FACTOR_PERCENT: u32 = 10_000;

/// The largest supported partition count (ranks are stored as `u16`).
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// A partition: a fixed slice of the key space. Keys map to partitions once and for all (for a
/// given partition count); membership changes move whole partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub u32);

impl PartitionId {
    /// The partition of a key hash (see [`crate::hash`]) among `partitions`.
    #[must_use]
    pub fn from_hash(hash: u64, partitions: u32) -> Self {
        Self(reduce(hash, partitions))
    }

    /// The partition of a guild id among `partitions`.
    #[must_use]
    pub fn for_guild(guild_id: u64, partitions: u32) -> Self {
        Self::from_hash(hash_u64(guild_id), partitions)
    }

    /// The partition of a session id among `partitions`.
    #[must_use]
    pub fn for_session(session_id: &[u8], partitions: u32) -> Self {
        Self::from_hash(hash_bytes(session_id), partitions)
    }

    /// The partition number as a table index.
    #[must_use]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {}", self.0)
    }
}

/// A cheap fingerprint of a ring: the hash of [`FORMAT_VERSION`], the configuration and the
/// sorted member set (ids, zones, weights). Equal versions mean equal rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingVersion(pub u64);

impl fmt::Display for RingVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How many partitions and how many copies the ring keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingConfig {
    /// Number of partitions, `1..=MAX_PARTITIONS`. Fixed for the life of a cluster: changing it
    /// remaps every key.
    pub partitions: u32,
    /// Preference list length: the owner plus `replication - 1` replicas, at least 1. Lists are
    /// shorter when there are fewer members.
    pub replication: u32,
    /// The load cap, in percent of a node's fair share: no node holds more than
    /// `ceil(balance_factor_percent / 100 * P * w / W)` partitions per list position,
    /// `MIN_BALANCE_FACTOR_PERCENT..=MAX_BALANCE_FACTOR_PERCENT`. It trades balance for movement
    /// (the same knob as Envoy's and HAProxy's `hash_balance_factor`): at the default 105 a single
    /// join or leave moves 1.0-1.06x the ideal up to N = 30 and about 2x on average from N = 100
    /// to 1000; 120 brings N = 100 to about 1.05x and 150 brings N = 1000 to about 1.0x
    /// (`BENCHMARKS.md`, "Ring"). Every node of a cluster must use the same value; it is part of
    /// the [`RingVersion`].
    pub balance_factor_percent: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            partitions: DEFAULT_PARTITIONS,
            replication: DEFAULT_REPLICATION,
            balance_factor_percent: DEFAULT_BALANCE_FACTOR_PERCENT,
        }
    }
}

impl RingConfig {
    /// A hash of [`FORMAT_VERSION`] and every parameter: two nodes build the same ring from the
    /// same members if their fingerprints match, so a cluster can refuse members whose
    /// configuration differs instead of disagreeing about owners.
    #[must_use]
    pub fn fingerprint(self) -> u64 {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&self.partitions.to_le_bytes());
        bytes.extend_from_slice(&self.replication.to_le_bytes());
        bytes.extend_from_slice(&self.balance_factor_percent.to_le_bytes());
        hash_bytes(&bytes)
    }

    /// Checks the configuration without building anything.
    ///
    /// # Errors
    /// [`RingError::ZeroPartitions`], [`RingError::TooManyPartitions`],
    /// [`RingError::ZeroReplication`], [`RingError::BalanceFactorOutOfRange`].
    pub fn validate(self) -> Result<(), RingError> {
        if self.partitions == 0 {
            return Err(RingError::ZeroPartitions);
        }
        if self.partitions > MAX_PARTITIONS {
            return Err(RingError::TooManyPartitions {
                requested: self.partitions,
                max: MAX_PARTITIONS,
            });
        }
        if self.replication == 0 {
            return Err(RingError::ZeroReplication);
        }
        let factors = MIN_BALANCE_FACTOR_PERCENT..=MAX_BALANCE_FACTOR_PERCENT;
        if !factors.contains(&self.balance_factor_percent) {
            return Err(RingError::BalanceFactorOutOfRange {
                requested: self.balance_factor_percent,
                min: MIN_BALANCE_FACTOR_PERCENT,
                max: MAX_BALANCE_FACTOR_PERCENT,
            });
        }
        Ok(())
    }
}

/// How many partitions a member holds in each role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLoad {
    /// The member.
    pub node: NodeId,
    /// Partitions it owns (first in the preference list).
    pub owned: usize,
    /// Preference-list slots it holds as a replica (positions 2..R).
    pub replicas: usize,
}

/// An immutable consistent-hash ring: members, configuration and the partition table.
///
/// Built by [`Ring::build`]; equal member sets and configurations give equal rings (`==` compares
/// the whole table) whatever the order the members were given in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    config: RingConfig,
    members: Vec<Member>,
    list_len: usize,
    /// `partitions * list_len` member indices; row `p` is partition `p`'s preference list.
    table: Vec<u32>,
    version: RingVersion,
}

impl Ring {
    /// Builds the ring of `members` under `config`.
    ///
    /// # Errors
    /// [`RingError::NoMembers`], [`RingError::EmptyNodeId`], [`RingError::DuplicateNode`],
    /// [`RingError::ZeroWeight`], [`RingError::ZeroPartitions`],
    /// [`RingError::TooManyPartitions`], [`RingError::ZeroReplication`],
    /// [`RingError::BalanceFactorOutOfRange`].
    pub fn build(
        config: RingConfig,
        members: impl IntoIterator<Item = Member>,
    ) -> Result<Self, RingError> {
        config.validate()?;
        let mut members: Vec<Member> = members.into_iter().collect();
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        members.sort_by(|a, b| a.id().cmp(b.id()));
        for pair in members.windows(2) {
            if pair[0].id() == pair[1].id() {
                return Err(RingError::DuplicateNode(pair[0].id().clone()));
            }
        }
        for m in &members {
            if m.id().as_str().is_empty() {
                return Err(RingError::EmptyNodeId);
            }
            if m.weight() == 0 {
                return Err(RingError::ZeroWeight(m.id().clone()));
            }
        }
        let list_len = members.len().min(config.replication as usize);
        let table = assign(
            &members,
            config.partitions,
            list_len,
            config.balance_factor_percent,
        );
        let version = version_of(config, &members);
        Ok(Self {
            config,
            members,
            list_len,
            table,
            version,
        })
    }

    /// The configuration the ring was built with.
    #[must_use]
    pub fn config(&self) -> RingConfig {
        self.config
    }

    /// Number of partitions.
    #[must_use]
    pub fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    /// The preference list length actually used: `min(replication, members)`.
    #[must_use]
    pub fn list_len(&self) -> usize {
        self.list_len
    }

    /// The members, sorted by node id.
    #[must_use]
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with `id`, if it is in the ring.
    #[must_use]
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.index_of(id).map(|i| &self.members[i])
    }

    /// The ring's version fingerprint.
    #[must_use]
    pub fn version(&self) -> RingVersion {
        self.version
    }

    /// The partition of a guild id.
    #[must_use]
    pub fn partition_for_guild(&self, guild_id: u64) -> PartitionId {
        PartitionId::for_guild(guild_id, self.config.partitions)
    }

    /// The partition of a session id.
    #[must_use]
    pub fn partition_for_session(&self, session_id: &[u8]) -> PartitionId {
        PartitionId::for_session(session_id, self.config.partitions)
    }

    /// The owner of `partition`.
    ///
    /// # Panics
    /// If `partition` is not below [`Ring::partition_count`].
    #[must_use]
    pub fn owner(&self, partition: PartitionId) -> &NodeId {
        self.members[self.table[partition.index() * self.list_len] as usize].id()
    }

    /// The owner of a guild: hash, reduce, one table read.
    #[must_use]
    pub fn owner_of_guild(&self, guild_id: u64) -> &NodeId {
        self.owner(self.partition_for_guild(guild_id))
    }

    /// The owner of a session's partition (the session's directory and replica holder).
    #[must_use]
    pub fn owner_of_session(&self, session_id: &[u8]) -> &NodeId {
        self.owner(self.partition_for_session(session_id))
    }

    /// The preference list of `partition`: owner first, then replicas, all distinct.
    ///
    /// # Panics
    /// If `partition` is not below [`Ring::partition_count`].
    #[must_use]
    pub fn preference_list(&self, partition: PartitionId) -> PreferenceList<'_> {
        let start = partition.index() * self.list_len;
        PreferenceList {
            members: &self.members,
            slots: &self.table[start..start + self.list_len],
        }
    }

    /// The partitions `node` owns, ascending.
    pub fn owned_by<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = PartitionId> + 'a {
        let index = self.index_of(node);
        self.rows()
            .enumerate()
            .filter(move |(_, row)| index.is_some_and(|i| row[0] as usize == i))
            .map(|(p, _)| PartitionId(p as u32))
    }

    /// The partitions whose preference list contains `node` (as owner or replica), ascending.
    pub fn held_by<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = PartitionId> + 'a {
        let index = self.index_of(node);
        self.rows()
            .enumerate()
            .filter(move |(_, row)| index.is_some_and(|i| row.contains(&(i as u32))))
            .map(|(p, _)| PartitionId(p as u32))
    }

    /// Owned and replica counts for every member, in member order.
    #[must_use]
    pub fn loads(&self) -> Vec<NodeLoad> {
        let mut owned = vec![0usize; self.members.len()];
        let mut replicas = vec![0usize; self.members.len()];
        for row in self.rows() {
            owned[row[0] as usize] += 1;
            for &r in &row[1..] {
                replicas[r as usize] += 1;
            }
        }
        self.members
            .iter()
            .zip(owned.into_iter().zip(replicas))
            .map(|(m, (owned, replicas))| NodeLoad {
                node: m.id().clone(),
                owned,
                replicas,
            })
            .collect()
    }

    /// The table as plain node ids, the form a [`RingDiff`] applies to.
    #[must_use]
    pub fn table(&self) -> PartitionTable {
        PartitionTable::new(
            self.rows()
                .map(|row| {
                    row.iter()
                        .map(|&i| self.members[i as usize].id().clone())
                        .collect()
                })
                .collect(),
        )
    }

    /// A digest of the table's contents (node ids per slot, in order): what two nodes can
    /// compare to prove they computed the same table, beyond the same inputs.
    #[must_use]
    pub fn table_digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.table.len() * 8);
        bytes.extend_from_slice(&self.config.partitions.to_le_bytes());
        // list_len <= replication, a u32.
        bytes.extend_from_slice(&(self.list_len as u32).to_le_bytes());
        for row in self.rows() {
            for &i in row {
                let id = self.members[i as usize].id().as_str();
                bytes.extend_from_slice(&hash_bytes(id.as_bytes()).to_le_bytes());
            }
        }
        hash_bytes(&bytes)
    }

    /// The moves that turn `old` into `new`: every partition whose preference list differs,
    /// with both lists.
    ///
    /// # Errors
    /// [`RingError::PartitionCountMismatch`] if the rings have different partition counts.
    pub fn diff(old: &Ring, new: &Ring) -> Result<RingDiff, RingError> {
        RingDiff::between(old, new)
    }

    fn rows(&self) -> impl Iterator<Item = &[u32]> {
        self.table.chunks_exact(self.list_len)
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.members.binary_search_by(|m| m.id().cmp(id)).ok()
    }
}

/// One partition's preference list: owner first, then replicas in order.
#[derive(Clone, Copy, Debug)]
pub struct PreferenceList<'a> {
    members: &'a [Member],
    slots: &'a [u32],
}

impl<'a> PreferenceList<'a> {
    /// The owner.
    #[must_use]
    pub fn owner(&self) -> &'a NodeId {
        // A ring has at least one member, so every list has an owner.
        self.members[self.slots[0] as usize].id()
    }

    /// The replicas, in preference order.
    pub fn replicas(&self) -> impl ExactSizeIterator<Item = &'a NodeId> + 'a {
        let members = self.members;
        self.slots[1..]
            .iter()
            .map(move |&i| members[i as usize].id())
    }

    /// Owner then replicas.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a NodeId> + 'a {
        let members = self.members;
        self.slots.iter().map(move |&i| members[i as usize].id())
    }

    /// The members of the list, with zone and weight.
    pub fn members(&self) -> impl ExactSizeIterator<Item = &'a Member> + 'a {
        let members = self.members;
        self.slots.iter().map(move |&i| &members[i as usize])
    }

    /// Number of nodes in the list.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: every list has an owner.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether `node` is in the list.
    #[must_use]
    pub fn contains(&self, node: &NodeId) -> bool {
        self.iter().any(|n| n == node)
    }

    /// The list as owned node ids.
    #[must_use]
    pub fn to_vec(&self) -> Vec<NodeId> {
        self.iter().cloned().collect()
    }
}

/// `hash_bytes` of the canonical encoding: format version, partitions, replication, balance
/// factor, member count, then per member (sorted by id) the id length and bytes, a zone flag with length and
/// bytes, and the weight; integers little-endian u32.
fn version_of(config: RingConfig, members: &[Member]) -> RingVersion {
    fn put(bytes: &mut Vec<u8>, value: usize) {
        // Lengths and counts of a buildable ring fit in u32; saturate rather than wrap.
        bytes.extend_from_slice(&u32::try_from(value).unwrap_or(u32::MAX).to_le_bytes());
    }
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&config.partitions.to_le_bytes());
    bytes.extend_from_slice(&config.replication.to_le_bytes());
    bytes.extend_from_slice(&config.balance_factor_percent.to_le_bytes());
    put(&mut bytes, members.len());
    for m in members {
        let id = m.id().as_str().as_bytes();
        put(&mut bytes, id.len());
        bytes.extend_from_slice(id);
        match m.zone() {
            None => bytes.push(0),
            Some(zone) => {
                bytes.push(1);
                put(&mut bytes, zone.as_str().len());
                bytes.extend_from_slice(zone.as_str().as_bytes());
            }
        }
        bytes.extend_from_slice(&m.weight().to_le_bytes());
    }
    RingVersion(hash_bytes(&bytes))
}
