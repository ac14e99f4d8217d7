//! Gossip datagram framing: a version byte, the sender's ring configuration fingerprint and a
//! truncated HMAC-SHA256 tag in front of every foca payload, because foca authenticates
//! nothing.
//!
//! ```text
//! [version: 1 byte = 2][ring: 8 bytes, LE][tag: 16 bytes][foca payload]
//! tag = HMAC-SHA256(gossip key, version || ring || payload)[..16]
//! ```
//!
//! `ring` is [`concord_ring::RingConfig::fingerprint`]: nodes that would build different rings
//! from the same members (another partition count, replication factor, balance factor or ring
//! format) must not join one cluster, or they would disagree about every guild's owner. An
//! authentic datagram with another fingerprint is dropped and counted as `ring_config`.
//!
//! The gossip key is derived from the cluster secret (`HMAC-SHA256(secret,
//! "concord/gossip/1")`), so the same secret can key other cluster channels later without
//! one channel's tags being valid on another. A 128-bit tag is the truncation RFC 2104
//! and NIST SP 800-107 allow for HMAC-SHA256; forging one takes 2^128 tries on average.
//!
//! What it does not do: encrypt (membership is not secret, only who may change it), or
//! stop replays. A replayed datagram is a genuine member's old message; SWIM already
//! tolerates duplicated and late packets (incarnations and generations order them), so a
//! replay cannot add a member or bring a dead one back.

use ring::hmac;

/// The framing version this node speaks (2: with the ring fingerprint).
pub const FRAME_VERSION: u8 = 2;
/// Bytes of the ring configuration fingerprint.
const RING_LEN: usize = 8;
/// Bytes of HMAC-SHA256 kept in each datagram.
pub const TAG_LEN: usize = 16;
/// Bytes in front of the foca payload.
pub const HEADER_LEN: usize = 1 + RING_LEN + TAG_LEN;

/// Domain separation for the gossip key (see the module docs).
const GOSSIP_KEY_LABEL: &[u8] = b"concord/gossip/1";

/// Why a datagram was dropped before it reached foca. Nothing changed: the datagram is
/// discarded and the node keeps going. Permanent for that datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the header plus one payload byte.
    #[error("datagram too short ({0} bytes)")]
    Short(usize),
    /// A framing version this node does not speak.
    #[error("unknown gossip frame version {0}")]
    Version(u8),
    /// The tag does not match: wrong cluster secret, corruption or forgery.
    #[error("bad gossip MAC")]
    Mac,
    /// An authentic datagram from a node with another ring configuration
    /// (`--ring-balance-factor` or ring format): its rings would place guilds differently, so it
    /// is not let in.
    #[error("gossip from a node with another ring configuration (fingerprint {0:016x})")]
    RingConfig(u64),
}

impl FrameError {
    /// The `reason` label of `concord_gossip_dropped_total`.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Short(_) => "short",
            FrameError::Version(_) => "version",
            FrameError::Mac => "mac",
            FrameError::RingConfig(_) => "ring_config",
        }
    }
}

/// Seals and opens gossip datagrams with the key derived from the cluster secret, for one
/// ring configuration.
pub struct PacketKey {
    key: hmac::Key,
    ring: [u8; RING_LEN],
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("PacketKey(..)")
    }
}

impl PacketKey {
    /// The gossip key of a cluster secret, for a node whose ring configuration has
    /// `ring_fingerprint`.
    pub fn new(cluster_secret: &[u8], ring_fingerprint: u64) -> PacketKey {
        let root = hmac::Key::new(hmac::HMAC_SHA256, cluster_secret);
        let derived = hmac::sign(&root, GOSSIP_KEY_LABEL);
        PacketKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            ring: ring_fingerprint.to_le_bytes(),
        }
    }

    fn tag(&self, version: u8, ring: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&[version]);
        ctx.update(ring);
        ctx.update(payload);
        let full = ctx.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    /// Appends the datagram carrying `payload` to `out` (cleared first).
    pub fn seal_into(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(HEADER_LEN + payload.len());
        out.push(FRAME_VERSION);
        out.extend_from_slice(&self.ring);
        out.extend_from_slice(&self.tag(FRAME_VERSION, &self.ring, payload));
        out.extend_from_slice(payload);
    }

    /// The datagram carrying `payload`.
    pub fn seal(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(payload, &mut out);
        out
    }

    /// The foca payload of an authentic datagram.
    ///
    /// # Errors
    /// [`FrameError`] when the datagram is too short, of another version, its tag does not
    /// match, or it is authentic but from a node with another ring configuration. The tag
    /// comparison takes the same time wherever the tags differ.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], FrameError> {
        if datagram.len() <= HEADER_LEN {
            return Err(FrameError::Short(datagram.len()));
        }
        let (header, payload) = datagram.split_at(HEADER_LEN);
        let version = header[0];
        if version != FRAME_VERSION {
            return Err(FrameError::Version(version));
        }
        let (ring, tag) = header[1..].split_at(RING_LEN);
        let expected = self.tag(version, ring, payload);
        if !constant_time_eq(&expected, tag) {
            return Err(FrameError::Mac);
        }
        if ring != self.ring {
            let mut theirs = [0u8; RING_LEN];
            theirs.copy_from_slice(ring);
            return Err(FrameError::RingConfig(u64::from_le_bytes(theirs)));
        }
        Ok(payload)
    }
}

/// Compares two equal-length byte strings without an early exit, so timing does not
/// reveal how many leading tag bytes an attacker got right. (`ring::hmac::verify` does
/// this only for full-length tags; `ring::constant_time` is deprecated.)
fn constant_time_eq(a: &[u8; TAG_LEN], b: &[u8]) -> bool {
    if b.len() != TAG_LEN {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    const RING: u64 = 0x0123_4567_89ab_cdef;

    #[test]
    fn sealed_datagrams_open_to_their_payload() {
        let key = PacketKey::new(b"secret", RING);
        for payload in [&b"x"[..], b"hello foca", &[0u8; 1400]] {
            let datagram = key.seal(payload);
            assert_eq!(datagram.len(), HEADER_LEN + payload.len());
            assert_eq!(datagram[0], FRAME_VERSION);
            assert_eq!(key.open(&datagram), Ok(payload));
        }
    }

    #[test]
    fn another_secret_fails_the_mac() {
        let datagram = PacketKey::new(b"secret", RING).seal(b"payload");
        assert_eq!(
            PacketKey::new(b"other", RING).open(&datagram),
            Err(FrameError::Mac)
        );
    }

    #[test]
    fn another_ring_configuration_is_refused_after_the_mac() {
        let datagram = PacketKey::new(b"secret", RING).seal(b"payload");
        assert_eq!(
            PacketKey::new(b"secret", RING + 1).open(&datagram),
            Err(FrameError::RingConfig(RING))
        );
        // With another secret as well, the MAC fails first.
        assert_eq!(
            PacketKey::new(b"other", RING + 1).open(&datagram),
            Err(FrameError::Mac)
        );
        assert_eq!(FrameError::RingConfig(RING).reason(), "ring_config");
    }

    #[test]
    fn short_and_versioned_datagrams_are_refused_before_the_mac() {
        let key = PacketKey::new(b"secret", RING);
        for n in 0..=HEADER_LEN {
            assert_eq!(key.open(&vec![FRAME_VERSION; n]), Err(FrameError::Short(n)));
        }
        let mut datagram = key.seal(b"payload");
        // A version-1 node (no ring fingerprint) is refused by version, not by MAC.
        datagram[0] = 1;
        assert_eq!(key.open(&datagram), Err(FrameError::Version(1)));
        // The version is under the MAC too: re-labelling a v1 datagram cannot pass.
        assert_eq!(FrameError::Version(2).reason(), "version");
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let key = PacketKey::new(b"secret", RING);
        let datagram = key.seal(b"a foca payload of some length");
        for byte in 0..datagram.len() {
            for bit in 0..8 {
                let mut bad = datagram.clone();
                bad[byte] ^= 1 << bit;
                let err = key.open(&bad).unwrap_err();
                let want = if byte == 0 {
                    FrameError::Version(bad[0])
                } else {
                    FrameError::Mac
                };
                assert_eq!(err, want, "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn random_garbage_never_opens() {
        // Seeded, so a failure replays exactly.
        let seed = 0x5eed_c0c0_u64;
        let mut rng = SmallRng::seed_from_u64(seed);
        let key = PacketKey::new(b"secret", RING);
        let mut reasons = std::collections::BTreeMap::new();
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut datagram: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Half the time, make it look like our version so the MAC path is exercised.
            if len > 0 && rng.random_bool(0.5) {
                datagram[0] = FRAME_VERSION;
            }
            let err = key.open(&datagram).expect_err("garbage must not open");
            *reasons.entry(err.reason()).or_insert(0u32) += 1;
        }
        assert!(reasons.len() == 3, "seed {seed:#x}: {reasons:?}");
    }

    #[test]
    fn constant_time_compare_agrees_with_eq() {
        let a = [7u8; TAG_LEN];
        assert!(constant_time_eq(&a, &[7u8; TAG_LEN]));
        let mut b = a;
        b[TAG_LEN - 1] = 8;
        assert!(!constant_time_eq(&a, &b));
        assert!(!constant_time_eq(&a, &a[..TAG_LEN - 1]));
    }
}
