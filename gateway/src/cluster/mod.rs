//! # Cluster membership and ring agreement
//!
//! Turns single nodes into a cluster that agrees on who is in it and on the ring. Nodes
//! find each other through SWIM gossip ([foca]) over UDP, tell each other their state
//! (`joining`, `active`, `draining`), and each node builds the same consistent-hash ring
//! ([`concord_ring`]) from the `active` members. The rest of the node reads an immutable
//! [`ClusterView`] snapshot from a `tokio::sync::watch` channel.
//!
//! What it does not do: forward publishes, replicate guild logs or run peer links. Those
//! live in [`crate::peer`], which follows [`ClusterView`] (the ring for guild placement,
//! members marked down, each member's advertised peer address).
//!
//! ## How it works
//! - **Identity** ([`NodeIdentity`]): node id, generation (Unix ms at start) and the
//!   advertised gossip address, client URL, API URL, admin address and peer address. foca
//!   keeps one identity per gossip address and the higher generation wins, so a node
//!   restarted with the same id replaces its old incarnation; a node wrongly declared
//!   down renews itself with the next generation and rejoins.
//! - **Joining**: a node without `--seed` starts a cluster and is `active` at once. A node
//!   with seeds is `joining` and announces itself to every seed each second until it
//!   knows a live member. Seeds may be DNS names, resolved again every [`RESOLVE_EVERY`]
//!   ([`resolve_seeds`], [`Membership::set_seeds`]); a node whose seeds name no node but
//!   itself waits, unless it is the `--bootstrap-node` ([`MembershipConfig::bootstrap`]),
//!   which starts the cluster and merges into another one once its seeds resolve; it turns `active` once foca reports it joined and it has heard
//!   every live member's state (at most [`membership::JOIN_SETTLE`], 2 s, later). Until
//!   then it has no ring, so a newcomer never briefly believes it owns everything.
//! - **State**: each node announces its own state as a versioned foca custom broadcast
//!   ([`state`]); it re-announces when it sees a new member and every 5 s, because foca
//!   stops disseminating a broadcast after a few transmissions. On drain (SIGTERM,
//!   `POST /admin/drain`) it announces `draining` and leaves the ring at once; when it
//!   stops it tells the others it left. Members foca declares down are `down`, and stay
//!   listed for `--gossip-down-retention` (10 min).
//! - **Ring**: rebuilt from the `active` ids (this node included when active) on every
//!   membership change, only when that set changed. [`concord_ring::Ring`] is a pure
//!   function of the set, so nodes agree on the ring (and its version) as soon as they
//!   agree on the set, whatever order gossip arrived in.
//! - **Authentication** ([`frame`]): every datagram is `[version 1][16-byte truncated
//!   HMAC-SHA256 over version || payload][foca payload]`, keyed by `--cluster-secret`.
//!   A datagram with a bad tag, another version, too few bytes or a payload foca refuses is
//!   dropped and counted in `concord_gossip_dropped_total{reason="mac"|"version"|"short"|"decode"}`;
//!   it never reaches foca (except `decode`, which is authentic) and changes nothing.
//!
//! ## Convergence bound
//! After a node dies, every survivor marks it down and rebuilds its ring within
//! [`Timing::convergence_bound`]: `2 (N - 1) * probe_period + suspect_timeout +
//! ceil(log3(N - 1)) * gossip_interval`. With the defaults (probe period 500 ms, suspect
//! timeout 2 s, gossip interval 200 ms) that is **4.2 s for 3 nodes**, 5.2 s for 4.
//! Measured on loopback: 2.8-3.4 s (`gateway/tests/cluster.rs` prints it; the simulation
//! tests in `membership.rs` check the bound over 60 seeded runs).
//!
//! ## Main types and call order
//! 1. [`start`] with the node's [`Advertised`] addresses and, for a clustered node, a
//!    [`Gossip`] (bound UDP socket, seeds, secret, [`Timing`]); without one it runs a
//!    cluster of one (standalone, no socket).
//! 2. [`Cluster::view`] -> `watch::Receiver<Arc<ClusterView>>`: members, states, ring,
//!    [`ClusterView::owner_of_guild`], [`ClusterView::replicas_of_guild`],
//!    [`ClusterView::owned_partitions`]. `GET /cluster` on the admin port serves
//!    [`ClusterView::to_json`].
//! 3. Cancel the drain token to announce `draining`; cancel the stop token to leave, then
//!    await [`Cluster::stopped`].
//!
//! One task owns the [`Membership`] core: it selects on the socket, the earliest timer
//! deadline, drain and stop. foca's timers live in a heap inside the core and fire in
//! deadline order (then foca's own timer order), so they can never be delivered out of
//! order, which foca requires; stale ones are ignored by foca through its timer tokens.
//! The core is sans IO (time is an argument), so `membership.rs` tests whole clusters
//! on a virtual clock and a simulated network, deterministically.
//!
//! # Layout
//! - [`membership`]: the sans-IO core ([`Membership`]), [`Timing`] and the bound.
//! - [`identity`]: [`NodeIdentity`], foca's `Identity`.
//! - [`state`]: [`NodeState`] and its custom broadcasts.
//! - [`frame`]: datagram authentication.
//! - [`view`]: [`ClusterView`], the published snapshot.
//! - this file: [`start`] and the owner task.

pub mod frame;
pub mod identity;
pub mod membership;
pub mod state;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use concord_ring::{NodeId, RingConfig, RingVersion};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::HostPort;
use frame::FrameError;
use membership::Dropped;

pub use frame::PacketKey;
pub use identity::{MAX_NODE_ID_LEN, NodeIdentity};
pub use membership::{Membership, MembershipConfig, Timing};
pub use state::NodeState;
pub use view::{ClusterView, MemberView};

/// Where other nodes and clients reach this node.
#[derive(Debug, Clone)]
pub struct Advertised {
    /// The client WebSocket URL.
    pub client_url: String,
    /// The API base URL.
    pub api_url: String,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// The peer-link address (advertised only, for now).
    pub peer_addr: Option<SocketAddr>,
}

/// A clustered node's gossip settings.
#[derive(Debug)]
pub struct Gossip {
    /// The bound gossip socket.
    pub socket: UdpSocket,
    /// The address other members send to; `None`: the socket's local address.
    pub advertise: Option<SocketAddr>,
    /// Where to join through, as configured; names are resolved again every
    /// [`RESOLVE_EVERY`].
    pub seeds: Vec<HostPort>,
    /// What `seeds` resolved to at start ([`resolve_seeds`]).
    pub resolved_seeds: Vec<SocketAddr>,
    /// Whether this node starts a cluster when the seeds name no node but itself
    /// ([`MembershipConfig::bootstrap`]).
    pub bootstrap: bool,
    /// The cluster secret that keys datagram MACs.
    pub secret: String,
    /// Timing.
    pub timing: Timing,
}

/// Why the cluster layer did not start. Nothing was started; permanent for these settings.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node id is empty or too long to gossip.
    #[error("node id {0:?} must be 1 to {MAX_NODE_ID_LEN} bytes")]
    BadNodeId(String),
    /// The gossip address others would be told is not one they can send to.
    #[error(
        "cannot advertise gossip address {0}: set --gossip-advertise to an address other nodes can reach"
    )]
    Unroutable(SocketAddr),
    /// The socket's address could not be read.
    #[error("gossip socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The running cluster layer of a node.
#[derive(Debug)]
pub struct Cluster {
    view: watch::Receiver<Arc<ClusterView>>,
    gossip_addr: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl Cluster {
    /// The snapshot channel. `borrow()` for the current view, `changed()` to wait.
    pub fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// The advertised gossip address, if gossip is on.
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.gossip_addr
    }

    /// Waits until the owner task has left the cluster and stopped (after the stop token).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Starts the cluster layer of node `node_id`: gossip when `gossip` is given, otherwise a
/// standalone cluster of one. `drain` announces `draining`; `stop` leaves and ends it.
///
/// # Errors
/// [`ClusterError`] when the node id or advertised gossip address cannot work.
pub fn start(
    node_id: &str,
    advertised: Advertised,
    gossip: Option<Gossip>,
    ring: RingConfig,
    drain: CancellationToken,
    stop: CancellationToken,
) -> Result<Cluster, ClusterError> {
    if node_id.is_empty() || node_id.len() > MAX_NODE_ID_LEN {
        return Err(ClusterError::BadNodeId(node_id.into()));
    }
    let generation = generation_now();
    let Some(gossip) = gossip else {
        return Ok(standalone(
            node_id, generation, advertised, ring, drain, stop,
        ));
    };
    let advertise = match gossip.advertise {
        Some(a) => a,
        None => gossip.socket.local_addr()?,
    };
    if advertise.ip().is_unspecified() || advertise.port() == 0 {
        return Err(ClusterError::Unroutable(advertise));
    }
    let identity = NodeIdentity {
        node_id: node_id.into(),
        generation,
        gossip_addr: advertise,
        client_url: advertised.client_url,
        api_url: advertised.api_url,
        admin_addr: advertised.admin_addr,
        peer_addr: advertised.peer_addr,
    };
    let config = MembershipConfig {
        identity,
        seeds: gossip.resolved_seeds,
        bootstrap: gossip.bootstrap,
        timing: gossip.timing,
        rng_seed: rand::random(),
        ring,
    };
    let core = Membership::new(
        config,
        PacketKey::new(gossip.secret.as_bytes(), ring.fingerprint()),
        tokio::time::Instant::now().into_std(),
    );
    tracing::info!(
        node = node_id,
        generation,
        gossip = %advertise,
        state = core.state().as_str(),
        "gossip membership started"
    );
    let (tx, rx) = watch::channel(core.view());
    // Names can stand for nodes that come and go (a headless Service): look again.
    let seeds = gossip.seeds;
    let resolved = seeds.iter().any(|s| s.literal().is_none()).then(|| {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(resolve_again(seeds, tx, stop.clone()));
        rx
    });
    let task = tokio::spawn(own(core, gossip.socket, tx, resolved, drain, stop));
    Ok(Cluster {
        view: rx,
        gossip_addr: Some(advertise),
        task,
    })
}

/// How often seed names are resolved again.
pub const RESOLVE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Every address `seeds` resolve to now. A name that does not resolve (yet) is logged
/// and skipped: a seed may name a pod that is not up.
pub async fn resolve_seeds(seeds: &[HostPort]) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for seed in seeds {
        match seed.resolve().await {
            Ok(found) => addrs.extend(found),
            Err(e) => tracing::debug!(%seed, "seed does not resolve (yet): {e}"),
        }
    }
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// Resolves `seeds` every [`RESOLVE_EVERY`] and sends what changed, until `stop`.
async fn resolve_again(
    seeds: Vec<HostPort>,
    tx: mpsc::Sender<Vec<SocketAddr>>,
    stop: CancellationToken,
) {
    let mut last = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(RESOLVE_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let addrs = resolve_seeds(&seeds).await;
        if last.as_ref() != Some(&addrs) {
            last = Some(addrs.clone());
            if tx.send(addrs).await.is_err() {
                return;
            }
        }
    }
}

/// A generation for this run: Unix milliseconds, so a restart (even of a process that
/// lost all state) gets a higher one as long as the clock does not step back.
fn generation_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .max(1)
}

fn standalone(
    node_id: &str,
    generation: u64,
    advertised: Advertised,
    ring: RingConfig,
    drain: CancellationToken,
    stop: CancellationToken,
) -> Cluster {
    let me = |state| MemberView {
        node_id: NodeId::from(node_id),
        generation,
        state,
        gossip_addr: None,
        client_url: advertised.client_url.clone(),
        api_url: advertised.api_url.clone(),
        admin_addr: advertised.admin_addr,
        peer_addr: advertised.peer_addr,
    };
    let active = Arc::new(ClusterView::standalone(me(NodeState::Active), ring));
    let draining = Arc::new(ClusterView::standalone(me(NodeState::Draining), ring));
    let (tx, rx) = watch::channel(active);
    let task = tokio::spawn(async move {
        tokio::select! {
            () = drain.cancelled() => { tx.send_replace(draining); }
            () = stop.cancelled() => {}
        }
        stop.cancelled().await;
    });
    Cluster {
        view: rx,
        gossip_addr: None,
        task,
    }
}

/// The owner task: the only place the core is touched.
async fn own(
    mut core: Membership,
    socket: UdpSocket,
    view: watch::Sender<Arc<ClusterView>>,
    mut resolved: Option<mpsc::Receiver<Vec<SocketAddr>>>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    // Large enough for any UDP datagram, so an oversized one is read whole and refused by
    // its MAC or by foca's size limit instead of being silently truncated.
    let mut buf = vec![0u8; 65_536];
    let mut published = Published::default();
    // A member with another ring configuration is an operator error worth a warning, but
    // not one per datagram.
    let mut warned_ring_config: Option<std::time::Instant> = None;
    loop {
        flush(&socket, &mut core).await;
        published.update(&view, &mut core);
        let deadline = tokio::time::Instant::from_std(core.poll_timeout());
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let now = tokio::time::Instant::now().into_std();
                    if let Err(dropped) = core.handle_datagram(&buf[..n], now) {
                        crate::metrics::gossip_dropped(dropped.reason());
                        let quiet = warned_ring_config
                            .is_some_and(|at| now < at + std::time::Duration::from_secs(30));
                        let other_ring =
                            matches!(dropped, Dropped::Frame(FrameError::RingConfig(_)));
                        if other_ring && !quiet {
                            warned_ring_config = Some(now);
                            tracing::warn!(
                                %from,
                                "refused {dropped}: every node must run the same ring format \
                                 and --ring-balance-factor (this node: {}%)",
                                core.ring_config().balance_factor_percent
                            );
                        } else {
                            tracing::debug!(%from, len = n, "dropped a gossip datagram: {dropped}");
                        }
                    }
                }
                Err(e) => {
                    // ICMP errors surface here on some platforms; they say nothing about
                    // membership. Pause briefly so a broken socket cannot spin the task.
                    tracing::debug!("gossip receive: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                core.handle_timeout(tokio::time::Instant::now().into_std());
            }
            Some(seeds) = async {
                match &mut resolved {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if core.is_joining() {
                    tracing::info!(?seeds, "seeds resolved");
                }
                core.set_seeds(seeds, tokio::time::Instant::now().into_std());
            }
            () = drain.cancelled(), if core.state() != NodeState::Draining => {
                tracing::info!("draining: leaving the ring");
                core.drain(tokio::time::Instant::now().into_std());
            }
            () = stop.cancelled() => {
                core.leave(tokio::time::Instant::now().into_std());
                flush(&socket, &mut core).await;
                published.update(&view, &mut core);
                tracing::info!("left the cluster");
                return;
            }
        }
    }
}

async fn flush(socket: &UdpSocket, core: &mut Membership) {
    while let Some(t) = core.poll_transmit() {
        if let Err(e) = socket.send_to(&t.datagram, t.to).await {
            // A lost datagram is what SWIM is built to survive; the probe cycle retries.
            tracing::debug!(to = %t.to, "gossip send: {e}");
        }
    }
}

/// What the owner last published, to log and count ring changes.
#[derive(Default)]
struct Published {
    ring: Option<RingVersion>,
}

impl Published {
    fn update(&mut self, tx: &watch::Sender<Arc<ClusterView>>, core: &mut Membership) {
        let Some(view) = core.poll_view() else {
            return;
        };
        for state in [
            NodeState::Joining,
            NodeState::Active,
            NodeState::Draining,
            NodeState::Down,
        ] {
            let n = view.members.iter().filter(|m| m.state == state).count();
            crate::metrics::cluster_members(state.as_str(), n);
        }
        let version = view.ring_version();
        if version != self.ring {
            let owned = view.owned_partitions().len();
            let members: Vec<&str> = view
                .ring
                .as_deref()
                .map(|r| r.members().iter().map(|m| m.id().as_str()).collect())
                .unwrap_or_default();
            tracing::info!(
                version = version.map_or_else(|| "none".to_owned(), |v| v.to_string()),
                ?members,
                owned,
                "ring changed"
            );
            crate::metrics::ring_changed(owned, version.map(|v| v.0));
            self.ring = version;
        }
        tx.send_replace(view);
    }
}
