//! Gateway intents: which bits exist, and which intent an event needs.

/// `GUILDS` (1 << 0).
pub const GUILDS: u64 = 1 << 0;
/// `GUILD_MEMBERS` (1 << 1).
pub const GUILD_MEMBERS: u64 = 1 << 1;
/// `GUILD_MODERATION` (1 << 2).
pub const GUILD_MODERATION: u64 = 1 << 2;
/// `GUILD_EXPRESSIONS` (1 << 3).
pub const GUILD_EXPRESSIONS: u64 = 1 << 3;
/// `GUILD_INTEGRATIONS` (1 << 4).
pub const GUILD_INTEGRATIONS: u64 = 1 << 4;
/// `GUILD_WEBHOOKS` (1 << 5).
pub const GUILD_WEBHOOKS: u64 = 1 << 5;
/// `GUILD_INVITES` (1 << 6).
pub const GUILD_INVITES: u64 = 1 << 6;
/// `GUILD_VOICE_STATES` (1 << 7).
pub const GUILD_VOICE_STATES: u64 = 1 << 7;
/// `GUILD_PRESENCES` (1 << 8).
pub const GUILD_PRESENCES: u64 = 1 << 8;
/// `GUILD_MESSAGES` (1 << 9).
pub const GUILD_MESSAGES: u64 = 1 << 9;
/// `GUILD_MESSAGE_REACTIONS` (1 << 10).
pub const GUILD_MESSAGE_REACTIONS: u64 = 1 << 10;
/// `GUILD_MESSAGE_TYPING` (1 << 11).
pub const GUILD_MESSAGE_TYPING: u64 = 1 << 11;
/// `DIRECT_MESSAGES` (1 << 12).
pub const DIRECT_MESSAGES: u64 = 1 << 12;
/// `DIRECT_MESSAGE_REACTIONS` (1 << 13).
pub const DIRECT_MESSAGE_REACTIONS: u64 = 1 << 13;
/// `DIRECT_MESSAGE_TYPING` (1 << 14).
pub const DIRECT_MESSAGE_TYPING: u64 = 1 << 14;
/// `GUILD_SCHEDULED_EVENTS` (1 << 16).
pub const GUILD_SCHEDULED_EVENTS: u64 = 1 << 16;

/// Every intent bit Discord defines (bits 0 to 25). Others close with 4013.
pub const ALL: u64 = (1 << 26) - 1;

/// Whether `intents` only has known bits.
pub fn is_valid(intents: u64) -> bool {
    intents & !ALL == 0
}

/// The intent a guild event needs, or `None` if every session receives it (events
/// Concord does not classify, such as custom backend events, are always delivered).
pub fn for_guild_event(t: &str) -> Option<u64> {
    Some(match t {
        "MESSAGE_CREATE" | "MESSAGE_UPDATE" | "MESSAGE_DELETE" | "MESSAGE_DELETE_BULK" => {
            GUILD_MESSAGES
        }
        "MESSAGE_REACTION_ADD"
        | "MESSAGE_REACTION_REMOVE"
        | "MESSAGE_REACTION_REMOVE_ALL"
        | "MESSAGE_REACTION_REMOVE_EMOJI" => GUILD_MESSAGE_REACTIONS,
        "TYPING_START" => GUILD_MESSAGE_TYPING,
        "PRESENCE_UPDATE" => GUILD_PRESENCES,
        "GUILD_MEMBER_ADD" | "GUILD_MEMBER_UPDATE" | "GUILD_MEMBER_REMOVE" => GUILD_MEMBERS,
        "VOICE_STATE_UPDATE" => GUILD_VOICE_STATES,
        "GUILD_UPDATE"
        | "GUILD_ROLE_CREATE"
        | "GUILD_ROLE_UPDATE"
        | "GUILD_ROLE_DELETE"
        | "CHANNEL_CREATE"
        | "CHANNEL_UPDATE"
        | "CHANNEL_DELETE"
        | "CHANNEL_PINS_UPDATE"
        | "THREAD_CREATE"
        | "THREAD_UPDATE"
        | "THREAD_DELETE"
        | "STAGE_INSTANCE_CREATE"
        | "STAGE_INSTANCE_UPDATE"
        | "STAGE_INSTANCE_DELETE" => GUILDS,
        "GUILD_BAN_ADD" | "GUILD_BAN_REMOVE" | "GUILD_AUDIT_LOG_ENTRY_CREATE" => GUILD_MODERATION,
        "GUILD_EMOJIS_UPDATE" | "GUILD_STICKERS_UPDATE" => GUILD_EXPRESSIONS,
        "GUILD_INTEGRATIONS_UPDATE"
        | "INTEGRATION_CREATE"
        | "INTEGRATION_UPDATE"
        | "INTEGRATION_DELETE" => GUILD_INTEGRATIONS,
        "WEBHOOKS_UPDATE" => GUILD_WEBHOOKS,
        "INVITE_CREATE" | "INVITE_DELETE" => GUILD_INVITES,
        "GUILD_SCHEDULED_EVENT_CREATE"
        | "GUILD_SCHEDULED_EVENT_UPDATE"
        | "GUILD_SCHEDULED_EVENT_DELETE" => GUILD_SCHEDULED_EVENTS,
        _ => return None,
    })
}

/// The intent a direct (user-topic) event needs, or `None` if it is always delivered.
pub fn for_direct_event(t: &str) -> Option<u64> {
    Some(match t {
        "MESSAGE_CREATE" | "MESSAGE_UPDATE" | "MESSAGE_DELETE" => DIRECT_MESSAGES,
        "MESSAGE_REACTION_ADD" | "MESSAGE_REACTION_REMOVE" => DIRECT_MESSAGE_REACTIONS,
        "TYPING_START" => DIRECT_MESSAGE_TYPING,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        assert!(is_valid(0));
        assert!(is_valid(ALL));
        assert!(!is_valid(1 << 26));
        assert_eq!(for_guild_event("MESSAGE_CREATE"), Some(GUILD_MESSAGES));
        assert_eq!(for_guild_event("CUSTOM_THING"), None);
        assert_eq!(for_direct_event("MESSAGE_CREATE"), Some(DIRECT_MESSAGES));
    }
}
