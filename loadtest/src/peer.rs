//! Minimal Redis and NATS pub/sub clients, so `run --peer` can put the same subscriber
//! count, payload and publish rate through another broker and compare.
//!
//! Only what fan-out needs is spoken: RESP2 `SUBSCRIBE` and `PUBLISH` for Redis, and core
//! `CONNECT`, `SUB`, `PUB`, `PING` and `PONG` for NATS. No TLS, auth, reconnects, RESP3,
//! headers or JetStream.
//!
//! The wire formats are parsed by sans-IO functions (`parse_redis`, `parse_nats`) over a
//! connection's read buffer: they return a frame and the bytes it took, `None` when more
//! bytes are needed, or [`PeerError::Protocol`] on anything unexpected, and never panic.
//! [`Subscriber`] and [`Publisher`] only move bytes between those and a socket.
//!
//! Call order: [`PeerUrl::parse`], then [`Subscriber::connect`] for every subscriber (it
//! returns once the broker confirmed the subscription), then [`Publisher::connect`] and
//! [`Publisher::publish`] while each subscriber loops on [`Subscriber::next_message`].

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// 16 MiB: the largest bulk string or message accepted. A longer length is garbage (or a
/// load no comparison needs), and buffering it would cost every connection.
const MAX_PAYLOAD: usize = 16 << 20;
/// 64 KiB: the longest header or control line. A NATS `INFO` with cluster URLs is a few KiB.
const MAX_LINE: usize = 64 << 10;
/// Most elements in a RESP array; pub/sub replies have 3 or 4.
const MAX_ARRAY: usize = 1024;
/// Deepest RESP array nesting, which bounds recursion on hostile input.
const MAX_DEPTH: usize = 4;
/// 4 KiB initial read buffer: 10,000+ subscribers each hold one.
const READ_BUF: usize = 4 << 10;
/// A read buffer grown past this by a large message is replaced once it drains.
const SHRINK_ABOVE: usize = 64 << 10;
/// Least free space in the read buffer before a read.
const MIN_READ: usize = 512;
/// Most messages a NATS subscriber holds while waiting for the `PONG` that confirms `SUB`.
const MAX_EARLY: usize = 1024;
/// The one subscription id a NATS subscriber uses.
const NATS_SID: &[u8] = b"1";
/// Quiet mode: no `+OK` after every operation.
const NATS_CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n";

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// Redis pub/sub over RESP2.
    Redis,
    /// NATS core pub/sub.
    Nats,
}

impl PeerKind {
    /// `redis` or `nats`, as in the URL scheme and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Redis => "redis",
            PeerKind::Nats => "nats",
        }
    }

    /// The broker's usual port: 6379 for Redis, 4222 for NATS.
    pub fn default_port(self) -> u16 {
        match self {
            PeerKind::Redis => 6379,
            PeerKind::Nats => 4222,
        }
    }
}

/// A parsed `redis://host[:port]` or `nats://host[:port]` (default ports 6379 / 4222).
///
/// The host is an IP literal (`[::1]` for IPv6) or `localhost`, which means 127.0.0.1;
/// names are not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUrl {
    /// The broker.
    pub kind: PeerKind,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl PeerUrl {
    /// Parses a `--peer` value. A trailing `/` is allowed; paths, credentials and query
    /// strings are not.
    pub fn parse(s: &str) -> Result<PeerUrl, PeerError> {
        let invalid = |why: &str| PeerError::InvalidUrl(format!("{s:?}: {why}"));
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| invalid("expected redis://host:port or nats://host:port"))?;
        let kind = if scheme.eq_ignore_ascii_case("redis") {
            PeerKind::Redis
        } else if scheme.eq_ignore_ascii_case("nats") {
            PeerKind::Nats
        } else {
            return Err(invalid("the scheme must be redis or nats"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '@', '?', '#']) {
            return Err(invalid("paths, credentials and options are not supported"));
        }
        let addr = parse_authority(authority, kind.default_port())
            .ok_or_else(|| invalid("the host must be an IP literal or localhost"))?;
        if addr.port() == 0 {
            return Err(invalid("the port must be 1-65535"));
        }
        Ok(PeerUrl { kind, addr })
    }

    /// `redis` or `nats`.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

impl fmt::Display for PeerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind.name(), self.addr)
    }
}

/// `1.2.3.4[:p]`, `[::1][:p]`, `::1` or `localhost[:p]`.
fn parse_authority(a: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = a.parse::<SocketAddr>() {
        return Some(addr);
    }
    if let Ok(ip) = a.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, default_port));
    }
    if let Some(v6) = a.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let ip = v6.parse::<Ipv6Addr>().ok()?;
        return Some(SocketAddr::new(ip.into(), default_port));
    }
    let (host, port) = match a.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().ok()?),
        None => (a, default_port),
    };
    host.eq_ignore_ascii_case("localhost")
        .then(|| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
}

/// The channel (Redis) or subject (NATS) for a guild: `concord-lt.{guild}`.
pub fn channel(guild: u64) -> String {
    format!("concord-lt.{guild}")
}

/// Why a peer operation failed. After any error but [`PeerError::InvalidUrl`] and
/// [`PeerError::InvalidChannel`] the connection is unusable; drop it.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The `--peer` value is not a supported URL. Nothing was connected; permanent.
    #[error("invalid peer URL {0}")]
    InvalidUrl(String),
    /// The channel cannot be a NATS subject: it is empty or has whitespace or control
    /// bytes. Nothing was sent; permanent for this channel.
    #[error("invalid NATS subject {0:?}")]
    InvalidChannel(String),
    /// Connecting, reading or writing failed. Transient: connect again.
    #[error("peer IO: {0}")]
    Io(#[from] std::io::Error),
    /// The broker sent bytes this client does not expect, or an error reply (`-ERR`).
    /// Permanent: the broker or its configuration disagrees with this client, and the
    /// same request will fail the same way.
    #[error("peer protocol: {0}")]
    Protocol(String),
    /// The broker closed the connection before a reply, or in the middle of a frame.
    /// Transient: connect again.
    #[error("the peer closed the connection")]
    Closed,
}

fn protocol(why: impl Into<String>) -> PeerError {
    PeerError::Protocol(why.into())
}

/// A subscriber connection subscribed to one channel.
#[derive(Debug)]
pub struct Subscriber {
    conn: Conn,
    kind: PeerKind,
    /// NATS messages that arrived between `SUB` and the confirming `PONG`.
    early: VecDeque<(Bytes, usize)>,
}

impl Subscriber {
    /// Connects (from `source`, port 0, when given), subscribes, and returns once the
    /// broker confirmed the subscription: the `subscribe` reply for Redis; for NATS the
    /// `PONG` to a `PING` sent after `CONNECT` and `SUB`.
    pub async fn connect(
        url: &PeerUrl,
        channel: &str,
        source: Option<IpAddr>,
    ) -> Result<Subscriber, PeerError> {
        if url.kind == PeerKind::Nats {
            check_subject(channel)?;
        }
        let mut conn = Conn::open(url.addr, source).await?;
        let mut out = BytesMut::new();
        let mut early = VecDeque::new();
        match url.kind {
            PeerKind::Redis => {
                encode_redis_command(&mut out, &[b"SUBSCRIBE", channel.as_bytes()]);
                conn.write_all(&out).await?;
                let (frame, _) = conn.expect_frame(parse_redis).await?;
                match &frame {
                    RedisFrame::Array(Some(items)) => match items.as_slice() {
                        [
                            RedisFrame::Bulk(Some(kind)),
                            RedisFrame::Bulk(Some(chan)),
                            RedisFrame::Integer(_),
                        ] if kind.eq_ignore_ascii_case(b"subscribe")
                            && chan == channel.as_bytes() => {}
                        _ => return Err(unexpected_redis("a subscribe reply", &frame)),
                    },
                    _ => return Err(unexpected_redis("a subscribe reply", &frame)),
                }
            }
            PeerKind::Nats => {
                out.put_slice(NATS_CONNECT);
                encode_nats_sub(&mut out, channel.as_bytes(), NATS_SID);
                out.put_slice(b"PING\r\n");
                conn.write_all(&out).await?;
                loop {
                    let (frame, used) = conn.expect_frame(parse_nats).await?;
                    match frame {
                        NatsFrame::Pong => break,
                        NatsFrame::Ping => conn.write_all(b"PONG\r\n").await?,
                        NatsFrame::Info | NatsFrame::Ack => {}
                        NatsFrame::Msg { payload, .. } if early.len() < MAX_EARLY => {
                            early.push_back((payload, used));
                        }
                        NatsFrame::Msg { .. } => {
                            return Err(protocol("nats: no PONG after 1024 messages"));
                        }
                        NatsFrame::Error(e) => return Err(protocol(format!("nats: -ERR {e}"))),
                    }
                }
            }
        }
        Ok(Subscriber {
            conn,
            kind: url.kind,
            early,
        })
    }

    /// The next message payload on the channel and the wire bytes its frame took (the
    /// frame overhead and channel name included; control frames such as `PING` are not
    /// counted). Answers NATS `PING` with `PONG`; ignores `+OK`, `INFO` and `PONG`.
    /// `Ok(None)` when the broker closed the connection between frames.
    ///
    /// Cancel-safe, for `tokio::select!`: when the future is dropped, no message is lost
    /// and no `PONG` is left half-written; a later call carries on.
    pub async fn next_message(&mut self) -> Result<Option<(Bytes, usize)>, PeerError> {
        if let Some(early) = self.early.pop_front() {
            return Ok(Some(early));
        }
        match self.kind {
            PeerKind::Redis => {
                let Some((frame, used)) = self.conn.next_frame(parse_redis).await? else {
                    return Ok(None);
                };
                if let RedisFrame::Array(Some(items)) = &frame
                    && let [
                        RedisFrame::Bulk(Some(kind)),
                        RedisFrame::Bulk(Some(_channel)),
                        RedisFrame::Bulk(Some(payload)),
                    ] = items.as_slice()
                    && kind.eq_ignore_ascii_case(b"message")
                {
                    return Ok(Some((payload.clone(), used)));
                }
                Err(unexpected_redis("a message", &frame))
            }
            PeerKind::Nats => loop {
                self.conn.write_owed().await?;
                let Some((frame, used)) = self.conn.next_frame(parse_nats).await? else {
                    return Ok(None);
                };
                match frame {
                    NatsFrame::Msg { payload, .. } => return Ok(Some((payload, used))),
                    NatsFrame::Ping => self.conn.owed.put_slice(b"PONG\r\n"),
                    NatsFrame::Info | NatsFrame::Ack | NatsFrame::Pong => {}
                    NatsFrame::Error(e) => return Err(protocol(format!("nats: -ERR {e}"))),
                }
            },
        }
    }
}

/// A publisher connection.
#[derive(Debug)]
pub struct Publisher {
    conn: Conn,
    kind: PeerKind,
    /// Reused for every publish.
    wbuf: BytesMut,
}

impl Publisher {
    /// Connects. For NATS, also sends `CONNECT` and a `PING`, and returns once the `PONG`
    /// shows the broker accepted the connection.
    pub async fn connect(url: &PeerUrl) -> Result<Publisher, PeerError> {
        let mut conn = Conn::open(url.addr, None).await?;
        if url.kind == PeerKind::Nats {
            let mut out = BytesMut::with_capacity(NATS_CONNECT.len() + 6);
            out.put_slice(NATS_CONNECT);
            out.put_slice(b"PING\r\n");
            conn.write_all(&out).await?;
            loop {
                match conn.expect_frame(parse_nats).await?.0 {
                    NatsFrame::Pong => break,
                    NatsFrame::Ping => conn.write_all(b"PONG\r\n").await?,
                    NatsFrame::Info | NatsFrame::Ack => {}
                    NatsFrame::Msg { .. } => return Err(protocol("nats: MSG on a publisher")),
                    NatsFrame::Error(e) => return Err(protocol(format!("nats: -ERR {e}"))),
                }
            }
        }
        Ok(Publisher {
            conn,
            kind: url.kind,
            wbuf: BytesMut::new(),
        })
    }

    /// Publishes one payload.
    ///
    /// Redis: `PUBLISH`, then waits for the reply and returns `Some(receivers)`. NATS:
    /// `PUB`, written out before returning, and `None`, since core NATS has no ack; it
    /// first answers any `PING` and surfaces any `-ERR` the broker sent since the last call.
    ///
    /// Not cancel-safe: if the future is dropped, part of a command may have been sent,
    /// so drop the publisher too.
    pub async fn publish(
        &mut self,
        channel: &str,
        payload: &[u8],
    ) -> Result<Option<u64>, PeerError> {
        self.wbuf.clear();
        match self.kind {
            PeerKind::Redis => {
                encode_redis_command(&mut self.wbuf, &[b"PUBLISH", channel.as_bytes(), payload]);
                self.conn.write_all(&self.wbuf).await?;
                let (frame, _) = self.conn.expect_frame(parse_redis).await?;
                match frame {
                    RedisFrame::Integer(n) => u64::try_from(n)
                        .map(Some)
                        .map_err(|_| protocol(format!("redis: PUBLISH replied {n}"))),
                    other => Err(unexpected_redis("an integer reply", &other)),
                }
            }
            PeerKind::Nats => {
                check_subject(channel)?;
                self.answer_nats_control()?;
                encode_nats_pub(&mut self.wbuf, channel.as_bytes(), payload);
                self.conn.write_all(&self.wbuf).await?;
                self.conn.stream.flush().await?;
                Ok(None)
            }
        }
    }

    /// Handles whatever the NATS broker sent without waiting: queues a `PONG` per `PING`
    /// (written with the next `PUB`) so a long run is not dropped as a stale connection.
    fn answer_nats_control(&mut self) -> Result<(), PeerError> {
        loop {
            while let Some((frame, used)) = parse_nats(&self.conn.rbuf)? {
                self.conn.consume(used);
                match frame {
                    NatsFrame::Ping => self.wbuf.put_slice(b"PONG\r\n"),
                    NatsFrame::Info | NatsFrame::Ack | NatsFrame::Pong => {}
                    NatsFrame::Msg { .. } => return Err(protocol("nats: MSG on a publisher")),
                    NatsFrame::Error(e) => return Err(protocol(format!("nats: -ERR {e}"))),
                }
            }
            self.conn.rbuf.reserve(MIN_READ);
            match self.conn.stream.try_read_buf(&mut self.conn.rbuf) {
                Ok(0) => return Err(PeerError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A socket, its read buffer, and replies owed to the broker.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Replies (NATS `PONG`) not yet written; kept here rather than in a future so a
    /// cancelled read never leaves half of one on the wire. Empty, it holds no memory.
    owed: BytesMut,
}

/// A sans-IO frame parser: a frame and the bytes it took, or `None` for more bytes.
type Parser<F> = fn(&[u8]) -> Result<Option<(F, usize)>, PeerError>;

impl Conn {
    async fn open(addr: SocketAddr, source: Option<IpAddr>) -> Result<Conn, PeerError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_BUF),
            owed: BytesMut::new(),
        })
    }

    /// Writes [`Conn::owed`]. Cancel-safe: each `write` either completes or sends nothing.
    async fn write_owed(&mut self) -> Result<(), PeerError> {
        while !self.owed.is_empty() {
            let n = self.stream.write(&self.owed).await?;
            if n == 0 {
                return Err(PeerError::Closed);
            }
            self.owed.advance(n);
        }
        Ok(())
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame; `None` on EOF between frames, [`PeerError::Closed`] inside one.
    /// Cancel-safe: bytes read stay in the buffer and only whole frames are consumed.
    async fn next_frame<F>(&mut self, parse: Parser<F>) -> Result<Option<(F, usize)>, PeerError> {
        loop {
            if let Some((frame, used)) = parse(&self.rbuf)? {
                self.consume(used);
                return Ok(Some((frame, used)));
            }
            self.rbuf.reserve(MIN_READ);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(PeerError::Closed)
                };
            }
        }
    }

    /// The next frame, where EOF means the broker hung up on a request.
    async fn expect_frame<F>(&mut self, parse: Parser<F>) -> Result<(F, usize), PeerError> {
        self.next_frame(parse).await?.ok_or(PeerError::Closed)
    }

    fn consume(&mut self, used: usize) {
        self.rbuf.advance(used);
        if self.rbuf.is_empty() && self.rbuf.capacity() > SHRINK_ABOVE {
            self.rbuf = BytesMut::with_capacity(READ_BUF);
        }
    }
}

/// A RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RedisFrame {
    /// `+text`
    Simple(Bytes),
    /// `-ERR text`
    Error(Bytes),
    /// `:n`
    Integer(i64),
    /// `$len` and the bytes; `None` for `$-1`.
    Bulk(Option<Bytes>),
    /// `*n` and the values; `None` for `*-1`.
    Array(Option<Vec<RedisFrame>>),
}

/// A protocol error naming what came instead of `wanted`, without echoing a payload.
fn unexpected_redis(wanted: &str, got: &RedisFrame) -> PeerError {
    let got = match got {
        RedisFrame::Error(e) => return protocol(format!("redis: {}", lossy(e, 200))),
        RedisFrame::Simple(s) => format!("+{}", lossy(s, 60)),
        RedisFrame::Integer(n) => format!(":{n}"),
        RedisFrame::Bulk(Some(b)) => format!("a {}-byte bulk string", b.len()),
        RedisFrame::Bulk(None) | RedisFrame::Array(None) => "a null".to_owned(),
        RedisFrame::Array(Some(items)) => match items.first() {
            Some(RedisFrame::Bulk(Some(kind))) => format!(
                "a {}-element array starting {:?}",
                items.len(),
                lossy(kind, 60)
            ),
            _ => format!("a {}-element array", items.len()),
        },
    };
    protocol(format!("redis: expected {wanted}, got {got}"))
}

/// Parses one RESP2 value from the start of `buf`.
fn parse_redis(buf: &[u8]) -> Result<Option<(RedisFrame, usize)>, PeerError> {
    parse_redis_at(buf, 0)
}

fn parse_redis_at(buf: &[u8], depth: usize) -> Result<Option<(RedisFrame, usize)>, PeerError> {
    let Some(end) = line_end(buf)? else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..end].split_first() else {
        return Err(protocol("redis: empty line"));
    };
    let mut used = end + 2;
    let bad_int = || protocol(format!("redis: bad integer {:?}", lossy(line, 40)));
    let frame = match kind {
        b'+' => RedisFrame::Simple(Bytes::copy_from_slice(line)),
        b'-' => RedisFrame::Error(Bytes::copy_from_slice(line)),
        b':' => RedisFrame::Integer(parse_int(line).ok_or_else(bad_int)?),
        b'$' => match parse_int(line).ok_or_else(bad_int)? {
            -1 => RedisFrame::Bulk(None),
            len => {
                let len = checked_len(len, MAX_PAYLOAD, "bulk string")?;
                let Some(body) = buf.get(used..used + len + 2) else {
                    return Ok(None);
                };
                if &body[len..] != b"\r\n" {
                    return Err(protocol("redis: bulk string not followed by CRLF"));
                }
                used += len + 2;
                RedisFrame::Bulk(Some(Bytes::copy_from_slice(&body[..len])))
            }
        },
        b'*' => match parse_int(line).ok_or_else(bad_int)? {
            -1 => RedisFrame::Array(None),
            n => {
                if depth >= MAX_DEPTH {
                    return Err(protocol("redis: arrays nested too deep"));
                }
                let n = checked_len(n, MAX_ARRAY, "array")?;
                let mut items = Vec::with_capacity(n.min(8));
                for _ in 0..n {
                    let Some((item, took)) = parse_redis_at(&buf[used..], depth + 1)? else {
                        return Ok(None);
                    };
                    used += took;
                    items.push(item);
                }
                RedisFrame::Array(Some(items))
            }
        },
        other => {
            return Err(protocol(format!(
                "redis: unexpected type byte 0x{other:02x}"
            )));
        }
    };
    Ok(Some((frame, used)))
}

/// A length from the wire, within `0..=max`.
fn checked_len(n: i64, max: usize, what: &str) -> Result<usize, PeerError> {
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| protocol(format!("{what} length {n} is outside 0..={max}")))
}

/// Writes a command as a RESP array of bulk strings.
fn encode_redis_command(out: &mut BytesMut, args: &[&[u8]]) {
    out.put_u8(b'*');
    put_decimal(out, args.len());
    out.put_slice(b"\r\n");
    for arg in args {
        out.put_u8(b'$');
        put_decimal(out, arg.len());
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// One NATS server operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NatsFrame {
    /// `INFO {...}`; its contents are not needed.
    Info,
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and the payload.
    Msg {
        subject: Bytes,
        sid: Bytes,
        reply_to: Option<Bytes>,
        payload: Bytes,
    },
    /// `PING`: answer `PONG` or be dropped as stale.
    Ping,
    /// `PONG`: everything sent before the matching `PING` was processed.
    Pong,
    /// `+OK` (only in verbose mode).
    Ack,
    /// `-ERR '...'`, with the quotes removed.
    Error(String),
}

/// Parses one NATS operation from the start of `buf`. Verbs are case-insensitive.
fn parse_nats(buf: &[u8]) -> Result<Option<(NatsFrame, usize)>, PeerError> {
    let Some(end) = line_end(buf)? else {
        return Ok(None);
    };
    let line = &buf[..end];
    let mut used = end + 2;
    let (verb, rest) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    let frame = if verb.eq_ignore_ascii_case(b"MSG") {
        let mut args = rest
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|a| !a.is_empty());
        let args: [Option<&[u8]>; 5] = std::array::from_fn(|_| args.next());
        let (subject, sid, reply_to, size) = match args {
            [Some(subject), Some(sid), Some(size), None, None] => (subject, sid, None, size),
            [Some(subject), Some(sid), Some(reply), Some(size), None] => {
                (subject, sid, Some(reply), size)
            }
            _ => {
                return Err(protocol(format!(
                    "nats: bad MSG line {:?}",
                    lossy(line, 80)
                )));
            }
        };
        let len = parse_uint(size)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= MAX_PAYLOAD)
            .ok_or_else(|| protocol(format!("nats: bad MSG size {:?}", lossy(size, 40))))?;
        let Some(body) = buf.get(used..used + len + 2) else {
            return Ok(None);
        };
        if &body[len..] != b"\r\n" {
            return Err(protocol("nats: MSG payload not followed by CRLF"));
        }
        used += len + 2;
        NatsFrame::Msg {
            subject: Bytes::copy_from_slice(subject),
            sid: Bytes::copy_from_slice(sid),
            reply_to: reply_to.map(Bytes::copy_from_slice),
            payload: Bytes::copy_from_slice(&body[..len]),
        }
    } else if verb.eq_ignore_ascii_case(b"PING") {
        NatsFrame::Ping
    } else if verb.eq_ignore_ascii_case(b"PONG") {
        NatsFrame::Pong
    } else if verb.eq_ignore_ascii_case(b"INFO") {
        NatsFrame::Info
    } else if verb.eq_ignore_ascii_case(b"+OK") {
        NatsFrame::Ack
    } else if verb.eq_ignore_ascii_case(b"-ERR") {
        NatsFrame::Error(lossy(rest, 200).trim().trim_matches('\'').to_owned())
    } else {
        return Err(protocol(format!(
            "nats: unexpected operation {:?}",
            lossy(line, 40)
        )));
    };
    Ok(Some((frame, used)))
}

/// NATS subjects are whitespace-delimited on the wire.
fn check_subject(subject: &str) -> Result<(), PeerError> {
    if subject.is_empty() || subject.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(PeerError::InvalidChannel(subject.to_owned()));
    }
    Ok(())
}

/// `SUB <subject> <sid>`
fn encode_nats_sub(out: &mut BytesMut, subject: &[u8], sid: &[u8]) {
    out.put_slice(b"SUB ");
    out.put_slice(subject);
    out.put_u8(b' ');
    out.put_slice(sid);
    out.put_slice(b"\r\n");
}

/// `PUB <subject> <#bytes>` and the payload.
fn encode_nats_pub(out: &mut BytesMut, subject: &[u8], payload: &[u8]) {
    out.put_slice(b"PUB ");
    out.put_slice(subject);
    out.put_u8(b' ');
    put_decimal(out, payload.len());
    out.put_slice(b"\r\n");
    out.put_slice(payload);
    out.put_slice(b"\r\n");
}

/// Where the first line ends (the index of its `\r\n`), `None` if not yet received, or
/// an error once more than [`MAX_LINE`] bytes came without one.
fn line_end(buf: &[u8]) -> Result<Option<usize>, PeerError> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i)),
        None if buf.len() >= MAX_LINE + 2 => {
            Err(protocol(format!("no line end within {MAX_LINE} bytes")))
        }
        None => Ok(None),
    }
}

/// ASCII digits only, no sign, no overflow.
fn parse_uint(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// An optional `-` and ASCII digits, no overflow.
fn parse_int(s: &[u8]) -> Option<i64> {
    match s.split_first() {
        Some((b'-', digits)) => i64::try_from(parse_uint(digits)?).ok().map(|n| -n),
        _ => i64::try_from(parse_uint(s)?).ok(),
    }
}

/// Writes `n` in decimal (once per command, never per delivery, so `to_string` is fine).
fn put_decimal(out: &mut BytesMut, n: usize) {
    out.put_slice(n.to_string().as_bytes());
}

/// At most `max` bytes of `b` as text, for error messages.
fn lossy(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::time::timeout;

    use super::*;

    fn bulk(s: &[u8]) -> RedisFrame {
        RedisFrame::Bulk(Some(Bytes::copy_from_slice(s)))
    }

    /// Every strict prefix needs more bytes; the whole parses to `want` using all of it;
    /// with a second frame appended, only the first is consumed.
    fn check_splits<F: PartialEq + fmt::Debug>(parse: Parser<F>, wire: &[u8], want: &F) {
        for k in 0..wire.len() {
            match parse(&wire[..k]) {
                Ok(None) => {}
                other => panic!("prefix {k} of {:?}: {other:?}", lossy(wire, 200)),
            }
        }
        let (frame, used) = parse(wire).unwrap().unwrap();
        assert_eq!((&frame, used), (want, wire.len()));
        let twice = [wire, wire].concat();
        let (frame, used) = parse(&twice).unwrap().unwrap();
        assert_eq!((&frame, used), (want, wire.len()));
    }

    #[test]
    fn redis_frames_parse_whole_and_split_at_every_byte() {
        let cases: Vec<(&[u8], RedisFrame)> = vec![
            (
                b"*3\r\n$9\r\nsubscribe\r\n$12\r\nconcord-lt.7\r\n:1\r\n",
                RedisFrame::Array(Some(vec![
                    bulk(b"subscribe"),
                    bulk(b"concord-lt.7"),
                    RedisFrame::Integer(1),
                ])),
            ),
            (
                b"*3\r\n$7\r\nmessage\r\n$12\r\nconcord-lt.7\r\n$6\r\na\r\nb\x00c\r\n",
                RedisFrame::Array(Some(vec![
                    bulk(b"message"),
                    bulk(b"concord-lt.7"),
                    bulk(b"a\r\nb\x00c"),
                ])),
            ),
            (b":3\r\n", RedisFrame::Integer(3)),
            (b":-42\r\n", RedisFrame::Integer(-42)),
            (b"+OK\r\n", RedisFrame::Simple(Bytes::from_static(b"OK"))),
            (
                b"-ERR unknown command\r\n",
                RedisFrame::Error(Bytes::from_static(b"ERR unknown command")),
            ),
            (b"$0\r\n\r\n", bulk(b"")),
            (b"$-1\r\n", RedisFrame::Bulk(None)),
            (b"*-1\r\n", RedisFrame::Array(None)),
            (b"*0\r\n", RedisFrame::Array(Some(vec![]))),
            (
                b"*1\r\n*1\r\n:5\r\n",
                RedisFrame::Array(Some(vec![RedisFrame::Array(Some(vec![
                    RedisFrame::Integer(5),
                ]))])),
            ),
        ];
        for (wire, want) in &cases {
            check_splits(parse_redis, wire, want);
        }
    }

    #[test]
    fn redis_garbage_is_an_error() {
        let too_deep = b"*1\r\n".repeat(100);
        let long_line = vec![b'+'; MAX_LINE + 2];
        let cases: Vec<&[u8]> = vec![
            b"?what\r\n",
            b"\r\n",
            b":\r\n",
            b":12x\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$+3\r\nabc\r\n",
            b"$16777217\r\n",
            b"$3\r\nabcXY",
            b"*-5\r\n",
            b"*1025\r\n",
            b"*2\r\n:1\r\n!\r\n",
            &too_deep,
            &long_line,
        ];
        for wire in cases {
            assert!(
                matches!(parse_redis(wire), Err(PeerError::Protocol(_))),
                "{:?}",
                lossy(wire, 80)
            );
        }
        // The largest allowed bulk string waits for its bytes rather than failing.
        assert!(matches!(parse_redis(b"$16777216\r\n"), Ok(None)));
    }

    #[test]
    fn redis_commands_encode_as_bulk_arrays() {
        let mut out = BytesMut::new();
        encode_redis_command(&mut out, &[b"PUBLISH", b"concord-lt.7", b""]);
        assert_eq!(
            &out[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$12\r\nconcord-lt.7\r\n$0\r\n\r\n"
        );
        let (frame, used) = parse_redis(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            frame,
            RedisFrame::Array(Some(vec![
                bulk(b"PUBLISH"),
                bulk(b"concord-lt.7"),
                bulk(b"")
            ]))
        );
    }

    fn msg(subject: &[u8], sid: &[u8], reply_to: Option<&[u8]>, payload: &[u8]) -> NatsFrame {
        NatsFrame::Msg {
            subject: Bytes::copy_from_slice(subject),
            sid: Bytes::copy_from_slice(sid),
            reply_to: reply_to.map(Bytes::copy_from_slice),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn nats_frames_parse_whole_and_split_at_every_byte() {
        let cases: Vec<(&[u8], NatsFrame)> = vec![
            (
                b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n",
                NatsFrame::Info,
            ),
            (
                b"MSG concord-lt.7 1 5\r\nhello\r\n",
                msg(b"concord-lt.7", b"1", None, b"hello"),
            ),
            (
                b"MSG concord-lt.7 1 _INBOX.x 4\r\na\r\nb\r\n",
                msg(b"concord-lt.7", b"1", Some(b"_INBOX.x"), b"a\r\nb"),
            ),
            (b"msg  s\t9   0\r\n\r\n", msg(b"s", b"9", None, b"")),
            (b"PING\r\n", NatsFrame::Ping),
            (b"pong\r\n", NatsFrame::Pong),
            (b"+OK\r\n", NatsFrame::Ack),
            (
                b"-ERR 'Authorization Violation'\r\n",
                NatsFrame::Error("Authorization Violation".into()),
            ),
        ];
        for (wire, want) in &cases {
            check_splits(parse_nats, wire, want);
        }
    }

    #[test]
    fn nats_garbage_is_an_error() {
        let long_line = vec![b'I'; MAX_LINE + 2];
        let cases: Vec<&[u8]> = vec![
            b"HELLO\r\n",
            b"\r\n",
            b"MSG\r\n",
            b"MSG a\r\n",
            b"MSG a 1\r\n",
            b"MSG a 1 x\r\n",
            b"MSG a 1 -1\r\n",
            b"MSG a 1 r 2 extra\r\n",
            b"MSG a 1 16777217\r\n",
            b"MSG a 1 99999999999999999999999\r\n",
            b"MSG a 1 2\r\nhiXY",
            &long_line,
        ];
        for wire in cases {
            assert!(
                matches!(parse_nats(wire), Err(PeerError::Protocol(_))),
                "{:?}",
                lossy(wire, 80)
            );
        }
    }

    #[test]
    fn nats_commands_encode() {
        let mut out = BytesMut::new();
        encode_nats_sub(&mut out, b"concord-lt.7", NATS_SID);
        encode_nats_pub(&mut out, b"concord-lt.7", b"hello");
        assert_eq!(
            &out[..],
            b"SUB concord-lt.7 1\r\nPUB concord-lt.7 5\r\nhello\r\n"
        );
        assert!(check_subject("concord-lt.7").is_ok());
        for bad in ["", "a b", "a\r\n", "a\tb"] {
            assert!(matches!(
                check_subject(bad),
                Err(PeerError::InvalidChannel(_))
            ));
        }
    }

    /// Seeded random bytes, and random bytes after valid prefixes, never panic, and a
    /// parsed frame never claims more bytes than there are.
    #[test]
    fn random_input_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Bytes the parsers branch on, so garbage reaches deep paths often.
        let alphabet = b"*$:+-\r\n0123456789 MSGPINGOKERR\t-1";
        let prefixes: [&[u8]; 6] = [b"", b"*3\r\n", b"$5\r\n", b"MSG a 1 ", b"*1\r\n*", b"-ERR"];
        for round in 0..20_000 {
            let mut buf = prefixes[round % prefixes.len()].to_vec();
            let len = (next() % 48) as usize;
            for _ in 0..len {
                let r = next();
                buf.push(if r % 4 == 0 {
                    r as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                });
            }
            let parsers: [Parser<()>; 2] = [
                |b| parse_redis(b).map(|f| f.map(|(_, n)| ((), n))),
                |b| parse_nats(b).map(|f| f.map(|(_, n)| ((), n))),
            ];
            for parse in parsers {
                if let Ok(Some(((), used))) = parse(&buf) {
                    assert!(used <= buf.len(), "{:?}", lossy(&buf, 80));
                }
            }
        }
    }

    #[test]
    fn decimals_round_trip() {
        for n in [0usize, 7, 10, 4096, usize::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
            assert_eq!(parse_uint(&out), Some(n as u64));
        }
        assert_eq!(parse_int(b"-0"), Some(0));
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"--1"), None);
        assert_eq!(parse_uint(b"18446744073709551616"), None);
    }

    #[test]
    fn urls_parse() {
        let ok = [
            ("redis://127.0.0.1:6380", PeerKind::Redis, "127.0.0.1:6380"),
            ("redis://127.0.0.1", PeerKind::Redis, "127.0.0.1:6379"),
            ("REDIS://localhost/", PeerKind::Redis, "127.0.0.1:6379"),
            ("nats://localhost:4333", PeerKind::Nats, "127.0.0.1:4333"),
            ("nats://10.0.0.2", PeerKind::Nats, "10.0.0.2:4222"),
            ("nats://[::1]:5000", PeerKind::Nats, "[::1]:5000"),
            ("nats://[::1]", PeerKind::Nats, "[::1]:4222"),
        ];
        for (s, kind, addr) in ok {
            let url = PeerUrl::parse(s).unwrap();
            assert_eq!((url.kind, url.addr), (kind, addr.parse().unwrap()), "{s}");
            assert_eq!(url.to_string(), format!("{}://{addr}", url.name()));
            assert_eq!(PeerUrl::parse(&url.to_string()).unwrap(), url);
        }
        assert_eq!(PeerUrl::parse("nats://1.2.3.4").unwrap().name(), "nats");
        let bad = [
            "",
            "127.0.0.1:6379",
            "http://127.0.0.1",
            "redis://",
            "redis://example.com",
            "redis://127.0.0.1:",
            "redis://127.0.0.1:0",
            "redis://127.0.0.1:70000",
            "redis://user:pw@127.0.0.1",
            "redis://127.0.0.1/0",
            "nats://localhost:x",
        ];
        for s in bad {
            assert!(
                matches!(PeerUrl::parse(s), Err(PeerError::InvalidUrl(_))),
                "{s}"
            );
        }
        assert_eq!(channel(7), "concord-lt.7");
    }

    const WAIT: Duration = Duration::from_secs(5);

    /// Reads from `sock` into `seen` until it ends with `suffix`.
    async fn read_until(sock: &mut TcpStream, seen: &mut Vec<u8>, suffix: &[u8]) {
        while !seen.ends_with(suffix) {
            let n = timeout(WAIT, sock.read_buf(seen)).await.unwrap().unwrap();
            assert!(n > 0, "client hung up; saw {:?}", lossy(seen, 500));
        }
    }

    /// A scripted NATS server: a message before the confirming `PONG` is kept, a server
    /// `PING` is answered even by a read that is then cancelled, and EOF between frames
    /// ends the stream.
    #[tokio::test]
    async fn nats_subscriber_keeps_early_messages_and_answers_ping() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = PeerUrl::parse(&format!("nats://{}", listener.local_addr().unwrap())).unwrap();
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.write_all(b"INFO {}\r\n").await.unwrap();
            let mut seen = Vec::new();
            read_until(&mut sock, &mut seen, b"PING\r\n").await;
            assert_eq!(
                seen,
                [NATS_CONNECT, b"SUB concord-lt.7 1\r\nPING\r\n"].concat()
            );
            sock.write_all(b"MSG concord-lt.7 1 2\r\nhi\r\nPONG\r\nPING\r\n")
                .await
                .unwrap();
            seen.clear();
            read_until(&mut sock, &mut seen, b"PONG\r\n").await;
            assert_eq!(seen, b"PONG\r\n");
            go_rx.await.unwrap();
            sock.write_all(b"+OK\r\nMSG concord-lt.7 1 5\r\nthere\r\n")
                .await
                .unwrap();
        });
        let mut sub = timeout(WAIT, Subscriber::connect(&url, &channel(7), None))
            .await
            .unwrap()
            .unwrap();
        let first = timeout(WAIT, sub.next_message()).await.unwrap().unwrap();
        assert_eq!(first, Some((Bytes::from_static(b"hi"), 26)));
        let cancelled = timeout(Duration::from_millis(100), sub.next_message()).await;
        assert!(cancelled.is_err(), "{cancelled:?}");
        go.send(()).unwrap();
        let second = timeout(WAIT, sub.next_message()).await.unwrap().unwrap();
        assert_eq!(second, Some((Bytes::from_static(b"there"), 29)));
        assert!(
            timeout(WAIT, sub.next_message())
                .await
                .unwrap()
                .unwrap()
                .is_none()
        );
        server.await.unwrap();
    }

    /// A Redis `-ERR` to `SUBSCRIBE` is a protocol error; EOF inside a frame is `Closed`.
    #[tokio::test]
    async fn redis_subscriber_reports_errors_and_truncation() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = PeerUrl::parse(&format!("redis://{}", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move {
            // Read the SUBSCRIBE first: closing with unread input would reset, not end.
            let subscribe = b"*2\r\n$9\r\nSUBSCRIBE\r\n$12\r\nconcord-lt.7\r\n";
            let (mut sock, _) = listener.accept().await.unwrap();
            read_until(&mut sock, &mut Vec::new(), subscribe).await;
            sock.write_all(b"-ERR no pubsub here\r\n").await.unwrap();
            let (mut sock, _) = listener.accept().await.unwrap();
            read_until(&mut sock, &mut Vec::new(), subscribe).await;
            sock.write_all(b"*3\r\n$9\r\nsubscribe\r\n$12\r\nconcord-lt.7\r\n:1\r\n")
                .await
                .unwrap();
            sock.write_all(b"*3\r\n$7\r\nmess").await.unwrap();
        });
        let err = timeout(WAIT, Subscriber::connect(&url, &channel(7), None))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, PeerError::Protocol(m) if m.contains("no pubsub here")),
            "{err}"
        );
        let mut sub = timeout(WAIT, Subscriber::connect(&url, &channel(7), None))
            .await
            .unwrap()
            .unwrap();
        server.await.unwrap();
        let err = timeout(WAIT, sub.next_message())
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, PeerError::Closed), "{err}");
    }
}
