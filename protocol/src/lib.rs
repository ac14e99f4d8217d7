//! # concord-protocol
//!
//! The wire formats of Concord, with no IO: everything a node, a load generator or a
//! Rust client needs to speak the Discord-gateway-v10-compatible client protocol.
//!
//! It does **not** open sockets, keep sessions or spawn tasks; the `concord-gateway`
//! crate is the shell that moves these bytes.
//!
//! ## Main types
//! - [`OpCode`] and [`CloseCode`]: the numbers on the wire, with what each one means.
//! - [`ClientCommand`] — a decoded client frame (`Identify`, `Resume`, `Heartbeat`, ...),
//!   parsed once at the edge by [`ClientCommand::decode`], which returns a typed
//!   [`DecodeError`] that maps to the close code the node must send.
//! - [`frame`] — builders for every server frame. A dispatch is built from a body that was
//!   serialised once ([`frame::dispatch`]), so fan-out never re-serialises JSON.
//! - [`Ready`], [`CurrentUser`], [`UnavailableGuild`]: the typed READY payload.
//! - [`token::Claims`] with [`token::mint`] and [`token::verify`]: the client token format
//!   `base64(user_id) "." base64url(claims JSON) "." base64url(HMAC-SHA256)`.
//! - [`codec`] — transport compression. [`codec::Compression`] names a mode,
//!   [`codec::Encoder`] compresses outbound messages (one zlib or zstd context per
//!   connection) and [`codec::Decoder`] is the matching client side.
//! - [`intents`] — the intent bits, their validation, and which intent each event needs.
//! - [`zstd_dict`] — `compress=zstd-dict`: each event body compressed once per node against
//!   a trained [`zstd_dict::Dictionary`], the same bytes sent to every session behind a
//!   tiny per-session header; [`zstd_dict::Decoder`] is the client side. The module doc is
//!   the frame format spec.
//! - [`corpus`] — a seeded generator of realistic gateway dispatches (and a reader for
//!   captures), for training dictionaries and benchmarking the codecs.
//! - [`admin_http`] — the one-request HTTP/1.0 the probing tools speak to a node's admin
//!   port (`concord health`, `concord drain`, `concord-chaos`).
//! - The `.proto` files of the gRPC services live in `proto/` ([`PROTO_DIR`]); the crates
//!   that serve or call them compile them with `protox` (no `protoc` needed).
//!
//! ## Call order (server side)
//! 1. Send [`frame::hello`]. 2. Decode each client message with [`ClientCommand::decode`];
//!    on error, close with [`DecodeError::close_code`]. 3. Verify the Identify token with
//!    [`token::verify`]. 4. Send READY and dispatches with [`frame::dispatch`], passing each
//!    through the connection's [`codec::Encoder`].
//!
//! # Layout
//! - [`ids`] — identifier newtypes (`UserId`, `GuildId`, `SessionId`, `Seq`).
//! - [`opcode`] — opcodes and close codes.
//! - [`command`] — client commands and their decoding.
//! - [`payload`] — READY and other typed payloads.
//! - [`frame`] — server frame builders.
//! - [`token`] — client tokens.
//! - [`intents`] — gateway intents.
//! - [`codec`] — transport compression (`zlib-stream`, `zstd-stream`).
//! - [`zstd_dict`] — transport compression `zstd-dict` (frame format, dictionaries).
//! - [`corpus`] — generated and captured gateway event corpora.

pub mod admin_http;
pub mod codec;
pub mod command;
pub mod corpus;
pub mod frame;
pub mod ids;
pub mod intents;
pub mod opcode;
pub mod payload;
pub mod token;
pub mod zstd_dict;

pub use command::{ClientCommand, DecodeError, GuildActivity, Identify, Resume};
pub use ids::{GuildId, Seq, SessionId, UserId};
pub use opcode::{CloseCode, OpCode};
pub use payload::{CurrentUser, Ready, ReadyApplication, ReadyDictionary, UnavailableGuild};

/// The gateway protocol version Concord speaks (Discord gateway v10).
pub const GATEWAY_VERSION: u8 = 10;

/// Heartbeat interval sent in Hello: 41250 ms is the interval Discord clients expect.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 41_250;

/// The largest client payload a node accepts; larger ones close with 4002.
pub const MAX_CLIENT_PAYLOAD: usize = 4096;

/// Directory of the `.proto` files (`concord/v1/*.proto`), for build scripts.
pub const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
