//! Outbound WebSocket framing, written by hand so that frames go to the socket with one
//! `writev` straight from the shared event bytes.
//!
//! A server frame is unmasked (RFC 6455 §5.1), so it is a 2-to-10-byte header followed by
//! the payload. A dispatch's payload is a per-session prefix (`{"op":0,"s":N,"t":"T","d":`),
//! the event body shared by every session, and `}`; only the prefix and the header are
//! written per session, into a scratch buffer that lives for one batch. Nothing is
//! buffered per connection between batches.

use std::io::IoSlice;

/// Frame opcode for text messages.
pub const TEXT: u8 = 0x1;
/// Frame opcode for binary messages.
pub const BINARY: u8 = 0x2;

/// Appends the header of a final, unmasked frame carrying `len` payload bytes.
pub fn header_into(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// One frame of a batch, as parts that point into the batch's scratch buffer or into
/// shared bytes.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// A range of the scratch buffer (headers and per-session prefixes).
    Scratch(usize, usize),
    /// Bytes owned elsewhere (a shared event body, a compressed message).
    Bytes(&'a [u8]),
}

/// Turns parts into `IoSlice`s once the scratch buffer is complete.
pub fn slices<'a>(scratch: &'a [u8], parts: &[Part<'a>]) -> Vec<IoSlice<'a>> {
    parts
        .iter()
        .map(|p| match *p {
            Part::Scratch(start, end) => IoSlice::new(&scratch[start..end]),
            Part::Bytes(b) => IoSlice::new(b),
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    #[test]
    fn headers_match_tungstenites_encoding() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            for (opcode, data) in [(TEXT, Data::Text), (BINARY, Data::Binary)] {
                let payload = vec![b'a'; len];
                let mut ours = Vec::new();
                header_into(&mut ours, opcode, len);
                ours.extend_from_slice(&payload);
                let mut theirs = Vec::new();
                Frame::message(payload, OpCode::Data(data), true)
                    .format(&mut theirs)
                    .unwrap();
                assert_eq!(ours, theirs, "len {len}");
            }
        }
    }

    #[test]
    fn slices_skip_empty_parts() {
        let scratch = b"abcdef";
        let parts = [
            Part::Scratch(0, 2),
            Part::Bytes(b""),
            Part::Bytes(b"xy"),
            Part::Scratch(2, 2),
        ];
        let s = slices(scratch, &parts);
        assert_eq!(s.len(), 2);
        assert_eq!(&*s[0], b"ab");
        assert_eq!(&*s[1], b"xy");
    }
}
