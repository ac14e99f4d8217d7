//! Starting, running and draining a node.
//!
//! [`start`] takes its listeners as arguments, so tests hand it port-0 sockets and run
//! several nodes in one process. Draining follows one path whatever asked for it
//! (SIGTERM, `POST /admin/drain`, [`Node::drain`]): stop accepting, send op 7 to every
//! client and close their connections with a resumable code, wait for the connection
//! tasks up to the grace period, then stop the API and admin servers. A clustered node
//! announces `draining` as the drain starts (so it leaves the ring at once) and tells the
//! cluster it left as it stops.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::serve::ListenerExt as _;
use concord_protocol::SessionId;
use concord_protocol::zstd_dict::{DictSet, Dictionary};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::api::{self, ApiState};
use crate::cluster::{self, Advertised, ClusterView, Gossip};
use crate::config::{Config, HostPort, SessionReplication};
use crate::conn::{self, Shared};
use crate::dicts::DictStore;
use crate::grpc::PublishService;
use crate::hub::{Continuity, Hub};
use crate::limits::IdentifyLimiter;
use crate::metrics::{self, Metrics};
use crate::peer::auth::PeerKey;
use crate::peer::link::{self, PeerService};
use crate::peer::{RouterHandle, RouterTask, SessionSettings};
use crate::session::Registry;

/// The sockets a node serves.
#[derive(Debug)]
pub struct Listeners {
    /// Client WebSocket connections.
    pub client: TcpListener,
    /// HTTP and gRPC API.
    pub api: TcpListener,
    /// Admin and metrics.
    pub admin: TcpListener,
    /// Gossip (UDP); `None` for a standalone node.
    pub gossip: Option<UdpSocket>,
    /// Peer links (tonic); bound only for a clustered node with `--peer-listen`.
    pub peer: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses in `config`.
    pub async fn bind(config: &Config) -> io::Result<Listeners> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {what} on {addr}: {e}")))
        };
        Ok(Listeners {
            client: bind(config.listen, "client listener").await?,
            api: bind(config.api_listen, "API listener").await?,
            admin: bind(config.admin_listen, "admin listener").await?,
            gossip: match config.gossip_listen {
                Some(addr) => Some(UdpSocket::bind(addr).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot bind gossip on {addr}: {e}"))
                })?),
                None => None,
            },
            peer: match (config.gossip_listen, config.peer_listen) {
                (Some(_), Some(addr)) => Some(bind(addr, "peer listener").await?),
                _ => None,
            },
        })
    }
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// Where clients connect.
    pub client_addr: SocketAddr,
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The gateway URL clients are given.
    pub public_url: String,
    /// The advertised gossip address, when clustered.
    pub gossip_addr: Option<SocketAddr>,
    /// The bound peer-link address, when clustered with a peer listener.
    pub peer_addr: Option<SocketAddr>,
    cluster: tokio::sync::watch::Receiver<Arc<ClusterView>>,
    router: Option<RouterHandle>,
    drain: CancellationToken,
    done: JoinHandle<()>,
}

impl Node {
    /// Starts draining (idempotent).
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// A token that drains the node when cancelled.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// The membership and ring snapshot channel.
    pub fn cluster(&self) -> tokio::sync::watch::Receiver<Arc<ClusterView>> {
        self.cluster.clone()
    }

    /// The cluster router task, when clustered (for its counters).
    pub fn cluster_router(&self) -> Option<RouterHandle> {
        self.router.clone()
    }

    /// Waits until the node has drained and stopped.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// The address `--<flag>` names, resolved now.
async fn advertised(flag: &str, at: &HostPort) -> io::Result<SocketAddr> {
    at.resolve_one().await.map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--{flag} {at} does not resolve: {e}"),
        )
    })
}

/// Starts a node on `listeners`. It runs until drained.
pub async fn start(config: Config, listeners: Listeners) -> io::Result<Node> {
    let config = Arc::new(config);
    let prometheus = metrics::install();
    let metrics = Metrics::new();
    let client_addr = listeners.client.local_addr()?;
    let api_addr = listeners.api.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let peer_addr = match &listeners.peer {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("ws://{client_addr}"));
    let public_api_url = config
        .public_api_url
        .clone()
        .unwrap_or_else(|| format!("http://{api_addr}"));
    let dicts = Arc::new(DictStore::new(load_dictionaries(&config.dicts)?));

    let drain = CancellationToken::new();
    let stop = CancellationToken::new();
    // Before anything is spawned: bad cluster settings must fail the start cleanly.
    let gossip = match (listeners.gossip, &config.cluster_secret) {
        (Some(socket), Some(secret)) => Some(Gossip {
            socket,
            advertise: match &config.gossip_advertise {
                Some(a) => Some(advertised("gossip-advertise", a).await?),
                None => None,
            },
            seeds: config.seeds.clone(),
            resolved_seeds: cluster::resolve_seeds(&config.seeds).await,
            bootstrap: config.seeds.is_empty()
                || config.bootstrap_node.as_deref() == Some(config.node_id.as_str()),
            secret: secret.clone(),
            timing: config.gossip_timing,
        }),
        (Some(_), None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a gossip socket needs a cluster secret",
            ));
        }
        (None, _) => None,
    };
    let cluster = cluster::start(
        &config.node_id,
        Advertised {
            client_url: public_url.clone(),
            api_url: public_api_url.clone(),
            admin_addr,
            // The bound address, so a port-0 listener advertises its real port.
            peer_addr: match &config.peer_advertise {
                Some(a) => Some(advertised("peer-advertise", a).await?),
                None => peer_addr,
            },
        },
        gossip,
        config.ring,
        drain.clone(),
        stop.clone(),
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let cluster_view = cluster.view();
    let gossip_addr = cluster.gossip_addr();
    let clustered = gossip_addr.is_some();
    let registry = Arc::new(Registry::default());
    let mut hub = Hub::new(
        config.guild_log_events,
        config.session_queue,
        metrics.clone(),
    );
    let (subs_tx, subs_rx) = tokio::sync::mpsc::unbounded_channel();
    if clustered {
        hub = hub.clustered(
            subs_tx,
            Continuity {
                mode: config.session_replication,
                me: cluster_view.borrow().node_id.clone(),
                view: cluster_view.clone(),
                registry: registry.clone(),
            },
        );
    }
    let (hub, hub_task) = hub.spawn();
    // Clustered: guild publishes go through the owner, over peer links.
    let mut peer_server = None;
    let mut handoffs = None;
    let router = if clustered {
        let me = cluster_view.borrow().node_id.clone();
        let settings = SessionSettings {
            max_entries: config.replay.max_events,
            resume_window: config.resume_window,
        };
        let task = RouterTask::new(me.clone(), hub.clone(), cluster_view.clone(), settings);
        handoffs = Some(task.handoff_gauge());
        let (router, _router_task) = task.spawn(subs_rx, stop.clone());
        let key = PeerKey::new(
            config
                .cluster_secret
                .as_deref()
                .unwrap_or_default()
                .as_bytes(),
        );
        tokio::spawn(link::dial_peers(
            me,
            key.clone(),
            router.clone(),
            cluster_view.clone(),
            stop.clone(),
        ));
        match listeners.peer {
            Some(listener) => {
                let routes = tonic::service::Routes::new(PeerService::server(key, router.clone()))
                    .into_axum_router();
                peer_server = Some(tokio::spawn(
                    axum::serve(listener.tap_io(no_delay), routes)
                        .with_graceful_shutdown(stop.clone().cancelled_owned())
                        .into_future(),
                ));
            }
            None => tracing::warn!(
                "clustered without --peer-listen: peers with smaller ids cannot link to this node"
            ),
        }
        Some(router)
    } else {
        None
    };
    // Connections get op 7 on this one: a clustered node first lets the cluster learn it
    // is draining (see the supervisor below).
    let close_clients = CancellationToken::new();
    let shared = Arc::new(Shared {
        config: config.clone(),
        public_url: public_url.clone(),
        hub: hub.clone(),
        registry: registry.clone(),
        identify_limiter: Mutex::new(IdentifyLimiter::new(config.identify_max_concurrency)),
        metrics,
        drain: close_clients.clone(),
        dicts: dicts.clone(),
        dict_url_base: format!("{public_api_url}/v1/dictionaries/"),
        router: router.clone(),
    });

    let connections = TaskTracker::new();
    let accept = tokio::spawn(conn::accept_loop(
        listeners.client,
        shared.clone(),
        connections.clone(),
        drain.clone(),
    ));
    let reaper = tokio::spawn(conn::reap_expired(shared.clone(), stop.clone()));
    tokio::spawn(rotate_dictionaries(
        dicts.clone(),
        config.dict_retrain,
        config.resume_window,
        stop.clone(),
    ));
    if let Some(p) = prometheus.clone() {
        tokio::spawn(metrics::upkeep(p, stop.clone()));
    }

    let grpc = tonic::service::Routes::new(PublishService::server(
        config.clone(),
        hub.clone(),
        router.clone(),
    ))
    .into_axum_router();
    let api_router = api::router(ApiState {
        config: config.clone(),
        hub,
        router: router.clone(),
        public_url: public_url.clone(),
        dicts: dicts.clone(),
    })
    .merge(grpc);
    let api_server = tokio::spawn(
        axum::serve(listeners.api.tap_io(no_delay), api_router)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let admin_router = admin::router(AdminState {
        prometheus,
        drain: drain.clone(),
        registry: registry.clone(),
        dicts: dicts.clone(),
        cluster: cluster_view.clone(),
        handoffs,
    });
    let admin_server = tokio::spawn(
        axum::serve(listeners.admin, admin_router)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );

    let grace = config.drain_grace;
    let supervisor_drain = drain.clone();
    // With session replication, the node stays up after its clients left until each
    // session was taken over by the node its client resumed on, so they migrate from a
    // live host (bounded by the grace period; the rest are promoted from replicas).
    let hand_off = router.is_some() && config.session_replication != SessionReplication::Off;
    // A few gossip rounds: long enough for every peer to see this node draining before
    // its clients come to them to resume, and to finish the takeovers still in flight
    // after its last session moved.
    let announce = if router.is_some() {
        config.gossip_timing.gossip_interval * 3
    } else {
        std::time::Duration::ZERO
    };
    let done = tokio::spawn(async move {
        supervisor_drain.cancelled().await;
        let started = tokio::time::Instant::now();
        let _ = accept.await;
        tokio::time::sleep(announce).await;
        // The sessions whose clients are told to go now: the drain waits for these to
        // be taken over. Sessions whose clients left earlier may come back at any time
        // in the resume window; waiting for them would only spend the grace period, and
        // their replicas answer for them once this node is gone.
        let told: Vec<SessionId> = registry
            .all()
            .into_iter()
            .filter(|s| s.lock().attachment.is_some())
            .map(|s| s.id)
            .collect();
        tracing::info!(
            sessions = told.len(),
            "draining: closing client connections with op 7"
        );
        close_clients.cancel();
        connections.close();
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "drain grace period passed with connections still open"
            );
        }
        if hand_off {
            let deadline = started + grace;
            let still_here = || {
                told.iter()
                    .filter(|id| registry.find(**id).is_some())
                    .count()
            };
            while still_here() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            tokio::time::sleep(announce).await;
            let left = still_here();
            if left > 0 {
                tracing::info!(
                    sessions = left,
                    "drain grace passed: sessions not resumed elsewhere yet stay resumable from their replicas"
                );
            } else {
                tracing::info!(
                    sessions = told.len(),
                    detached = registry.len(),
                    "every session told to go moved to another node; detached ones stay resumable from their replicas"
                );
            }
        }
        stop.cancel();
        let _ = reaper.await;
        let _ = api_server.await;
        let _ = admin_server.await;
        if let Some(server) = peer_server {
            // Links are long-lived streams a peer may hold open: give them a moment to
            // close after the router stops, then cut them.
            let abort = server.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(1), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        cluster.stopped().await;
        drop(shared);
        hub_task.abort();
        tracing::info!("drained");
    });

    Ok(Node {
        client_addr,
        api_addr,
        admin_addr,
        public_url,
        gossip_addr,
        peer_addr,
        cluster: cluster_view,
        router,
        drain,
        done,
    })
}

/// Turns Nagle's algorithm off on an accepted API or peer connection. HTTP/2 writes each
/// frame (headers, data, trailers) separately; with Nagle on, a small frame waits for the
/// ACK of the previous one, which the peer delays by up to 40 ms.
fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

/// Retrains every `retrain` interval (when set), and retires dictionaries no session has
/// held for a resume window, until `stop`.
async fn rotate_dictionaries(
    dicts: Arc<DictStore>,
    retrain: Option<std::time::Duration>,
    resume_window: std::time::Duration,
    stop: CancellationToken,
) {
    let prune_every = std::time::Duration::from_secs(5);
    let mut next_retrain = retrain.map(|r| tokio::time::Instant::now() + r);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(prune_every) => {}
        }
        if let (Some(at), Some(every)) = (next_retrain, retrain)
            && tokio::time::Instant::now() >= at
        {
            next_retrain = Some(at + every);
            let store = dicts.clone();
            match tokio::task::spawn_blocking(move || store.retrain()).await {
                Ok(Ok(dict)) => {
                    crate::metrics::dict_rotated();
                    tracing::info!(id = %dict.id(), "retrained a zstd-dict dictionary");
                }
                Ok(Err(e)) => tracing::debug!("no retrain: {e}"),
                Err(e) => tracing::warn!("retrain task failed: {e}"),
            }
        }
        for id in dicts.prune(std::time::Instant::now(), resume_window) {
            tracing::info!(%id, "retired a zstd-dict dictionary no session uses");
        }
        crate::metrics::dictionaries(dicts.current().iter().count());
    }
}

/// The shipped dictionary, then every `--dict` file (the last is the newest). Each one is
/// prepared now, so a bad file stops the node at startup instead of failing clients.
pub fn load_dictionaries(paths: &[std::path::PathBuf]) -> io::Result<DictSet> {
    let mut set = DictSet::new();
    set.insert(Dictionary::default_shipped());
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read dictionary {}: {e}", path.display()),
            )
        })?;
        let dict = Dictionary::from_bytes(bytes)
            .map_err(|e| io::Error::other(format!("invalid dictionary {}: {e}", path.display())))?;
        set.insert(dict);
    }
    for dict in set.iter() {
        let bytes = dict.prepare_encoder().map_err(|e| {
            io::Error::other(format!("cannot prepare dictionary {}: {e}", dict.id()))
        })?;
        tracing::info!(id = %dict.id(), size = dict.bytes().len(), prepared_bytes = bytes, "zstd-dict dictionary loaded");
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries_load_newest_last_and_bad_files_fail_fast() {
        let dir = std::env::temp_dir().join(format!("concord-dicts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("raw.dict");
        std::fs::write(
            &raw,
            b"{\"op\":0,\"t\":\"MESSAGE_CREATE\",\"d\":{\"content\":\"",
        )
        .unwrap();
        let set = load_dictionaries(std::slice::from_ref(&raw)).unwrap();
        assert_eq!(set.len(), 2);
        assert_ne!(
            set.newest().unwrap().id(),
            Dictionary::default_shipped().id()
        );

        let missing = dir.join("missing.dict");
        let err = load_dictionaries(&[missing]).unwrap_err();
        assert!(err.to_string().contains("missing.dict"), "{err}");
        let empty = dir.join("empty.dict");
        std::fs::write(&empty, b"").unwrap();
        assert!(load_dictionaries(&[empty]).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
