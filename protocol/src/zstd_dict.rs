//! `compress=zstd-dict`: every event compressed once per node, against a shared trained
//! dictionary, and the same bytes sent to every session.
//!
//! `zstd-stream` keeps one compressor per connection (0.1-1.5 MB each) and compresses
//! every event again for every recipient. `zstd-dict` compresses each event body once, on
//! its own (no history across messages), against a dictionary trained on typical gateway
//! traffic. The compressed body is shared by every session; only a few uncompressed header
//! bytes (the sequence number) differ per session. A node keeps no compressor state per
//! connection.
//!
//! # Frame format (version 1)
//!
//! One WebSocket **binary** message carries one frame. All integers are unsigned.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | format version: `0xC1` (version 1). Reject any other value. |
//! | 1 | 4 | dictionary id, little-endian `u32`. `0` means the body was compressed without a dictionary. |
//! | 5 | 1-10 | `s`: the sequence number as unsigned LEB128; `0` means `null`. |
//! | 5+n | rest | body: exactly one zstd frame (RFC 8878) **without its 4-byte magic number**, filling the rest of the message. |
//!
//! **LEB128** (as in DWARF, protobuf varints and WebAssembly): seven bits per byte, least
//! significant group first; the high bit (`0x80`) of a byte is set when another byte
//! follows. `0` is `00`, `127` is `7f`, `128` is `80 01`, `300` is `ac 02`. A value must
//! fit in 64 bits (at most 10 bytes); decoders reject longer or overflowing encodings.
//! Sequence numbers start at 1, so `0` is free to mean `null` (every non-dispatch op).
//!
//! **Body.** A standard zstd frame with its magic number `28 b5 2f fd` cut off: prepend
//! those four bytes and you have a frame any zstd library decompresses
//! (`ZSTD_decompress_usingDict`, python `zstandard.ZstdDecompressor(dict_data=...)`, Go
//! `zstd.WithDecoderDicts`, ...). The frame always states its `Frame_Content_Size`, has
//! no checksum and no dictionary id (the header carries the id). Each of those three
//! choices saves four bytes per message, about 3% of a typical event: the WebSocket and
//! TLS layers already guard the bytes, and the magic is the same in every message.
//! Decompress it with the dictionary whose id the header names — the raw dictionary bytes
//! served at `GET /v1/dictionaries/{id}` — or with no dictionary when the id is 0. Refuse
//! frames whose content size passes your limit before decompressing.
//!
//! The decompressed body is the JSON envelope **without `s`**, always an object with keys
//! in this order: `{"op":OP,"t":T,"d":D}`, where `T` is a quoted dispatch name or `null`
//! and `D` is the payload's JSON text. The envelope the client hands to its application is
//! the body with its final `}` replaced by `,"s":S}` (`S` is the decimal sequence number,
//! or `null`):
//!
//! ```text
//! envelope = body[..len-1] + ',"s":' + (s == 0 ? "null" : decimal(s)) + '}'
//! ```
//!
//! That is the same JSON value as the `{"op","d","s","t"}` envelope of the other modes.
//!
//! **Example** (op 11 Heartbeat ACK, no dictionary). The body is the 27 bytes
//! `{"op":11,"t":null,"d":null}`, too short to compress, so zstd stores it as one raw
//! block. The whole 41-byte message is:
//!
//! ```text
//! c1                    version 1
//! 00 00 00 00           dictionary id 0: no dictionary
//! 00                    s = null
//!                       (zstd magic 28 b5 2f fd omitted)
//! 20                    frame header: single segment, 1-byte content size, no checksum, no dict id
//! 1b                    content size 27
//! d9 00 00              block header: last block, raw, 27 bytes
//! 7b 22 6f 70 ... 7d    {"op":11,"t":null,"d":null}
//! ```
//!
//! and decodes to `{"op":11,"t":null,"d":null,"s":null}`. A dispatch with sequence 300
//! against dictionary `0x2a7f0c11` starts `c1 11 0c 7f 2a ac 02`, then the frame header
//! (for example `60 ..`: single segment, 2-byte content size), and decodes
//! to `{"op":0,"t":"MESSAGE_CREATE","d":{...},"s":300}`.
//!
//! # Dictionaries
//! A [`Dictionary`] is the raw bytes a client downloads plus a content-derived
//! [`DictId`]: the dictionary id in the zstd dictionary header (trained dictionaries
//! carry one, derived by zstd from a hash of their content, in `32768..2^31`), or, for raw
//! content dictionaries and dictionaries whose header id is 0, `fnv1a32(bytes) | 0x8000_0000`
//! (FNV-1a, 32 bits, offset basis `0x811c9dc5`, prime `0x01000193`). The top bit keeps the
//! two kinds apart. The prepared forms (zstd `CDict` for nodes, `DDict` for clients) are
//! built once, on first use, and shared through an `Arc`. A [`DictSet`] holds the
//! dictionaries a node serves or a client knows.
//!
//! # Call order
//! Node: load a [`DictSet`]; per event, [`BodyCompressor::compress`] once (or
//! [`compress_body`]) into a [`SharedBody`]; per recipient, send [`header`]`(s)` followed
//! by the shared body (a vectored write), or build the whole message with
//! [`encode_frame_into`]. Client: [`Decoder::decode`] each binary message with the
//! client's [`DictSet`].

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use zstd::zstd_safe::{self, CCtx, CDict, CParameter, DCtx, DDict};

use crate::frame::is_valid_event_type;
use crate::ids::Seq;

/// The first byte of every version-1 frame.
pub const FORMAT_VERSION: u8 = 0xC1;

/// The longest per-session header: version, dictionary id and a 10-byte LEB128.
pub const MAX_HEADER_LEN: usize = 1 + 4 + 10;

/// The zstd level of [`Dictionary::from_bytes`]. Measured on the generated corpus
/// (BENCHMARKS.md ("zstd-dict codec")): level 3 is within 1% of level 9's bytes at a fifth of its
/// CPU; levels 15-19 save about 9% more bytes for 20-60 times the CPU, which only pays at
/// very large fan-out. Use [`Dictionary::with_level`] to choose.
pub const DEFAULT_LEVEL: i32 = 3;

/// The size of the dictionary Concord ships and trains by default.
pub const DEFAULT_DICT_SIZE: usize = 64 * 1024;

/// Bodies decompressing past this are refused by default (Discord caps gateway payloads
/// well below it).
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;

/// The zstd magic number, which frames leave out.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A dictionary id as carried in the frame header (`0` means no dictionary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DictId(pub u32);

/// Id `0`: a body compressed without a dictionary.
pub const NO_DICTIONARY: DictId = DictId(0);

impl fmt::Display for DictId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A dictionary could not be used. Nothing changed; permanent for these bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DictError {
    /// The dictionary has no bytes.
    #[error("empty dictionary")]
    Empty,
    /// zstd could not load it (a corrupt zstd dictionary header or entropy tables).
    #[error("zstd could not load dictionary {0}")]
    Unloadable(DictId),
    /// Training failed (too few or too uniform samples, for instance).
    #[error("dictionary training failed: {0}")]
    Training(String),
}

/// Compressing a body failed. Nothing was sent; permanent for this input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// `t` is not a plain dispatch name (`[A-Z0-9_]{1,64}`).
    #[error("invalid event type {0:?}")]
    InvalidEventType(String),
    /// The dictionary could not be prepared.
    #[error(transparent)]
    Dictionary(#[from] DictError),
    /// zstd reported an error.
    #[error("zstd: {0}")]
    Zstd(&'static str),
}

/// A frame could not be decoded. The decoder is unchanged and can decode the next
/// message; for a live connection the frame is lost, so it should close (4002-like).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message ends inside the header.
    #[error("frame truncated in its header")]
    Truncated,
    /// The first byte is not a version this decoder knows.
    #[error("unknown zstd-dict frame version {0:#04x}")]
    UnknownVersion(u8),
    /// `s` is longer than 10 bytes or overflows 64 bits.
    #[error("sequence varint overflows 64 bits")]
    VarintOverflow,
    /// The header names a dictionary the client does not have (fetch it, then retry).
    #[error("unknown dictionary {0}")]
    UnknownDictionary(DictId),
    /// The dictionary could not be prepared.
    #[error(transparent)]
    Dictionary(#[from] DictError),
    /// The body is not exactly one zstd frame.
    #[error("body is not exactly one zstd frame")]
    NotOneFrame,
    /// The zstd frame does not state its content size.
    #[error("zstd frame lacks its content size")]
    MissingContentSize,
    /// The decompressed body would pass the decoder's limit.
    #[error("body of {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The content size the frame states.
        size: u64,
        /// The decoder's limit.
        max: usize,
    },
    /// zstd reported an error (corrupt data or the wrong dictionary).
    #[error("zstd: {0}")]
    Zstd(&'static str),
    /// The body is not a JSON object `{...}` with at least one key.
    #[error("body is not a JSON object")]
    NotAnObject,
}

fn zstd_name(code: usize) -> &'static str {
    zstd_safe::get_error_name(code)
}

/// FNV-1a, 32 bits: the documented id of raw-content dictionaries.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A compression dictionary: the bytes clients download, its id, and its prepared zstd
/// forms (built on first use, shared by every clone).
#[derive(Clone)]
pub struct Dictionary {
    inner: Arc<DictInner>,
}

struct DictInner {
    bytes: Box<[u8]>,
    id: DictId,
    level: i32,
    cdict: OnceLock<Option<CDict<'static>>>,
    ddict: OnceLock<Option<DDict<'static>>>,
}

impl fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dictionary")
            .field("id", &self.inner.id)
            .field("len", &self.inner.bytes.len())
            .field("level", &self.inner.level)
            .finish_non_exhaustive()
    }
}

impl Dictionary {
    /// How many handles to this dictionary exist, this one included. A node uses it to
    /// tell whether any connection still holds a dictionary it wants to retire.
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// A dictionary from its bytes (a zstd dictionary, or raw content), compressing at
    /// [`DEFAULT_LEVEL`].
    pub fn from_bytes(bytes: impl Into<Box<[u8]>>) -> Result<Dictionary, DictError> {
        Dictionary::with_level(bytes, DEFAULT_LEVEL)
    }

    /// A dictionary that compresses at `level` (the level is baked into the prepared
    /// `CDict`; decoders do not care).
    pub fn with_level(bytes: impl Into<Box<[u8]>>, level: i32) -> Result<Dictionary, DictError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(DictError::Empty);
        }
        Ok(Dictionary::build(bytes, level))
    }

    fn build(bytes: Box<[u8]>, level: i32) -> Dictionary {
        let id = zstd_safe::get_dict_id_from_dict(&bytes)
            .map_or_else(|| fnv1a32(&bytes) | 0x8000_0000, NonZeroU32::get);
        Dictionary {
            inner: Arc::new(DictInner {
                bytes,
                id: DictId(id),
                level,
                cdict: OnceLock::new(),
                ddict: OnceLock::new(),
            }),
        }
    }

    /// The 64 KiB dictionary that ships with Concord, trained by [`train`] on
    /// `Corpus::generate(DEFAULT_TRAINING_SEED, 20_000)`.
    pub fn default_shipped() -> Dictionary {
        static SHIPPED: OnceLock<Dictionary> = OnceLock::new();
        SHIPPED
            .get_or_init(|| {
                let bytes: &[u8] = include_bytes!("../dicts/default-64k.zdict");
                Dictionary::build(bytes.into(), DEFAULT_LEVEL)
            })
            .clone()
    }

    /// The content-derived id.
    pub fn id(&self) -> DictId {
        self.inner.id
    }

    /// The raw bytes, as served to clients.
    pub fn bytes(&self) -> &[u8] {
        &self.inner.bytes
    }

    /// The compression level of the prepared compression dictionary.
    pub fn level(&self) -> i32 {
        self.inner.level
    }

    /// The prepared compression dictionary (built on first call).
    fn cdict(&self) -> Result<&CDict<'static>, DictError> {
        self.inner
            .cdict
            .get_or_init(|| CDict::try_create(&self.inner.bytes, self.inner.level))
            .as_ref()
            .ok_or(DictError::Unloadable(self.inner.id))
    }

    /// The prepared decompression dictionary (built on first call).
    fn ddict(&self) -> Result<&DDict<'static>, DictError> {
        self.inner
            .ddict
            .get_or_init(|| DDict::try_create(&self.inner.bytes))
            .as_ref()
            .ok_or(DictError::Unloadable(self.inner.id))
    }

    /// Builds the compression side now, so a node finds a bad dictionary at startup.
    /// Returns the bytes it occupies (shared by the whole node).
    pub fn prepare_encoder(&self) -> Result<usize, DictError> {
        self.cdict().map(CDict::sizeof)
    }

    /// Builds the decompression side now. Returns the bytes it occupies.
    pub fn prepare_decoder(&self) -> Result<usize, DictError> {
        self.ddict().map(DDict::sizeof)
    }
}

/// The seed of the corpus the shipped dictionary was trained on.
pub const DEFAULT_TRAINING_SEED: u64 = 0x00c0_dec0;

/// Trains a dictionary of at most `dict_size` bytes on `samples`, which should be bodies
/// as [`body_json`] builds them (the envelope without `s`), not bare `d` payloads.
pub fn train<S: AsRef<[u8]>>(samples: &[S], dict_size: usize) -> Result<Dictionary, DictError> {
    let bytes = zstd::dict::from_samples(samples, dict_size)
        .map_err(|e| DictError::Training(e.to_string()))?;
    Dictionary::from_bytes(bytes)
}

/// The dictionaries a node serves or a client holds, oldest first.
#[derive(Debug, Clone, Default)]
pub struct DictSet {
    dicts: Vec<Dictionary>,
}

impl DictSet {
    /// An empty set.
    pub fn new() -> DictSet {
        DictSet::default()
    }

    /// Adds `dict` as the newest; a dictionary with the same id is replaced.
    pub fn insert(&mut self, dict: Dictionary) {
        self.dicts.retain(|d| d.id() != dict.id());
        self.dicts.push(dict);
    }

    /// Removes the dictionary `id`, returning it if it was there.
    pub fn remove(&mut self, id: DictId) -> Option<Dictionary> {
        let index = self.dicts.iter().position(|d| d.id() == id)?;
        Some(self.dicts.remove(index))
    }

    /// The most recently inserted dictionary: what a client that names none gets.
    pub fn newest(&self) -> Option<&Dictionary> {
        self.dicts.last()
    }

    /// The dictionary `id`.
    pub fn find(&self, id: DictId) -> Option<&Dictionary> {
        self.dicts.iter().find(|d| d.id() == id)
    }

    /// Every dictionary, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Dictionary> {
        self.dicts.iter()
    }

    /// How many dictionaries the set holds.
    pub fn len(&self) -> usize {
        self.dicts.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.dicts.is_empty()
    }
}

impl FromIterator<Dictionary> for DictSet {
    fn from_iter<I: IntoIterator<Item = Dictionary>>(iter: I) -> DictSet {
        let mut set = DictSet::new();
        for d in iter {
            set.insert(d);
        }
        set
    }
}

/// Writes the body that gets compressed: `{"op":OP,"t":T,"d":D}` with `T` quoted or
/// `null`. `d` must be JSON text; `t` must be a plain dispatch name.
pub fn body_json_into(
    out: &mut Vec<u8>,
    op: u8,
    t: Option<&str>,
    d: &[u8],
) -> Result<(), EncodeError> {
    out.reserve(32 + d.len());
    out.extend_from_slice(b"{\"op\":");
    push_decimal(out, u64::from(op));
    match t {
        Some(t) if is_valid_event_type(t) => {
            out.extend_from_slice(b",\"t\":\"");
            out.extend_from_slice(t.as_bytes());
            out.extend_from_slice(b"\",\"d\":");
        }
        Some(t) => return Err(EncodeError::InvalidEventType(t.to_owned())),
        None => out.extend_from_slice(b",\"t\":null,\"d\":"),
    }
    out.extend_from_slice(d);
    out.push(b'}');
    Ok(())
}

/// [`body_json_into`] into a new buffer.
pub fn body_json(op: u8, t: Option<&str>, d: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    body_json_into(&mut out, op, t, d)?;
    Ok(out)
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// One event's compressed body: a zstd frame shared by every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBody {
    dict_id: DictId,
    frame: Bytes,
    content_len: usize,
}

impl SharedBody {
    /// The dictionary it was compressed against ([`NO_DICTIONARY`] for none).
    pub fn dict_id(&self) -> DictId {
        self.dict_id
    }

    /// The zstd frame without its magic number (cheap to clone).
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The uncompressed body length, for compression-ratio metrics.
    pub fn content_len(&self) -> usize {
        self.content_len
    }
}

/// Compresses event bodies, once per node per event. Keep one per node (or per worker
/// thread); it holds a zstd context (see [`BodyCompressor::memory_bytes`]) that is reused,
/// never one per connection.
pub struct BodyCompressor {
    cctx: CCtx<'static>,
    scratch: Vec<u8>,
}

impl fmt::Debug for BodyCompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyCompressor").finish_non_exhaustive()
    }
}

impl BodyCompressor {
    /// A compressor; bodies without a dictionary use `level_without_dict`.
    pub fn new(level_without_dict: i32) -> Result<BodyCompressor, EncodeError> {
        let mut cctx = CCtx::create();
        for p in [
            CParameter::CompressionLevel(level_without_dict),
            CParameter::ContentSizeFlag(true),
            CParameter::ChecksumFlag(false),
            CParameter::DictIdFlag(false),
        ] {
            cctx.set_parameter(p)
                .map_err(|c| EncodeError::Zstd(zstd_name(c)))?;
        }
        Ok(BodyCompressor {
            cctx,
            scratch: Vec::new(),
        })
    }

    /// Compresses the body `{"op":op,"t":t,"d":d}` once, against `dict` (or none).
    pub fn compress(
        &mut self,
        dict: Option<&Dictionary>,
        op: u8,
        t: Option<&str>,
        d: &[u8],
    ) -> Result<SharedBody, EncodeError> {
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        let result = body_json_into(&mut body, op, t, d)
            .and_then(|()| self.compress_body_bytes(dict, &body));
        self.scratch = body;
        result
    }

    /// Compresses an already built body (see [`body_json_into`]).
    pub fn compress_body_bytes(
        &mut self,
        dict: Option<&Dictionary>,
        body: &[u8],
    ) -> Result<SharedBody, EncodeError> {
        let zerr = |c| EncodeError::Zstd(zstd_name(c));
        let dict_id = match dict {
            Some(dict) => {
                self.cctx.ref_cdict(dict.cdict()?).map_err(zerr)?;
                dict.id()
            }
            None => NO_DICTIONARY,
        };
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(body.len()));
        let result = self.cctx.compress2(&mut out, body);
        // Never leave a pointer to a dictionary that may be dropped before the next call.
        let _ = self.cctx.disable_dictionary();
        result.map_err(zerr)?;
        if !out.starts_with(&ZSTD_MAGIC) {
            return Err(EncodeError::Zstd("frame lacks the zstd magic number"));
        }
        Ok(SharedBody {
            dict_id,
            frame: Bytes::from(out).slice(ZSTD_MAGIC.len()..),
            content_len: body.len(),
        })
    }

    /// The compression context's allocation in bytes (one per node or worker).
    pub fn memory_bytes(&self) -> usize {
        self.cctx.sizeof() + self.scratch.capacity()
    }
}

/// [`BodyCompressor::compress`] with a throwaway context: for one-off use. A node should
/// keep a [`BodyCompressor`].
pub fn compress_body(
    dict: Option<&Dictionary>,
    op: u8,
    t: Option<&str>,
    d: &[u8],
) -> Result<SharedBody, EncodeError> {
    let level = dict.map_or(DEFAULT_LEVEL, Dictionary::level);
    BodyCompressor::new(level)?.compress(dict, op, t, d)
}

/// The per-session header bytes, ready for a vectored write before the shared body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header {
    buf: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Header({:02x?})", self.as_bytes())
    }
}

impl Header {
    /// The header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// The header for one recipient: `s` is `None` (or `Seq(0)`, which is not a valid
/// dispatch sequence) for null.
pub fn header(dict_id: DictId, s: Option<Seq>) -> Header {
    let mut buf = [0u8; MAX_HEADER_LEN];
    buf[0] = FORMAT_VERSION;
    buf[1..5].copy_from_slice(&dict_id.0.to_le_bytes());
    let mut len = 5;
    let mut v = s.map_or(0, |s| s.0);
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[len] = byte;
            len += 1;
            break;
        }
        buf[len] = byte | 0x80;
        len += 1;
    }
    Header {
        buf,
        len: len as u8,
    }
}

/// Appends one recipient's whole message (header, then the shared body) to `out`.
pub fn encode_frame_into(out: &mut Vec<u8>, s: Option<Seq>, body: &SharedBody) {
    let h = header(body.dict_id, s);
    out.reserve(h.as_bytes().len() + body.frame.len());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&body.frame);
}

/// A parsed header and the body that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFrame<'a> {
    /// The dictionary the body needs.
    pub dict_id: DictId,
    /// The sequence number (`None` for null).
    pub s: Option<Seq>,
    /// The zstd frame, without its magic number.
    pub body: &'a [u8],
}

/// Splits a message into its header fields and body, without decompressing.
pub fn parse_frame(message: &[u8]) -> Result<ParsedFrame<'_>, FrameError> {
    let (&version, rest) = message.split_first().ok_or(FrameError::Truncated)?;
    if version != FORMAT_VERSION {
        return Err(FrameError::UnknownVersion(version));
    }
    let (id, mut rest) = rest.split_first_chunk::<4>().ok_or(FrameError::Truncated)?;
    let mut s: u64 = 0;
    let mut shift = 0u32;
    loop {
        let (&byte, tail) = rest.split_first().ok_or(FrameError::Truncated)?;
        rest = tail;
        let group = u64::from(byte & 0x7f);
        if shift == 63 && group > 1 {
            return Err(FrameError::VarintOverflow);
        }
        s |= group << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(FrameError::VarintOverflow);
        }
    }
    Ok(ParsedFrame {
        dict_id: DictId(u32::from_le_bytes(*id)),
        s: (s != 0).then_some(Seq(s)),
        body: rest,
    })
}

/// The client side: decodes zstd-dict frames back into JSON envelopes. Holds one zstd
/// decompression context, reused for every message; the dictionaries live in the
/// caller's [`DictSet`].
pub struct Decoder {
    dctx: DCtx<'static>,
    max_message: usize,
    /// The body with its magic number put back.
    frame: Vec<u8>,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("max_message", &self.max_message)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder that refuses bodies decompressing past `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            dctx: DCtx::create(),
            max_message,
            frame: Vec::new(),
        }
    }

    /// Decodes one binary message into the JSON envelope `{"op":..,"t":..,"d":..,"s":..}`
    /// in `out` (cleared first). Returns the header fields.
    pub fn decode<'m>(
        &mut self,
        message: &'m [u8],
        dicts: &DictSet,
        out: &mut Vec<u8>,
    ) -> Result<ParsedFrame<'m>, FrameError> {
        out.clear();
        let frame = parse_frame(message)?;
        self.frame.clear();
        self.frame.extend_from_slice(&ZSTD_MAGIC);
        self.frame.extend_from_slice(frame.body);
        let body = self.frame.as_slice();
        match zstd_safe::find_frame_compressed_size(body) {
            Ok(n) if n == body.len() => {}
            _ => return Err(FrameError::NotOneFrame),
        }
        let size = match zstd_safe::get_frame_content_size(body) {
            Ok(Some(size)) => size,
            Ok(None) => return Err(FrameError::MissingContentSize),
            Err(_) => return Err(FrameError::NotOneFrame),
        };
        let max = self.max_message;
        let fits = usize::try_from(size).is_ok_and(|n| n <= max);
        if !fits {
            return Err(FrameError::TooLarge { size, max });
        }
        // Room for the body and the `,"s":18446744073709551615}` tail.
        out.reserve(size as usize + 32);
        let zerr = |c| FrameError::Zstd(zstd_name(c));
        if frame.dict_id == NO_DICTIONARY {
            self.dctx.decompress(out, body).map_err(zerr)?;
        } else {
            let dict = dicts
                .find(frame.dict_id)
                .ok_or(FrameError::UnknownDictionary(frame.dict_id))?;
            self.dctx
                .decompress_using_ddict(out, body, dict.ddict()?)
                .map_err(zerr)?;
        }
        let is_object = out.len() >= 3 && out.first() == Some(&b'{') && out[1] != b'}';
        if !is_object || out.pop() != Some(b'}') {
            out.clear();
            return Err(FrameError::NotAnObject);
        }
        out.extend_from_slice(b",\"s\":");
        match frame.s {
            Some(s) => push_decimal(out, s.0),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        Ok(frame)
    }

    /// The decompression context's allocation in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.dctx.sizeof() + self.frame.capacity()
    }
}

/// Measures every transport mode on a generated (or captured) corpus: the figures behind
/// BENCHMARKS.md ("zstd-dict codec"), printed by `cargo bench -p concord-protocol --bench
/// compression` and meant for a `concord dict bench` command.
///
/// This is a benchmark harness, so unlike the rest of the crate it reads the clock.
/// Stream modes compress every event once per recipient, so their CPU per delivery is the
/// same at any fan-out; it is measured directly at fan-out 1 (one stream fed the whole
/// measurement corpus) and at fan-out 100 (100 streams each fed the first
/// `direct_events` events), and fan-out 10,000 is taken as the fan-out-100 figure (10,000
/// streams of 1.2 MB do not fit a laptop, and would be slower still for cache misses).
/// Dictionary modes are measured as one compression per event plus `fanout` header writes
/// and body copies per event.
pub mod report {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::time::Instant;

    use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer};

    use super::{BodyCompressor, DictError, Dictionary, EncodeError, encode_frame_into, train};
    use crate::codec::{self, CodecError, Compression, ZstdParams};
    use crate::corpus::{Corpus, CorpusEvent};
    use crate::frame;
    use crate::ids::Seq;

    /// What to measure.
    #[derive(Debug, Clone)]
    pub struct Config {
        /// Seed of the training corpus (one world).
        pub train_seed: u64,
        /// Seed of the measurement corpus (another world).
        pub measure_seed: u64,
        /// Events to train on.
        pub train_events: usize,
        /// Events to measure on.
        pub measure_events: usize,
        /// Dictionary sizes in bytes.
        pub dict_sizes: Vec<usize>,
        /// The zstd level of dictionary and one-shot compression.
        pub dict_level: i32,
        /// Extra levels to show for the `DEFAULT_DICT_SIZE` dictionary.
        pub extra_levels: Vec<i32>,
        /// Fan-outs to report CPU per delivery at.
        pub fanouts: Vec<usize>,
        /// Events used for the direct fan-out-100 measurement.
        pub direct_events: usize,
        /// Members per guild for the bytes-only sensitivity table.
        pub sensitivity_members: Vec<usize>,
    }

    impl Config {
        /// A smaller corpus that runs in seconds (for smoke runs and CI).
        pub fn quick() -> Config {
            Config {
                train_events: 4_000,
                measure_events: 1_000,
                direct_events: 50,
                ..Config::default()
            }
        }
    }

    impl Default for Config {
        fn default() -> Self {
            Config {
                train_seed: super::DEFAULT_TRAINING_SEED,
                measure_seed: 0x5eed_0002,
                train_events: 20_000,
                measure_events: 5_000,
                dict_sizes: vec![16 << 10, 32 << 10, 64 << 10, 112 << 10],
                dict_level: super::DEFAULT_LEVEL,
                extra_levels: vec![1, 9, 15, 19],
                fanouts: vec![1, 100, 10_000],
                direct_events: 200,
                sensitivity_members: vec![100, 400, 2_000, 10_000],
            }
        }
    }

    /// A measurement could not run. Nothing is left behind; permanent for this input.
    #[derive(Debug, thiserror::Error)]
    pub enum ReportError {
        /// A stream codec failed.
        #[error(transparent)]
        Codec(#[from] CodecError),
        /// Dictionary compression failed.
        #[error(transparent)]
        Encode(#[from] EncodeError),
        /// Training or loading a dictionary failed.
        #[error(transparent)]
        Dictionary(#[from] DictError),
    }

    /// The figures of one mode.
    #[derive(Debug, Clone)]
    pub struct ModeResult {
        /// Display name.
        pub name: String,
        /// Wire bytes over the measurement corpus.
        pub wire_bytes: u64,
        /// Events measured.
        pub events: u64,
        /// Per event type: (events, wire bytes).
        pub by_type: BTreeMap<String, (u64, u64)>,
        /// Shared work per event, done once whatever the fan-out (ns).
        pub once_ns: f64,
        /// Work per recipient per event (ns).
        pub per_recipient_ns: f64,
        /// CPU per delivery measured with 100 recipients (ns).
        pub measured_f100_ns: f64,
        /// Compressor bytes per connection.
        pub conn_compressor_bytes: usize,
        /// Decompressor bytes per connection (client side).
        pub conn_decompressor_bytes: usize,
        /// Bytes shared by the whole node.
        pub node_shared_bytes: usize,
        /// Dictionary training time (ms), for dictionary modes.
        pub train_ms: Option<f64>,
    }

    impl ModeResult {
        /// Mean wire bytes per event.
        pub fn bytes_per_event(&self) -> f64 {
            self.wire_bytes as f64 / self.events.max(1) as f64
        }

        /// CPU per delivered event at `fanout` recipients (ns).
        pub fn ns_per_delivery(&self, fanout: usize) -> f64 {
            self.once_ns / fanout.max(1) as f64 + self.per_recipient_ns
        }
    }

    /// Every mode's figures.
    #[derive(Debug, Clone)]
    pub struct Report {
        /// What was measured.
        pub config: Config,
        /// Raw JSON bytes per event type of the measurement corpus: (events, body bytes).
        pub raw_by_type: BTreeMap<String, (u64, u64)>,
        /// One result per mode, in table order.
        pub modes: Vec<ModeResult>,
        /// Bytes per event by members per guild: (members, zstd-stream Discord, dictionary
        /// trained on another world, dictionary retrained on this world's history).
        pub sensitivity: Vec<(usize, f64, f64, f64)>,
    }

    /// Total wire bytes, and (events, bytes) per event type.
    fn tally(
        events: &[CorpusEvent],
        sizes: impl Iterator<Item = usize>,
    ) -> (u64, BTreeMap<String, (u64, u64)>) {
        let mut by_type: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut total = 0;
        for (e, size) in events.iter().zip(sizes) {
            total += size as u64;
            let slot = by_type.entry(e.t.clone()).or_default();
            slot.0 += 1;
            slot.1 += size as u64;
        }
        (total, by_type)
    }

    fn ns_since(start: Instant, ops: usize) -> f64 {
        start.elapsed().as_nanos() as f64 / ops.max(1) as f64
    }

    /// Generates the corpora from `config` and measures every mode.
    pub fn run(config: &Config) -> Result<Report, ReportError> {
        let train_set = Corpus::generate(config.train_seed, config.train_events);
        let mut world = Corpus::new(config.measure_seed);
        let history: Vec<CorpusEvent> = world.by_ref().take(config.train_events).collect();
        let measure: Vec<CorpusEvent> = world.take(config.measure_events).collect();
        let mut report = run_on(config, &train_set, Some(&history), &measure)?;
        for &members in &config.sensitivity_members {
            let train_set: Vec<CorpusEvent> = Corpus::with_members(config.train_seed, members)
                .take(config.train_events)
                .collect();
            let mut world = Corpus::with_members(config.measure_seed, members);
            let history: Vec<CorpusEvent> = world.by_ref().take(config.train_events).collect();
            let measure: Vec<CorpusEvent> = world.take(config.measure_events).collect();
            let stream = stream_bytes(&measure)?;
            let other = dict_bytes(&train_set, &measure, config.dict_level)?;
            let own = dict_bytes(&history, &measure, config.dict_level)?;
            report.sensitivity.push((members, stream, other, own));
        }
        Ok(report)
    }

    /// zstd-stream at Discord's settings: mean wire bytes per event.
    fn stream_bytes(measure: &[CorpusEvent]) -> Result<f64, ReportError> {
        let mut enc = codec::Encoder::new(Compression::ZstdStream, ZstdParams::DISCORD)?;
        let (mut envelope, mut wire, mut total) = (Vec::new(), Vec::new(), 0usize);
        for (i, e) in measure.iter().enumerate() {
            envelope.clear();
            frame::dispatch_into(&mut envelope, Seq(i as u64 + 1), &e.t, &e.d);
            wire.clear();
            enc.encode(&envelope, &mut wire)?;
            total += wire.len();
        }
        Ok(total as f64 / measure.len().max(1) as f64)
    }

    /// zstd-dict with a default-size dictionary trained on `train_set`: mean wire bytes.
    fn dict_bytes(
        train_set: &[CorpusEvent],
        measure: &[CorpusEvent],
        level: i32,
    ) -> Result<f64, ReportError> {
        let samples: Vec<Vec<u8>> = train_set
            .iter()
            .map(|e| super::body_json(0, Some(&e.t), &e.d))
            .collect::<Result<_, _>>()?;
        let trained = train(&samples, super::DEFAULT_DICT_SIZE)?;
        let dict = Dictionary::with_level(trained.bytes().to_vec(), level)?;
        let mut compressor = BodyCompressor::new(level)?;
        let mut total = 0usize;
        for (i, e) in measure.iter().enumerate() {
            let body = compressor.compress(Some(&dict), 0, Some(&e.t), &e.d)?;
            total += super::header(dict.id(), Some(Seq(i as u64 + 1)))
                .as_bytes()
                .len()
                + body.frame().len();
        }
        Ok(total as f64 / measure.len().max(1) as f64)
    }

    /// Measures every mode, training on `train_set` and measuring on `measure`. With
    /// `history` (earlier traffic of the world `measure` comes from), it adds a row for a
    /// default-size dictionary retrained on that history, as a node that retrains and
    /// rotates its dictionary on its own recent traffic would have.
    pub fn run_on(
        config: &Config,
        train_set: &[CorpusEvent],
        history: Option<&[CorpusEvent]>,
        measure: &[CorpusEvent],
    ) -> Result<Report, ReportError> {
        let mut raw_by_type = BTreeMap::new();
        for e in measure {
            let slot = raw_by_type.entry(e.t.clone()).or_insert((0, 0));
            slot.0 += 1;
            slot.1 += e.d.len() as u64;
        }
        let mut modes = vec![
            stream_mode("none", Compression::None, ZstdParams::LEAN, config, measure)?,
            stream_mode(
                "zlib-stream",
                Compression::ZlibStream,
                ZstdParams::LEAN,
                config,
                measure,
            )?,
            stream_mode(
                "zstd-stream Discord (L6 w18 h16 c16)",
                Compression::ZstdStream,
                ZstdParams::DISCORD,
                config,
                measure,
            )?,
            stream_mode(
                "zstd-stream lean (L3 w16 h14 c14)",
                Compression::ZstdStream,
                ZstdParams::LEAN,
                config,
                measure,
            )?,
        ];
        let samples: Vec<Vec<u8>> = train_set
            .iter()
            .map(|e| super::body_json(0, Some(&e.t), &e.d))
            .collect::<Result<_, _>>()?;
        for &size in &config.dict_sizes {
            let start = Instant::now();
            let trained = train(&samples, size)?;
            let train_ms = start.elapsed().as_secs_f64() * 1e3;
            let mut levels = vec![config.dict_level];
            if size == super::DEFAULT_DICT_SIZE {
                levels.extend(config.extra_levels.iter().copied());
            }
            for level in levels {
                let dict = Dictionary::with_level(trained.bytes().to_vec(), level)?;
                let name = format!(
                    "zstd-dict {} KiB L{level} ({} B)",
                    size >> 10,
                    dict.bytes().len()
                );
                let mut m = dict_mode(name, Some(&dict), level, config, measure)?;
                m.train_ms = Some(train_ms);
                modes.push(m);
            }
        }
        if let Some(history) = history {
            let samples: Vec<Vec<u8>> = history
                .iter()
                .map(|e| super::body_json(0, Some(&e.t), &e.d))
                .collect::<Result<_, _>>()?;
            let start = Instant::now();
            let trained = train(&samples, super::DEFAULT_DICT_SIZE)?;
            let train_ms = start.elapsed().as_secs_f64() * 1e3;
            for level in [config.dict_level, 19] {
                let dict = Dictionary::with_level(trained.bytes().to_vec(), level)?;
                let name = format!(
                    "zstd-dict {} KiB L{level}, retrained on this world's history",
                    super::DEFAULT_DICT_SIZE >> 10
                );
                let mut m = dict_mode(name, Some(&dict), level, config, measure)?;
                m.train_ms = Some(train_ms);
                modes.push(m);
            }
        }
        modes.push(dict_mode(
            format!("one-shot zstd L{}, no dict", config.dict_level),
            None,
            config.dict_level,
            config,
            measure,
        )?);
        Ok(Report {
            config: config.clone(),
            raw_by_type,
            modes,
            sensitivity: Vec::new(),
        })
    }

    fn stream_mode(
        name: &str,
        mode: Compression,
        params: ZstdParams,
        config: &Config,
        measure: &[CorpusEvent],
    ) -> Result<ModeResult, ReportError> {
        let mut enc = codec::Encoder::new(mode, params)?;
        let (mut envelope, mut wire) = (Vec::new(), Vec::new());
        let mut messages = Vec::with_capacity(measure.len());
        let start = Instant::now();
        for (i, e) in measure.iter().enumerate() {
            envelope.clear();
            frame::dispatch_into(&mut envelope, Seq(i as u64 + 1), &e.t, &e.d);
            let mut wire = Vec::with_capacity(envelope.len() + 64);
            enc.encode(&envelope, &mut wire)?;
            messages.push(wire);
        }
        let per_recipient_ns = ns_since(start, measure.len());
        let (wire_bytes, by_type) = tally(measure, messages.iter().map(Vec::len));
        let conn_compressor_bytes = enc.memory_bytes();

        // Fan-out 100, measured: 100 independent streams fed the same events.
        let direct = &measure[..config.direct_events.min(measure.len())];
        let mut encoders = (0..100)
            .map(|_| codec::Encoder::new(mode, params))
            .collect::<Result<Vec<_>, _>>()?;
        let start = Instant::now();
        for (i, e) in direct.iter().enumerate() {
            for enc in &mut encoders {
                envelope.clear();
                frame::dispatch_into(&mut envelope, Seq(i as u64 + 1), &e.t, &e.d);
                wire.clear();
                enc.encode(&envelope, &mut wire)?;
            }
        }
        let measured_f100_ns = ns_since(start, direct.len() * encoders.len());
        drop(encoders);

        let conn_decompressor_bytes = match mode {
            Compression::None => 0,
            // zlib-rs inflate state plus its 32 KiB window (an estimate, not measured).
            Compression::ZlibStream => 32 * 1024 + 7 * 1024,
            Compression::ZstdStream => zstd_stream_decoder_bytes(&messages),
        };
        Ok(ModeResult {
            name: name.to_owned(),
            wire_bytes,
            events: measure.len() as u64,
            by_type,
            once_ns: 0.0,
            per_recipient_ns,
            measured_f100_ns,
            conn_compressor_bytes,
            conn_decompressor_bytes,
            node_shared_bytes: 0,
            train_ms: None,
        })
    }

    /// A client's zstd stream decoder after it has decoded `messages` (window allocated).
    fn zstd_stream_decoder_bytes(messages: &[Vec<u8>]) -> usize {
        let mut d = DCtx::create();
        let _ = d.set_parameter(DParameter::WindowLogMax(23));
        let mut out = Vec::with_capacity(1 << 16);
        for m in messages {
            let mut src = InBuffer::around(m);
            while src.pos() < m.len() {
                out.clear();
                let mut dst = OutBuffer::around(&mut out);
                if d.decompress_stream(&mut dst, &mut src).is_err() {
                    return d.sizeof();
                }
            }
        }
        d.sizeof()
    }

    fn dict_mode(
        name: String,
        dict: Option<&Dictionary>,
        level: i32,
        config: &Config,
        measure: &[CorpusEvent],
    ) -> Result<ModeResult, ReportError> {
        let mut compressor = BodyCompressor::new(level)?;
        let cdict_bytes = match dict {
            Some(d) => d.prepare_encoder()? + d.bytes().len(),
            None => 0,
        };
        let mut bodies = Vec::with_capacity(measure.len());
        let start = Instant::now();
        for e in measure {
            bodies.push(compressor.compress(dict, 0, Some(&e.t), &e.d)?);
        }
        let once_ns = ns_since(start, measure.len());

        let mut wire = Vec::new();
        let sizes = bodies.iter().enumerate().map(|(i, body)| {
            super::header(body.dict_id(), Some(Seq(i as u64 + 1)))
                .as_bytes()
                .len()
                + body.frame().len()
        });
        let (wire_bytes, by_type) = tally(measure, sizes);

        // Per recipient: build this session's message (header + copy of the shared body).
        let recipients = 200;
        let start = Instant::now();
        for (i, body) in bodies.iter().enumerate() {
            for r in 0..recipients {
                wire.clear();
                encode_frame_into(&mut wire, Some(Seq((i * recipients + r) as u64 + 1)), body);
            }
        }
        let per_recipient_ns = ns_since(start, bodies.len() * recipients);

        // Fan-out 100, measured: compress once, then 100 messages.
        let direct = &measure[..config.direct_events.min(measure.len())];
        let start = Instant::now();
        for (i, e) in direct.iter().enumerate() {
            let body = compressor.compress(dict, 0, Some(&e.t), &e.d)?;
            for r in 0..100u64 {
                wire.clear();
                encode_frame_into(&mut wire, Some(Seq(i as u64 * 100 + r + 1)), &body);
            }
        }
        let measured_f100_ns = ns_since(start, direct.len() * 100);

        let mut decoder = super::Decoder::new(super::DEFAULT_MAX_MESSAGE);
        let dicts: super::DictSet = dict.cloned().into_iter().collect();
        let mut out = Vec::new();
        for (i, body) in bodies.iter().enumerate().take(500) {
            wire.clear();
            encode_frame_into(&mut wire, Some(Seq(i as u64 + 1)), body);
            decoder.decode(&wire, &dicts, &mut out).map_err(|e| {
                ReportError::Encode(EncodeError::Zstd(match e {
                    super::FrameError::Zstd(s) => s,
                    _ => "round trip failed",
                }))
            })?;
        }
        let ddict_bytes = match dict {
            Some(d) => d.prepare_decoder()?,
            None => 0,
        };
        Ok(ModeResult {
            name,
            wire_bytes,
            events: measure.len() as u64,
            by_type,
            once_ns,
            per_recipient_ns,
            measured_f100_ns,
            conn_compressor_bytes: 0,
            conn_decompressor_bytes: decoder.memory_bytes() + ddict_bytes,
            node_shared_bytes: cdict_bytes + compressor.memory_bytes(),
            train_ms: None,
        })
    }

    fn kib(bytes: usize) -> String {
        if bytes == 0 {
            "0".into()
        } else {
            format!("{:.0} KiB", bytes as f64 / 1024.0)
        }
    }

    impl fmt::Display for Report {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let c = &self.config;
            let reference = self
                .modes
                .iter()
                .find(|m| m.name.starts_with("zstd-stream Discord"))
                .map_or(1.0, ModeResult::bytes_per_event);
            let reference_cpu = self
                .modes
                .iter()
                .find(|m| m.name.starts_with("zstd-stream Discord"))
                .map_or(1.0, |m| m.measured_f100_ns);
            let none = self.modes.first().map_or(1.0, ModeResult::bytes_per_event);
            writeln!(
                f,
                "Corpus: trained on {} events (seed {:#x}), measured on {} other events (seed {:#x}).\n",
                c.train_events, c.train_seed, c.measure_events, c.measure_seed
            )?;
            write!(
                f,
                "| mode | B/event | vs none | vs zstd-stream Discord | shared µs/event |"
            )?;
            for fanout in &c.fanouts {
                write!(f, " ns/delivery F={fanout} |")?;
            }
            writeln!(
                f,
                " ns/delivery F=100 measured | CPU/delivery vs Discord stream (F=100) | compressor/conn | decompressor/conn | shared/node |"
            )?;
            write!(f, "|---|---:|---:|---:|---:|")?;
            for _ in &c.fanouts {
                write!(f, "---:|")?;
            }
            writeln!(f, "---:|---:|---:|---:|---:|")?;
            for m in &self.modes {
                let b = m.bytes_per_event();
                write!(
                    f,
                    "| {} | {:.1} | {:.1}% | {:+.1}% | {:.2} |",
                    m.name,
                    b,
                    100.0 * b / none,
                    100.0 * (b / reference - 1.0),
                    m.once_ns / 1e3
                )?;
                for &fanout in &c.fanouts {
                    write!(f, " {:.0} |", m.ns_per_delivery(fanout))?;
                }
                writeln!(
                    f,
                    " {:.0} | {:.1}% | {} | {} | {} |",
                    m.measured_f100_ns,
                    100.0 * m.measured_f100_ns / reference_cpu.max(1e-9),
                    kib(m.conn_compressor_bytes),
                    kib(m.conn_decompressor_bytes),
                    kib(m.node_shared_bytes),
                )?;
            }
            writeln!(f, "\nBytes per event by type (raw = the JSON `d` alone):\n")?;
            write!(f, "| type | share | raw d |")?;
            for (i, _) in self.modes.iter().enumerate() {
                write!(f, " m{i} |")?;
            }
            writeln!(f)?;
            write!(f, "|---|---:|---:|")?;
            for _ in &self.modes {
                write!(f, "---:|")?;
            }
            writeln!(f)?;
            let total: u64 = self.raw_by_type.values().map(|v| v.0).sum();
            for (t, (n, raw)) in &self.raw_by_type {
                write!(
                    f,
                    "| {t} | {:.1}% | {:.0} |",
                    100.0 * *n as f64 / total.max(1) as f64,
                    *raw as f64 / (*n).max(1) as f64
                )?;
                for m in &self.modes {
                    let (n, b) = m.by_type.get(t).copied().unwrap_or((0, 0));
                    write!(f, " {:.0} |", b as f64 / n.max(1) as f64)?;
                }
                writeln!(f)?;
            }
            writeln!(f, "\nColumns m0..: ")?;
            for (i, m) in self.modes.iter().enumerate() {
                let train = m
                    .train_ms
                    .map_or(String::new(), |ms| format!(" (trained in {ms:.0} ms)"));
                writeln!(f, "- m{i}: {}{train}", m.name)?;
            }
            if !self.sensitivity.is_empty() {
                writeln!(
                    f,
                    "\nSensitivity to repetition (bytes per event; {} KiB dictionaries at L{}):\n",
                    super::DEFAULT_DICT_SIZE >> 10,
                    c.dict_level
                )?;
                writeln!(
                    f,
                    "| members per guild | zstd-stream Discord | zstd-dict, other world's dict | vs stream | zstd-dict, retrained on own history | vs stream |"
                )?;
                writeln!(f, "|---:|---:|---:|---:|---:|---:|")?;
                for &(members, stream, other, own) in &self.sensitivity {
                    writeln!(
                        f,
                        "| {members} | {stream:.1} | {other:.1} | {:+.1}% | {own:.1} | {:+.1}% |",
                        100.0 * (other / stream - 1.0),
                        100.0 * (own / stream - 1.0)
                    )?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::{self, Compression, ZstdParams};
    use crate::corpus::{Corpus, CorpusEvent, EVENT_MIX};
    use proptest::prelude::*;
    use serde_json::Value;

    /// A small dictionary trained once for the whole test binary (training is the slow part).
    fn test_dict() -> Dictionary {
        static DICT: OnceLock<Dictionary> = OnceLock::new();
        DICT.get_or_init(|| {
            let samples: Vec<Vec<u8>> = Corpus::generate(11, 1500)
                .iter()
                .map(|e| body_json(0, Some(&e.t), &e.d).unwrap())
                .collect();
            train(&samples, 16 * 1024).unwrap()
        })
        .clone()
    }

    fn corpus() -> &'static [CorpusEvent] {
        static EVENTS: OnceLock<Vec<CorpusEvent>> = OnceLock::new();
        EVENTS.get_or_init(|| Corpus::generate(99, 600))
    }

    fn envelope(s: u64, e: &CorpusEvent) -> Vec<u8> {
        crate::frame::dispatch(Seq(s), &e.t, &e.d)
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn heartbeat_ack_known_answer() {
        let body = compress_body(None, 11, None, b"null").unwrap();
        let mut wire = Vec::new();
        encode_frame_into(&mut wire, None, &body);
        let mut expected = vec![0xc1, 0, 0, 0, 0, 0x00, 0x20, 0x1b, 0xd9, 0x00, 0x00];
        expected.extend_from_slice(br#"{"op":11,"t":null,"d":null}"#);
        assert_eq!(wire, expected);
        let mut out = Vec::new();
        Decoder::new(1024)
            .decode(&wire, &DictSet::new(), &mut out)
            .unwrap();
        assert_eq!(out, br#"{"op":11,"t":null,"d":null,"s":null}"#);
    }

    #[test]
    fn header_known_answers() {
        let id = DictId(0x2a7f_0c11);
        assert_eq!(
            header(id, Some(Seq(300))).as_bytes(),
            [0xc1, 0x11, 0x0c, 0x7f, 0x2a, 0xac, 0x02]
        );
        assert_eq!(
            header(NO_DICTIONARY, Some(Seq(127))).as_bytes(),
            [0xc1, 0, 0, 0, 0, 0x7f]
        );
        assert_eq!(
            header(NO_DICTIONARY, Some(Seq(128))).as_bytes(),
            [0xc1, 0, 0, 0, 0, 0x80, 0x01]
        );
        let max = header(id, Some(Seq(u64::MAX)));
        assert_eq!(max.as_bytes().len(), MAX_HEADER_LEN);
        let parsed = parse_frame(max.as_bytes()).unwrap();
        assert_eq!(parsed.s, Some(Seq(u64::MAX)));
        assert_eq!(parsed.dict_id, id);
        // An 11th byte, or a 10th byte above 1, overflows.
        let mut long = max.as_bytes().to_vec();
        long[MAX_HEADER_LEN - 1] = 0x02;
        assert_eq!(parse_frame(&long), Err(FrameError::VarintOverflow));
    }

    #[test]
    fn dictionary_ids_are_content_derived() {
        let raw = Dictionary::from_bytes(b"hello dictionary".to_vec()).unwrap();
        assert_eq!(raw.id(), DictId(fnv1a32(b"hello dictionary") | 0x8000_0000));
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        let trained = test_dict();
        assert!(trained.id().0 >= 32_768 && trained.id().0 < 1 << 31);
        assert_eq!(
            Dictionary::from_bytes(Vec::new()).unwrap_err(),
            DictError::Empty
        );
    }

    #[test]
    fn shipped_dictionary_is_stable() {
        let d = Dictionary::default_shipped();
        assert!(d.bytes().len() <= DEFAULT_DICT_SIZE);
        assert_eq!(d.id(), DictId(SHIPPED_ID));
        assert!(d.prepare_decoder().unwrap() > 0);
        let e = &corpus()[0];
        let body = compress_body(Some(&d), 0, Some(&e.t), &e.d).unwrap();
        let dicts: DictSet = [d].into_iter().collect();
        let mut out = Vec::new();
        let mut wire = Vec::new();
        encode_frame_into(&mut wire, Some(Seq(1)), &body);
        Decoder::new(1 << 20)
            .decode(&wire, &dicts, &mut out)
            .unwrap();
        assert_eq!(json(&out), json(&envelope(1, e)));
    }

    /// The id of `dicts/default-64k.zdict`; it changes only when the file is retrained.
    const SHIPPED_ID: u32 = 1_716_148_820;

    #[test]
    fn dict_set_finds_newest() {
        let a = Dictionary::from_bytes(b"aaaa".to_vec()).unwrap();
        let b = Dictionary::from_bytes(b"bbbb".to_vec()).unwrap();
        let mut set: DictSet = [a.clone(), b.clone()].into_iter().collect();
        assert_eq!(set.newest().unwrap().id(), b.id());
        assert_eq!(set.find(a.id()).unwrap().id(), a.id());
        set.insert(a.clone());
        assert_eq!(set.newest().unwrap().id(), a.id());
        assert_eq!(set.len(), 2);
        assert!(set.remove(a.id()).is_some());
        assert!(set.find(a.id()).is_none());
    }

    #[test]
    fn invalid_event_type_is_refused() {
        assert_eq!(
            compress_body(None, 0, Some("bad\"type"), b"{}").unwrap_err(),
            EncodeError::InvalidEventType("bad\"type".into())
        );
    }

    #[test]
    fn missing_dictionary_is_reported() {
        let dict = test_dict();
        let body = compress_body(Some(&dict), 0, Some("X"), b"{}").unwrap();
        let mut wire = Vec::new();
        encode_frame_into(&mut wire, Some(Seq(5)), &body);
        assert_eq!(
            Decoder::new(1 << 20).decode(&wire, &DictSet::new(), &mut Vec::new()),
            Err(FrameError::UnknownDictionary(dict.id()))
        );
    }

    #[test]
    fn size_limit_is_checked_before_decompressing() {
        let big = format!("\"{}\"", "a".repeat(10_000));
        let body = compress_body(None, 0, Some("X"), big.as_bytes()).unwrap();
        let mut wire = Vec::new();
        encode_frame_into(&mut wire, Some(Seq(5)), &body);
        assert!(matches!(
            Decoder::new(1000).decode(&wire, &DictSet::new(), &mut Vec::new()),
            Err(FrameError::TooLarge { max: 1000, .. })
        ));
    }

    #[test]
    fn dictionary_shrinks_small_events() {
        let dict = test_dict();
        let (mut with, mut without) = (0, 0);
        for e in corpus() {
            with += compress_body(Some(&dict), 0, Some(&e.t), &e.d)
                .unwrap()
                .frame
                .len();
            without += compress_body(None, 0, Some(&e.t), &e.d)
                .unwrap()
                .frame
                .len();
        }
        assert!(with * 2 < without, "{with} vs {without}");
    }

    /// Every corpus event type through every mode, compared as JSON values.
    #[test]
    fn every_type_round_trips_through_every_mode() {
        let dict = test_dict();
        let dicts: DictSet = [dict.clone()].into_iter().collect();
        let mut seen = std::collections::BTreeSet::new();
        for mode in [
            Compression::None,
            Compression::ZlibStream,
            Compression::ZstdStream,
        ] {
            let mut enc = codec::Encoder::new(mode, ZstdParams::DISCORD).unwrap();
            let mut dec = codec::Decoder::new(mode, 1 << 20).unwrap();
            let (mut wire, mut plain) = (Vec::new(), Vec::new());
            for (i, e) in corpus().iter().enumerate() {
                let env = envelope(i as u64 + 1, e);
                wire.clear();
                enc.encode(&env, &mut wire).unwrap();
                dec.decode(&wire, &mut plain).unwrap();
                assert_eq!(plain, env);
            }
        }
        let mut compressor = BodyCompressor::new(3).unwrap();
        let mut dec = Decoder::new(1 << 20);
        let (mut wire, mut plain) = (Vec::new(), Vec::new());
        for (i, e) in corpus().iter().enumerate() {
            seen.insert(e.t.as_str());
            for d in [Some(&dict), None] {
                let s = i as u64 + 1;
                let body = compressor.compress(d, 0, Some(&e.t), &e.d).unwrap();
                wire.clear();
                encode_frame_into(&mut wire, Some(Seq(s)), &body);
                let parsed = dec.decode(&wire, &dicts, &mut plain).unwrap();
                assert_eq!(parsed.s, Some(Seq(s)));
                assert_eq!(json(&plain), json(&envelope(s, e)));
            }
        }
        assert_eq!(seen.len(), EVENT_MIX.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any event and sequence number round-trips, dictionary or not.
        #[test]
        fn events_round_trip(index in 0usize..600, s in proptest::option::of(1u64..), with_dict: bool) {
            let dict = test_dict();
            let dicts: DictSet = [dict.clone()].into_iter().collect();
            let e = &corpus()[index];
            let body = compress_body(with_dict.then_some(&dict), 0, Some(&e.t), &e.d).unwrap();
            let mut wire = Vec::new();
            encode_frame_into(&mut wire, s.map(Seq), &body);
            let mut out = Vec::new();
            Decoder::new(1 << 20).decode(&wire, &dicts, &mut out).unwrap();
            let mut expected = json(&envelope(s.unwrap_or(0), e));
            if s.is_none() {
                expected["s"] = Value::Null;
            }
            prop_assert_eq!(json(&out), expected);
        }

        /// Non-dispatch ops with arbitrary JSON-ish `d` round-trip.
        #[test]
        fn other_ops_round_trip(op in 1u8..=11, n in 0u32..100_000) {
            let d = format!("{{\"heartbeat_interval\":{n}}}");
            let body = compress_body(None, op, None, d.as_bytes()).unwrap();
            let mut wire = Vec::new();
            encode_frame_into(&mut wire, None, &body);
            let mut out = Vec::new();
            Decoder::new(1 << 20).decode(&wire, &DictSet::new(), &mut out).unwrap();
            let v = json(&out);
            prop_assert_eq!(&v["op"], &Value::from(op));
            prop_assert!(v["s"].is_null() && v["t"].is_null());
            prop_assert_eq!(&v["d"]["heartbeat_interval"], &Value::from(n));
        }

        /// Flipped bytes, truncation and garbage give an error or a valid object, never
        /// a panic.
        #[test]
        fn corrupt_frames_never_panic(
            index in 0usize..600,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            truncate: bool,
        ) {
            let dict = test_dict();
            let dicts: DictSet = [dict.clone()].into_iter().collect();
            let e = &corpus()[index];
            let body = compress_body(Some(&dict), 0, Some(&e.t), &e.d).unwrap();
            let mut wire = Vec::new();
            encode_frame_into(&mut wire, Some(Seq(9)), &body);
            for (at, x) in flips {
                let i = at.index(wire.len());
                wire[i] ^= x;
            }
            if truncate {
                wire.truncate(cut.index(wire.len()));
            }
            let mut out = Vec::new();
            if Decoder::new(1 << 20).decode(&wire, &dicts, &mut out).is_ok() {
                prop_assert!(out.starts_with(b"{") && out.ends_with(b"}"), "not an object");
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let dicts: DictSet = [test_dict()].into_iter().collect();
            let mut wire = vec![FORMAT_VERSION];
            wire.extend_from_slice(&bytes);
            let mut dec = Decoder::new(1 << 16);
            let _ = dec.decode(&wire, &dicts, &mut Vec::new());
            let _ = dec.decode(&bytes, &dicts, &mut Vec::new());
        }
    }

    /// Retrains `dicts/default-64k.zdict` (then update `SHIPPED_ID`):
    /// `cargo test -p concord-protocol --release -- --ignored regenerate_shipped_dictionary`.
    #[test]
    #[ignore = "rewrites the shipped dictionary"]
    fn regenerate_shipped_dictionary() {
        let samples: Vec<Vec<u8>> = Corpus::generate(DEFAULT_TRAINING_SEED, 20_000)
            .iter()
            .map(|e| body_json(0, Some(&e.t), &e.d).unwrap())
            .collect();
        let dict = train(&samples, DEFAULT_DICT_SIZE).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/dicts/default-64k.zdict");
        std::fs::write(path, dict.bytes()).unwrap();
        println!(
            "wrote {path}: {} bytes, id {}",
            dict.bytes().len(),
            dict.id()
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let dict = test_dict();
        let dicts: DictSet = [dict.clone()].into_iter().collect();
        let e = &corpus()[3];
        let body = compress_body(Some(&dict), 0, Some(&e.t), &e.d).unwrap();
        let mut wire = Vec::new();
        encode_frame_into(&mut wire, Some(Seq(300)), &body);
        let mut dec = Decoder::new(1 << 20);
        for len in 0..wire.len() {
            assert!(
                dec.decode(&wire[..len], &dicts, &mut Vec::new()).is_err(),
                "{len}"
            );
        }
        let mut extra = wire.clone();
        extra.push(0);
        assert_eq!(
            dec.decode(&extra, &dicts, &mut Vec::new()),
            Err(FrameError::NotOneFrame)
        );
        // The decoder still works after errors.
        let mut out = Vec::new();
        dec.decode(&wire, &dicts, &mut out).unwrap();
        assert_eq!(json(&out), json(&envelope(300, e)));
    }
}
