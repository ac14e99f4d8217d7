//! [`ClusterView`]: the immutable snapshot of membership and ring the rest of the node
//! reads.

use std::net::SocketAddr;
use std::sync::Arc;

use concord_ring::{Member, NodeId, PartitionId, PreferenceList, Ring, RingConfig, RingVersion};
use serde_json::{Value, json};

use super::identity::NodeIdentity;
use super::state::NodeState;

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// Its id (the name on the ring).
    pub node_id: NodeId,
    /// The generation of the identity this node knows.
    pub generation: u64,
    /// Its state.
    pub state: NodeState,
    /// Its advertised gossip address; `None` for a standalone node.
    pub gossip_addr: Option<SocketAddr>,
    /// Its client WebSocket URL.
    pub client_url: String,
    /// Its API base URL.
    pub api_url: String,
    /// Its admin listener.
    pub admin_addr: SocketAddr,
    /// Its advertised peer-link address, if any.
    pub peer_addr: Option<SocketAddr>,
}

impl MemberView {
    /// The view of a gossip identity in `state`.
    pub fn from_identity(id: &NodeIdentity, state: NodeState) -> MemberView {
        MemberView {
            node_id: NodeId::from(id.node_id.as_str()),
            generation: id.generation,
            state,
            gossip_addr: Some(id.gossip_addr),
            client_url: id.client_url.clone(),
            api_url: id.api_url.clone(),
            admin_addr: id.admin_addr,
            peer_addr: id.peer_addr,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "node_id": self.node_id.as_str(),
            "generation": self.generation,
            "state": self.state.as_str(),
            "gossip_addr": self.gossip_addr.map(|a| a.to_string()),
            "client_url": self.client_url,
            "api_url": self.api_url,
            "admin_addr": self.admin_addr.to_string(),
            "peer_addr": self.peer_addr.map(|a| a.to_string()),
        })
    }
}

/// An immutable snapshot of the cluster as this node sees it: every member with its
/// state and addresses, and the ring built from the `active` ones. Published through a
/// `tokio::sync::watch` channel on every change; readers clone the `Arc` and never block
/// the membership task.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's current generation.
    pub generation: u64,
    /// This node's state.
    pub state: NodeState,
    /// Every known member, this node first, then by id. At most one entry per id (the
    /// newest generation).
    pub members: Vec<MemberView>,
    /// The ring of the active members; `None` while no member is active (a node still
    /// joining, or the last node draining).
    pub ring: Option<Arc<Ring>>,
    /// How this node builds rings (the same on every member: gossip refuses others).
    pub ring_config: RingConfig,
}

impl ClusterView {
    /// The view of a node without gossip: a cluster of one.
    pub fn standalone(me: MemberView, config: RingConfig) -> ClusterView {
        let ring = if me.state == NodeState::Active {
            build_ring(config, std::iter::once(me.node_id.clone()))
        } else {
            None
        };
        ClusterView {
            node_id: me.node_id.clone(),
            generation: me.generation,
            state: me.state,
            members: vec![me],
            ring,
            ring_config: config,
        }
    }

    /// The ring's version, if there is a ring.
    pub fn ring_version(&self) -> Option<RingVersion> {
        self.ring.as_ref().map(|r| r.version())
    }

    /// The member with `id`.
    pub fn member(&self, id: &NodeId) -> Option<&MemberView> {
        self.members.iter().find(|m| &m.node_id == id)
    }

    /// The node that owns `guild_id`'s partition, if there is a ring. (For the router:
    /// forward publishes there.)
    pub fn owner_of_guild(&self, guild_id: u64) -> Option<&NodeId> {
        self.ring.as_deref().map(|r| r.owner_of_guild(guild_id))
    }

    /// The owner and replicas of `guild_id`'s partition, owner first.
    pub fn replicas_of_guild(&self, guild_id: u64) -> Option<PreferenceList<'_>> {
        self.ring
            .as_deref()
            .map(|r| r.preference_list(r.partition_for_guild(guild_id)))
    }

    /// Whether this node owns `guild_id`.
    pub fn owns_guild(&self, guild_id: u64) -> bool {
        self.owner_of_guild(guild_id) == Some(&self.node_id)
    }

    /// The partitions this node owns, ascending.
    pub fn owned_partitions(&self) -> Vec<PartitionId> {
        self.ring
            .as_deref()
            .map(|r| r.owned_by(&self.node_id).collect())
            .unwrap_or_default()
    }

    /// The `GET /cluster` document.
    pub fn to_json(&self) -> Value {
        let owned: Vec<u32> = self.owned_partitions().iter().map(|p| p.0).collect();
        let ring = self.ring.as_deref();
        json!({
            "node_id": self.node_id.as_str(),
            "generation": self.generation,
            "state": self.state.as_str(),
            "members": self.members.iter().map(MemberView::to_json).collect::<Vec<_>>(),
            "ring_version": ring.map(|r| r.version().to_string()),
            "ring_members": ring
                .map(|r| r.members().iter().map(|m| m.id().as_str()).collect::<Vec<_>>())
                .unwrap_or_default(),
            "partitions": self.ring_config.partitions,
            "replication": self.ring_config.replication,
            "balance_factor_percent": self.ring_config.balance_factor_percent,
            "owned_partition_count": owned.len(),
            "owned_partitions": owned,
        })
    }
}

/// The ring of `active` ids under `config`. A pure function of the set (and the
/// configuration, which gossip makes sure is the same on every member), so every node that
/// sees the same active members builds the same ring, whatever order gossip delivered them
/// in. `None` for an empty set.
pub fn build_ring(
    config: RingConfig,
    active: impl IntoIterator<Item = NodeId>,
) -> Option<Arc<Ring>> {
    let mut ids: Vec<NodeId> = active.into_iter().collect();
    if ids.is_empty() {
        return None;
    }
    ids.sort();
    ids.dedup();
    match Ring::build(config, ids.into_iter().map(Member::new)) {
        Ok(ring) => Some(Arc::new(ring)),
        Err(e) => {
            // Unreachable with deduplicated, non-empty ids; logged rather than panicking.
            tracing::error!("cannot build the ring: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(state: NodeState) -> MemberView {
        MemberView {
            node_id: NodeId::from("n1"),
            generation: 7,
            state,
            gossip_addr: None,
            client_url: "ws://127.0.0.1:8080".into(),
            api_url: "http://127.0.0.1:8081".into(),
            admin_addr: "127.0.0.1:9090".parse().unwrap(),
            peer_addr: None,
        }
    }

    #[test]
    fn a_standalone_node_owns_every_partition() {
        let view = ClusterView::standalone(me(NodeState::Active), RingConfig::default());
        assert_eq!(view.owned_partitions().len(), 4096);
        assert!(view.owns_guild(175_928_847_299_117_063));
        assert_eq!(view.replicas_of_guild(1).unwrap().len(), 1);
        let doc = view.to_json();
        assert_eq!(doc["owned_partition_count"], 4096);
        assert_eq!(doc["members"][0]["state"], "active");
        assert_eq!(doc["ring_members"], json!(["n1"]));
        assert!(doc["ring_version"].is_string());

        let draining = ClusterView::standalone(me(NodeState::Draining), RingConfig::default());
        assert!(draining.ring.is_none());
        assert_eq!(draining.to_json()["ring_version"], Value::Null);
        assert_eq!(draining.to_json()["owned_partitions"], json!([]));
    }

    #[test]
    fn rings_do_not_depend_on_order() {
        let config = RingConfig::default();
        let a = build_ring(config, ["n1", "n2", "n3"].map(NodeId::from)).unwrap();
        let b = build_ring(config, ["n3", "n1", "n2", "n1"].map(NodeId::from)).unwrap();
        assert_eq!(a, b);
        assert!(build_ring(config, []).is_none());
    }
}
