//! Node state (`joining`, `active`, `draining`) as versioned foca custom broadcasts.
//!
//! Each node announces its own state as a [`StateAnnouncement`] keyed by `(node id,
//! generation, version)`. Receivers keep the newest announcement per node id on the
//! [`StateBoard`] and let foca disseminate only announcements that were new to them, so an
//! announcement spreads `max_transmissions` times per node and then stops. Because foca
//! stops disseminating, a node re-announces (with the next version) whenever it sees a new
//! member and every [`REFRESH_EVERY`](super::membership::REFRESH_EVERY), so late joiners
//! and nodes that lost a datagram still learn it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};
use serde::{Deserialize, Serialize};

use super::identity::{MAX_NODE_ID_LEN, NodeIdentity};

/// Most node ids the board remembers. Ids only come from authenticated members, so this
/// is a guard against a misbehaving member, not a tuning knob.
pub const MAX_BOARD_NODES: usize = 4096;

/// A member's state as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Known to gossip but not (yet) serving: its ring share is not assigned to it.
    Joining,
    /// On the ring.
    Active,
    /// Handing off before it stops; off the ring.
    Draining,
    /// Declared down by foca (crashed, partitioned, or left). Never announced; derived.
    Down,
}

impl NodeState {
    /// The lower-case name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
        }
    }
}

/// What a node says about itself, as it travels in a custom broadcast (postcard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateAnnouncement {
    /// Whose state.
    pub node_id: String,
    /// The generation of the identity that announced it.
    pub generation: u64,
    /// Grows with every announcement of one node, across renewals.
    pub version: u64,
    /// The state.
    pub state: NodeState,
}

impl StateAnnouncement {
    /// Largest encoding: the id plus a few varints.
    pub const MAX_ENCODED_LEN: usize = MAX_NODE_ID_LEN + 32;

    /// The postcard encoding.
    ///
    /// # Errors
    /// [`StateError::Encode`] if the id is empty or longer than [`MAX_NODE_ID_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        if self.node_id.is_empty() || self.node_id.len() > MAX_NODE_ID_LEN {
            return Err(StateError::Encode);
        }
        let mut buf = [0u8; Self::MAX_ENCODED_LEN];
        postcard::to_slice(self, &mut buf)
            .map(|used| used.to_vec())
            .map_err(|_| StateError::Encode)
    }

    fn decode(data: &[u8]) -> Result<StateAnnouncement, StateError> {
        let (msg, rest): (StateAnnouncement, _) =
            postcard::take_from_bytes(data).map_err(|_| StateError::Decode)?;
        if !rest.is_empty() {
            return Err(StateError::Decode);
        }
        if msg.node_id.is_empty() || msg.node_id.len() > MAX_NODE_ID_LEN {
            return Err(StateError::BadNodeId);
        }
        if msg.state == NodeState::Down {
            // Down is foca's verdict, never a node's claim about itself.
            return Err(StateError::Decode);
        }
        Ok(msg)
    }
}

/// Why an announcement was refused. Nothing on the board changed; permanent for that
/// announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The announcement could not be encoded (id too long).
    #[error("cannot encode a state announcement")]
    Encode,
    /// The bytes are not a state announcement.
    #[error("undecodable state announcement")]
    Decode,
    /// The node id is empty or longer than the limit.
    #[error("state announcement with an empty or oversized node id")]
    BadNodeId,
    /// The board already holds [`MAX_BOARD_NODES`] ids.
    #[error("state board full")]
    BoardFull,
}

/// The newest announced state of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateRecord {
    /// The generation that announced it.
    pub generation: u64,
    /// Its version.
    pub version: u64,
    /// The state.
    pub state: NodeState,
}

/// The newest announcement per node id, and whether anything changed since the owner
/// last looked.
#[derive(Debug, Default)]
pub struct Board {
    records: HashMap<String, StateRecord>,
    changed: bool,
}

impl Board {
    /// The newest record of `node_id`.
    pub fn record(&self, node_id: &str) -> Option<StateRecord> {
        self.records.get(node_id).copied()
    }

    /// Whether a record was added or replaced since the last call (and resets it).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn offer(&mut self, msg: &StateAnnouncement) -> Result<bool, StateError> {
        let fresh = StateRecord {
            generation: msg.generation,
            version: msg.version,
            state: msg.state,
        };
        match self.records.get_mut(&msg.node_id) {
            Some(known)
                if (known.generation, known.version) >= (fresh.generation, fresh.version) =>
            {
                Ok(false)
            }
            Some(known) => {
                self.changed |= known.state != fresh.state || known.generation != fresh.generation;
                *known = fresh;
                Ok(true)
            }
            None => {
                if self.records.len() >= MAX_BOARD_NODES {
                    return Err(StateError::BoardFull);
                }
                self.records.insert(msg.node_id.clone(), fresh);
                self.changed = true;
                Ok(true)
            }
        }
    }
}

/// Shared between foca's broadcast handler and the membership core. foca owns its handler
/// and offers no accessor to it, so the core keeps a second handle. Both live in the one
/// owner task, so the lock is never contended.
pub type StateBoard = Arc<Mutex<Board>>;

/// Locks the board; a poisoned lock only means a panic elsewhere mid-update, and every
/// update is a single insert, so the data is still consistent.
pub fn lock(board: &StateBoard) -> std::sync::MutexGuard<'_, Board> {
    board
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The key foca uses to replace stale announcements still being disseminated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateKey {
    node_id: String,
    generation: u64,
    version: u64,
}

impl Invalidates for StateKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node_id == other.node_id
            && (self.generation, self.version) > (other.generation, other.version)
    }
}

/// foca's [`BroadcastHandler`] for state announcements.
#[derive(Debug, Clone, Default)]
pub struct StateHandler {
    board: StateBoard,
}

impl StateHandler {
    /// A handler writing to `board`.
    pub fn new(board: StateBoard) -> StateHandler {
        StateHandler { board }
    }
}

impl BroadcastHandler<NodeIdentity> for StateHandler {
    type Key = StateKey;
    type Error = StateError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeIdentity>,
    ) -> Result<Option<StateKey>, StateError> {
        let msg = StateAnnouncement::decode(data)?;
        if lock(&self.board).offer(&msg)? {
            Ok(Some(StateKey {
                node_id: msg.node_id,
                generation: msg.generation,
                version: msg.version,
            }))
        } else {
            // Already known or stale: do not disseminate it again.
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(id: &str, generation: u64, version: u64, state: NodeState) -> Vec<u8> {
        StateAnnouncement {
            node_id: id.into(),
            generation,
            version,
            state,
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn newer_announcements_replace_older_ones() {
        let board = StateBoard::default();
        let mut h = StateHandler::new(board.clone());
        let first = h
            .receive_item(&announce("n1", 1, 1, NodeState::Joining), None)
            .unwrap();
        assert!(first.is_some());
        assert!(lock(&board).take_changed());
        // Same again: known, not disseminated.
        assert_eq!(
            h.receive_item(&announce("n1", 1, 1, NodeState::Joining), None)
                .unwrap(),
            None
        );
        let newer = h
            .receive_item(&announce("n1", 1, 2, NodeState::Active), None)
            .unwrap()
            .unwrap();
        assert!(newer.invalidates(&first.unwrap()));
        // An older generation never wins, whatever its version.
        let restarted = h
            .receive_item(&announce("n1", 2, 1, NodeState::Joining), None)
            .unwrap();
        assert!(restarted.is_some());
        assert_eq!(
            h.receive_item(&announce("n1", 1, 99, NodeState::Active), None)
                .unwrap(),
            None
        );
        let rec = lock(&board).record("n1").unwrap();
        assert_eq!(
            (rec.generation, rec.version, rec.state),
            (2, 1, NodeState::Joining)
        );
    }

    #[test]
    fn bad_announcements_are_refused_without_changing_the_board() {
        let board = StateBoard::default();
        let mut h = StateHandler::new(board.clone());
        for data in [
            &b""[..],
            b"\xff\xff\xff",
            &announce("n1", 1, 1, NodeState::Down),
            &[announce("n1", 1, 1, NodeState::Active), vec![0]].concat(),
        ] {
            assert!(h.receive_item(data, None).is_err(), "{data:?}");
        }
        let long = StateAnnouncement {
            node_id: "x".repeat(MAX_NODE_ID_LEN + 1),
            generation: 1,
            version: 1,
            state: NodeState::Active,
        };
        assert_eq!(long.encode(), Err(StateError::Encode));
        assert!(!lock(&board).take_changed());
        assert_eq!(lock(&board).record("n1"), None);
    }

    #[test]
    fn the_board_is_bounded() {
        let board = StateBoard::default();
        let mut h = StateHandler::new(board.clone());
        for i in 0..MAX_BOARD_NODES {
            let data = announce(&format!("n{i}"), 1, 1, NodeState::Active);
            assert!(h.receive_item(&data, None).unwrap().is_some());
        }
        let data = announce("one-too-many", 1, 1, NodeState::Active);
        assert_eq!(h.receive_item(&data, None), Err(StateError::BoardFull));
    }
}
