//! Transport compression: `zlib-stream` and `zstd-stream`, as Discord clients expect them.
//!
//! - `zlib-stream`: one zlib stream (with header) per connection. Every message is
//!   compressed with a sync flush, so it ends with the four bytes `00 00 ff ff`; the
//!   client feeds every message into one inflater.
//! - `zstd-stream`: one zstd stream per connection that is never ended. Every message is
//!   flushed, so one WebSocket binary message holds exactly the bytes that decompress to
//!   one payload.
//!
//! Both keep history across messages, which is what makes them compress well and what
//! costs memory per connection: see [`Encoder::memory_bytes`]. A context allocates its
//! working memory on its first message, so an idle connection pays little.

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// The sync-flush marker that ends every `zlib-stream` message.
pub const ZLIB_SUFFIX: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A transport compression mode, as named in the `compress` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression: JSON text messages.
    #[default]
    None,
    /// `compress=zlib-stream`.
    ZlibStream,
    /// `compress=zstd-stream`.
    ZstdStream,
}

/// The `compress` query parameter named a mode Concord does not offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}; expected zlib-stream or zstd-stream")]
pub struct UnknownCompression(pub String);

impl Compression {
    /// Parses the `compress` query value (absent means none).
    pub fn from_query(value: Option<&str>) -> Result<Compression, UnknownCompression> {
        match value {
            None | Some("") => Ok(Compression::None),
            Some("zlib-stream") => Ok(Compression::ZlibStream),
            Some("zstd-stream") => Ok(Compression::ZstdStream),
            Some(other) => Err(UnknownCompression(other.to_owned())),
        }
    }

    /// The query value, or `None` for no compression.
    pub fn as_query(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::ZlibStream => Some("zlib-stream"),
            Compression::ZstdStream => Some("zstd-stream"),
        }
    }
}

/// zstd stream parameters. They set both the ratio and the per-connection memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdParams {
    /// Compression level.
    pub level: i32,
    /// log2 of the window: the history kept, and the decoder's buffer size.
    pub window_log: u32,
    /// log2 of the match-finder hash table entries.
    pub hash_log: u32,
    /// log2 of the match-finder chain table entries.
    pub chain_log: u32,
}

impl ZstdParams {
    /// The settings Discord publishes for its gateway: level 6, windowLog 18, hashLog 16,
    /// chainLog 16.
    pub const DISCORD: ZstdParams = ZstdParams {
        level: 6,
        window_log: 18,
        hash_log: 16,
        chain_log: 16,
    };

    /// Concord's default: level 3 with a 64 KiB window and 16K-entry tables. Gateway
    /// events are small and repetitive, so a short history keeps most of the ratio at a
    /// fraction of the memory (see BENCHMARKS.md).
    pub const LEAN: ZstdParams = ZstdParams {
        level: 3,
        window_log: 16,
        hash_log: 14,
        chain_log: 14,
    };
}

impl Default for ZstdParams {
    fn default() -> Self {
        ZstdParams::LEAN
    }
}

/// A compression or decompression step failed. The stream's state is unknown after it,
/// so the connection must be closed; it is permanent for that connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// zlib reported an error (corrupt input, for a decoder).
    #[error("zlib: {0}")]
    Zlib(String),
    /// zstd reported an error (corrupt input, for a decoder).
    #[error("zstd: {0}")]
    Zstd(&'static str),
    /// A decoder's output passed its size limit.
    #[error("decompressed message is over {0} bytes")]
    TooLarge(usize),
}

fn zstd_err(code: usize) -> CodecError {
    CodecError::Zstd(zstd_safe::get_error_name(code))
}

/// The outbound side of one connection's transport.
pub struct Encoder {
    kind: EncoderKind,
}

enum EncoderKind {
    None,
    Zlib(Box<Compress>),
    Zstd(CCtx<'static>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.kind {
            EncoderKind::None => "none",
            EncoderKind::Zlib(_) => "zlib-stream",
            EncoderKind::Zstd(_) => "zstd-stream",
        };
        f.debug_struct("Encoder").field("mode", &mode).finish()
    }
}

impl Encoder {
    /// A new encoder for `mode`; `zstd` is used only for `zstd-stream`.
    pub fn new(mode: Compression, zstd: ZstdParams) -> Result<Encoder, CodecError> {
        let kind = match mode {
            Compression::None => EncoderKind::None,
            Compression::ZlibStream => EncoderKind::Zlib(Box::new(Compress::new(
                flate2::Compression::default(),
                true,
            ))),
            Compression::ZstdStream => {
                let mut cctx = CCtx::create();
                for p in [
                    CParameter::CompressionLevel(zstd.level),
                    CParameter::WindowLog(zstd.window_log),
                    CParameter::HashLog(zstd.hash_log),
                    CParameter::ChainLog(zstd.chain_log),
                    CParameter::ChecksumFlag(false),
                ] {
                    cctx.set_parameter(p).map_err(zstd_err)?;
                }
                EncoderKind::Zstd(cctx)
            }
        };
        Ok(Encoder { kind })
    }

    /// Whether encoded messages are binary (compressed) rather than text.
    pub fn is_binary(&self) -> bool {
        !matches!(self.kind, EncoderKind::None)
    }

    /// Appends the encoding of one message to `out`. Messages are never empty (an empty
    /// input appends nothing for the compressed modes).
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        match &mut self.kind {
            EncoderKind::None => {
                out.extend_from_slice(input);
                Ok(())
            }
            EncoderKind::Zlib(c) => zlib_sync_flush(c, input, out),
            EncoderKind::Zstd(c) => zstd_flush(c, input, out),
        }
    }

    /// The compressor's allocation in bytes: exact for zstd (`ZSTD_sizeof_CCtx`, of which
    /// only touched pages become resident); for zlib a lower bound from classic zlib's
    /// `deflate_state` at level 6 (zlib-rs was measured at about 410 KiB resident, see
    /// BENCHMARKS.md).
    pub fn memory_bytes(&self) -> usize {
        match &self.kind {
            EncoderKind::None => 0,
            // deflate_state: window 2*32K + prev 2*32K + head 2*32K + pending 4*16K.
            EncoderKind::Zlib(_) => 64 * 1024 * 4 + 5 * 1024,
            EncoderKind::Zstd(c) => c.sizeof(),
        }
    }
}

fn zlib_sync_flush(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = c.total_in();
    loop {
        out.reserve(input.len() / 2 + 64);
        let consumed = usize::try_from(c.total_in() - start).unwrap_or(usize::MAX);
        c.compress_vec(&input[consumed..], out, FlushCompress::Sync)
            .map_err(|e| CodecError::Zlib(e.to_string()))?;
        let consumed = usize::try_from(c.total_in() - start).unwrap_or(usize::MAX);
        // The flush is complete once all input is in and the output did not fill up.
        if consumed >= input.len() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

fn zstd_flush(c: &mut CCtx<'static>, input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let mut src = InBuffer::around(input);
    loop {
        out.reserve(input.len() / 2 + 64);
        let pos = out.len();
        let mut dst = OutBuffer::around_pos(out, pos);
        let remaining = c
            .compress_stream2(
                &mut dst,
                &mut src,
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
            )
            .map_err(zstd_err)?;
        if remaining == 0 && src.pos() == input.len() {
            return Ok(());
        }
    }
}

/// The inbound side of a `zlib-stream` or `zstd-stream` connection (the client's half),
/// used by tests, the load generator and Rust clients.
pub struct Decoder {
    kind: DecoderKind,
    max_message: usize,
}

enum DecoderKind {
    None,
    Zlib(Box<Decompress>),
    Zstd(DCtx<'static>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("max_message", &self.max_message)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A new decoder for `mode` that refuses messages decompressing past `max_message`.
    pub fn new(mode: Compression, max_message: usize) -> Result<Decoder, CodecError> {
        let kind = match mode {
            Compression::None => DecoderKind::None,
            Compression::ZlibStream => DecoderKind::Zlib(Box::new(Decompress::new(true))),
            Compression::ZstdStream => {
                let mut d = DCtx::create();
                // Accept windows up to 8 MiB, as Discord clients do.
                d.set_parameter(DParameter::WindowLogMax(23))
                    .map_err(zstd_err)?;
                DecoderKind::Zstd(d)
            }
        };
        Ok(Decoder { kind, max_message })
    }

    /// Decodes one WebSocket message into `out` (cleared first).
    pub fn decode(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.clear();
        let max = self.max_message;
        match &mut self.kind {
            DecoderKind::None => {
                if message.len() > max {
                    return Err(CodecError::TooLarge(max));
                }
                out.extend_from_slice(message);
                Ok(())
            }
            DecoderKind::Zlib(d) => {
                if !message.ends_with(&ZLIB_SUFFIX) {
                    return Err(CodecError::Zlib(
                        "message lacks the sync-flush suffix".into(),
                    ));
                }
                let start = d.total_in();
                loop {
                    out.reserve(message.len() * 4 + 256);
                    let consumed = usize::try_from(d.total_in() - start).unwrap_or(usize::MAX);
                    let status = d
                        .decompress_vec(&message[consumed..], out, FlushDecompress::Sync)
                        .map_err(|e| CodecError::Zlib(e.to_string()))?;
                    let consumed = usize::try_from(d.total_in() - start).unwrap_or(usize::MAX);
                    if out.len() > max {
                        return Err(CodecError::TooLarge(max));
                    }
                    if status == Status::StreamEnd {
                        return Err(CodecError::Zlib("stream ended".into()));
                    }
                    if consumed >= message.len() && out.len() < out.capacity() {
                        return Ok(());
                    }
                    if status == Status::BufError && out.len() < out.capacity() {
                        return Err(CodecError::Zlib("truncated message".into()));
                    }
                }
            }
            DecoderKind::Zstd(d) => {
                let mut src = InBuffer::around(message);
                loop {
                    out.reserve(message.len() * 4 + 256);
                    let pos = out.len();
                    let mut dst = OutBuffer::around_pos(out, pos);
                    d.decompress_stream(&mut dst, &mut src).map_err(zstd_err)?;
                    let full = dst.pos() == dst.capacity();
                    if out.len() > max {
                        return Err(CodecError::TooLarge(max));
                    }
                    if src.pos() == message.len() && !full {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn round_trip(mode: Compression, messages: &[Vec<u8>]) {
        let mut enc = Encoder::new(mode, ZstdParams::LEAN).unwrap();
        let mut dec = Decoder::new(mode, 1 << 20).unwrap();
        let mut wire = Vec::new();
        let mut plain = Vec::new();
        for m in messages {
            wire.clear();
            enc.encode(m, &mut wire).unwrap();
            if mode == Compression::ZlibStream {
                assert!(wire.ends_with(&ZLIB_SUFFIX));
            }
            dec.decode(&wire, &mut plain).unwrap();
            assert_eq!(&plain, m);
        }
    }

    #[test]
    fn query_values() {
        assert_eq!(Compression::from_query(None), Ok(Compression::None));
        assert_eq!(
            Compression::from_query(Some("zstd-stream")),
            Ok(Compression::ZstdStream)
        );
        assert!(Compression::from_query(Some("gzip")).is_err());
    }

    #[test]
    fn large_and_repeated_messages() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for mode in [Compression::ZlibStream, Compression::ZstdStream] {
            round_trip(mode, &[big.clone(), b"{}".to_vec(), big.clone()]);
        }
    }

    #[test]
    fn history_helps_repeated_messages() {
        let msg = br#"{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"content":"hello there","channel_id":"1234567890"}}"#;
        for mode in [Compression::ZlibStream, Compression::ZstdStream] {
            let mut enc = Encoder::new(mode, ZstdParams::LEAN).unwrap();
            let mut first = Vec::new();
            enc.encode(msg, &mut first).unwrap();
            let mut second = Vec::new();
            enc.encode(msg, &mut second).unwrap();
            assert!(
                second.len() * 2 < first.len(),
                "{mode:?}: {} vs {}",
                second.len(),
                first.len()
            );
        }
    }

    #[test]
    fn memory_is_measured() {
        let mut enc = Encoder::new(Compression::ZstdStream, ZstdParams::LEAN).unwrap();
        let idle = enc.memory_bytes();
        enc.encode(b"{\"op\":11}", &mut Vec::new()).unwrap();
        let used = enc.memory_bytes();
        assert!(used > idle, "{idle} -> {used}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn zlib_round_trips(messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..3000), 1..8)) {
            round_trip(Compression::ZlibStream, &messages);
        }

        #[test]
        fn zstd_round_trips(messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..3000), 1..8)) {
            round_trip(Compression::ZstdStream, &messages);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for mode in [Compression::ZlibStream, Compression::ZstdStream] {
                let mut dec = Decoder::new(mode, 1 << 16).unwrap();
                let _ = dec.decode(&bytes, &mut Vec::new());
            }
        }
    }
}
