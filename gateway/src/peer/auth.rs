//! Peer-link authentication: a dialing node proves it knows the cluster secret.
//!
//! Metadata `x-concord-node: <id>` and `authorization: Bearer <hex HMAC-SHA256(cluster
//! secret, "concord-peer-v1|" + id)>`. The tag binds the id, so one node's token cannot
//! be replayed under another id. (A captured token can be replayed by a network
//! attacker; links are meant for a private network, like gossip.)

use ring::hmac;

/// The metadata key naming the dialing node.
pub const NODE_HEADER: &str = "x-concord-node";

const LABEL: &[u8] = b"concord-peer-v1|";

/// The cluster secret as a peer-link key.
#[derive(Clone)]
pub struct PeerKey(hmac::Key);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(..)")
    }
}

impl PeerKey {
    /// The key for `cluster_secret`.
    pub fn new(cluster_secret: &[u8]) -> PeerKey {
        PeerKey(hmac::Key::new(hmac::HMAC_SHA256, cluster_secret))
    }

    fn tag(&self, node: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(LABEL);
        ctx.update(node.as_bytes());
        ctx.sign()
    }

    /// The bearer token node `node` sends (lower-case hex).
    pub fn token(&self, node: &str) -> String {
        self.tag(node)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `token` is `node`'s token. Compares in constant time.
    pub fn verify(&self, node: &str, token: &str) -> bool {
        let Some(tag) = unhex(token) else {
            return false;
        };
        let mut msg = Vec::with_capacity(LABEL.len() + node.len());
        msg.extend_from_slice(LABEL);
        msg.extend_from_slice(node.as_bytes());
        hmac::verify(&self.0, &msg, &tag).is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_the_node_and_the_secret() {
        let key = PeerKey::new(b"s");
        let t = key.token("n1");
        assert_eq!(t.len(), 64);
        assert!(key.verify("n1", &t));
        assert!(!key.verify("n2", &t));
        assert!(!PeerKey::new(b"other").verify("n1", &t));
        assert!(!key.verify("n1", "zz"));
        assert!(!key.verify("n1", ""));
        assert!(!key.verify("n1", "é"));
    }
}
