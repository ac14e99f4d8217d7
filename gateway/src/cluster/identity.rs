//! Who a member is: [`NodeIdentity`], foca's [`Identity`] for Concord nodes.

use std::cmp::Ordering;
use std::net::SocketAddr;

use foca::Identity;
use serde::{Deserialize, Serialize};

/// Longest node id accepted, in bytes. Ids travel in every gossip header.
pub const MAX_NODE_ID_LEN: usize = 64;

/// A member's identity as it travels in gossip: the node id, the generation of this run,
/// and the addresses other nodes and clients should use (which may differ from the ones
/// it binds).
///
/// foca keeps one identity per [`Identity::addr`], the advertised gossip address. When two
/// identities share it, the one with the higher `generation` wins (a restarted node, or
/// a node that renewed itself after being declared down), so the old incarnation is
/// replaced instead of lingering as a second member.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's id (`--node-id`); also its name on the ring.
    pub node_id: String,
    /// Fresh at each start (Unix milliseconds), +1 each time foca renews the identity.
    pub generation: u64,
    /// Where other members send gossip datagrams.
    pub gossip_addr: SocketAddr,
    /// The WebSocket URL clients connect to.
    pub client_url: String,
    /// The HTTP/gRPC API base URL.
    pub api_url: String,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// Where peer links will connect (advertised now, served by the peer-link work).
    pub peer_addr: Option<SocketAddr>,
}

impl NodeIdentity {
    /// A stand-in for a seed whose id is not known yet: foca addresses `Announce` by
    /// identity, and a node accepts an announce sent to any identity with its gossip
    /// address. Generation 0 loses every conflict, so it never replaces a real member.
    pub fn seed(gossip_addr: SocketAddr) -> NodeIdentity {
        NodeIdentity {
            node_id: String::new(),
            generation: 0,
            gossip_addr,
            client_url: String::new(),
            api_url: String::new(),
            admin_addr: gossip_addr,
            peer_addr: None,
        }
    }

    /// Total order used to settle conflicts: generation first, then every other field, so
    /// two different identities never tie and every node picks the same winner.
    fn precedence(&self, other: &NodeIdentity) -> Ordering {
        self.generation
            .cmp(&other.generation)
            .then_with(|| self.node_id.cmp(&other.node_id))
            .then_with(|| self.client_url.cmp(&other.client_url))
            .then_with(|| self.api_url.cmp(&other.api_url))
            .then_with(|| self.admin_addr.cmp(&other.admin_addr))
            .then_with(|| self.peer_addr.cmp(&other.peer_addr))
    }
}

impl Identity for NodeIdentity {
    type Addr = SocketAddr;

    /// Rejoin automatically after being declared down (a false positive, a long pause):
    /// the same node with the next generation, which wins over the one declared down.
    fn renew(&self) -> Option<Self> {
        let generation = self.generation.checked_add(1)?;
        Some(NodeIdentity {
            generation,
            ..self.clone()
        })
    }

    /// One member per gossip address (foca 2's replacement for `has_same_prefix`).
    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.precedence(adversary) == Ordering::Greater
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, generation: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: id.into(),
            generation,
            gossip_addr: "127.0.0.1:7946".parse().unwrap(),
            client_url: "ws://127.0.0.1:8080".into(),
            api_url: "http://127.0.0.1:8081".into(),
            admin_addr: "127.0.0.1:9090".parse().unwrap(),
            peer_addr: None,
        }
    }

    #[test]
    fn a_restarted_node_wins_over_its_old_incarnation() {
        let old = node("n1", 1_700_000_000_000);
        let restarted = node("n1", 1_700_000_005_000);
        assert_eq!(old.addr(), restarted.addr());
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
    }

    #[test]
    fn renewing_bumps_the_generation_and_wins() {
        let id = node("n1", 41);
        let renewed = id.renew().unwrap();
        assert_eq!(renewed.generation, 42);
        assert_eq!(renewed.node_id, "n1");
        assert_eq!(renewed.addr(), id.addr());
        assert!(renewed.win_addr_conflict(&id));
        assert_eq!(node("n1", u64::MAX).renew(), None);
    }

    #[test]
    fn conflicts_have_exactly_one_winner() {
        let mut other_url = node("n1", 5);
        other_url.client_url = "ws://10.0.0.1:8080".into();
        let ids = [
            node("n1", 5),
            node("n2", 5),
            node("n1", 6),
            other_url,
            NodeIdentity::seed("127.0.0.1:7946".parse().unwrap()),
        ];
        for a in &ids {
            assert!(!a.win_addr_conflict(a), "nobody beats itself");
            for b in &ids {
                if a != b {
                    assert!(
                        a.win_addr_conflict(b) ^ b.win_addr_conflict(a),
                        "{a:?} vs {b:?}"
                    );
                }
            }
        }
        // The seed stand-in loses to every real node.
        assert!(ids[..4].iter().all(|real| real.win_addr_conflict(&ids[4])));
    }
}
