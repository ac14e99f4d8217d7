//! Scenario and property tests on a deterministic in-memory cluster.
//!
//! [`Sim`] holds a few [`ClusterRouter`]s and one FIFO queue per (from, to) link, as a
//! tonic stream would be. Each step picks, with a seeded RNG, which link delivers its next
//! frame, which node flushes, or which node learns the newest ring, so a seed replays one
//! interleaving exactly. Killing a node drops its links (frames in flight are lost both
//! ways) and gives the survivors a new ring, one node at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// Placement for tests: guild `g` prefers `n(g % N)`, then the next ones round the
/// circle; the live ones in that order are owner then replica. So killing an owner
/// promotes its replica, as it should under a ring that keeps preference lists stable.
/// With `swap`, a guild whose first preference is not live gets the two next live
/// nodes the other way round: the node that was NOT the replica becomes owner, as a
/// real ring sometimes does, so the new owner needs a log handoff.
#[derive(Clone, Debug)]
struct TestRing {
    all: Vec<NodeId>,
    live: BTreeSet<NodeId>,
    swap: bool,
    /// Like the real ring's load cap: every membership change may also move guilds
    /// between nodes that stayed (rendezvous over the live set, salted by its size).
    shuffle: bool,
}

impl Placements for TestRing {
    fn placement(&self, guild: GuildId) -> Option<Placement> {
        if self.shuffle {
            let mut live: Vec<&NodeId> = self.live.iter().collect();
            let salt = self.live.len() as u64;
            live.sort_by_key(|id| {
                let mut h = Rng(guild.0 ^ (salt << 32) ^ (id.as_str().len() as u64) << 48);
                for b in id.as_str().bytes() {
                    h.0 ^= u64::from(b);
                    h.next();
                }
                h.next()
            });
            let mut live = live.into_iter();
            let owner = live.next()?.clone();
            let replica = live.next().cloned();
            return Some(Placement { owner, replica });
        }
        let n = self.all.len();
        let start = (guild.0 % n as u64) as usize;
        let mut live = (0..n)
            .map(|i| &self.all[(start + i) % n])
            .filter(|id| self.live.contains(*id));
        let owner = live.next()?.clone();
        let replica = live.next().cloned();
        if self.swap
            && !self.live.contains(&self.all[start])
            && let Some(r) = replica.clone()
        {
            return Some(Placement {
                owner: r,
                replica: Some(owner),
            });
        }
        Some(Placement { owner, replica })
    }
}

/// splitmix64: small, seeded, good enough to pick interleavings.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

/// What one node's outputs said.
#[derive(Debug, Default)]
struct Record {
    delivered: Vec<GuildEvent>,
    resyncs: Vec<GuildId>,
    acked: Vec<(PublishId, GuildId, GuildSeq)>,
    rejected: Vec<(PublishId, PublishError)>,
    fetched: Vec<(FetchId, GuildId, Vec<u64>)>,
}

type DropFilter = Box<dyn Fn(&NodeId, &NodeId, &PeerFrame) -> bool>;

struct Sim {
    rng: Rng,
    ring: TestRing,
    nodes: BTreeMap<NodeId, ClusterRouter<TestRing>>,
    links: BTreeMap<(NodeId, NodeId), VecDeque<PeerFrame>>,
    records: BTreeMap<NodeId, Record>,
    /// Nodes whose ring is behind `ring`.
    stale: BTreeSet<NodeId>,
    dead: BTreeSet<NodeId>,
    /// Every frame sent: (from, to, kind, events in it).
    sent: Vec<(NodeId, NodeId, FrameKind, usize)>,
    /// Frames the network loses when they reach the head of their link.
    drop_filter: Option<DropFilter>,
    next_publish: u64,
    /// Publish id -> body, to check what was delivered.
    bodies: BTreeMap<PublishId, Bytes>,
    config: ClusterConfig,
}

fn n(i: usize) -> NodeId {
    NodeId::from(format!("n{i}"))
}

impl Sim {
    fn new(nodes: usize, config: ClusterConfig, seed: u64) -> Sim {
        let all: Vec<NodeId> = (0..nodes).map(n).collect();
        let ring = TestRing {
            all: all.clone(),
            live: all.iter().cloned().collect(),
            swap: false,
            shuffle: false,
        };
        Sim {
            rng: Rng(seed),
            nodes: all
                .iter()
                .map(|id| {
                    (
                        id.clone(),
                        ClusterRouter::new(id.clone(), config, ring.clone()),
                    )
                })
                .collect(),
            ring,
            links: BTreeMap::new(),
            records: all
                .iter()
                .map(|id| (id.clone(), Record::default()))
                .collect(),
            stale: BTreeSet::new(),
            dead: BTreeSet::new(),
            sent: Vec::new(),
            drop_filter: None,
            next_publish: 0,
            bodies: BTreeMap::new(),
            config,
        }
    }

    fn router(&self, i: usize) -> &ClusterRouter<TestRing> {
        &self.nodes[&n(i)]
    }

    fn drain(&mut self, id: &NodeId) {
        let Some(router) = self.nodes.get_mut(id) else {
            return;
        };
        let record = self.records.get_mut(id).unwrap();
        while let Some(output) = router.poll_output() {
            match output {
                Output::Send { to, frame } => {
                    let events = match &frame {
                        PeerFrame::FanoutBatch { events } | PeerFrame::Replicate { events } => {
                            events.len()
                        }
                        _ => 0,
                    };
                    self.sent
                        .push((id.clone(), to.clone(), frame.kind(), events));
                    if !self.dead.contains(&to) {
                        self.links
                            .entry((id.clone(), to))
                            .or_default()
                            .push_back(frame);
                    }
                }
                Output::DeliverLocal { event } => {
                    if std::env::var_os("SIM_TRACE").is_some()
                        && std::env::var("SIM_GUILD").is_ok_and(|g| g == event.guild.0.to_string())
                    {
                        eprintln!(
                            "  {id} delivers {}:{} ({:?})",
                            event.guild, event.seq, event.publish_id
                        );
                    }
                    record.delivered.push(event);
                }
                Output::AckPublisher {
                    publish_id,
                    guild,
                    seq,
                } => record.acked.push((publish_id, guild, seq)),
                Output::RejectPublisher {
                    publish_id, error, ..
                } => record.rejected.push((publish_id, error)),
                Output::Resync { guild } => record.resyncs.push(guild),
                Output::Fetched {
                    fetch,
                    guild,
                    events,
                } => record
                    .fetched
                    .push((fetch, guild, events.iter().map(|e| e.seq.0).collect())),
            }
        }
    }

    fn publish(&mut self, i: usize, guild: u64) -> Result<PublishId, PublishError> {
        self.next_publish += 1;
        let id = PublishId(self.next_publish);
        let body = Bytes::from(format!("{{\"p\":{}}}", id.0));
        self.bodies.insert(id, body.clone());
        let node = n(i);
        let result =
            self.nodes
                .get_mut(&node)
                .unwrap()
                .publish(GuildId(guild), "MESSAGE_CREATE", body, id);
        self.drain(&node);
        result.map(|()| id)
    }

    fn subscribe(&mut self, i: usize, guild: u64) {
        let node = n(i);
        self.nodes
            .get_mut(&node)
            .unwrap()
            .local_subscribe(GuildId(guild));
        self.drain(&node);
    }

    fn flush(&mut self, id: &NodeId) {
        if let Some(router) = self.nodes.get_mut(id) {
            router.flush();
            self.drain(id);
        }
    }

    fn flush_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        for id in &ids {
            self.flush(id);
        }
    }

    /// Delivers the next frame on link `from -> to`. Returns whether there was one.
    fn deliver(&mut self, from: &NodeId, to: &NodeId) -> bool {
        let key = (from.clone(), to.clone());
        let Some(frame) = self.links.get_mut(&key).and_then(VecDeque::pop_front) else {
            return false;
        };
        if self
            .drop_filter
            .as_ref()
            .is_some_and(|f| f(from, to, &frame))
        {
            return true;
        }
        if std::env::var_os("SIM_TRACE").is_some() {
            let text = format!("{frame:?}");
            if text.contains(&format!(
                "GuildId({})",
                std::env::var("SIM_GUILD").unwrap_or_else(|_| "30".into())
            )) {
                let text: String = text.chars().take(220).collect();
                eprintln!("  {from} -> {to}: {text}");
            }
        }
        if let Some(router) = self.nodes.get_mut(to) {
            router.peer_frame(from, frame);
            self.drain(to);
        }
        true
    }

    fn deliver_all(&mut self, from: usize, to: usize) {
        while self.deliver(&n(from), &n(to)) {}
    }

    fn busy_links(&self) -> Vec<(NodeId, NodeId)> {
        self.links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn update_ring(&mut self, id: &NodeId) {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("{id} learns ring {:?}", self.ring.live);
        }
        self.stale.remove(id);
        let ring = self.ring.clone();
        let dead: Vec<NodeId> = self.dead.iter().cloned().collect();
        if let Some(router) = self.nodes.get_mut(id) {
            router.ring_changed(ring);
            for d in &dead {
                router.peer_down(d);
            }
        }
        self.drain(id);
    }

    /// One random step. Returns false when nothing is in flight and no ring is stale.
    fn step(&mut self) -> bool {
        if !self.stale.is_empty() && self.rng.chance(8) {
            let stale: Vec<NodeId> = self.stale.iter().cloned().collect();
            let id = stale[self.rng.below(stale.len())].clone();
            self.update_ring(&id);
            return true;
        }
        let busy = self.busy_links();
        if self.rng.chance(4) || busy.is_empty() {
            let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
            let id = ids[self.rng.below(ids.len())].clone();
            self.flush(&id);
            return !busy.is_empty() || !self.stale.is_empty();
        }
        let (from, to) = busy[self.rng.below(busy.len())].clone();
        self.deliver(&from, &to);
        true
    }

    fn steps(&mut self, count: usize) {
        for _ in 0..count {
            self.step();
        }
    }

    /// Runs until everything settled: rings updated, links empty, flushes and the
    /// resend timer produce nothing more, no publish pending.
    fn run(&mut self) {
        self.run_with(true);
    }

    /// Like [`Sim::run`], without the resend timer: returns once nothing moves, even
    /// with publishes pending.
    fn settle(&mut self) {
        self.run_with(false);
    }

    fn run_with(&mut self, resend_timer: bool) {
        let mut idle_rounds = 0;
        for _ in 0..1_000_000 {
            if self.step() {
                idle_rounds = 0;
                continue;
            }
            self.flush_all();
            if !self.busy_links().is_empty() {
                continue;
            }
            let pending: usize = self.nodes.values().map(|r| r.pending_publishes()).sum();
            if pending == 0 || !resend_timer {
                return;
            }
            // The shell's resend timer.
            idle_rounds += 1;
            assert!(idle_rounds < 10, "{pending} publishes stuck");
            let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
            for id in &ids {
                self.nodes.get_mut(id).unwrap().resend_stale();
                self.drain(id);
            }
        }
        panic!("the simulation did not settle");
    }

    fn kill(&mut self, i: usize) {
        let id = n(i);
        self.nodes.remove(&id);
        self.dead.insert(id.clone());
        self.links.retain(|(from, to), _| *from != id && *to != id);
        if self.ring.live.remove(&id) {
            self.stale = self.nodes.keys().cloned().collect();
        } else {
            // It had left the ring already (a drain): the ring does not change, and
            // the shell only tells the routers it is down.
            let others: Vec<NodeId> = self.nodes.keys().cloned().collect();
            for other in others {
                if let Some(router) = self.nodes.get_mut(&other) {
                    router.peer_down(&id);
                }
                self.drain(&other);
            }
        }
    }

    /// Node `i` drains: it leaves the ring (every live node, itself included, learns
    /// so at random moments) but stays up, answering log requests, until killed.
    fn leave(&mut self, i: usize) {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("n{i} leaves");
        }
        self.ring.live.remove(&n(i));
        self.stale = self.nodes.keys().cloned().collect();
    }

    /// Node `i` comes back as a fresh process: no state, at first the ring the others
    /// had without it (as the shell gives a joining router), then the ring with it.
    fn restart(&mut self, i: usize) {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("n{i} restarts");
        }
        let id = n(i);
        self.dead.remove(&id);
        let router = ClusterRouter::new(id.clone(), self.config, self.ring.clone());
        self.nodes.insert(id.clone(), router);
        if let Some(r) = self.records.get_mut(&id) {
            r.delivered.clear();
        }
        self.ring.live.insert(id.clone());
        self.stale = self.nodes.keys().cloned().collect();
        // Membership sees its new generation at once (the shell's `peer_restarted`).
        let others: Vec<NodeId> = self.nodes.keys().filter(|k| **k != id).cloned().collect();
        for other in others {
            if let Some(router) = self.nodes.get_mut(&other) {
                router.peer_restarted(&id);
            }
            self.drain(&other);
        }
    }

    fn delivered(&self, i: usize, guild: u64) -> Vec<u64> {
        self.records[&n(i)]
            .delivered
            .iter()
            .filter(|e| e.guild == GuildId(guild))
            .map(|e| e.seq.0)
            .collect()
    }

    fn acked(&self) -> Vec<(PublishId, GuildId, GuildSeq)> {
        self.records
            .values()
            .flat_map(|r| r.acked.iter().copied())
            .collect()
    }

    fn frames(&self, kind: FrameKind) -> Vec<(NodeId, NodeId, usize)> {
        self.sent
            .iter()
            .filter(|(_, _, k, _)| *k == kind)
            .map(|(f, t, _, e)| (f.clone(), t.clone(), *e))
            .collect()
    }

    /// Per node: each guild's seqs strictly increase and no publish arrives twice.
    /// Across nodes: one (guild, seq) is one publish. Every acked publish reached every
    /// live node subscribed to its guild, with the seq it was acked with.
    fn check(&self, subscribed: &[(usize, u64)]) {
        let mut by_seq: BTreeMap<(GuildId, GuildSeq), PublishId> = BTreeMap::new();
        for (id, record) in &self.records {
            let mut last: BTreeMap<GuildId, GuildSeq> = BTreeMap::new();
            let mut seen = BTreeSet::new();
            for e in &record.delivered {
                let prev = last.insert(e.guild, e.seq).unwrap_or_default();
                assert!(
                    e.seq > prev,
                    "{id}: {} after {prev} in {}",
                    e.seq,
                    e.guild.0
                );
                assert!(seen.insert(e.publish_id), "{id}: {:?} twice", e.publish_id);
                assert_eq!(e.body, self.bodies[&e.publish_id]);
                let first = *by_seq.entry((e.guild, e.seq)).or_insert(e.publish_id);
                assert_eq!(
                    first, e.publish_id,
                    "{id}: two events at {}:{}",
                    e.guild, e.seq
                );
            }
        }
        for (publish_id, guild, seq) in self.acked() {
            assert_eq!(
                by_seq.get(&(guild, seq)).copied().unwrap_or(publish_id),
                publish_id,
                "acked {publish_id:?} at {guild}:{seq}, another event was delivered there"
            );
            for &(i, g) in subscribed {
                if GuildId(g) != guild || self.dead.contains(&n(i)) {
                    continue;
                }
                let hit = self.records[&n(i)]
                    .delivered
                    .iter()
                    .any(|e| e.publish_id == publish_id && e.seq == seq);
                assert!(
                    hit,
                    "n{i} never delivered acked {publish_id:?} ({guild}:{seq})"
                );
            }
        }
    }
}

const GUILDS: [u64; 3] = [30, 31, 32]; // owners n0, n1, n2

fn everyone_subscribed(sim: &mut Sim) -> Vec<(usize, u64)> {
    let mut subscribed = Vec::new();
    for i in 0..3 {
        for g in GUILDS {
            sim.subscribe(i, g);
            subscribed.push((i, g));
        }
    }
    sim.run();
    subscribed
}

/// Scenario 4 on a seed: a rolling restart. Each of n0..n2 in turn drains (leaves the
/// ring, stays up), dies, and comes back fresh, while publishes enter on random live
/// nodes and every node learns each ring at random moments. As a real rolling restart
/// waits for the restarted node to be ready, the next node goes only once the cluster
/// settled (with replication factor 2, an owner restarted and its replica taken down
/// before anything was copied again would be two faults). n3 never restarts: it must
/// deliver every acknowledged publish once, in guild order, and never resync.
fn rolling_restart(seed: u64, per_phase: usize, swap: bool, shuffle: bool) {
    let mut sim = Sim::new(4, ClusterConfig::default(), seed);
    sim.ring.swap = swap;
    sim.ring.shuffle = shuffle;
    let observed: Vec<(usize, u64)> = GUILDS.iter().map(|&g| (3, g)).collect();
    for &(i, g) in &observed {
        sim.subscribe(i, g);
    }
    sim.run();
    let publish_some = |sim: &mut Sim, count: usize| {
        for _ in 0..count {
            let live: Vec<usize> = (0..4).filter(|&i| sim.nodes.contains_key(&n(i))).collect();
            let node = live[sim.rng.below(live.len())];
            let guild = GUILDS[sim.rng.below(GUILDS.len())];
            // A publish may be refused while rings disagree; only acks count.
            let _ = sim.publish(node, guild);
            let k = sim.rng.below(6);
            sim.steps(k);
        }
    };
    for victim in 0..3 {
        publish_some(&mut sim, per_phase);
        sim.leave(victim);
        publish_some(&mut sim, per_phase);
        sim.kill(victim);
        publish_some(&mut sim, per_phase);
        sim.restart(victim);
        publish_some(&mut sim, per_phase);
        sim.run();
    }
    if std::env::var_os("SIM_TRACE").is_some() {
        for g in GUILDS {
            let mut acked: Vec<(u64, u64)> = sim
                .acked()
                .iter()
                .filter(|a| a.1 == GuildId(g))
                .map(|a| (a.2.0, a.0.0))
                .collect();
            acked.sort();
            let got: Vec<(u64, u64)> = sim.records[&n(3)]
                .delivered
                .iter()
                .filter(|e| e.guild == GuildId(g))
                .map(|e| (e.seq.0, e.publish_id.0))
                .collect();
            eprintln!("guild {g}: acked (seq, id) {acked:?}\n  n3 got {got:?}");
        }
    }
    sim.check(&observed);
    assert!(
        sim.records[&n(3)].resyncs.is_empty(),
        "the observer resynced"
    );
    assert!(!sim.acked().is_empty());
}

/// Scenario 1 on a seed: publishes enter on every node while frames interleave.
fn exactly_once_everywhere(seed: u64, publishes: usize) {
    let mut sim = Sim::new(3, ClusterConfig::default(), seed);
    let subscribed = everyone_subscribed(&mut sim);
    for _ in 0..publishes {
        let node = sim.rng.below(3);
        let guild = GUILDS[sim.rng.below(GUILDS.len())];
        sim.publish(node, guild).unwrap();
        let k = sim.rng.below(6);
        sim.steps(k);
    }
    sim.run();
    sim.check(&subscribed);
    assert_eq!(sim.acked().len(), publishes, "every publish acknowledged");
    for i in 0..3 {
        assert_eq!(sim.records[&n(i)].delivered.len(), publishes, "n{i}");
        assert!(sim.records[&n(i)].resyncs.is_empty());
    }
    // Same order everywhere: the seqs of each guild are 1..=k on every node.
    for g in GUILDS {
        let expect: Vec<u64> = (1..=sim.delivered(0, g).len() as u64).collect();
        for i in 0..3 {
            assert_eq!(sim.delivered(i, g), expect, "n{i} guild {g}");
        }
    }
}

/// Scenario 3 on a seed: a node dies at a random point while publishes flow; survivors
/// learn the new ring at random moments.
/// With `swap`, the victim's guilds go to the node that was not their replica, which
/// must fetch the log from the old replica.
fn acked_survive_a_crash(seed: u64, before: usize, after: usize, victim: usize, swap: bool) {
    let mut sim = Sim::new(3, ClusterConfig::default(), seed);
    sim.ring.swap = swap;
    let subscribed = everyone_subscribed(&mut sim);
    let publish_random = |sim: &mut Sim, live: &[usize]| {
        let node = live[sim.rng.below(live.len())];
        let guild = GUILDS[sim.rng.below(GUILDS.len())];
        sim.publish(node, guild).unwrap();
        let k = sim.rng.below(6);
        sim.steps(k);
    };
    for _ in 0..before {
        publish_random(&mut sim, &[0, 1, 2]);
    }
    sim.kill(victim);
    let live: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    for _ in 0..after {
        publish_random(&mut sim, &live);
    }
    // No resend timer: the ring change alone must repair every forward.
    sim.settle();
    sim.check(&subscribed);
    for &i in &live {
        assert!(sim.records[&n(i)].resyncs.is_empty(), "n{i} resynced");
        assert_eq!(sim.router(i).pending_publishes(), 0);
    }
    // Publishes on survivors after the crash were all acknowledged (none shed: the
    // bounds are far above this load) and are delivered.
    let acked: BTreeSet<PublishId> = sim.acked().iter().map(|a| a.0).collect();
    let rejected: usize = live
        .iter()
        .map(|&i| sim.records[&n(i)].rejected.len())
        .sum();
    let why: Vec<_> = live
        .iter()
        .flat_map(|&i| sim.records[&n(i)].rejected.clone())
        .collect();
    assert_eq!(rejected, 0, "{why:?}");
    for id in (before as u64 + 1)..=(before + after) as u64 {
        assert!(
            acked.contains(&PublishId(id)),
            "publish {id} after the crash"
        );
    }
}

#[test]
fn three_nodes_deliver_every_event_exactly_once_in_guild_order() {
    for seed in 0..20 {
        exactly_once_everywhere(seed, 60);
    }
}

#[test]
fn one_batch_per_subscribed_node_never_per_session() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 7);
    let g = 30; // owner n0, replica n1
    for _ in 0..3 {
        sim.subscribe(1, g);
    }
    for _ in 0..5 {
        sim.subscribe(2, g);
    }
    sim.run();
    assert_eq!(sim.frames(FrameKind::Subscribe).len(), 2, "one per node");
    sim.sent.clear();

    // One publish: one batch to each subscribed node.
    sim.publish(0, g).unwrap();
    sim.run();
    let batches = sim.frames(FrameKind::FanoutBatch);
    assert_eq!(batches, vec![(n(0), n(1), 1), (n(0), n(2), 1)]);
    sim.sent.clear();

    // Ten publishes between flushes, entering on the owner and on a peer: still one
    // replication frame and one batch per node.
    for _ in 0..5 {
        sim.publish(0, g).unwrap();
        sim.publish(2, g).unwrap();
    }
    sim.deliver_all(2, 0); // the five forwards
    sim.flush(&n(0));
    assert_eq!(sim.frames(FrameKind::Replicate), vec![(n(0), n(1), 10)]);
    sim.deliver_all(0, 1); // replicate
    sim.deliver_all(1, 0); // its ack
    sim.flush(&n(0));
    let batches = sim.frames(FrameKind::FanoutBatch);
    assert_eq!(batches, vec![(n(0), n(1), 10), (n(0), n(2), 10)]);
    sim.run();
    assert_eq!(sim.frames(FrameKind::FanoutBatch).len(), 2);
    assert_eq!(sim.delivered(1, g), (1..=11).collect::<Vec<_>>());
    assert_eq!(sim.delivered(2, g), (1..=11).collect::<Vec<_>>());
    assert_eq!(
        sim.records[&n(1)].delivered.len(),
        11,
        "once per node, not per session"
    );

    let counters = sim.router(0).counters();
    assert_eq!(counters.sent(FrameKind::FanoutBatch), 4);
    assert_eq!(counters.fanout_events, 22);
    assert_eq!(counters.max_batch_events, 10);
}

#[test]
fn nothing_is_acknowledged_or_fanned_out_before_the_replica_has_it() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 1);
    let g = 30; // owner n0, replica n1
    sim.subscribe(0, g);
    sim.subscribe(2, g);
    sim.run();
    sim.publish(0, g).unwrap();
    sim.flush(&n(0));
    assert!(sim.acked().is_empty());
    assert!(sim.records[&n(0)].delivered.is_empty());
    assert!(sim.frames(FrameKind::FanoutBatch).is_empty());
    sim.deliver_all(0, 1);
    sim.deliver_all(1, 0);
    assert_eq!(sim.acked().len(), 1, "acked once the replica holds it");
    sim.flush(&n(0));
    assert_eq!(sim.delivered(0, g), vec![1]);
    assert_eq!(sim.frames(FrameKind::FanoutBatch).len(), 1);
}

/// Every node subscribed to `g` (owned by n0), ten publishes delivered everywhere, then three
/// more published at n0: replicated to n1 and acknowledged, but not fanned out yet.
fn three_acked_but_not_fanned_out(sim: &mut Sim, g: u64) -> [(usize, u64); 3] {
    let subscribed = [(0, g), (1, g), (2, g)];
    for (i, g) in subscribed {
        sim.subscribe(i, g);
    }
    sim.run();
    for i in 0..10 {
        sim.publish(i % 3, g).unwrap();
    }
    sim.run();
    assert_eq!(sim.acked().len(), 10);
    for _ in 0..3 {
        sim.publish(0, g).unwrap();
    }
    sim.flush(&n(0));
    sim.deliver_all(0, 1);
    sim.deliver_all(1, 0);
    assert_eq!(sim.records[&n(0)].acked.len(), 3 + 4);
    assert_eq!(sim.acked().len(), 13);
    assert_eq!(sim.delivered(2, g).len(), 10, "not fanned out yet");
    subscribed
}

#[test]
fn acked_events_survive_the_owner_and_the_replica_continues_the_sequence() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 3);
    let g = 30; // owner n0, replica n1; after n0 dies: owner n1, replica n2
    // Three more after ten: replicated and acknowledged, then the owner dies before fanning out.
    let subscribed = three_acked_but_not_fanned_out(&mut sim, g);
    sim.kill(0);
    sim.run();

    // The survivors got seqs 11..=13 from the promoted replica's log, once, in order.
    assert_eq!(sim.delivered(1, g), (1..=13).collect::<Vec<_>>());
    assert_eq!(sim.delivered(2, g), (1..=13).collect::<Vec<_>>());
    sim.check(&subscribed);

    // Publishing goes on after the last replicated seq.
    sim.publish(2, g).unwrap();
    sim.publish(1, g).unwrap();
    sim.run();
    assert_eq!(sim.router(1).owned_seq(GuildId(g)), Some(GuildSeq(15)));
    assert_eq!(sim.delivered(2, g), (1..=15).collect::<Vec<_>>());
    sim.check(&subscribed);
    assert!(sim.records[&n(2)].resyncs.is_empty());
}

#[test]
fn a_fetch_gets_the_log_tail_from_the_owner_and_follows_a_failover() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 5);
    let g = 30; // owner n0, replica n1; after n0 dies: owner n1
    let subscribed = everyone_subscribed(&mut sim);
    for _ in 0..6 {
        sim.publish(2, g).unwrap();
    }
    sim.run();
    let fetch = |sim: &mut Sim, id: u64| {
        let node = n(2);
        sim.nodes
            .get_mut(&node)
            .unwrap()
            .fetch(GuildId(g), GuildSeq(3), FetchId(id));
        sim.drain(&node);
    };
    fetch(&mut sim, 1);
    sim.run();
    assert_eq!(
        sim.records[&n(2)].fetched,
        vec![(FetchId(1), GuildId(g), vec![4, 5, 6])]
    );

    // Asked of an owner that dies before answering: sent again to the new owner.
    fetch(&mut sim, 2);
    sim.links.remove(&(n(2), n(0)));
    sim.kill(0);
    sim.run();
    assert_eq!(
        sim.records[&n(2)].fetched[1],
        (FetchId(2), GuildId(g), vec![4, 5, 6])
    );
    sim.check(&subscribed);
}

#[test]
fn a_new_owner_that_was_not_the_replica_fetches_the_log_and_continues() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 11);
    sim.ring.swap = true;
    let g = 30; // owner n0, replica n1; after n0 dies: owner n2 (not the replica), replica n1
    // Three more after ten: replicated to n1 and acknowledged, then n0 dies before fanning out.
    let subscribed = three_acked_but_not_fanned_out(&mut sim, g);
    sim.kill(0);
    assert_eq!(
        sim.ring.placement(GuildId(g)).map(|p| p.owner),
        Some(n(2)),
        "the third node is promoted"
    );
    // n2 learns the ring first; publishes reaching it meanwhile wait for the handoff.
    sim.update_ring(&n(2));
    assert_eq!(
        sim.router(2).owned_seq(GuildId(g)),
        None,
        "handoff under way"
    );
    let held = sim.publish(2, g).unwrap();
    sim.run();

    // n2 got seqs 11..=13 from n1's copy and continued the sequence after them.
    // (n0 was asked too, before n2 heard it was down; the sim drops that frame. Declared
    // down without an answer, it may have replicated more to n1 since n1 answered, so
    // n1 is asked once more: two transfers, both from n1.)
    assert!(sim.frames(FrameKind::LogRequest).contains(&(n(2), n(1), 0)));
    assert_eq!(
        sim.frames(FrameKind::LogTransfer),
        vec![(n(1), n(2), 0), (n(1), n(2), 0)]
    );
    assert!(
        sim.records[&n(2)]
            .acked
            .contains(&(held, GuildId(g), GuildSeq(14)))
    );
    assert_eq!(sim.delivered(1, g), (1..=14).collect::<Vec<_>>());
    assert_eq!(sim.delivered(2, g), (1..=14).collect::<Vec<_>>());
    sim.check(&subscribed);

    // Publishing goes on after the last acknowledged seq, from either survivor.
    sim.publish(1, g).unwrap();
    sim.publish(2, g).unwrap();
    sim.run();
    assert_eq!(sim.router(2).owned_seq(GuildId(g)), Some(GuildSeq(16)));
    assert_eq!(sim.delivered(1, g), (1..=16).collect::<Vec<_>>());
    assert_eq!(sim.delivered(2, g), (1..=16).collect::<Vec<_>>());
    sim.check(&subscribed);
    for i in 1..3 {
        assert!(sim.records[&n(i)].resyncs.is_empty(), "n{i} resynced");
    }
}

#[test]
fn a_joining_node_takes_over_a_busy_guild_without_gap_or_duplicate() {
    let mut sim = Sim::new(4, ClusterConfig::default(), 12);
    // n3 is not in the ring yet: guild 35 (prefers n3, n0, n1) lives on n0, replica n1.
    sim.ring.live.remove(&n(3));
    for i in 0..4 {
        sim.update_ring(&n(i));
    }
    let g = 35;
    let subscribed = [(0, g), (1, g), (2, g), (3, g)];
    for (i, g) in subscribed {
        sim.subscribe(i, g);
    }
    sim.run();
    for i in 0..12 {
        sim.publish(i % 4, g).unwrap();
    }
    sim.run();
    assert_eq!(sim.router(0).owned_seq(GuildId(g)), Some(GuildSeq(12)));

    // Busy: publishes in flight (some sequenced and replicated, some only forwarded)
    // when n3 joins and becomes the owner, replica n0. Nobody dies.
    for i in 0..8 {
        sim.publish(i % 4, g).unwrap();
    }
    sim.steps(10);
    sim.ring.live.insert(n(3));
    for i in [3, 0, 1, 2] {
        sim.update_ring(&n(i));
    }
    for i in 0..4 {
        sim.publish(i, g).unwrap();
    }
    sim.run();

    let total = 12 + 8 + 4;
    assert_eq!(sim.acked().len(), total);
    assert_eq!(
        sim.router(3).owned_seq(GuildId(g)),
        Some(GuildSeq(total as u64))
    );
    assert_eq!(sim.router(0).owned_seq(GuildId(g)), None);
    for i in 0..4 {
        assert_eq!(
            sim.delivered(i, g),
            (1..=total as u64).collect::<Vec<_>>(),
            "n{i}"
        );
        assert!(sim.records[&n(i)].resyncs.is_empty(), "n{i} resynced");
    }
    sim.check(&subscribed);
    assert!(!sim.frames(FrameKind::LogTransfer).is_empty());
}

#[test]
fn a_forward_sent_again_after_an_owner_change_is_applied_once() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 4);
    let g = 30; // owner n0, replica n1
    sim.subscribe(2, g);
    sim.run();
    let id = sim.publish(2, g).unwrap();
    sim.deliver_all(2, 0); // forward
    sim.flush(&n(0));
    sim.deliver_all(0, 1); // replicate
    sim.deliver_all(1, 0); // ack: n0 sequenced it as 1 and queued the ForwardAck...
    sim.kill(0); // ...which dies with n0
    assert_eq!(sim.router(2).pending_publishes(), 1);
    sim.settle(); // the ring change alone re-sends it, no resend timer needed

    // n2 forwarded again to n1, which knew (n2, id) from the replicated log.
    assert_eq!(
        sim.records[&n(2)].acked,
        vec![(id, GuildId(g), GuildSeq(1))]
    );
    assert_eq!(sim.router(1).counters().duplicate_forwards, 1);
    assert_eq!(sim.router(1).owned_seq(GuildId(g)), Some(GuildSeq(1)));
    assert_eq!(sim.delivered(2, g), vec![1]);

    // A stray copy of the same forward, even later, is still answered from memory.
    let body = sim.bodies[&id].clone();
    let forward = PeerFrame::Forward {
        origin: n(2),
        publish_id: id,
        guild: GuildId(g),
        event_type: "MESSAGE_CREATE".into(),
        body,
        hops: 0,
    };
    sim.nodes.get_mut(&n(1)).unwrap().peer_frame(&n(2), forward);
    sim.drain(&n(1));
    sim.run();
    assert_eq!(sim.router(1).owned_seq(GuildId(g)), Some(GuildSeq(1)));
    assert_eq!(sim.delivered(2, g), vec![1]);
    sim.check(&[(2, g)]);
}

#[test]
fn a_missed_batch_is_re_requested_and_beyond_the_log_the_node_resyncs() {
    let config = ClusterConfig {
        log_capacity: 4,
        ..ClusterConfig::default()
    };
    let mut sim = Sim::new(3, config, 5);
    let g = 30; // owner n0, replica n1
    sim.subscribe(2, g);
    sim.run();
    sim.publish(0, g).unwrap();
    sim.run();

    // Lose the next batch to n2.
    sim.drop_filter = Some(Box::new(|from, to, frame| {
        *from == n(0) && *to == n(2) && frame.kind() == FrameKind::FanoutBatch
    }));
    sim.publish(0, g).unwrap();
    sim.run();
    assert_eq!(sim.delivered(2, g), vec![1]);
    sim.drop_filter = None;
    sim.publish(0, g).unwrap();
    sim.run();
    assert_eq!(
        sim.delivered(2, g),
        vec![1, 2, 3],
        "seq 2 filled on request"
    );
    assert_eq!(sim.router(2).counters().gap_requests, 1);
    assert!(sim.records[&n(2)].resyncs.is_empty());

    // Lose six batches: the log keeps four events, so the gap cannot be filled.
    sim.drop_filter = Some(Box::new(|from, to, frame| {
        *from == n(0) && *to == n(2) && frame.kind() == FrameKind::FanoutBatch
    }));
    for _ in 0..6 {
        sim.publish(0, g).unwrap();
        sim.run();
    }
    sim.drop_filter = None;
    sim.publish(0, g).unwrap();
    sim.run();
    assert_eq!(sim.records[&n(2)].resyncs, vec![GuildId(g)]);
    assert_eq!(sim.delivered(2, g), vec![1, 2, 3, 7, 8, 9, 10]);
    assert_eq!(sim.router(2).delivered_seq(GuildId(g)), Some(GuildSeq(10)));
    sim.check(&[]);

    // And it keeps up afterwards.
    sim.publish(1, g).unwrap();
    sim.run();
    assert_eq!(sim.delivered(2, g).last(), Some(&11));
}

#[test]
fn a_lost_forward_is_sent_again_by_the_resend_timer_and_sequenced_once() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 9);
    let g = 30; // owner n0
    sim.subscribe(2, g);
    sim.run();
    sim.drop_filter = Some(Box::new(|_, _, frame| frame.kind() == FrameKind::Forward));
    let id = sim.publish(2, g).unwrap();
    sim.settle();
    sim.drop_filter = None;
    assert_eq!(sim.router(2).pending_publishes(), 1);
    let router = sim.nodes.get_mut(&n(2)).unwrap();
    router.resend_stale(); // marks
    assert!(router.poll_output().is_none(), "not stale yet");
    router.resend_stale(); // still pending a tick later: sent again
    sim.drain(&n(2));
    // A second resend of the same publish is answered from the owner's memory.
    sim.deliver_all(2, 0);
    sim.nodes.get_mut(&n(2)).unwrap().resend_stale();
    sim.nodes.get_mut(&n(2)).unwrap().resend_stale();
    sim.drain(&n(2));
    sim.run();
    assert_eq!(
        sim.records[&n(2)].acked,
        vec![(id, GuildId(g), GuildSeq(1))]
    );
    assert_eq!(sim.delivered(2, g), vec![1]);
    assert_eq!(sim.router(0).owned_seq(GuildId(g)), Some(GuildSeq(1)));
}

#[test]
fn a_stale_owner_cannot_acknowledge_what_the_new_owner_misses() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 12);
    let g = 30; // owner n0, replica n1
    let subscribed = [(1, g), (2, g)];
    sim.subscribe(1, g);
    sim.subscribe(2, g);
    sim.publish(1, g).unwrap();
    sim.run();
    // n1 and n2 declare n0 dead (a partition, not a crash): n1 owns g now. n0 does not
    // know yet and still sequences publishes made on it.
    sim.ring.live.remove(&n(0));
    sim.update_ring(&n(1));
    sim.update_ring(&n(2));
    let stale = sim.publish(0, g).unwrap();
    let fresh = sim.publish(2, g).unwrap();
    sim.settle();
    let acked: BTreeSet<PublishId> = sim.acked().iter().map(|a| a.0).collect();
    // n0 answered n1's log request as the owner it still thinks it is, so n1 waits;
    // and n1, now owner in its own ring, refuses n0's replication: nobody acknowledges
    // anything while the two rings disagree.
    assert!(
        !acked.contains(&stale) && !acked.contains(&fresh),
        "{acked:?}"
    );
    assert_eq!(sim.router(1).counters().fenced, 1);
    assert_eq!(sim.delivered(2, g), vec![1]);

    // n0 learns the ring: it sends n1 its final log; n1 takes over and sequences both
    // publishes once (n0's pending one comes to it from n0).
    sim.update_ring(&n(0));
    sim.run();
    let acked: BTreeSet<PublishId> = sim.acked().iter().map(|a| a.0).collect();
    assert!(acked.contains(&stale) && acked.contains(&fresh));
    assert_eq!(sim.delivered(1, g), vec![1, 2, 3]);
    assert_eq!(sim.delivered(2, g), vec![1, 2, 3]);
    sim.check(&subscribed);
}

#[test]
fn a_new_owner_waits_for_an_old_owner_that_still_sequences() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 14);
    sim.ring.swap = true;
    let g = 30; // owner n0, replica n1; without n0 (swapped): owner n2, replica n1
    let subscribed = [(1, g), (2, g)];
    sim.subscribe(1, g);
    sim.subscribe(2, g);
    for _ in 0..3 {
        sim.publish(0, g).unwrap();
    }
    sim.run();
    // n1 and n2 drop n0 from their ring; n0 does not know yet and still owns g. n2
    // owns g without its log and asks n0 and n1 for it.
    sim.ring.live.remove(&n(0));
    sim.update_ring(&n(1));
    sim.update_ring(&n(2));
    sim.settle();
    assert_eq!(
        sim.router(2).owned_seq(GuildId(g)),
        None,
        "n2 waits: n0 said it still owns g"
    );
    // n0 goes on sequencing, but its replica (n1) no longer names it owner: no ack.
    let on_old = sim.publish(0, g).unwrap();
    let on_new = sim.publish(1, g).unwrap();
    sim.settle();
    assert_eq!(sim.acked().len(), 3);
    // n0 learns the ring: it sends its final log, n2 takes over and sequences both.
    sim.update_ring(&n(0));
    sim.run();
    let acked: BTreeSet<PublishId> = sim.acked().iter().map(|a| a.0).collect();
    assert!(acked.contains(&on_old) && acked.contains(&on_new));
    assert_eq!(sim.router(2).owned_seq(GuildId(g)), Some(GuildSeq(5)));
    assert_eq!(sim.delivered(2, g), vec![1, 2, 3, 4, 5]);
    assert_eq!(sim.delivered(1, g), vec![1, 2, 3, 4, 5]);
    sim.check(&subscribed);
}

#[test]
fn a_node_alone_in_its_ring_refuses_once_it_has_seen_others() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 13);
    let g = 30;
    // n0 is cut off from both others and its ring holds only itself.
    sim.ring.live = [n(0)].into_iter().collect();
    sim.nodes.get_mut(&n(0)).unwrap().require_replica(true);
    sim.update_ring(&n(0));
    assert_eq!(sim.publish(0, g), Err(PublishError::NoReplica));
    // Never having seen another node, it acknowledges alone.
    sim.nodes.get_mut(&n(0)).unwrap().require_replica(false);
    assert!(sim.publish(0, g).is_ok());
    sim.settle();
    assert_eq!(sim.acked().len(), 1);
}

#[test]
fn a_node_subscribing_from_a_cursor_gets_what_followed_it() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 8);
    let g = 30; // owner n0
    for _ in 0..5 {
        sim.publish(1, g).unwrap();
    }
    sim.run();
    // A session resumed on n2 had seen up to seq 2: n2 subscribes from there.
    let node = n(2);
    sim.nodes
        .get_mut(&node)
        .unwrap()
        .local_subscribe_from(GuildId(g), GuildSeq(2));
    sim.drain(&node);
    sim.run();
    assert_eq!(sim.delivered(2, g), vec![3, 4, 5]);
    // On the owner itself too.
    let node = n(0);
    sim.nodes
        .get_mut(&node)
        .unwrap()
        .local_subscribe_from(GuildId(g), GuildSeq(4));
    sim.drain(&node);
    sim.run();
    assert_eq!(sim.delivered(0, g), vec![5]);
}

#[test]
fn subscriptions_follow_first_and_last_session() {
    let mut sim = Sim::new(3, ClusterConfig::default(), 6);
    let g = 30;
    sim.subscribe(2, g);
    sim.subscribe(2, g);
    sim.run();
    let router = sim.nodes.get_mut(&n(2)).unwrap();
    router.local_unsubscribe(GuildId(g));
    sim.drain(&n(2));
    assert!(
        sim.frames(FrameKind::Unsubscribe).is_empty(),
        "a session is left"
    );
    sim.nodes
        .get_mut(&n(2))
        .unwrap()
        .local_unsubscribe(GuildId(g));
    sim.drain(&n(2));
    sim.run();
    assert_eq!(sim.frames(FrameKind::Unsubscribe), vec![(n(2), n(0), 0)]);
    sim.sent.clear();
    sim.publish(0, g).unwrap();
    sim.run();
    assert!(
        sim.frames(FrameKind::FanoutBatch).is_empty(),
        "nobody subscribed"
    );
    assert!(sim.delivered(2, g).is_empty());
}

#[test]
fn publishes_are_shed_when_bounds_are_reached() {
    let config = ClusterConfig {
        max_pending_publishes: 5,
        max_unreplicated: 3,
        ..ClusterConfig::default()
    };
    let mut sim = Sim::new(3, config, 8);
    let g = 31; // owner n1, replica n2
    for _ in 0..5 {
        sim.publish(0, g).unwrap();
    }
    assert_eq!(sim.publish(0, g), Err(PublishError::Overloaded));
    let id = PublishId(1);
    assert_eq!(
        sim.nodes
            .get_mut(&n(0))
            .unwrap()
            .publish(GuildId(g), "X", Bytes::new(), id),
        Err(PublishError::DuplicatePublishId(id))
    );
    sim.run();
    // The five forwards may reach the owner before one flush: past three, it sheds them.
    let record = sim.records.get_mut(&n(0)).unwrap();
    assert_eq!(record.acked.len() + record.rejected.len(), 5);
    assert!(record.acked.len() >= 3);
    assert!(
        record
            .rejected
            .iter()
            .all(|r| r.1 == PublishError::Overloaded)
    );
    record.rejected.clear();
    let before = sim.router(1).owned_seq(GuildId(g)).unwrap();

    // The owner holds at most three unreplicated events per guild: its own fourth
    // publish is refused, and so is a forward, which the origin hears about.
    for _ in 0..3 {
        sim.publish(1, g).unwrap();
    }
    assert_eq!(sim.publish(1, g), Err(PublishError::Overloaded));
    let shed = sim.publish(0, g).unwrap();
    sim.deliver_all(0, 1);
    sim.deliver_all(1, 0);
    assert_eq!(
        sim.records[&n(0)].rejected,
        vec![(shed, PublishError::Overloaded)]
    );
    assert_eq!(sim.router(0).pending_publishes(), 0);
    sim.run();
    assert_eq!(sim.records[&n(1)].acked.len(), 3);
    assert_eq!(
        sim.router(1).owned_seq(GuildId(g)),
        Some(GuildSeq(before.0 + 3))
    );
}

#[test]
fn the_ring_placement_gives_owner_and_replica() {
    use concord_ring::{Member, RingConfig};
    let ring = Ring::build(RingConfig::default(), ["a", "b", "c"].map(Member::new)).unwrap();
    let p = ring.placement(GuildId(175_928_847_299_117_063)).unwrap();
    assert_eq!(&p.owner, ring.owner_of_guild(175_928_847_299_117_063));
    assert!(p.replica.is_some_and(|r| r != p.owner));
    let none: Option<Arc<Ring>> = None;
    assert_eq!(none.placement(GuildId(1)), None);
}

/// `SIM_SEEDS=N` runs more seeds, `SIM_SEED=K` only seed K, `SIM_TRACE=1 SIM_GUILD=G`
/// prints guild G's frames, ring changes and deliveries.
fn rolling_restart_seeds(shuffle: bool) {
    let only: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok());
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..seeds {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        eprintln!("rolling restart seed {seed}");
        rolling_restart(seed, 6, seed % 2 == 1, shuffle);
    }
}

#[test]
fn a_rolling_restart_loses_nothing_for_a_node_that_stays() {
    rolling_restart_seeds(false);
}

/// Open finding: with a placement that moves every guild between the remaining nodes on
/// each membership change (harsher than the real ring, whose load cap moves some), some
/// interleavings still lose events (seed 6 of `SIM_SEEDS=60`). Run it with
/// `cargo test -p concord-router -- --ignored rolling`.
#[test]
#[ignore = "open finding: losing interleavings remain when every guild moves on each change"]
fn a_rolling_restart_under_reshuffling_placements_loses_nothing() {
    rolling_restart_seeds(true);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn prop_exactly_once_in_order(seed in any::<u64>(), publishes in 1usize..50) {
        exactly_once_everywhere(seed, publishes);
    }

    #[test]
    fn prop_acked_events_survive_a_crash(
        seed in any::<u64>(),
        before in 0usize..30,
        after in 0usize..20,
        victim in 0usize..3,
        swap in any::<bool>(),
    ) {
        acked_survive_a_crash(seed, before, after, victim, swap);
    }
}
