//! Server frame builders.
//!
//! Every builder returns the JSON text of one envelope `{"op","d","s","t"}`. A dispatch
//! takes a body (`d`) that was serialised once, so fan-out copies bytes instead of
//! serialising JSON per session.

use std::io::Write as _;

use crate::ids::Seq;
use crate::opcode::OpCode;

/// Op 10 Hello with the heartbeat interval in milliseconds.
pub fn hello(heartbeat_interval_ms: u64) -> String {
    format!(
        r#"{{"op":{},"d":{{"heartbeat_interval":{heartbeat_interval_ms}}},"s":null,"t":null}}"#,
        OpCode::Hello as u8
    )
}

/// Op 10 Hello that also lists the `zstd-dict` dictionary ids the node serves (oldest
/// first), for clients that pick a dictionary before identifying.
pub fn hello_with_dictionaries(heartbeat_interval_ms: u64, dictionaries: &[u32]) -> String {
    if dictionaries.is_empty() {
        return hello(heartbeat_interval_ms);
    }
    let ids: Vec<String> = dictionaries.iter().map(u32::to_string).collect();
    format!(
        r#"{{"op":10,"d":{{"heartbeat_interval":{heartbeat_interval_ms},"dictionaries":[{}]}},"s":null,"t":null}}"#,
        ids.join(",")
    )
}

/// Op 11 Heartbeat ACK.
pub fn heartbeat_ack() -> &'static str {
    r#"{"op":11,"d":null,"s":null,"t":null}"#
}

/// Op 1 Heartbeat sent by the server (asks the client to heartbeat now).
pub fn heartbeat_request() -> &'static str {
    r#"{"op":1,"d":null,"s":null,"t":null}"#
}

/// Op 7 Reconnect.
pub fn reconnect() -> &'static str {
    r#"{"op":7,"d":null,"s":null,"t":null}"#
}

/// Op 9 Invalid Session; `resumable` is the `d` boolean.
pub fn invalid_session(resumable: bool) -> &'static str {
    if resumable {
        r#"{"op":9,"d":true,"s":null,"t":null}"#
    } else {
        r#"{"op":9,"d":false,"s":null,"t":null}"#
    }
}

/// The fixed bytes a dispatch adds around its body, for sizing buffers.
pub const DISPATCH_OVERHEAD: usize = 48;

/// Writes op 0 `{"op":0,"s":seq,"t":event_type,"d":body}` into `out` (appending).
///
/// `event_type` must be a plain dispatch name (`[A-Z0-9_]`), which the publish API
/// checks with [`is_valid_event_type`]; `body` must be JSON.
pub fn dispatch_into(out: &mut Vec<u8>, seq: Seq, event_type: &str, body: &[u8]) {
    out.reserve(DISPATCH_OVERHEAD + event_type.len() + body.len());
    dispatch_prefix_into(out, seq, event_type);
    out.extend_from_slice(body);
    out.extend_from_slice(DISPATCH_SUFFIX);
}

/// Writes only the part of a dispatch before its body, `{"op":0,"s":seq,"t":"T","d":`; the
/// frame is this, the body, then [`DISPATCH_SUFFIX`]. A server can then send the one shared
/// body to every session and write only this prefix per session.
pub fn dispatch_prefix_into(out: &mut Vec<u8>, seq: Seq, event_type: &str) {
    out.extend_from_slice(br#"{"op":0,"s":"#);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}", seq.0);
    out.extend_from_slice(br#","t":""#);
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(br#"","d":"#);
}

/// What ends a dispatch after its body.
pub const DISPATCH_SUFFIX: &[u8] = b"}";

/// [`dispatch_into`] into a new buffer.
pub fn dispatch(seq: Seq, event_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    dispatch_into(&mut out, seq, event_type, body);
    out
}

/// Whether `t` is a valid dispatch name: 1 to 64 of `A-Z`, `0-9`, `_`.
pub fn is_valid_event_type(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dispatch_is_a_valid_envelope() {
        let bytes = dispatch(Seq(7), "MESSAGE_CREATE", br#"{"content":"hi"}"#);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["op"], 0);
        assert_eq!(v["s"], 7);
        assert_eq!(v["t"], "MESSAGE_CREATE");
        assert_eq!(v["d"]["content"], "hi");
        for text in [
            hello(41250),
            heartbeat_ack().into(),
            reconnect().into(),
            invalid_session(false).into(),
        ] {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["s"].is_null() && v["t"].is_null(), "{text}");
        }
    }

    #[test]
    fn event_type_validation() {
        assert!(is_valid_event_type("MESSAGE_CREATE"));
        assert!(!is_valid_event_type("message"));
        assert!(!is_valid_event_type("A\"B"));
        assert!(!is_valid_event_type(""));
    }
}
