//! Typed server payloads: READY and the objects inside it.

use serde::Serialize;

use crate::ids::{GuildId, SessionId, UserId};

/// The READY dispatch payload.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    /// Gateway version (10).
    pub v: u8,
    /// The identified user.
    pub user: CurrentUser,
    /// Every guild of the session, each sent as unavailable until its GUILD_CREATE.
    pub guilds: Vec<UnavailableGuild>,
    /// The session id to resume with.
    pub session_id: SessionId,
    /// Where to resume: a `ws://` URL of a node.
    pub resume_gateway_url: String,
    /// `[shard_id, num_shards]`, echoed from Identify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<[u32; 2]>,
    /// The application the token belongs to.
    pub application: ReadyApplication,
    /// Concord: the `zstd-dict` dictionaries this node serves, oldest first (omitted
    /// when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dictionaries: Vec<ReadyDictionary>,
}

/// A dictionary listed in READY: its id (as `dict=` takes it), size and download URL.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyDictionary {
    /// The id.
    pub id: u32,
    /// Its size in bytes.
    pub size: usize,
    /// Where to download it.
    pub url: String,
}

/// The user object in READY. Some libraries reject a READY whose user lacks `flags` or
/// `mfa_enabled`, so every field is always present.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentUser {
    /// The user's id.
    pub id: UserId,
    /// The user's name.
    pub username: String,
    /// Always `"0"` (Discord's new-username marker).
    pub discriminator: &'static str,
    /// The display name.
    pub global_name: Option<String>,
    /// Avatar hash (Concord has none).
    pub avatar: Option<String>,
    /// Whether the token was minted for a bot.
    pub bot: bool,
    /// User flags (always 0).
    pub flags: u64,
    /// Whether MFA is on (always false).
    pub mfa_enabled: bool,
    /// Whether the email is verified (always true).
    pub verified: bool,
}

impl CurrentUser {
    /// The user object for a token's claims.
    pub fn new(id: UserId, username: &str, bot: bool) -> CurrentUser {
        CurrentUser {
            id,
            username: username.to_owned(),
            discriminator: "0",
            global_name: Some(username.to_owned()),
            avatar: None,
            bot,
            flags: 0,
            mfa_enabled: false,
            verified: true,
        }
    }
}

/// `{"id": "...", "unavailable": true}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UnavailableGuild {
    /// The guild id.
    pub id: GuildId,
    /// Always `true` in READY.
    pub unavailable: bool,
}

/// `application` in READY.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReadyApplication {
    /// The application id (Concord uses the user id).
    pub id: UserId,
    /// Application flags (0).
    pub flags: u64,
}
