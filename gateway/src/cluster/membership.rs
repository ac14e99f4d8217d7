//! The membership core, sans IO: foca, its timers in order, node state, and the
//! [`ClusterView`] they add up to. Time comes in as `now`; datagrams come in through
//! [`Membership::handle_datagram`] and go out through [`Membership::poll_transmit`].

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_ring::{NodeId, RingConfig};
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PeriodicParams, PostcardCodec, Timer};
use rand_foca::SeedableRng;
use rand_foca::rngs::SmallRng;

use super::frame::{FrameError, HEADER_LEN, PacketKey};
use super::identity::NodeIdentity;
use super::state::{self, NodeState, StateAnnouncement, StateBoard, StateHandler};
use super::view::{ClusterView, MemberView, build_ring};

/// Largest datagram a node sends (and foca accepts): under a 1500-byte Ethernet MTU with
/// room for IP/UDP headers and tunnels, as RFC 8085 advises.
pub const MAX_DATAGRAM: usize = 1400;
/// How often a node that knows no live member announces itself to its seeds again.
pub const JOIN_RETRY: Duration = Duration::from_secs(1);
/// How often a node re-announces its state even when nothing changed (anti-entropy for a
/// lost datagram; foca stops disseminating an announcement after a few transmissions).
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Longest a node that has joined waits for the states of the members it found before it
/// turns `active` anyway (a member that never announces must not keep it out forever).
/// Waiting keeps a newcomer from briefly building a ring of itself alone.
pub const JOIN_SETTLE: Duration = Duration::from_secs(2);

/// Gossip timing. The defaults suit a LAN or loopback.
///
/// # Convergence bound
/// After a node dies (SIGKILL, power loss), every survivor has marked it down and rebuilt
/// its ring within [`Timing::convergence_bound`]:
///
/// ```text
/// 2 (N - 1) * probe_period + suspect_timeout + ceil(log3(N - 1)) * gossip_interval
/// ```
///
/// - `2 (N - 1) * probe_period`: foca probes one member per period, walking a shuffled
///   list of the `N - 1` others, so two probes of one member are at most `2 (N - 1) - 1`
///   periods apart; a probe that got no (direct or indirect) answer is judged at the next
///   period and the member becomes suspect.
/// - `suspect_timeout`: how long a suspect has to refute before it is declared down.
/// - `gossip_interval` per round: the prober sends the verdict to 3 random members every
///   interval, so it reaches the other survivors in `ceil(log3(N - 1))` rounds (one round
///   up to 4 nodes). Rebuilding the ring takes about 2 ms.
///
/// With the defaults and 3 nodes: 2 s + 2 s + 0.2 s = 4.2 s. This assumes no datagram loss
/// and responsive survivors; a lost datagram delays by one period. A graceful stop is
/// much faster: a draining node leaves the ring at once, and a stopping node tells the
/// others it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How often each node probes one member.
    pub probe_period: Duration,
    /// How long a direct probe waits before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How long a suspect member has to refute before it is declared down.
    pub suspect_timeout: Duration,
    /// How often a node pushes pending updates to 3 random members.
    pub gossip_interval: Duration,
    /// How long a down member stays listed before it is forgotten.
    pub down_retention: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            probe_period: Duration::from_millis(500),
            // Loopback and LAN round trips are well under a millisecond; 200 ms leaves
            // room for a busy node before the indirect probes start.
            probe_rtt: Duration::from_millis(200),
            // 4 periods, memberlist's LAN multiplier for small clusters.
            suspect_timeout: Duration::from_secs(2),
            gossip_interval: Duration::from_millis(200),
            down_retention: Duration::from_secs(600),
        }
    }
}

/// Members each periodic gossip, indirect probe round or down-announce reaches.
const FANOUT: NonZeroUsize = NonZeroUsize::MIN.saturating_add(2);
/// How many times an update or a state announcement is piggybacked before foca drops it.
/// 6 covers clusters of up to a few dozen nodes (memberlist uses 4 * log10(N + 1)).
const MAX_TRANSMISSIONS: NonZeroU8 = NonZeroU8::MIN.saturating_add(5);

impl Timing {
    /// Checks the values foca needs.
    ///
    /// # Errors
    /// A sentence naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.probe_period < Duration::from_millis(10) {
            return Err("gossip-probe-period must be at least 10ms".into());
        }
        if self.probe_rtt.is_zero() || self.probe_rtt >= self.probe_period {
            return Err("gossip-probe-rtt must be above 0 and below gossip-probe-period".into());
        }
        if self.suspect_timeout < self.probe_period {
            return Err("gossip-suspect-timeout must be at least gossip-probe-period".into());
        }
        if self.gossip_interval < Duration::from_millis(10) {
            return Err("gossip-interval must be at least 10ms".into());
        }
        if self.down_retention < self.suspect_timeout {
            return Err("gossip-down-retention must be at least gossip-suspect-timeout".into());
        }
        Ok(())
    }

    /// The worst-case time from a node's death until every one of the other `nodes - 1`
    /// has marked it down and rebuilt its ring (see the type docs).
    pub fn convergence_bound(&self, nodes: usize) -> Duration {
        let others = nodes.saturating_sub(1).max(1);
        let mut rounds = 1u32;
        let mut reach = 3usize;
        while reach < others {
            reach = reach.saturating_mul(3);
            rounds += 1;
        }
        self.probe_period * (2 * others as u32)
            + self.suspect_timeout
            + self.gossip_interval * rounds
    }

    /// The foca configuration.
    pub fn foca_config(&self) -> foca::Config {
        let mut config = foca::Config::simple();
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.num_indirect_probes = FANOUT;
        config.max_transmissions = MAX_TRANSMISSIONS;
        config.suspect_to_down_after = self.suspect_timeout;
        config.remove_down_after = Some(self.down_retention);
        config.max_packet_size = NonZeroUsize::MIN.saturating_add(MAX_DATAGRAM - HEADER_LEN - 1);
        // Tell a member we declared down, so it renews its identity and rejoins at once.
        config.notify_down_members = true;
        // Ask a random member for its member list now and then, so partial views heal.
        config.periodic_announce = Some(PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: NonZeroUsize::MIN,
        });
        // Keep knocking on down members' doors, so a healed partition or a node
        // restarted on the same address is found even without seeds.
        config.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::MIN.saturating_add(1),
        });
        config.periodic_gossip = Some(PeriodicParams {
            frequency: self.gossip_interval,
            num_members: FANOUT,
        });
        config
    }
}

/// Why a datagram was dropped. Membership did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    /// The framing or MAC was wrong (see [`FrameError`]).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Authentic, but foca could not use the payload.
    #[error("gossip payload rejected")]
    Decode,
}

impl Dropped {
    /// The `reason` label of `concord_gossip_dropped_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Dropped::Frame(f) => f.reason(),
            Dropped::Decode => "decode",
        }
    }
}

/// A sealed datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The member's advertised gossip address.
    pub to: SocketAddr,
    /// Version, tag and foca payload.
    pub datagram: Vec<u8>,
}

/// A timer foca asked for, ordered by deadline, then by foca's own order of timer kinds
/// (so an indirect probe fires before the next probe when both are due), then by
/// submission.
struct Scheduled {
    at: Instant,
    seq: u64,
    timer: Timer<NodeIdentity>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at
            .cmp(&other.at)
            .then_with(|| self.timer.cmp(&other.timer))
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

type Swim = Foca<NodeIdentity, PostcardCodec, SmallRng, StateHandler>;

/// What the membership core was told at construction.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This node's identity (its generation fresh for this run).
    pub identity: NodeIdentity,
    /// Gossip addresses to join through (this node's own address is ignored).
    pub seeds: Vec<SocketAddr>,
    /// With no seed but itself, does this node start a cluster (`active` at once)? A node
    /// with no seeds configured does; a node whose seeds are names that do not resolve
    /// yet must not (it would form a cluster of its own beside the real one), so it stays
    /// `joining` until [`Membership::set_seeds`] gives it an address to knock on.
    pub bootstrap: bool,
    /// Timing.
    pub timing: Timing,
    /// Seed of foca's RNG (member choice); fixed in tests so runs replay exactly.
    pub rng_seed: u64,
    /// How the ring is built from the active members.
    pub ring: RingConfig,
}

/// The membership state machine of one node. See the module docs.
pub struct Membership {
    foca: Swim,
    runtime: AccumulatingRuntime<NodeIdentity>,
    key: PacketKey,
    board: StateBoard,
    timers: BinaryHeap<Reverse<Scheduled>>,
    timer_seq: u64,
    seeds: Vec<SocketAddr>,
    state: NodeState,
    state_version: u64,
    next_join: Option<Instant>,
    next_refresh: Instant,
    /// When foca reported this joining node joined; it turns active once it knows every
    /// live member's state, or [`JOIN_SETTLE`] after this.
    joined_at: Option<Instant>,
    outbox: std::collections::VecDeque<Transmit>,
    view: Arc<ClusterView>,
    view_changed: bool,
    ring_config: RingConfig,
    /// Set by [`Membership::leave`]: foca then reports us down, which is expected.
    leaving: bool,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("identity", self.foca.identity())
            .field("state", &self.state)
            .field("members", &self.foca.num_members())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A node that starts at `now`: `active` at once without seeds, else `joining` and
    /// announcing itself to the seeds on the first [`Membership::handle_timeout`].
    pub fn new(config: MembershipConfig, key: PacketKey, now: Instant) -> Membership {
        let board = StateBoard::default();
        let own = config.identity.gossip_addr;
        let seeds: Vec<SocketAddr> = config.seeds.into_iter().filter(|s| *s != own).collect();
        let foca = Foca::with_custom_broadcast(
            config.identity,
            config.timing.foca_config(),
            SmallRng::seed_from_u64(config.rng_seed),
            PostcardCodec,
            StateHandler::new(board.clone()),
        );
        let state = if seeds.is_empty() && config.bootstrap {
            NodeState::Active
        } else {
            NodeState::Joining
        };
        let placeholder = Arc::new(ClusterView::standalone(
            MemberView::from_identity(foca.identity(), state),
            config.ring,
        ));
        let mut core = Membership {
            foca,
            runtime: AccumulatingRuntime::new(),
            key,
            board,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            next_join: (!seeds.is_empty()).then_some(now),
            seeds,
            state,
            state_version: 0,
            next_refresh: now + REFRESH_EVERY,
            joined_at: None,
            outbox: Default::default(),
            view: placeholder,
            view_changed: true,
            ring_config: config.ring,
            leaving: false,
        };
        core.announce_state();
        core.rebuild_view();
        core
    }

    /// How this node builds its ring.
    pub fn ring_config(&self) -> RingConfig {
        self.ring_config
    }

    /// This node's current identity (its generation grows if foca renews it).
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// This node's state.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// The current view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.clone()
    }

    /// The view, if it changed since the last call.
    pub fn poll_view(&mut self) -> Option<Arc<ClusterView>> {
        std::mem::take(&mut self.view_changed).then(|| self.view.clone())
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// When [`Membership::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Instant {
        let timer = self.timers.peek().map(|Reverse(s)| s.at);
        let settle = self
            .joined_at
            .filter(|_| self.state == NodeState::Joining)
            .map(|at| at + JOIN_SETTLE);
        [timer, self.join_due(), settle, Some(self.next_refresh)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next_refresh)
    }

    /// The seeds' addresses changed (their names were resolved again): knock on these
    /// from now on whenever this node knows no live member. A node already in a cluster
    /// keeps its members and ignores seeds.
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>, now: Instant) {
        let own = self.foca.identity().gossip_addr;
        let seeds: Vec<SocketAddr> = seeds.into_iter().filter(|s| *s != own).collect();
        if seeds == self.seeds {
            return;
        }
        // Knock at once if nobody is known: a joining node, or one that started a
        // cluster alone (its seeds did not resolve then) and must merge into theirs.
        if !seeds.is_empty() && self.next_join.is_none() && self.state != NodeState::Draining {
            self.next_join = Some(now);
        }
        self.seeds = seeds;
    }

    /// Whether this node is still looking for a cluster to join.
    pub fn is_joining(&self) -> bool {
        self.state == NodeState::Joining
    }

    fn join_due(&self) -> Option<Instant> {
        self.next_join.filter(|_| self.foca.num_members() == 0)
    }

    /// A datagram arrived. Bad input is dropped with a reason and changes nothing.
    ///
    /// # Errors
    /// [`Dropped`] says why the datagram was not used.
    pub fn handle_datagram(&mut self, datagram: &[u8], now: Instant) -> Result<(), Dropped> {
        let payload = self.key.open(datagram)?;
        let result = self.foca.handle_data(payload, &mut self.runtime);
        // foca may have acted on part of an authentic datagram before failing on the
        // rest; whatever it did must still be carried out.
        self.after_foca(now);
        result.map_err(|e| {
            tracing::debug!("gossip payload rejected: {e}");
            Dropped::Decode
        })
    }

    /// Fires every timer due at `now`, in order, then the join retry and state refresh.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|Reverse(s)| s.at <= now) {
            let Some(Reverse(due)) = self.timers.pop() else {
                break;
            };
            // Stale timers (an old token) are ignored by foca itself.
            if let Err(e) = self.foca.handle_timer(due.timer, &mut self.runtime) {
                tracing::debug!("foca timer: {e}");
            }
            self.after_foca(now);
        }
        if self.join_due().is_some_and(|at| at <= now) {
            self.next_join = Some(now + JOIN_RETRY);
            for seed in self.seeds.clone() {
                if let Err(e) = self
                    .foca
                    .announce(NodeIdentity::seed(seed), &mut self.runtime)
                {
                    tracing::debug!(%seed, "announce: {e}");
                }
            }
            self.after_foca(now);
        }
        if self.next_refresh <= now {
            self.next_refresh = now + REFRESH_EVERY;
            self.announce_state();
        }
        // Also settles a join whose wait ran out.
        self.after_foca(now);
    }

    /// The node started draining: it leaves the ring everywhere as soon as the
    /// announcement spreads (one gossip interval), while it hands off.
    pub fn drain(&mut self, now: Instant) {
        if matches!(self.state, NodeState::Draining) {
            return;
        }
        self.state = NodeState::Draining;
        self.next_join = None;
        self.announce_state();
        if let Err(e) = self.foca.gossip(&mut self.runtime) {
            tracing::debug!("gossip: {e}");
        }
        self.after_foca(now);
        self.rebuild_view();
    }

    /// The node is stopping: tell a few members it left, so they mark it down at once
    /// instead of waiting for the failure detector. Send the resulting datagrams, then
    /// drop the core.
    pub fn leave(&mut self, now: Instant) {
        self.leaving = true;
        self.next_join = None;
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!("leave: {e}");
        }
        self.after_foca(now);
    }

    fn announce_state(&mut self) {
        self.state_version += 1;
        let msg = StateAnnouncement {
            node_id: self.foca.identity().node_id.clone(),
            generation: self.foca.identity().generation,
            version: self.state_version,
            state: self.state,
        };
        match msg.encode() {
            Ok(bytes) => {
                if let Err(e) = self.foca.add_broadcast(&bytes) {
                    tracing::warn!("cannot queue a state announcement: {e}");
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// Drains foca's runtime: seals datagrams, schedules timers, reacts to notifications.
    fn after_foca(&mut self, now: Instant) {
        let mut membership_changed = false;
        loop {
            while let Some((to, payload)) = self.runtime.to_send() {
                self.outbox.push_back(Transmit {
                    to: to.gossip_addr,
                    datagram: self.key.seal(&payload),
                });
            }
            while let Some((after, timer)) = self.runtime.to_schedule() {
                self.timer_seq += 1;
                self.timers.push(Reverse(Scheduled {
                    at: now + after,
                    seq: self.timer_seq,
                    timer,
                }));
            }
            let mut gossip_now = false;
            while let Some(note) = self.runtime.to_notify() {
                membership_changed = true;
                match note {
                    OwnedNotification::MemberUp(id) => {
                        tracing::info!(node = %id.node_id, generation = id.generation, addr = %id.gossip_addr, "member up");
                        // A newcomer has not heard our state: say it again.
                        self.announce_state();
                    }
                    OwnedNotification::MemberDown(id) => {
                        tracing::warn!(node = %id.node_id, generation = id.generation, "member down");
                    }
                    OwnedNotification::Rename(old, new) => {
                        tracing::info!(node = %new.node_id, old_generation = old.generation, generation = new.generation, "member restarted");
                    }
                    OwnedNotification::Active => {
                        if self.state == NodeState::Joining && self.joined_at.is_none() {
                            self.joined_at = Some(now);
                        }
                        self.announce_state();
                    }
                    OwnedNotification::Rejoin(id) => {
                        tracing::warn!(
                            generation = id.generation,
                            "declared down by the cluster; rejoined with a new generation"
                        );
                        self.announce_state();
                        gossip_now = true;
                    }
                    OwnedNotification::Idle if self.leaving => {}
                    OwnedNotification::Idle => {
                        tracing::warn!("no live member left; alone until one comes back");
                        self.next_join = (!self.seeds.is_empty()
                            && self.state != NodeState::Draining)
                            .then_some(now);
                    }
                    // Leaving declares our own identity down: expected.
                    OwnedNotification::Defunct if self.leaving => {}
                    OwnedNotification::Defunct => {
                        tracing::error!("declared down and cannot renew the identity");
                    }
                }
            }
            if self.state == NodeState::Joining
                && let Some(joined_at) = self.joined_at
                && (now >= joined_at + JOIN_SETTLE || self.knows_every_state())
            {
                tracing::info!(
                    waited_ms = (now - joined_at).as_millis(),
                    "joined the cluster; active"
                );
                self.state = NodeState::Active;
                self.announce_state();
                gossip_now = true;
            }
            if gossip_now && let Err(e) = self.foca.gossip(&mut self.runtime) {
                tracing::debug!("gossip: {e}");
            }
            if self.runtime.backlog() == 0 {
                break;
            }
        }
        if state::lock(&self.board).take_changed() || membership_changed {
            self.rebuild_view();
        }
    }

    /// Whether the board holds a state from the current generation of every live member.
    fn knows_every_state(&self) -> bool {
        let me = &self.foca.identity().node_id;
        let board = state::lock(&self.board);
        self.foca.iter_members().all(|m| {
            let id = m.id();
            id.node_id.is_empty()
                || &id.node_id == me
                || board
                    .record(&id.node_id)
                    .is_some_and(|r| r.generation >= id.generation)
        })
    }

    /// Recomputes the view from foca's member list and the state board; rebuilds the ring
    /// only when the set of active ids changed.
    fn rebuild_view(&mut self) {
        let me = self.foca.identity().clone();
        let board = state::lock(&self.board);
        // One entry per node id: the newest generation foca knows (a node restarted on
        // another address leaves its old identity behind until foca forgets it).
        let mut newest: BTreeMap<&str, &foca::Member<NodeIdentity>> = BTreeMap::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            // Seed stand-ins have no id; our own older generations are not other members.
            if id.node_id.is_empty() || id.node_id == me.node_id {
                continue;
            }
            let slot = newest.entry(id.node_id.as_str()).or_insert(m);
            if id.generation > slot.id().generation {
                *slot = m;
            }
        }
        let mut members = vec![MemberView::from_identity(&me, self.state)];
        for m in newest.values() {
            let id = m.id();
            let state = if m.state() == foca::State::Down {
                NodeState::Down
            } else {
                // A record from this generation (or a newer one, which foca has not seen
                // yet) says what the node is doing; without one it is still joining.
                board
                    .record(&id.node_id)
                    .filter(|r| r.generation >= id.generation)
                    .map_or(NodeState::Joining, |r| r.state)
            };
            members.push(MemberView::from_identity(id, state));
        }
        drop(board);
        // A joining node does not know every member's state yet, so any ring it built
        // could be wrong: it has none until it turns active.
        let active: Vec<NodeId> = if self.state == NodeState::Joining {
            Vec::new()
        } else {
            members
                .iter()
                .filter(|m| m.state == NodeState::Active)
                .map(|m| m.node_id.clone())
                .collect()
        };
        let same_ring = match &self.view.ring {
            Some(ring) => {
                ring.members().len() == active.len()
                    && active.iter().all(|id| ring.member(id).is_some())
            }
            None => active.is_empty(),
        };
        let ring = if same_ring {
            self.view.ring.clone()
        } else {
            build_ring(self.ring_config, active)
        };
        let view = ClusterView {
            node_id: NodeId::from(me.node_id.as_str()),
            generation: me.generation,
            state: self.state,
            members,
            ring,
            ring_config: self.ring_config,
        };
        if view.members != self.view.members
            || view.generation != self.view.generation
            || view.state != self.view.state
            || view.ring_version() != self.view.ring_version()
        {
            self.view = Arc::new(view);
            self.view_changed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Whole clusters of cores on a virtual clock and a simulated loopback network:
    //! deterministic (fixed seeds, no real time), so every run replays exactly.
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const SECRET: &[u8] = b"sim-secret";
    /// One-way delay of the simulated network.
    const LATENCY: Duration = Duration::from_millis(1);

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000 + i))
    }

    fn identity(i: u16, generation: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: format!("n{i}"),
            generation,
            gossip_addr: addr(i),
            client_url: format!("ws://127.0.0.1:{}", 8000 + i),
            api_url: format!("http://127.0.0.1:{}", 8100 + i),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
            peer_addr: None,
        }
    }

    struct Sim {
        now: Instant,
        nodes: BTreeMap<SocketAddr, Membership>,
        in_flight: Vec<(Instant, SocketAddr, Vec<u8>)>,
        dropped: usize,
        /// Every ring each node published: (node, ring members).
        published: Vec<(SocketAddr, BTreeSet<String>)>,
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                now: Instant::now(),
                nodes: BTreeMap::new(),
                in_flight: Vec::new(),
                dropped: 0,
                published: Vec::new(),
            }
        }

        fn start(&mut self, i: u16, generation: u64, seeds: &[u16]) {
            self.start_with(i, generation, seeds, true);
        }

        fn start_with(&mut self, i: u16, generation: u64, seeds: &[u16], bootstrap: bool) {
            let config = MembershipConfig {
                identity: identity(i, generation),
                seeds: seeds.iter().map(|s| addr(*s)).collect(),
                bootstrap,
                timing: Timing::default(),
                rng_seed: u64::from(i) * 1000 + generation,
                ring: RingConfig::default(),
            };
            let core = Membership::new(
                config,
                PacketKey::new(SECRET, RingConfig::default().fingerprint()),
                self.now,
            );
            self.nodes.insert(addr(i), core);
        }

        fn kill(&mut self, i: u16) {
            self.nodes.remove(&addr(i));
        }

        fn collect(&mut self) {
            for (at, core) in &mut self.nodes {
                while let Some(t) = core.poll_transmit() {
                    self.in_flight.push((self.now + LATENCY, t.to, t.datagram));
                }
                if let Some(view) = core.poll_view() {
                    let ring = view
                        .ring
                        .as_ref()
                        .map(|r| r.members().iter().map(|m| m.id().to_string()).collect());
                    self.published.push((*at, ring.unwrap_or_default()));
                }
            }
        }

        /// Advances to the next event (a delivery or a timer) and handles it.
        fn step(&mut self) {
            self.collect();
            let next_timer = self.nodes.values().map(Membership::poll_timeout).min();
            let next_packet = self.in_flight.iter().map(|p| p.0).min();
            let Some(next) = [next_timer, next_packet].into_iter().flatten().min() else {
                return;
            };
            self.now = self.now.max(next);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|p| p.0 <= now);
            self.in_flight = later;
            for (_, to, datagram) in due {
                match self.nodes.get_mut(&to) {
                    Some(core) => {
                        let _ = core.handle_datagram(&datagram, now);
                    }
                    None => self.dropped += 1,
                }
            }
            for core in self.nodes.values_mut() {
                if core.poll_timeout() <= now {
                    core.handle_timeout(now);
                }
            }
            self.collect();
        }

        fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> Duration {
            let start = self.now;
            while !done(self) {
                assert!(self.now - start <= limit, "not done within {limit:?}");
                self.step();
            }
            self.now - start
        }

        fn views(&self) -> Vec<Arc<ClusterView>> {
            self.nodes.values().map(Membership::view).collect()
        }

        /// Every live node reports the same ring, made of exactly `ids`.
        fn agree_on(&self, ids: &[&str]) -> bool {
            let views = self.views();
            let want: BTreeSet<&str> = ids.iter().copied().collect();
            let versions: BTreeSet<_> = views.iter().map(|v| v.ring_version()).collect();
            versions.len() == 1
                && views.iter().all(|v| {
                    v.ring.as_ref().is_some_and(|r| {
                        r.members()
                            .iter()
                            .map(|m| m.id().as_str())
                            .collect::<BTreeSet<_>>()
                            == want
                    })
                })
        }

        fn state_of(&self, at: u16, whose: &str) -> Option<NodeState> {
            let view = self.nodes.get(&addr(at))?.view();
            view.members
                .iter()
                .find(|m| m.node_id.as_str() == whose)
                .map(|m| m.state)
        }
    }

    fn three() -> Sim {
        three_with(100)
    }

    /// Three nodes formed; `generation` also varies every node's RNG seed.
    fn three_with(generation: u64) -> Sim {
        let mut sim = Sim::new();
        sim.start(1, generation, &[]);
        sim.start(2, generation, &[1]);
        sim.start(3, generation, &[1]);
        let took = sim.run_until(Duration::from_secs(10), |s| s.agree_on(&["n1", "n2", "n3"]));
        assert!(took < Duration::from_secs(3), "formed in {took:?}");
        sim
    }

    #[test]
    fn three_nodes_agree_on_one_ring() {
        let sim = three();
        // n1 was active throughout: no node ever published a ring without it (a newcomer
        // waits for the members' states before it turns active).
        for (at, ring) in &sim.published {
            assert!(ring.is_empty() || ring.contains("n1"), "{at}: {ring:?}");
        }
        for v in sim.views() {
            assert_eq!(v.members.len(), 3);
            assert!(v.members.iter().all(|m| m.state == NodeState::Active));
            assert_eq!(v.state, NodeState::Active);
        }
        // Each node owns about a third of the partitions; together all of them.
        let owned: usize = sim.views().iter().map(|v| v.owned_partitions().len()).sum();
        assert_eq!(owned, 4096);
        // And they agree on who owns a guild.
        let owners: BTreeSet<_> = sim
            .views()
            .iter()
            .map(|v| v.owner_of_guild(42).cloned())
            .collect();
        assert_eq!(owners.len(), 1);
    }

    #[test]
    fn a_newcomer_never_builds_a_ring_of_itself() {
        for settle in [1u64, 3, 4, 7] {
            let mut sim = Sim::new();
            sim.start(1, 1, &[]);
            sim.start(2, 1, &[1]);
            sim.run_until(Duration::from_secs(5), |s| s.agree_on(&["n1", "n2"]));
            // Let the first state announcements run out of transmissions.
            let quiet = sim.now + Duration::from_secs(settle);
            sim.run_until(Duration::from_secs(10), |s| s.now >= quiet);
            sim.published.clear();
            sim.start(3, 1, &[1]);
            sim.run_until(Duration::from_secs(5), |s| s.agree_on(&["n1", "n2", "n3"]));
            for (at, ring) in &sim.published {
                assert!(
                    ring.is_empty() || (ring.contains("n1") && ring.contains("n2")),
                    "after {settle}s, {at} published {ring:?}"
                );
            }
        }
    }

    #[test]
    fn a_killed_node_is_down_everywhere_within_the_bound() {
        let bound = Timing::default().convergence_bound(3);
        let mut worst = Duration::ZERO;
        let mut total = Duration::ZERO;
        let mut runs = 0u32;
        // Many seeds (different probe orders), every victim, and a different point of the
        // probe cycle each time, so the bound is checked against a spread of runs.
        for (generation, victim) in (100..120u64).flat_map(|g| [1u16, 2, 3].map(|v| (g, v))) {
            let mut sim = three_with(generation);
            let offset = sim.now + Duration::from_millis(generation * 37 % 1000);
            sim.run_until(Duration::from_secs(2), |s| s.now >= offset);
            let before = sim.views()[0].ring_version();
            sim.kill(victim);
            let survivors: Vec<&str> = ["n1", "n2", "n3"]
                .into_iter()
                .filter(|n| *n != format!("n{victim}"))
                .collect();
            let took = sim.run_until(bound * 2, |s| s.agree_on(&survivors));
            assert!(
                took <= bound,
                "generation {generation}, victim n{victim}: {took:?} > bound {bound:?}"
            );
            worst = worst.max(took);
            total += took;
            runs += 1;
            assert_ne!(sim.views()[0].ring_version(), before);
            for at in [1u16, 2, 3].into_iter().filter(|i| *i != victim) {
                assert_eq!(
                    sim.state_of(at, &format!("n{victim}")),
                    Some(NodeState::Down)
                );
            }
        }
        eprintln!(
            "simulated SIGKILL -> new ring everywhere: mean {:?}, worst {worst:?} over {runs} runs (bound {bound:?})",
            total / runs
        );
    }

    #[test]
    fn a_restarted_node_rejoins_with_a_higher_generation() {
        let mut sim = three();
        let first = sim.views()[0].ring_version();
        sim.kill(3);
        sim.run_until(Duration::from_secs(10), |s| s.agree_on(&["n1", "n2"]));
        sim.start(3, 200, &[1]);
        sim.run_until(Duration::from_secs(10), |s| s.agree_on(&["n1", "n2", "n3"]));
        // The ring is a function of the member set: the same three, the same ring.
        assert_eq!(sim.views()[0].ring_version(), first);
        for v in sim.views() {
            let n3 = v.member(&NodeId::from("n3")).unwrap();
            assert_eq!((n3.generation, n3.state), (200, NodeState::Active));
        }
    }

    #[test]
    fn a_draining_node_leaves_the_ring_then_the_cluster() {
        let mut sim = three();
        let now = sim.now;
        sim.nodes.get_mut(&addr(2)).unwrap().drain(now);
        let took = sim.run_until(Duration::from_secs(5), |s| {
            s.state_of(1, "n2") == Some(NodeState::Draining)
                && s.state_of(3, "n2") == Some(NodeState::Draining)
        });
        assert!(took <= Timing::default().gossip_interval * 2, "{took:?}");
        let ring = sim.nodes[&addr(1)].view().ring.clone().unwrap();
        assert!(ring.member(&NodeId::from("n2")).is_none());
        assert_eq!(sim.nodes[&addr(2)].view().owned_partitions(), vec![]);

        // Leaving: the others mark it down without waiting for the failure detector.
        let now = sim.now;
        sim.nodes.get_mut(&addr(2)).unwrap().leave(now);
        sim.collect();
        sim.kill(2);
        let took = sim.run_until(Duration::from_secs(5), |s| {
            s.state_of(1, "n2") == Some(NodeState::Down)
                && s.state_of(3, "n2") == Some(NodeState::Down)
        });
        assert!(took < Timing::default().probe_period, "{took:?}");
    }

    #[test]
    fn bad_datagrams_change_nothing() {
        let mut sim = three();
        let before = sim.nodes[&addr(1)].view();
        let ring = RingConfig::default().fingerprint();
        let other_key = PacketKey::new(b"another cluster", ring);
        let right_key = PacketKey::new(SECRET, ring);
        let other_ring = PacketKey::new(SECRET, ring ^ 1);
        let now = sim.now;
        let core = sim.nodes.get_mut(&addr(1)).unwrap();
        let mut reasons = BTreeMap::new();
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for i in 0..2000u32 {
            let len = rng.random_range(0..300);
            let garbage: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let datagram = match i % 5 {
                0 => garbage,
                1 => other_key.seal(&garbage),
                // Authentic but meaningless: foca must refuse it.
                2 => right_key.seal(&garbage),
                // Authentic, from a node that would build another ring.
                3 => other_ring.seal(&garbage),
                _ => [&[1u8][..], &garbage[..garbage.len().min(10)]].concat(),
            };
            let err = core.handle_datagram(&datagram, now).unwrap_err();
            *reasons.entry(err.reason()).or_insert(0) += 1;
        }
        assert_eq!(
            reasons.keys().copied().collect::<Vec<_>>(),
            ["decode", "mac", "ring_config", "short", "version"],
            "{reasons:?}"
        );
        assert_eq!(core.view().ring_version(), before.ring_version());
        assert_eq!(core.view().members, before.members);
        // And the cluster carries on.
        sim.run_until(Duration::from_secs(3), |s| {
            s.now > now + Duration::from_secs(2)
        });
        assert!(sim.agree_on(&["n1", "n2", "n3"]));
    }

    #[test]
    fn a_lone_node_without_seeds_is_a_cluster_of_one() {
        let mut sim = Sim::new();
        sim.start(1, 1, &[]);
        assert!(sim.agree_on(&["n1"]));
        // Seeds pointing at itself count as none.
        let mut sim = Sim::new();
        sim.start(1, 1, &[1]);
        assert!(sim.agree_on(&["n1"]));
        // With an unreachable seed it stays joining and keeps knocking.
        let mut sim = Sim::new();
        sim.start(1, 1, &[9]);
        sim.run_until(Duration::from_secs(5), |s| s.dropped >= 3);
        assert_eq!(sim.nodes[&addr(1)].state(), NodeState::Joining);
        assert!(sim.nodes[&addr(1)].view().ring.is_none());
    }

    #[test]
    fn a_node_whose_seed_names_resolve_to_nothing_waits_instead_of_forming_its_own_cluster() {
        let mut sim = Sim::new();
        sim.start(1, 1, &[]);
        assert!(sim.agree_on(&["n1"]));
        // Not the bootstrap node, and its seeds' names resolved to nothing (or only to
        // itself): it must not start a second cluster beside n1.
        sim.start_with(2, 1, &[2], false);
        let until = sim.now + Duration::from_secs(5);
        sim.run_until(Duration::from_secs(5), |s| s.now >= until);
        assert_eq!(sim.nodes[&addr(2)].state(), NodeState::Joining);
        assert!(sim.nodes[&addr(2)].view().ring.is_none());
        // The names resolve now: it joins n1's cluster.
        let now = sim.now;
        if let Some(n2) = sim.nodes.get_mut(&addr(2)) {
            n2.set_seeds(vec![addr(1), addr(2)], now);
        }
        sim.run_until(Duration::from_secs(10), |s| s.agree_on(&["n1", "n2"]));
        // A bootstrap node whose seeds resolved to nothing started alone; once they
        // resolve, it merges into the others' cluster instead of staying split.
        sim.start_with(3, 1, &[], true);
        sim.run_until(Duration::from_secs(1), |s| {
            s.nodes[&addr(3)].state() == NodeState::Active
        });
        let now = sim.now;
        if let Some(n3) = sim.nodes.get_mut(&addr(3)) {
            n3.set_seeds(vec![addr(1), addr(2)], now);
        }
        sim.run_until(Duration::from_secs(10), |s| s.agree_on(&["n1", "n2", "n3"]));
    }

    #[test]
    fn the_bound_formula() {
        let t = Timing::default();
        assert_eq!(t.convergence_bound(3), Duration::from_millis(4200));
        assert_eq!(t.convergence_bound(4), Duration::from_millis(5200));
        // 9 others: two rounds of fan-out 3.
        assert_eq!(t.convergence_bound(10), Duration::from_millis(11_400));
        assert!(t.validate().is_ok());
        let bad = Timing {
            probe_rtt: t.probe_period,
            ..t
        };
        assert!(bad.validate().is_err());
    }
}
