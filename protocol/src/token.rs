//! Client tokens.
//!
//! `base64(user_id) "." base64url(claims JSON) "." base64url(HMAC-SHA256(secret, first two parts))`,
//! optionally prefixed with `Bot `. The first part is the user id's decimal text in
//! standard base64 without padding, which is what Discord libraries that parse the user
//! id out of a token expect. The claims name the user, the guilds it belongs to and an
//! expiry (Unix seconds).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::ids::{GuildId, UserId};

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub uid: u64,
    /// The user's name, shown in READY.
    pub name: String,
    /// The guilds whose events the session receives.
    #[serde(default)]
    pub guilds: Vec<u64>,
    /// Expiry, in Unix seconds.
    pub exp: u64,
    /// Whether the user is a bot.
    #[serde(default)]
    pub bot: bool,
}

impl Claims {
    /// The user id.
    pub fn user_id(&self) -> UserId {
        UserId(self.uid)
    }

    /// The guild ids.
    pub fn guild_ids(&self) -> impl Iterator<Item = GuildId> + '_ {
        self.guilds.iter().copied().map(GuildId)
    }
}

/// Why a token was refused. Nothing changes on a refusal; it is permanent for that token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three dot-separated parts.
    #[error("token is not three dot-separated parts")]
    Malformed,
    /// A part is not valid base64, or the claims are not valid JSON.
    #[error("token part is not valid: {0}")]
    Encoding(&'static str),
    /// The signature does not match the secret.
    #[error("token signature does not match")]
    BadSignature,
    /// The first part names a different user than the claims.
    #[error("token user id does not match its claims")]
    UserMismatch,
    /// The token is past its expiry.
    #[error("token expired")]
    Expired,
}

/// Mints a token for `claims`, signed with `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    // Serialising a struct of strings and integers cannot fail.
    let claims_json = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = STANDARD_NO_PAD.encode(claims.uid.to_string());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims_json, &mut token);
    let tag = hmac::sign(&key, token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
    token
}

/// Verifies a token (with or without `Bot `) against `secret` at `now_unix` seconds.
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<Claims, TokenError> {
    let token = token.strip_prefix("Bot ").unwrap_or(token);
    let mut parts = token.split('.');
    let (Some(id_part), Some(claims_part), Some(sig_part), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let signed_len = id_part.len() + 1 + claims_part.len();
    let sig = URL_SAFE_NO_PAD
        .decode(sig_part)
        .map_err(|_| TokenError::Encoding("signature"))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, &token.as_bytes()[..signed_len], &sig)
        .map_err(|_| TokenError::BadSignature)?;
    let claims_json = URL_SAFE_NO_PAD
        .decode(claims_part)
        .map_err(|_| TokenError::Encoding("claims"))?;
    let claims: Claims =
        serde_json::from_slice(&claims_json).map_err(|_| TokenError::Encoding("claims json"))?;
    let id_text = STANDARD_NO_PAD
        .decode(id_part.trim_end_matches('='))
        .map_err(|_| TokenError::Encoding("user id"))?;
    if id_text != claims.uid.to_string().as_bytes() {
        return Err(TokenError::UserMismatch);
    }
    if claims.exp <= now_unix {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn claims() -> Claims {
        Claims {
            uid: 42,
            name: "alice".into(),
            guilds: vec![1, 2, 3],
            exp: 1_000,
            bot: true,
        }
    }

    #[test]
    fn mint_then_verify() {
        let token = mint(b"s", &claims());
        assert_eq!(verify(b"s", &token, 999).unwrap(), claims());
        assert_eq!(
            verify(b"s", &format!("Bot {token}"), 999).unwrap(),
            claims()
        );
        // The first part is the user id, as Discord libraries expect.
        let first = token.split('.').next().unwrap();
        assert_eq!(STANDARD_NO_PAD.decode(first).unwrap(), b"42");
    }

    #[test]
    fn refusals() {
        let token = mint(b"s", &claims());
        assert_eq!(verify(b"other", &token, 0), Err(TokenError::BadSignature));
        assert_eq!(verify(b"s", &token, 1_000), Err(TokenError::Expired));
        assert_eq!(verify(b"s", "a.b", 0), Err(TokenError::Malformed));
        assert_eq!(verify(b"s", "a.b.c.d", 0), Err(TokenError::Malformed));
        assert_eq!(
            verify(b"s", "a.b.!!", 0),
            Err(TokenError::Encoding("signature"))
        );
        // Swap in another user's id part: the signature no longer matches.
        let rest = token.split_once('.').unwrap().1;
        let forged = format!("{}.{rest}", STANDARD_NO_PAD.encode("43"));
        assert_eq!(verify(b"s", &forged, 0), Err(TokenError::BadSignature));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(s in ".{0,200}") {
            let _ = verify(b"s", &s, 0);
        }

        #[test]
        fn round_trip(uid in any::<u64>(), name in "[a-z]{1,20}", guilds in proptest::collection::vec(any::<u64>(), 0..20)) {
            let c = Claims { uid, name, guilds, exp: u64::MAX, bot: false };
            prop_assert_eq!(verify(b"k", &mint(b"k", &c), 0).unwrap(), c);
        }
    }
}
