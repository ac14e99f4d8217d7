//! Identifier newtypes, parsed once at the edge.
//!
//! Snowflakes (`UserId`, `GuildId`) travel as JSON strings, the way Discord sends them,
//! and are accepted as strings or numbers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! snowflake {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_snowflake(d).map($name)
            }
        }
    };
}

snowflake!(
    /// A user's snowflake id.
    UserId
);
snowflake!(
    /// A guild's snowflake id.
    GuildId
);

/// Accepts `"123"` or `123`.
fn deserialize_snowflake<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a snowflake as a string or an unsigned integer")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("negative snowflake"))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            v.parse()
                .map_err(|_| E::custom("snowflake string is not a u64"))
        }
    }
    d.deserialize_any(Visitor)
}

/// A per-session dispatch sequence number (`s` on the wire). The first dispatch is 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The sequence number after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A session id: 32 lowercase hex characters (128 random bits), like Discord's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u128);

impl SessionId {
    /// The length of the textual form.
    pub const TEXT_LEN: usize = 32;
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The text was not a 32-character hex session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session id must be 32 hex characters")]
pub struct InvalidSessionId;

impl FromStr for SessionId {
    type Err = InvalidSessionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != Self::TEXT_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidSessionId);
        }
        u128::from_str_radix(s, 16)
            .map(SessionId)
            .map_err(|_| InvalidSessionId)
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflakes_accept_strings_and_numbers() {
        let a: GuildId = serde_json::from_str("\"123\"").unwrap();
        let b: GuildId = serde_json::from_str("123").unwrap();
        assert_eq!(a, b);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"123\"");
        assert!(serde_json::from_str::<GuildId>("-1").is_err());
        assert!(serde_json::from_str::<GuildId>("\"x\"").is_err());
    }

    #[test]
    fn session_id_round_trips() {
        let id = SessionId(0xdead_beef);
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<SessionId>().unwrap(), id);
        assert!("zz".parse::<SessionId>().is_err());
        assert!("g".repeat(32).parse::<SessionId>().is_err());
    }
}
