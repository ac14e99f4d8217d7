//! A seeded generator of realistic gateway dispatches, and a reader for real captures.
//!
//! The corpus feeds dictionary training (`zstd-dict`) and the compression benchmarks. It
//! does no IO: [`Corpus`] is an iterator of [`CorpusEvent`]s, and [`parse_capture`] reads
//! text that the caller loaded.
//!
//! # What the generator models
//! A small "world" is drawn from the seed: 3 guilds, each with 12 text and 3 voice
//! channels, 16 roles, 24 custom emojis and 400 members (usernames, display names,
//! avatar hashes, roles, nicknames; [`Corpus::with_members`] changes the count). A fifth
//! of the members send 70% of the traffic. Events then happen in that world on a clock that
//! starts in January 2026 and moves 0-300 ms per event, so ids and timestamps repeat the
//! way one session's stream repeats them. Two seeds give two unrelated worlds: that is how
//! the benchmarks train a dictionary on one world's traffic and measure on another's.
//!
//! Every id is a real Discord snowflake: `(ms since 1420070400000) << 22 | worker << 17 |
//! process << 12 | increment` ([`snowflake`]). Users and guilds are created between 2015
//! and 2025; messages are created "now" on the corpus clock. Avatar hashes, voice session
//! ids and nonces are random hex, as on Discord, so they do not compress.
//!
//! Bodies follow the JSON shapes Discord sends for API v10 (field names and nesting as in
//! the public gateway documentation, including the `member` objects attached to guild
//! events); keys come out sorted because they are built with `serde_json`.
//!
//! # The event mix: an assumption, stated plainly
//! Discord has not published a per-event-type share of gateway traffic that we could find.
//! Its 2024 post on moving the gateway to zstd names MESSAGE_CREATE, TYPING_START and
//! PRESENCE_UPDATE among the busiest dispatches, and its docs say presences dominate for
//! clients in large guilds. The mix below is our estimate for a user in a few active
//! community guilds, not a measurement; feed a real capture through [`parse_capture`] to
//! replace it:
//!
//! | type | share | body size (typical) |
//! |---|---|---|
//! | PRESENCE_UPDATE | 30% | 150-900 B (status, 0-2 activities, Spotify sometimes) |
//! | MESSAGE_CREATE | 20% | 0.9-4 KB (content 1-2000 chars, long tail; 15% mentions, 8% embeds, 10% replies) |
//! | TYPING_START | 19% | ~550 B (with `member`) |
//! | MESSAGE_REACTION_ADD | 9% | ~650 B (with `member`) |
//! | GUILD_MEMBER_UPDATE | 7% | ~500 B |
//! | VOICE_STATE_UPDATE | 5% | ~700 B |
//! | MESSAGE_UPDATE | 4% | as MESSAGE_CREATE, with `edited_timestamp` |
//! | MESSAGE_DELETE | 2% | ~100 B |
//! | MESSAGE_REACTION_REMOVE | 2% | ~250 B |
//! | GUILD_MEMBER_ADD | 1% | ~500 B |
//! | CHANNEL_UPDATE | 1% | ~400 B |
//!
//! The generator uses its own SplitMix64 rather than `rand`, so a seed names the same
//! corpus across dependency upgrades (the shipped dictionary was trained on one).

use serde_json::{Value, json};

/// The Discord epoch: 2015-01-01T00:00:00Z in Unix milliseconds.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Where the corpus clock starts: 2026-01-05T00:00:00Z in Unix milliseconds.
const CLOCK_START_MS: u64 = 1_767_571_200_000;

/// A Discord snowflake: `(unix_ms - DISCORD_EPOCH_MS) << 22 | worker << 17 | process << 12
/// | increment`. Inputs are masked to their field widths (5, 5 and 12 bits); a time before
/// the epoch saturates to it.
pub fn snowflake(unix_ms: u64, worker: u8, process: u8, increment: u16) -> u64 {
    (unix_ms.saturating_sub(DISCORD_EPOCH_MS) << 22)
        | (u64::from(worker & 0x1f) << 17)
        | (u64::from(process & 0x1f) << 12)
        | u64::from(increment & 0xfff)
}

/// The Unix millisecond time a snowflake was created at.
pub fn snowflake_unix_ms(id: u64) -> u64 {
    (id >> 22) + DISCORD_EPOCH_MS
}

/// One dispatch: its name (`t`) and its JSON body (`d`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusEvent {
    /// The dispatch name, e.g. `MESSAGE_CREATE`.
    pub t: String,
    /// The JSON text of `d`.
    pub d: Vec<u8>,
}

/// A capture line was not `{"t": string, "d": any}` (extra keys such as `op` and `s` are
/// ignored). Nothing was returned for the capture; the error is permanent for that input.
#[derive(Debug, thiserror::Error)]
#[error("capture line {line}: {reason}")]
pub struct CaptureError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub reason: String,
}

/// Reads a capture: one JSON object per line, `{"t":"MESSAGE_CREATE","d":{...}}`; full
/// envelopes with `op` and `s` are accepted too. Blank lines are skipped; `d` is kept
/// byte for byte.
pub fn parse_capture(text: &str) -> Result<Vec<CorpusEvent>, CaptureError> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        t: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        d: Option<&'a serde_json::value::RawValue>,
    }
    let mut events = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let err = |reason: String| CaptureError {
            line: i + 1,
            reason,
        };
        let line: Line<'_> = serde_json::from_str(raw).map_err(|e| err(e.to_string()))?;
        let t = line.t.ok_or_else(|| err("missing string \"t\"".into()))?;
        let d = line.d.ok_or_else(|| err("missing \"d\"".into()))?;
        events.push(CorpusEvent {
            t: t.into_owned(),
            d: d.get().as_bytes().to_vec(),
        });
    }
    Ok(events)
}

/// Members per guild of [`Corpus::new`].
pub const DEFAULT_MEMBERS_PER_GUILD: usize = 400;

/// The event types the generator emits, with their weight per 1000 events.
pub const EVENT_MIX: [(&str, u32); 11] = [
    ("PRESENCE_UPDATE", 300),
    ("MESSAGE_CREATE", 200),
    ("TYPING_START", 190),
    ("MESSAGE_REACTION_ADD", 90),
    ("GUILD_MEMBER_UPDATE", 70),
    ("VOICE_STATE_UPDATE", 50),
    ("MESSAGE_UPDATE", 40),
    ("MESSAGE_DELETE", 20),
    ("MESSAGE_REACTION_REMOVE", 20),
    ("GUILD_MEMBER_ADD", 10),
    ("CHANNEL_UPDATE", 10),
];

/// SplitMix64: tiny, fast and fixed forever, so a seed always names the same corpus.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        // Callers pass non-empty constant tables or world vectors.
        &items[self.below(items.len() as u64) as usize]
    }

    fn hex(&mut self, len: usize) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        (0..len)
            .map(|_| char::from(HEX[self.below(16) as usize]))
            .collect()
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "ri", "to", "mo", "zen", "lu", "na", "vi", "ex", "dra", "kon", "shi", "ta", "el", "ra",
    "qu", "ix", "or", "bel", "sy", "fa", "no", "ju", "pi", "ster", "wolf", "pix", "neo", "mar",
    "gal", "tor", "vy",
];

const WORDS: &[&str] = &[
    "the", "a", "to", "and", "i", "you", "it", "is", "that", "of", "in", "for", "this", "on", "me",
    "my", "be", "was", "with", "just", "so", "but", "not", "are", "have", "do", "we", "lol",
    "like", "what", "if", "can", "get", "at", "all", "no", "yeah", "ok", "one", "how", "know",
    "think", "good", "its", "im", "dont", "would", "they", "out", "up", "about", "time", "game",
    "play", "server", "bot", "lmao", "now", "when", "there", "some", "any", "anyone", "why",
    "gonna", "really", "more", "new", "update", "patch", "tonight", "stream", "voice", "chat",
    "thanks", "nice", "bro", "wait", "actually", "same", "people", "build", "code", "rust",
    "discord", "role", "channel", "link", "pls", "help", "issue", "fixed", "works", "broken",
    "rank", "match", "queue", "team", "win", "lost", "gg", "wp", "later", "today", "tomorrow",
    "weekend", "event", "meme", "music", "song", "vibe", "art", "drawing", "cat", "dog", "food",
    "sleep", "work",
];

const EMOJI: &[&str] = &[
    "👍", "😂", "❤️", "🔥", "😭", "🎉", "👀", "✅", "💀", "🙏", "😎", "🤔",
];

const GAMES: &[(&str, &str)] = &[
    ("Minecraft", "356875570916753438"),
    ("League of Legends", "401518684763586560"),
    ("Valorant", "700136079562375258"),
    ("Counter-Strike 2", "1158877933042143272"),
    ("Fortnite", "432980957394370572"),
    ("Visual Studio Code", "383226320970055681"),
    ("Genshin Impact", "762434991303950386"),
    ("Roblox", "363445589247131668"),
];

const SITES: &[(&str, &str)] = &[
    ("YouTube", "https://www.youtube.com/watch?v="),
    ("GitHub", "https://github.com/"),
    ("Twitter", "https://twitter.com/i/status/"),
    ("Reddit", "https://www.reddit.com/r/"),
    ("Twitch", "https://www.twitch.tv/"),
    ("Wikipedia", "https://en.wikipedia.org/wiki/"),
];

#[derive(Debug, Clone)]
struct Member {
    id: u64,
    username: String,
    global_name: Option<String>,
    avatar: Option<String>,
    bot: bool,
    public_flags: u64,
    nick: Option<String>,
    roles: Vec<u64>,
    joined_ms: u64,
    premium_since_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Guild {
    id: u64,
    text_channels: Vec<u64>,
    voice_channels: Vec<u64>,
    category: u64,
    roles: Vec<u64>,
    emojis: Vec<(String, u64, bool)>,
    members: Vec<Member>,
}

#[derive(Debug, Clone)]
struct RecentMessage {
    guild: usize,
    channel: u64,
    id: u64,
    author: usize,
    content: String,
}

/// The seeded corpus generator: an endless iterator of dispatches in one world.
#[derive(Debug, Clone)]
pub struct Corpus {
    rng: Rng,
    guilds: Vec<Guild>,
    now_ms: u64,
    increment: u16,
    recent: Vec<RecentMessage>,
}

impl Corpus {
    /// A generator for `seed`. The same seed always yields the same events.
    pub fn new(seed: u64) -> Corpus {
        Corpus::with_members(seed, DEFAULT_MEMBERS_PER_GUILD)
    }

    /// A generator whose guilds have `members_per_guild` members (at least 5). More
    /// members means less repetition within one session's stream.
    pub fn with_members(seed: u64, members_per_guild: usize) -> Corpus {
        let mut rng = Rng(seed ^ 0x636f_6e63_6f72_6421);
        let now_ms = CLOCK_START_MS + rng.below(30 * 86_400_000);
        let members = members_per_guild.max(5);
        let guilds = (0..3)
            .map(|_| Self::make_guild(&mut rng, now_ms, members))
            .collect();
        Corpus {
            rng,
            guilds,
            now_ms,
            increment: 0,
            recent: Vec::new(),
        }
    }

    /// The first `n` events of seed `seed`.
    pub fn generate(seed: u64, n: usize) -> Vec<CorpusEvent> {
        Corpus::new(seed).take(n).collect()
    }

    fn make_guild(rng: &mut Rng, now_ms: u64, member_count: usize) -> Guild {
        let created = rng.range(
            DISCORD_EPOCH_MS + 86_400_000 * 365,
            now_ms - 86_400_000 * 400,
        );
        let mut inc = 0u16;
        let mut id_at = |rng: &mut Rng, ms: u64| {
            inc = inc.wrapping_add(1);
            snowflake(ms, rng.below(32) as u8, rng.below(32) as u8, inc)
        };
        let guild_id = id_at(rng, created);
        let category = id_at(rng, created + 1);
        let text_channels = (0..12).map(|i| id_at(rng, created + 1_000 * i)).collect();
        let voice_channels = (0..3).map(|i| id_at(rng, created + 5_000 * i)).collect();
        let roles: Vec<u64> = (0..16)
            .map(|_| {
                let at = rng.range(created, now_ms - 86_400_000);
                id_at(rng, at)
            })
            .collect();
        let emojis = (0..24)
            .map(|_| {
                let at = rng.range(created, now_ms - 86_400_000);
                (name(rng, 2), id_at(rng, at), rng.chance(150))
            })
            .collect();
        let members = (0..member_count)
            .map(|_| {
                let user_created = rng.range(DISCORD_EPOCH_MS + 86_400_000 * 30, now_ms);
                let username = name(rng, 3);
                let role_count = rng.below(5) as usize;
                let member_roles = (0..role_count).map(|_| *rng.pick(&roles)).collect();
                Member {
                    id: id_at(rng, user_created),
                    global_name: rng.chance(800).then(|| capitalise(&name(rng, 2))),
                    avatar: rng.chance(850).then(|| {
                        let animated = if rng.chance(50) { "a_" } else { "" };
                        format!("{animated}{}", rng.hex(32))
                    }),
                    bot: rng.chance(20),
                    public_flags: if rng.chance(100) { 1 << 22 } else { 0 },
                    nick: rng.chance(200).then(|| capitalise(&name(rng, 2))),
                    roles: member_roles,
                    joined_ms: rng.range(user_created.max(created), now_ms),
                    premium_since_ms: rng
                        .chance(30)
                        .then(|| rng.range(now_ms - 86_400_000 * 300, now_ms)),
                    username,
                }
            })
            .collect();
        Guild {
            id: guild_id,
            text_channels,
            voice_channels,
            category,
            roles,
            emojis,
            members,
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.increment = self.increment.wrapping_add(1);
        let worker = self.rng.below(32) as u8;
        let process = self.rng.below(32) as u8;
        snowflake(self.now_ms, worker, process, self.increment)
    }

    fn next_event(&mut self) -> CorpusEvent {
        self.now_ms += self.rng.below(300);
        let total: u32 = EVENT_MIX.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.below(u64::from(total)) as u32;
        let mut t = EVENT_MIX[0].0;
        for (name, weight) in EVENT_MIX {
            if roll < weight {
                t = name;
                break;
            }
            roll -= weight;
        }
        let d = match t {
            "PRESENCE_UPDATE" => self.presence_update(),
            "MESSAGE_CREATE" => self.message_create(),
            "TYPING_START" => self.typing_start(),
            "MESSAGE_REACTION_ADD" => self.reaction(true),
            "MESSAGE_REACTION_REMOVE" => self.reaction(false),
            "GUILD_MEMBER_UPDATE" => self.member_update(false),
            "GUILD_MEMBER_ADD" => self.member_update(true),
            "VOICE_STATE_UPDATE" => self.voice_state_update(),
            "MESSAGE_UPDATE" => self.message_update(),
            "MESSAGE_DELETE" => self.message_delete(),
            _ => self.channel_update(),
        };
        CorpusEvent {
            t: t.to_owned(),
            // Serialising a Value into a Vec cannot fail.
            d: serde_json::to_vec(&d).unwrap_or_default(),
        }
    }

    fn pick_member(&mut self) -> (usize, usize) {
        let g = self.rng.below(self.guilds.len() as u64) as usize;
        // Activity is skewed: a fifth of the members send most of the traffic.
        let n = self.guilds[g].members.len() as u64;
        let m = if self.rng.chance(700) {
            self.rng.below(n / 5)
        } else {
            self.rng.below(n)
        };
        (g, m as usize)
    }

    fn user_json(m: &Member) -> Value {
        json!({
            "id": m.id.to_string(),
            "username": m.username,
            "global_name": m.global_name,
            "avatar": m.avatar,
            "discriminator": "0",
            "public_flags": m.public_flags,
            "avatar_decoration_data": null,
            "clan": null,
            "primary_guild": null,
            "bot": m.bot.then_some(true),
        })
    }

    fn member_json(m: &Member, with_user: bool) -> Value {
        let mut v = json!({
            "roles": m.roles.iter().map(u64::to_string).collect::<Vec<_>>(),
            "nick": m.nick,
            "avatar": null,
            "banner": null,
            "joined_at": iso8601(m.joined_ms),
            "premium_since": m.premium_since_ms.map(iso8601),
            "deaf": false,
            "mute": false,
            "pending": false,
            "flags": 0,
            "communication_disabled_until": null,
        });
        if with_user && let Value::Object(map) = &mut v {
            map.insert("user".into(), Self::user_json(m));
        }
        v
    }

    fn text(&mut self) -> String {
        // Content length buckets: most chat lines are short, with a long tail to 2000.
        let target = match self.rng.below(100) {
            0..=34 => self.rng.range(1, 30),
            35..=69 => self.rng.range(30, 100),
            70..=89 => self.rng.range(100, 400),
            90..=97 => self.rng.range(400, 1200),
            _ => self.rng.range(1200, 2000),
        } as usize;
        let mut s = String::with_capacity(target + 16);
        while s.len() < target {
            if !s.is_empty() {
                s.push(if self.rng.chance(60) { '\n' } else { ' ' });
            }
            match self.rng.below(100) {
                0..=2 => s.push_str(self.rng.pick::<&str>(EMOJI)),
                3 => s.push_str(&self.rng.below(10_000).to_string()),
                _ => s.push_str(self.rng.pick::<&str>(WORDS)),
            }
        }
        let mut cut = target.min(s.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        while s.ends_with(char::is_whitespace) {
            s.pop();
        }
        if s.is_empty() {
            s.push_str("ok");
        }
        s
    }

    fn embed(&mut self, rich: bool) -> Value {
        let (provider, base) = *self.rng.pick(SITES);
        let url = format!("{base}{}", self.rng.hex(11));
        if rich {
            let fields: Vec<Value> = (0..self.rng.range(1, 5))
                .map(|_| {
                    json!({
                        "name": capitalise(self.rng.pick::<&str>(WORDS)),
                        "value": self.text().chars().take(120).collect::<String>(),
                        "inline": self.rng.chance(500),
                    })
                })
                .collect();
            return json!({
                "type": "rich",
                "title": capitalise(&self.text().chars().take(60).collect::<String>()),
                "description": self.text(),
                "color": self.rng.below(0x00ff_ffff),
                "fields": fields,
                "footer": {"text": format!("{provider} • {}", self.rng.pick(WORDS))},
                "timestamp": iso8601(self.now_ms),
                "content_scan_version": 2,
            });
        }
        json!({
            "type": if provider == "YouTube" || provider == "Twitch" { "video" } else { "article" },
            "url": url,
            "title": capitalise(&self.text().chars().take(80).collect::<String>()),
            "description": self.text().chars().take(300).collect::<String>(),
            "color": self.rng.below(0x00ff_ffff),
            "provider": {"name": provider},
            "thumbnail": {
                "url": format!("https://i.example.com/{}.jpg", self.rng.hex(16)),
                "proxy_url": format!("https://images-ext-1.discordapp.net/external/{}/https/i.example.com/{}.jpg", self.rng.hex(43), self.rng.hex(16)),
                "width": 1280,
                "height": 720,
                "placeholder": self.rng.hex(28),
                "placeholder_version": 1,
                "flags": 0,
            },
            "content_scan_version": 2,
        })
    }

    fn message_json(&mut self, g: usize, m: usize, channel: u64, id: u64, edited: bool) -> Value {
        let author = self.guilds[g].members[m].clone();
        let mut content = self.text();
        let mut mentions = Vec::new();
        if self.rng.chance(150) {
            for _ in 0..self.rng.range(1, 3) {
                let who = self.rng.below(self.guilds[g].members.len() as u64) as usize;
                let target = &self.guilds[g].members[who];
                content = format!("<@{}> {content}", target.id);
                let mut u = Self::user_json(target);
                if let Value::Object(map) = &mut u {
                    map.insert("member".into(), Self::member_json(target, false));
                }
                mentions.push(u);
            }
        }
        let mut embeds = Vec::new();
        if author.bot && self.rng.chance(600) {
            embeds.push(self.embed(true));
        } else if self.rng.chance(80) {
            embeds.push(self.embed(false));
        }
        let attachments: Vec<Value> = if self.rng.chance(40) {
            let att_id = self.fresh_id();
            vec![json!({
                "id": att_id.to_string(),
                "filename": format!("{}.png", name(&mut self.rng, 2)),
                "size": self.rng.range(20_000, 8_000_000),
                "url": format!("https://cdn.discordapp.com/attachments/{channel}/{att_id}/image.png?ex={}&is={}&hm={}&", self.rng.hex(8), self.rng.hex(8), self.rng.hex(64)),
                "proxy_url": format!("https://media.discordapp.net/attachments/{channel}/{att_id}/image.png?ex={}&is={}&hm={}&", self.rng.hex(8), self.rng.hex(8), self.rng.hex(64)),
                "width": 1920,
                "height": 1080,
                "content_type": "image/png",
                "placeholder": self.rng.hex(28),
                "placeholder_version": 1,
            })]
        } else {
            Vec::new()
        };
        let reply = if !self.recent.is_empty() && self.rng.chance(100) {
            let r = self.rng.pick(&self.recent).clone();
            let r_author = self.guilds[r.guild].members[r.author].clone();
            Some((r, r_author))
        } else {
            None
        };
        let mut v = json!({
            "type": if reply.is_some() { 19 } else { 0 },
            "tts": false,
            "timestamp": iso8601(snowflake_unix_ms(id)),
            "edited_timestamp": edited.then(|| iso8601(self.now_ms)),
            "pinned": false,
            "mentions": mentions,
            "mention_roles": [],
            "mention_everyone": false,
            "member": Self::member_json(&author, false),
            "id": id.to_string(),
            "flags": 0,
            "embeds": embeds,
            "content": content,
            "components": [],
            "channel_type": 0,
            "channel_id": channel.to_string(),
            "author": Self::user_json(&author),
            "attachments": attachments,
            "guild_id": self.guilds[g].id.to_string(),
        });
        if let Value::Object(map) = &mut v {
            if !edited {
                let nonce = snowflake(self.now_ms, 0, 0, self.rng.below(4096) as u16);
                map.insert("nonce".into(), Value::String(nonce.to_string()));
            }
            if let Some((r, r_author)) = reply {
                map.insert(
                    "message_reference".into(),
                    json!({"type": 0, "channel_id": r.channel.to_string(), "message_id": r.id.to_string(), "guild_id": self.guilds[r.guild].id.to_string()}),
                );
                map.insert(
                    "referenced_message".into(),
                    json!({
                        "type": 0, "tts": false, "timestamp": iso8601(snowflake_unix_ms(r.id)),
                        "edited_timestamp": null, "pinned": false, "mentions": [], "mention_roles": [],
                        "mention_everyone": false, "id": r.id.to_string(), "flags": 0, "embeds": [],
                        "content": r.content, "components": [], "channel_id": r.channel.to_string(),
                        "author": Self::user_json(&r_author), "attachments": [],
                    }),
                );
            }
        }
        v
    }

    fn message_create(&mut self) -> Value {
        let (g, m) = self.pick_member();
        let channel = *self.rng.pick(&self.guilds[g].text_channels);
        let id = self.fresh_id();
        let v = self.message_json(g, m, channel, id, false);
        let content = v["content"].as_str().unwrap_or_default().to_owned();
        if self.recent.len() >= 256 {
            let slot = self.rng.below(256) as usize;
            self.recent.swap_remove(slot);
        }
        self.recent.push(RecentMessage {
            guild: g,
            channel,
            id,
            author: m,
            content,
        });
        v
    }

    fn message_update(&mut self) -> Value {
        match self.recent.last().cloned() {
            Some(r) => self.message_json(r.guild, r.author, r.channel, r.id, true),
            None => self.message_create(),
        }
    }

    fn message_delete(&mut self) -> Value {
        match self.recent.pop() {
            Some(r) => json!({
                "id": r.id.to_string(),
                "channel_id": r.channel.to_string(),
                "guild_id": self.guilds[r.guild].id.to_string(),
            }),
            None => self.message_create(),
        }
    }

    fn typing_start(&mut self) -> Value {
        let (g, m) = self.pick_member();
        let guild = &self.guilds[g];
        let channel = *self.rng.pick(&guild.text_channels);
        json!({
            "user_id": guild.members[m].id.to_string(),
            "timestamp": self.now_ms / 1000,
            "member": Self::member_json(&guild.members[m], true),
            "channel_id": channel.to_string(),
            "guild_id": guild.id.to_string(),
        })
    }

    fn presence_update(&mut self) -> Value {
        let (g, m) = self.pick_member();
        let status = *self
            .rng
            .pick(&["online", "online", "online", "idle", "dnd", "offline"]);
        let mut activities = Vec::new();
        if status != "offline" {
            if self.rng.chance(250) {
                activities.push(json!({
                    "type": 4, "state": self.text().chars().take(40).collect::<String>(),
                    "name": "Custom Status", "id": "custom",
                    "emoji": {"name": self.rng.pick(EMOJI)},
                    "created_at": self.now_ms - self.rng.below(86_400_000),
                }));
            }
            match self.rng.below(10) {
                0..=3 => {
                    let (game, app) = *self.rng.pick(GAMES);
                    let start = self.now_ms - self.rng.below(3 * 3_600_000);
                    activities.push(json!({
                        "type": 0, "name": game, "id": self.rng.hex(16), "application_id": app,
                        "timestamps": {"start": start}, "created_at": start + self.rng.below(1000),
                        "details": self.rng.chance(500).then(|| capitalise(&self.text().chars().take(30).collect::<String>())),
                        "state": self.rng.chance(500).then_some("In a match"),
                    }));
                }
                4..=5 => {
                    let start = self.now_ms - self.rng.below(200_000);
                    activities.push(json!({
                        "type": 2, "name": "Spotify", "id": "spotify:1",
                        "flags": 48, "sync_id": self.rng.hex(22),
                        "session_id": self.rng.hex(32), "party": {"id": format!("spotify:{}", self.guilds[g].members[m].id)},
                        "details": capitalise(&self.text().chars().take(30).collect::<String>()),
                        "state": capitalise(&name(&mut self.rng, 3)),
                        "timestamps": {"start": start, "end": start + self.rng.range(120_000, 300_000)},
                        "assets": {"large_image": format!("spotify:ab67616d0000b273{}", self.rng.hex(24)), "large_text": capitalise(&name(&mut self.rng, 2))},
                        "created_at": start,
                    }));
                }
                _ => {}
            }
        }
        let mut client_status = serde_json::Map::new();
        if status != "offline" {
            let platform = *self.rng.pick(&["desktop", "desktop", "mobile", "web"]);
            client_status.insert(platform.into(), Value::String(status.into()));
        }
        json!({
            "user": {"id": self.guilds[g].members[m].id.to_string()},
            "status": status,
            "client_status": client_status,
            "broadcast": null,
            "activities": activities,
            "guild_id": self.guilds[g].id.to_string(),
        })
    }

    fn reaction(&mut self, add: bool) -> Value {
        let (g, m) = self.pick_member();
        let (channel, message, author) = match self.recent.last() {
            Some(r) if r.guild == g => (r.channel, r.id, self.guilds[g].members[r.author].id),
            _ => {
                let c = *self.rng.pick(&self.guilds[g].text_channels);
                let at = self.now_ms - self.rng.below(3_600_000);
                let id = snowflake(at, 1, 1, 7);
                (c, id, self.rng.pick(&self.guilds[g].members).id)
            }
        };
        let emoji = if self.rng.chance(300) {
            let (name, id, animated) = self.rng.pick(&self.guilds[g].emojis).clone();
            json!({"name": name, "id": id.to_string(), "animated": animated})
        } else {
            json!({"name": self.rng.pick(EMOJI), "id": null})
        };
        let member = &self.guilds[g].members[m];
        let mut v = json!({
            "user_id": member.id.to_string(),
            "type": 0,
            "message_id": message.to_string(),
            "emoji": emoji,
            "channel_id": channel.to_string(),
            "burst": false,
            "guild_id": self.guilds[g].id.to_string(),
        });
        if add && let Value::Object(map) = &mut v {
            map.insert("member".into(), Self::member_json(member, true));
            map.insert(
                "message_author_id".into(),
                Value::String(author.to_string()),
            );
            map.insert("burst_colors".into(), json!([]));
        }
        v
    }

    fn member_update(&mut self, add: bool) -> Value {
        let (g, m) = self.pick_member();
        if !add && self.rng.chance(500) {
            let role = *self.rng.pick(&self.guilds[g].roles);
            let member = &mut self.guilds[g].members[m];
            if member.roles.len() < 6 {
                member.roles.push(role);
            } else {
                member.roles.clear();
            }
        }
        let mut v = Self::member_json(&self.guilds[g].members[m], true);
        if let Value::Object(map) = &mut v {
            map.insert(
                "guild_id".into(),
                Value::String(self.guilds[g].id.to_string()),
            );
            if add {
                map.insert("joined_at".into(), Value::String(iso8601(self.now_ms)));
            }
        }
        v
    }

    fn voice_state_update(&mut self) -> Value {
        let (g, m) = self.pick_member();
        let guild = &self.guilds[g];
        let channel = if self.rng.chance(800) {
            Some(self.rng.pick(&guild.voice_channels).to_string())
        } else {
            None
        };
        json!({
            "member": Self::member_json(&guild.members[m], true),
            "user_id": guild.members[m].id.to_string(),
            "suppress": false,
            "session_id": self.rng.hex(32),
            "self_video": self.rng.chance(50),
            "self_mute": self.rng.chance(300),
            "self_deaf": self.rng.chance(100),
            "self_stream": self.rng.chance(50),
            "request_to_speak_timestamp": null,
            "mute": false,
            "deaf": false,
            "channel_id": channel,
            "guild_id": guild.id.to_string(),
        })
    }

    fn channel_update(&mut self) -> Value {
        let g = self.rng.below(self.guilds.len() as u64) as usize;
        let index = self.rng.below(self.guilds[g].text_channels.len() as u64) as usize;
        let guild = &self.guilds[g];
        let overwrites: Vec<Value> = guild
            .roles
            .iter()
            .take(self.rng.range(1, 4) as usize)
            .map(|r| json!({"id": r.to_string(), "type": 0, "allow": "1024", "deny": "2048"}))
            .collect();
        let last = self.fresh_id();
        let guild = &self.guilds[g];
        json!({
            "type": 0,
            "id": guild.text_channels[index].to_string(),
            "guild_id": guild.id.to_string(),
            "name": name(&mut self.rng, 3),
            "topic": self.rng.chance(500).then_some("Be nice. Read #rules first."),
            "position": index,
            "permission_overwrites": overwrites,
            "parent_id": self.guilds[g].category.to_string(),
            "nsfw": false,
            "rate_limit_per_user": *self.rng.pick(&[0, 0, 0, 5, 30]),
            "last_message_id": last.to_string(),
            "flags": 0,
            "icon_emoji": null,
            "theme_color": null,
        })
    }
}

impl Iterator for Corpus {
    type Item = CorpusEvent;

    fn next(&mut self) -> Option<CorpusEvent> {
        Some(self.next_event())
    }
}

fn name(rng: &mut Rng, max_syllables: u64) -> String {
    let mut s: String = (0..rng.range(1, max_syllables))
        .map(|_| *rng.pick(SYLLABLES))
        .collect();
    if rng.chance(300) {
        s.push_str(&rng.below(1000).to_string());
    }
    s
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, the timestamp format Discord sends.
fn iso8601(unix_ms: u64) -> String {
    let days = (unix_ms / 86_400_000) as i64;
    let ms_of_day = unix_ms % 86_400_000;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}000+00:00",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn same_seed_same_corpus() {
        assert_eq!(Corpus::generate(7, 300), Corpus::generate(7, 300));
        assert_ne!(Corpus::generate(7, 50), Corpus::generate(8, 50));
    }

    /// A fingerprint of seed 0xc0dec0 (the shipped dictionary's training seed): if the
    /// generator changes, this fails, and `dicts/default-64k.zdict` should be retrained.
    #[test]
    fn generator_output_is_pinned() {
        let fingerprint = Corpus::generate(0x00c0_dec0, 200)
            .iter()
            .flat_map(|e| e.t.bytes().chain(e.d.iter().copied()))
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        assert_eq!(fingerprint, PINNED, "{fingerprint:#x}");
    }

    const PINNED: u64 = 0x5721_3307_b42e_eada;

    #[test]
    fn every_type_appears_and_bodies_are_json() {
        let events = Corpus::generate(1, 3000);
        for (t, _) in EVENT_MIX {
            assert!(events.iter().any(|e| e.t == t), "{t} missing");
        }
        for e in &events {
            let v: Value = serde_json::from_slice(&e.d).unwrap();
            assert!(v.is_object(), "{}", e.t);
            assert!(crate::frame::is_valid_event_type(&e.t));
        }
        let created = events.iter().filter(|e| e.t == "MESSAGE_CREATE").count();
        assert!((450..750).contains(&created), "{created}");
    }

    #[test]
    fn snowflakes_have_discord_shape() {
        let id = snowflake(1_767_571_200_123, 17, 3, 4095);
        assert_eq!(snowflake_unix_ms(id), 1_767_571_200_123);
        assert_eq!((id >> 17) & 0x1f, 17);
        assert_eq!((id >> 12) & 0x1f, 3);
        assert_eq!(id & 0xfff, 4095);
        // Discord's documented example: 175928847299117063 is 2016-04-30T11:18:25.796Z.
        assert_eq!(
            snowflake_unix_ms(175_928_847_299_117_063),
            1_462_015_105_796
        );
        for e in Corpus::generate(3, 500) {
            let v: Value = serde_json::from_slice(&e.d).unwrap();
            for key in ["id", "guild_id", "channel_id", "user_id"] {
                if let Some(s) = v.get(key).and_then(Value::as_str) {
                    let id: u64 = s.parse().unwrap();
                    let ms = snowflake_unix_ms(id);
                    assert!(
                        (DISCORD_EPOCH_MS..CLOCK_START_MS + 40 * 86_400_000).contains(&ms),
                        "{key} {s} in {}",
                        e.t
                    );
                }
            }
        }
    }

    #[test]
    fn timestamps_are_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            iso8601(1_462_015_105_796),
            "2016-04-30T11:18:25.796000+00:00"
        );
        assert_eq!(iso8601(CLOCK_START_MS), "2026-01-05T00:00:00.000000+00:00");
    }

    #[test]
    fn captures_parse() {
        let text = "{\"t\":\"MESSAGE_DELETE\",\"d\":{\"id\":\"1\"}}\n\n{\"op\":0,\"s\":3,\"t\":\"TYPING_START\",\"d\": {\"a\" : 1}}\n";
        let events = parse_capture(text).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].d, br#"{"id":"1"}"#);
        assert_eq!(events[1].t, "TYPING_START");
        assert_eq!(events[1].d, br#"{"a" : 1}"#);
        let err = parse_capture("{\"t\":\"X\",\"d\":1}\nnot json").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse_capture("{\"d\":1}").is_err());
    }
}
