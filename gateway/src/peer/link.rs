//! Peer links: the tonic `concord.v1.Peer/Link` stream, served and dialled.
//!
//! One stream per peer pair: the node with the lexicographically smaller id dials, and
//! both directions use that stream. Each side registers its outbound queue with its
//! router task ([`Input::LinkUp`]) and feeds what it reads to it ([`Input::PeerFrames`]);
//! when the stream ends either way, [`Input::LinkDown`] follows and the dialer tries again
//! with jittered exponential backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::Stream;
use rand::Rng as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use concord_router::cluster::{NodeId, PeerFrame};

use super::auth::{NODE_HEADER, PeerKey};
use super::wire::{decode_batch, encode_batch};
use super::{Input, LINK_QUEUE, RouterHandle};
use crate::cluster::{ClusterView, NodeState};
use crate::grpc::pb;
use pb::peer_client::PeerClient;
use pb::peer_server::{Peer, PeerServer};

/// The largest peer message accepted: a flush's batch of events, each at most the
/// publish limit. 64 MiB bounds memory per message while fitting any flush we make.
const MAX_MESSAGE: usize = 64 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

fn next_link() -> u64 {
    NEXT_LINK.fetch_add(1, Ordering::Relaxed)
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<pb::PeerMessage, Status>> + Send>>;

/// The outbound half: the router task's batches, one message each.
fn outbound(rx: mpsc::Receiver<Vec<PeerFrame>>) -> impl Stream<Item = pb::PeerMessage> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|batch| {
            let message = encode_batch(batch);
            crate::metrics::peer_bytes_out(prost::Message::encoded_len(&message));
            (message, rx)
        })
    })
}

/// Reads a link until it ends or sends a bad frame, then reports it down.
async fn read_link(
    peer: NodeId,
    link: u64,
    mut inbound: Streaming<pb::PeerMessage>,
    router: RouterHandle,
) {
    loop {
        let next = tokio::select! {
            // The router task stopped (shutdown): stop reading.
            () = router.closed() => return,
            next = inbound.message() => next,
        };
        match next {
            Ok(Some(message)) => match decode_batch(message) {
                Ok(frames) => {
                    let input = Input::PeerFrames {
                        from: peer.clone(),
                        frames,
                    };
                    if router.send(input).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(%peer, "bad peer frame, dropping the link: {e}");
                    crate::metrics::peer_link_event("bad_frame");
                    break;
                }
            },
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%peer, "peer link read failed: {status}");
                break;
            }
        }
    }
    let _ = router.send(Input::LinkDown { node: peer, link }).await;
}

/// The `Peer` service: accepts links from nodes with smaller ids.
#[derive(Debug, Clone)]
pub struct PeerService {
    key: PeerKey,
    router: RouterHandle,
}

impl PeerService {
    /// The service as a tonic server.
    pub fn server(key: PeerKey, router: RouterHandle) -> PeerServer<PeerService> {
        PeerServer::new(PeerService { key, router }).max_decoding_message_size(MAX_MESSAGE)
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<NodeId, Status> {
        let md = req.metadata();
        let node = md
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|n| !n.is_empty());
        let token = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (node, token) {
            (Some(node), Some(token)) if self.key.verify(node, token) => Ok(NodeId::from(node)),
            _ => {
                crate::metrics::peer_link_event("unauthenticated");
                Err(Status::unauthenticated(
                    "missing or invalid peer credentials",
                ))
            }
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type LinkStream = MessageStream;

    async fn link(
        &self,
        request: Request<Streaming<pb::PeerMessage>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let peer = self.authenticate(&request)?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let link = next_link();
        self.router
            .send(Input::LinkUp {
                node: peer.clone(),
                link,
                tx,
            })
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        tokio::spawn(read_link(peer, link, inbound, self.router.clone()));
        let stream = futures_util::StreamExt::map(outbound(rx), Ok);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Why one dial attempt ended.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("link: {0}")]
    Link(#[from] Status),
    #[error("node id or token is not valid metadata")]
    Metadata,
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Dials every peer whose id is greater than `me`, following `view`, until `stop`.
pub async fn dial_peers(
    me: NodeId,
    key: PeerKey,
    router: RouterHandle,
    mut view: watch::Receiver<Arc<ClusterView>>,
    stop: CancellationToken,
) {
    // Keyed by address and generation: a peer that restarted (same address, new
    // generation) is dialled at once, not after the backoff its old incarnation grew.
    let mut dialers: HashMap<NodeId, ((SocketAddr, u64), CancellationToken)> = HashMap::new();
    loop {
        let snapshot = view.borrow_and_update().clone();
        let wanted: HashMap<NodeId, (SocketAddr, u64)> = snapshot
            .members
            .iter()
            .filter(|m| m.node_id.as_str() > me.as_str() && m.state != NodeState::Down)
            .filter_map(|m| m.peer_addr.map(|a| (m.node_id.clone(), (a, m.generation))))
            .collect();
        dialers.retain(|node, (target, token)| {
            let keep = wanted.get(node) == Some(target);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (node, target) in wanted {
            dialers.entry(node.clone()).or_insert_with(|| {
                let token = stop.child_token();
                tokio::spawn(dial_loop(
                    me.clone(),
                    key.clone(),
                    node,
                    target.0,
                    router.clone(),
                    token.clone(),
                ));
                (target, token)
            });
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = view.changed() => if changed.is_err() { return },
        }
    }
}

async fn dial_loop(
    me: NodeId,
    key: PeerKey,
    peer: NodeId,
    addr: SocketAddr,
    router: RouterHandle,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = dial_once(&me, &key, &peer, addr, &router) => r,
        };
        match result {
            Err(DialError::ShuttingDown) => return,
            Err(e) => tracing::debug!(%peer, %addr, "peer link ended: {e}"),
            Ok(()) => tracing::debug!(%peer, %addr, "peer link closed"),
        }
        // A link that stayed up a while starts the backoff over.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        // Full jitter in [backoff/2, backoff], so restarted nodes do not dial in step.
        let half = backoff / 2;
        let wait = half + half.mul_f64(rand::rng().random::<f64>());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn dial_once(
    me: &NodeId,
    key: &PeerKey,
    peer: &NodeId,
    addr: SocketAddr,
    router: &RouterHandle,
) -> Result<(), DialError> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = PeerClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let mut request = Request::new(outbound(rx));
    let md = request.metadata_mut();
    md.insert(
        NODE_HEADER,
        me.as_str().parse().map_err(|_| DialError::Metadata)?,
    );
    md.insert(
        "authorization",
        format!("Bearer {}", key.token(me.as_str()))
            .parse()
            .map_err(|_| DialError::Metadata)?,
    );
    let inbound = client.link(request).await?.into_inner();
    let link = next_link();
    router
        .send(Input::LinkUp {
            node: peer.clone(),
            link,
            tx,
        })
        .await
        .map_err(|_| DialError::ShuttingDown)?;
    read_link(peer.clone(), link, inbound, router.clone()).await;
    Ok(())
}
