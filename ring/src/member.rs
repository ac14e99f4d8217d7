//! Ring members: who a node is ([`NodeId`]), where it runs ([`Zone`]) and how much it takes
//! ([`Member::weight`]).

use std::fmt;
use std::sync::Arc;

/// The weight a member gets unless told otherwise. Weights are relative integers: a member of
/// weight 150 owns about 1.5 times the partitions of a member of weight 100.
pub const DEFAULT_WEIGHT: u32 = 100;

/// A node's identity on the ring. Cheap to clone (`Arc<str>`); ordered by its UTF-8 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// A node id from any string-like value.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:?})", &*self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> Self {
        Self::new(id)
    }
}

/// A failure-domain label (availability zone, rack, host). Replicas are placed outside the
/// owner's zone whenever a node in another zone exists.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone(Arc<str>);

impl Zone {
    /// A zone from any string-like value.
    pub fn new(zone: impl Into<Arc<str>>) -> Self {
        Self(zone.into())
    }

    /// The zone as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({:?})", &*self.0)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Zone {
    fn from(zone: &str) -> Self {
        Self::new(zone)
    }
}

impl From<String> for Zone {
    fn from(zone: String) -> Self {
        Self::new(zone)
    }
}

/// One member of the ring: a node id, an optional zone and a weight.
///
/// Members without a zone count as one shared "unzoned" zone, so a ring without any zones places
/// replicas with no zone preference at all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    id: NodeId,
    zone: Option<Zone>,
    weight: u32,
}

impl Member {
    /// A member with no zone and [`DEFAULT_WEIGHT`].
    pub fn new(id: impl Into<NodeId>) -> Self {
        Self {
            id: id.into(),
            zone: None,
            weight: DEFAULT_WEIGHT,
        }
    }

    /// The same member in `zone`.
    #[must_use]
    pub fn with_zone(mut self, zone: impl Into<Zone>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// The same member with a relative `weight` (capacity); must be at least 1 to build a ring.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The member's node id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The member's zone, if it has one.
    #[must_use]
    pub fn zone(&self) -> Option<&Zone> {
        self.zone.as_ref()
    }

    /// The member's relative weight.
    #[must_use]
    pub fn weight(&self) -> u32 {
        self.weight
    }
}
