//! Node settings: flags, `CONCORD_*` environment variables, an optional TOML file, and
//! defaults, in that order of precedence.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use concord_protocol::codec::ZstdParams;
use concord_ring::{DEFAULT_BALANCE_FACTOR_PERCENT, RingConfig, RingError};
use concord_router::ReplayLimits;
use serde::Deserialize;

use crate::cluster::{MAX_NODE_ID_LEN, Timing};

/// The secret a node uses when none is configured. Dev mode only: anyone can mint tokens.
pub const DEV_TOKEN_SECRET: &str = "concord-dev-token-secret";
/// The publish secret a node uses when none is configured (dev mode only).
pub const DEV_PUBLISH_SECRET: &str = "concord-dev-publish-secret";

/// A duration written as `250ms`, `30s`, `5m`, `24h` or `7d` (a bare number is seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// The text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected e.g. 250ms, 30s, 5m, 24h, 7d")]
pub struct InvalidDuration(String);

impl FromStr for HumanDuration {
    type Err = InvalidDuration;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| InvalidDuration(s.into()))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86_400),
            _ => return Err(InvalidDuration(s.into())),
        };
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(HumanDuration(Duration::from_secs(n))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A `host:port` another node is reached at: an IP address (`10.0.0.7:7946`,
/// `[::1]:7946`) or a DNS name (`concord-0.concord-peers:7946`, a compose service name).
/// Names are resolved when the node starts and, for seeds, again while it is looking for
/// a cluster, so a seed can name a Kubernetes headless Service whose pods come and go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    host: String,
    port: u16,
}

/// The text is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {0:?}: expected host:port, e.g. 10.0.0.7:7946 or concord-0.peers:7946")]
pub struct InvalidHostPort(String);

impl HostPort {
    /// The address, if the host is an IP literal (no lookup needed).
    pub fn literal(&self) -> Option<SocketAddr> {
        let ip: std::net::IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// Every address the name resolves to now (one for an IP literal).
    ///
    /// # Errors
    /// The lookup failed (the name does not exist yet, or no resolver answered).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.literal() {
            return Ok(vec![addr]);
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }

    /// The first address the name resolves to, for an address this node advertises.
    ///
    /// # Errors
    /// The name does not resolve, or resolves to nothing.
    pub async fn resolve_one(&self) -> std::io::Result<SocketAddr> {
        let addrs = self.resolve().await?;
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{self} resolves to no address"),
                )
            })
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> HostPort {
        HostPort {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl FromStr for HostPort {
    type Err = InvalidHostPort;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.into());
        }
        let bad = || InvalidHostPort(s.into());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !name_ok || port == 0 {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.into(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.literal() {
            Some(a) => write!(f, "{a}"),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The zstd-stream settings a node uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ZstdPreset {
    /// Level 3, windowLog 16: a fraction of the memory for most of the ratio.
    Lean,
    /// Discord's published settings: level 6, windowLog 18, hashLog 16, chainLog 16.
    Discord,
}

/// How a clustered node replicates its sessions to their replica nodes (see
/// `crate::hub`), which is what lets a client resume on another node after its host
/// died.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SessionReplication {
    /// A dispatch is written to the client only after the session's replica node
    /// acknowledged the `s` it carries: a client can always resume on another node,
    /// even after its host crashed, and gets every event after what it saw. Costs one
    /// peer round trip of latency per write batch.
    Sync,
    /// Replicated in the background, one batch per replica node per hub burst: no
    /// added latency, but a crash can lose what the host wrote in its last moments, so
    /// some clients of a crashed host get op 9 (identify again). Drains and resumes on
    /// another node while the host is alive lose nothing.
    Async,
    /// Not replicated: a session lives and dies with its host.
    Off,
}

/// `concord serve` settings. Every field is optional here: a flag wins over the
/// environment, which wins over the `--config` file, which wins over the default.
#[derive(Args, Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of these settings (kebab-case keys).
    #[arg(long, env = "CONCORD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Client WebSocket listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "CONCORD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// API listen address: HTTP and gRPC publish, Discord REST shim [default: 127.0.0.1:8081].
    #[arg(long, env = "CONCORD_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Admin listen address: /metrics, /healthz, /readyz, /admin/drain [default: 127.0.0.1:9090].
    #[arg(long, env = "CONCORD_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// The gateway URL clients are told to use (READY's resume_gateway_url, /gateway)
    /// [default: ws://<listen>].
    #[arg(long, env = "CONCORD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// This node's id [default: n1].
    #[arg(long, env = "CONCORD_NODE_ID")]
    pub node_id: Option<String>,
    /// HMAC secret that client tokens are signed with. Unset: dev mode.
    #[arg(long, env = "CONCORD_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Bearer secret publishers must send. Unset: dev mode.
    #[arg(long, env = "CONCORD_PUBLISH_SECRET", hide_env_values = true)]
    pub publish_secret: Option<String>,
    /// Heartbeat interval sent in Hello [default: 41250ms].
    #[arg(long, env = "CONCORD_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<HumanDuration>,
    /// How long a dropped session stays resumable [default: 2m].
    #[arg(long, env = "CONCORD_RESUME_WINDOW")]
    pub resume_window: Option<HumanDuration>,
    /// Most events a session's replay buffer keeps [default: 1024].
    #[arg(long, env = "CONCORD_REPLAY_MAX_EVENTS")]
    pub replay_max_events: Option<usize>,
    /// Most event bytes a session's replay buffer keeps [default: 1048576].
    #[arg(long, env = "CONCORD_REPLAY_MAX_BYTES")]
    pub replay_max_bytes: Option<usize>,
    /// Most dispatches queued for one connection before it is closed with 4000 to resume
    /// [default: 512]. Must be below --replay-max-events.
    #[arg(long, env = "CONCORD_SESSION_QUEUE")]
    pub session_queue: Option<u64>,
    /// Events kept per guild log [default: 256].
    #[arg(long, env = "CONCORD_GUILD_LOG_EVENTS")]
    pub guild_log_events: Option<usize>,
    /// Most open client connections [default: 18000, below the 20k open-file cap].
    #[arg(long, env = "CONCORD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Identifies this node accepts per 5 s [default: 1000].
    #[arg(long, env = "CONCORD_IDENTIFY_MAX_CONCURRENCY")]
    pub identify_max_concurrency: Option<u32>,
    /// How long a client may take to finish the WebSocket handshake [default: 10s].
    #[arg(long, env = "CONCORD_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<HumanDuration>,
    /// How long a drain waits for clients to leave before exiting [default: 10s].
    #[arg(long, env = "CONCORD_DRAIN_GRACE")]
    pub drain_grace: Option<HumanDuration>,
    /// zstd-stream settings [default: lean].
    #[arg(long, env = "CONCORD_ZSTD", value_enum)]
    pub zstd: Option<ZstdPreset>,
    /// Largest published event body in bytes [default: 262144].
    #[arg(long, env = "CONCORD_MAX_EVENT_BYTES")]
    pub max_event_bytes: Option<usize>,
    /// Log filter, tracing-subscriber syntax [default: info].
    #[arg(long, env = "CONCORD_LOG")]
    pub log: Option<String>,
    /// zstd-dict dictionaries to serve besides the shipped one; the last is the newest
    /// (what clients that name none get). Comma-separated in the environment.
    #[arg(long = "dict", env = "CONCORD_DICTS", value_delimiter = ',')]
    pub dicts: Option<Vec<PathBuf>>,
    /// The API URL clients are told to download dictionaries from [default: http://<api-listen>].
    #[arg(long, env = "CONCORD_PUBLIC_API_URL")]
    pub public_api_url: Option<String>,
    /// Retrain a zstd-dict dictionary on this node's recent traffic this often, e.g. `10m`,
    /// and make it the newest [default: off; `POST /admin/dictionaries/retrain` any time].
    #[arg(long, env = "CONCORD_DICT_RETRAIN")]
    pub dict_retrain: Option<HumanDuration>,
    /// UDP address to gossip on; turns clustering on (needs --cluster-secret)
    /// [default: off, a standalone node that owns every guild].
    #[arg(long, env = "CONCORD_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,
    /// The gossip address other nodes are told to send to, `ip:port` or `name:port`
    /// (resolved once at start) [default: the bound --gossip-listen].
    #[arg(long, env = "CONCORD_GOSSIP_ADVERTISE")]
    pub gossip_advertise: Option<HostPort>,
    /// TCP address the peer-link (tonic) server listens on; used only with --gossip-listen.
    /// Without it this node still dials peers with greater ids, but peers with smaller ids
    /// cannot reach it, so set it on every clustered node.
    #[arg(long, env = "CONCORD_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// The peer-link address other nodes are told to use, `ip:port` or `name:port`
    /// (resolved once at start) [default: --peer-listen].
    #[arg(long, env = "CONCORD_PEER_ADVERTISE")]
    pub peer_advertise: Option<HostPort>,
    /// Gossip address of a node to join through, `ip:port` or `name:port` (a name is
    /// resolved again every few seconds until the node has joined, and may stand for
    /// several nodes, like a Kubernetes headless Service); repeatable, comma-separated in
    /// the environment [default: none, this node starts a cluster].
    #[arg(long = "seed", env = "CONCORD_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<HostPort>>,
    /// The node that starts the cluster when its seeds name no other live node (the
    /// first boot of a StatefulSet: pod 0). Any other node with seeds waits for one of
    /// them to answer, so nodes started together never form two clusters. The same
    /// value on every node [default: none; a node without --seed starts a cluster].
    #[arg(long, env = "CONCORD_BOOTSTRAP_NODE")]
    pub bootstrap_node: Option<String>,
    /// Secret every gossip datagram is authenticated with (HMAC-SHA256); the same on
    /// every node. Required with --gossip-listen.
    #[arg(long, env = "CONCORD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// How often each node probes one member [default: 500ms].
    #[arg(long, env = "CONCORD_GOSSIP_PROBE_PERIOD")]
    pub gossip_probe_period: Option<HumanDuration>,
    /// How long a probe waits for a direct answer before asking others [default: 200ms].
    #[arg(long, env = "CONCORD_GOSSIP_PROBE_RTT")]
    pub gossip_probe_rtt: Option<HumanDuration>,
    /// How long a suspect member has to refute before it is declared down [default: 2s].
    #[arg(long, env = "CONCORD_GOSSIP_SUSPECT_TIMEOUT")]
    pub gossip_suspect_timeout: Option<HumanDuration>,
    /// How often pending gossip is pushed to 3 random members [default: 200ms].
    #[arg(long, env = "CONCORD_GOSSIP_INTERVAL")]
    pub gossip_interval: Option<HumanDuration>,
    /// How long a down member stays listed in /cluster [default: 10m].
    #[arg(long, env = "CONCORD_GOSSIP_DOWN_RETENTION")]
    pub gossip_down_retention: Option<HumanDuration>,
    /// The ring's load cap in percent of a node's fair share: no node owns more than
    /// ceil(PERCENT / 100 x partitions / nodes) partitions. Higher moves fewer partitions when a
    /// node joins or leaves (BENCHMARKS.md, "Ring": 120 keeps a join near the ideal up to about
    /// 300 nodes, 150 up to 1000). Must be the same on every node: gossip from a node with
    /// another value is refused [default: 105].
    #[arg(long, env = "CONCORD_RING_BALANCE_FACTOR")]
    pub ring_balance_factor: Option<u32>,
    /// How sessions are replicated to another node so clients can resume anywhere,
    /// even after their node crashed: sync, async or off [default: sync].
    #[arg(long, env = "CONCORD_SESSION_REPLICATION", value_enum)]
    pub session_replication: Option<SessionReplication>,
}

macro_rules! fill_from {
    ($target:ident, $source:ident; $($field:ident),* $(,)?) => {
        $( if $target.$field.is_none() { $target.$field = $source.$field; } )*
    };
}

/// Why settings could not be resolved. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or has unknown keys.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: Box<toml::de::Error>,
    },
    /// A setting has a value that cannot work.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl ServeArgs {
    /// Fills unset fields from the `--config` file, if one was given.
    pub fn with_file(mut self) -> Result<ServeArgs, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file = ServeArgs::from_file(&path)?;
        fill_from!(self, file;
            listen, api_listen, admin_listen, public_url, node_id, token_secret,
            publish_secret, heartbeat_interval, resume_window, replay_max_events,
            replay_max_bytes, session_queue, guild_log_events, max_connections,
            identify_max_concurrency, handshake_timeout, drain_grace, zstd,
            max_event_bytes, log, dicts, public_api_url, dict_retrain, gossip_listen,
            gossip_advertise, peer_listen, peer_advertise, seeds, bootstrap_node, cluster_secret,
            gossip_probe_period, gossip_probe_rtt, gossip_suspect_timeout, gossip_interval,
            gossip_down_retention, ring_balance_factor, session_replication);
        Ok(self)
    }

    fn from_file(path: &Path) -> Result<ServeArgs, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    /// Applies defaults and checks the result.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let dev_mode = self.token_secret.is_none() || self.publish_secret.is_none();
        let replay = ReplayLimits {
            max_events: self.replay_max_events.unwrap_or(1024),
            max_bytes: self.replay_max_bytes.unwrap_or(1 << 20),
        };
        let session_queue = self.session_queue.unwrap_or(512);
        if session_queue == 0 || session_queue >= replay.max_events as u64 {
            return Err(ConfigError::Invalid(format!(
                "session-queue ({session_queue}) must be between 1 and replay-max-events ({}) so a slow client can still resume",
                replay.max_events
            )));
        }
        let defaults = Timing::default();
        let gossip_timing = Timing {
            probe_period: self
                .gossip_probe_period
                .map_or(defaults.probe_period, |d| d.0),
            probe_rtt: self.gossip_probe_rtt.map_or(defaults.probe_rtt, |d| d.0),
            suspect_timeout: self
                .gossip_suspect_timeout
                .map_or(defaults.suspect_timeout, |d| d.0),
            gossip_interval: self
                .gossip_interval
                .map_or(defaults.gossip_interval, |d| d.0),
            down_retention: self
                .gossip_down_retention
                .map_or(defaults.down_retention, |d| d.0),
        };
        gossip_timing.validate().map_err(ConfigError::Invalid)?;
        let seeds = self.seeds.unwrap_or_default();
        match (&self.gossip_listen, &self.cluster_secret) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "--cluster-secret (or CONCORD_CLUSTER_SECRET) is required with --gossip-listen: every gossip datagram is authenticated with it".into(),
                ));
            }
            (Some(_), Some(secret)) if secret.is_empty() => {
                return Err(ConfigError::Invalid(
                    "cluster-secret must not be empty".into(),
                ));
            }
            (None, _) if !seeds.is_empty() || self.gossip_advertise.is_some() => {
                return Err(ConfigError::Invalid(
                    "--seed and --gossip-advertise need --gossip-listen".into(),
                ));
            }
            _ => {}
        }
        let config = Config {
            listen,
            api_listen: self
                .api_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8081))),
            admin_listen: self
                .admin_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
            public_url: self.public_url,
            node_id: self.node_id.unwrap_or_else(|| "n1".into()),
            token_secret: self.token_secret.unwrap_or_else(|| DEV_TOKEN_SECRET.into()),
            publish_secret: self
                .publish_secret
                .unwrap_or_else(|| DEV_PUBLISH_SECRET.into()),
            dev_mode,
            heartbeat_interval: self
                .heartbeat_interval
                .map_or(Duration::from_millis(41_250), |d| d.0),
            resume_window: self.resume_window.map_or(Duration::from_secs(120), |d| d.0),
            replay,
            session_queue,
            guild_log_events: self.guild_log_events.unwrap_or(256),
            max_connections: self.max_connections.unwrap_or(18_000),
            identify_max_concurrency: self.identify_max_concurrency.unwrap_or(1000),
            handshake_timeout: self
                .handshake_timeout
                .map_or(Duration::from_secs(10), |d| d.0),
            drain_grace: self.drain_grace.map_or(Duration::from_secs(10), |d| d.0),
            zstd: match self.zstd.unwrap_or(ZstdPreset::Lean) {
                ZstdPreset::Lean => ZstdParams::LEAN,
                ZstdPreset::Discord => ZstdParams::DISCORD,
            },
            max_event_bytes: self.max_event_bytes.unwrap_or(256 * 1024),
            log: self.log.unwrap_or_else(|| "info".into()),
            dicts: self.dicts.unwrap_or_default(),
            public_api_url: self.public_api_url,
            dict_retrain: self.dict_retrain.map(|d| d.0),
            gossip_listen: self.gossip_listen,
            gossip_advertise: self.gossip_advertise,
            peer_listen: self.peer_listen,
            peer_advertise: self.peer_advertise,
            seeds,
            bootstrap_node: self.bootstrap_node,
            cluster_secret: self.cluster_secret,
            gossip_timing,
            ring: RingConfig {
                balance_factor_percent: self
                    .ring_balance_factor
                    .unwrap_or(DEFAULT_BALANCE_FACTOR_PERCENT),
                ..RingConfig::default()
            },
            session_replication: self.session_replication.unwrap_or(SessionReplication::Sync),
        };
        if let Err(RingError::BalanceFactorOutOfRange {
            requested,
            min,
            max,
        }) = config.ring.validate()
        {
            return Err(ConfigError::Invalid(format!(
                "ring-balance-factor must be {min} to {max} (percent of a node's fair share), got {requested}"
            )));
        }
        if config.node_id.is_empty() || config.node_id.len() > MAX_NODE_ID_LEN {
            return Err(ConfigError::Invalid(format!(
                "node-id must be 1 to {MAX_NODE_ID_LEN} bytes"
            )));
        }
        if config.heartbeat_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "heartbeat-interval must be at least 100ms".into(),
            ));
        }
        if config
            .dict_retrain
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            return Err(ConfigError::Invalid(
                "dict-retrain must be at least 1s (a retrain takes about a second of CPU)".into(),
            ));
        }
        if config.identify_max_concurrency == 0 || config.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "identify-max-concurrency and max-connections must be positive".into(),
            ));
        }
        Ok(config)
    }
}

/// Resolved node settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Client WebSocket listen address.
    pub listen: SocketAddr,
    /// API listen address.
    pub api_listen: SocketAddr,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// Advertised gateway URL; `None` means `ws://<bound client address>`.
    pub public_url: Option<String>,
    /// This node's id.
    pub node_id: String,
    /// Token HMAC secret.
    pub token_secret: String,
    /// Publish bearer secret.
    pub publish_secret: String,
    /// Whether a secret was left at its dev default.
    pub dev_mode: bool,
    /// Heartbeat interval sent in Hello.
    pub heartbeat_interval: Duration,
    /// How long a dropped session stays resumable.
    pub resume_window: Duration,
    /// Per-session replay buffer limits.
    pub replay: ReplayLimits,
    /// Most unwritten dispatches per connection before a resumable close.
    pub session_queue: u64,
    /// Events kept per guild log.
    pub guild_log_events: usize,
    /// Most open client connections.
    pub max_connections: usize,
    /// Identifies per 5 s.
    pub identify_max_concurrency: u32,
    /// WebSocket handshake timeout.
    pub handshake_timeout: Duration,
    /// Drain grace period.
    pub drain_grace: Duration,
    /// zstd-stream parameters.
    pub zstd: ZstdParams,
    /// Largest published event body.
    pub max_event_bytes: usize,
    /// Log filter.
    pub log: String,
    /// Extra zstd-dict dictionary files.
    pub dicts: Vec<PathBuf>,
    /// Advertised API URL; `None` means `http://<bound API address>`.
    pub public_api_url: Option<String>,
    /// How often to retrain a dictionary on recent traffic; `None`: only on request.
    pub dict_retrain: Option<Duration>,
    /// Gossip UDP listen address; `None`: standalone.
    pub gossip_listen: Option<SocketAddr>,
    /// Advertised gossip address; `None`: the bound gossip address.
    pub gossip_advertise: Option<HostPort>,
    /// Peer-link listen address (advertised only, for now).
    pub peer_listen: Option<SocketAddr>,
    /// Advertised peer-link address; `None`: `peer_listen`.
    pub peer_advertise: Option<HostPort>,
    /// Gossip addresses to join through.
    pub seeds: Vec<HostPort>,
    /// The node that starts the cluster when its seeds name no other node.
    pub bootstrap_node: Option<String>,
    /// Gossip MAC secret; always set when `gossip_listen` is.
    pub cluster_secret: Option<String>,
    /// Gossip timing.
    pub gossip_timing: Timing,
    /// How the ring is built; the same on every node of a cluster.
    pub ring: RingConfig,
    /// How sessions are replicated (clustered nodes only).
    pub session_replication: SessionReplication,
}

impl Config {
    /// Defaults for tests and embedding: every address on port 0.
    pub fn for_tests() -> Config {
        let mut c = ServeArgs {
            token_secret: Some("test-token-secret".into()),
            publish_secret: Some("test-publish-secret".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"));
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        c.listen = any;
        c.api_listen = any;
        c.admin_listen = any;
        c
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(
            "7".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(7)
        );
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = std::env::temp_dir().join(format!("concord-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("concord.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1000\"\napi-listen = \"127.0.0.1:1001\"\nresume-window = \"30s\"\nzstd = \"discord\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:2000".parse().unwrap()),
            ..ServeArgs::default()
        };
        let c = args.with_file().unwrap().resolve().unwrap();
        assert_eq!(c.listen.port(), 2000, "the flag wins");
        assert_eq!(c.api_listen.port(), 1001, "the file fills the rest");
        assert_eq!(c.resume_window, Duration::from_secs(30));
        assert_eq!(c.zstd, ZstdParams::DISCORD);
        assert!(c.dev_mode);

        std::fs::write(&path, "lisen = 1\n").unwrap();
        let bad = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert!(matches!(bad.with_file(), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn host_port_takes_addresses_and_names() {
        let ip: HostPort = "10.0.0.7:7946".parse().unwrap();
        assert_eq!(ip.literal(), Some("10.0.0.7:7946".parse().unwrap()));
        let v6: HostPort = "[::1]:7946".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:7946");
        let name: HostPort = "concord-0.concord-peers.default.svc:7946".parse().unwrap();
        assert_eq!(name.literal(), None);
        assert_eq!(name.to_string(), "concord-0.concord-peers.default.svc:7946");
        for bad in [
            "",
            "node",
            "node:",
            ":7946",
            "node:0",
            "node:99999",
            "a b:1",
            "x/y:2",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn host_port_resolves_localhost() {
        let name: HostPort = "localhost:7946".parse().unwrap();
        let addr = name.resolve_one().await.unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 7946);
    }

    #[test]
    fn gossip_needs_a_secret_and_seeds_need_gossip() {
        let gossip = ServeArgs {
            gossip_listen: Some("127.0.0.1:7946".parse().unwrap()),
            ..ServeArgs::default()
        };
        let err = gossip.clone().resolve().unwrap_err().to_string();
        assert!(err.contains("cluster-secret"), "{err}");
        let c = ServeArgs {
            cluster_secret: Some("S".into()),
            seeds: Some(vec!["127.0.0.1:7956".parse().unwrap()]),
            gossip_probe_period: Some("1s".parse().unwrap()),
            ..gossip
        }
        .resolve()
        .unwrap();
        assert_eq!(c.seeds.len(), 1);
        assert_eq!(c.gossip_timing.probe_period, Duration::from_secs(1));
        assert_eq!(c.gossip_timing.suspect_timeout, Duration::from_secs(2));

        let seeds_alone = ServeArgs {
            seeds: Some(vec!["127.0.0.1:7956".parse().unwrap()]),
            ..ServeArgs::default()
        };
        assert!(matches!(
            seeds_alone.resolve(),
            Err(ConfigError::Invalid(_))
        ));
        let bad_timing = ServeArgs {
            gossip_probe_rtt: Some("2s".parse().unwrap()),
            ..ServeArgs::default()
        };
        assert!(matches!(bad_timing.resolve(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn rejects_a_queue_that_outgrows_the_replay_buffer() {
        let args = ServeArgs {
            session_queue: Some(2000),
            ..ServeArgs::default()
        };
        assert!(matches!(args.resolve(), Err(ConfigError::Invalid(_))));
    }
}
