//! The API listener: HTTP publish, guild and membership endpoints, the Discord REST shim
//! client libraries query before connecting, and the gRPC publish service, all on one
//! port.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use concord_protocol::token::{self, Claims};
use concord_protocol::zstd_dict::DictId;
use concord_protocol::{CurrentUser, GuildId, UserId, frame};
use concord_router::Topic;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::config::Config;
use crate::hub::{HubClosed, HubHandle, HubInput};
use crate::peer::{ClusterPublishError, RouterHandle};

/// What the API handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// Settings.
    pub config: Arc<Config>,
    /// The hub.
    pub hub: HubHandle,
    /// The cluster router, when clustered: guild publishes go through the guild's owner.
    pub router: Option<RouterHandle>,
    /// The gateway URL clients connect to.
    pub public_url: String,
    /// The zstd-dict dictionaries this node serves.
    pub dicts: Arc<crate::dicts::DictStore>,
}

/// An API error, answered as `{"code": ..., "message": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong publish secret (401).
    #[error("missing or invalid authorization")]
    Unauthorized,
    /// The request body is not what the endpoint takes (400).
    #[error("{0}")]
    BadRequest(String),
    /// The node is shutting down (503, retry on another node).
    #[error("node is shutting down")]
    ShuttingDown,
    /// The cluster could not sequence a guild publish (503, transient: retry).
    #[error("cluster unavailable: {0}")]
    ClusterUnavailable(ClusterPublishError),
}

impl From<ClusterPublishError> for ApiError {
    fn from(e: ClusterPublishError) -> Self {
        match e {
            ClusterPublishError::ShuttingDown => ApiError::ShuttingDown,
            e => ApiError::ClusterUnavailable(e),
        }
    }
}

impl From<HubClosed> for ApiError {
    fn from(_: HubClosed) -> Self {
        ApiError::ShuttingDown
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, 0),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, 50_035),
            // The owner may still sequence it (the router keeps resending): the outcome
            // is unknown, which is what 504 says; 503 means it was not published.
            ApiError::ClusterUnavailable(ClusterPublishError::TimedOut) => {
                (StatusCode::GATEWAY_TIMEOUT, 0)
            }
            ApiError::ShuttingDown | ApiError::ClusterUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, 0)
            }
        };
        (
            status,
            Json(json!({"code": code, "message": self.to_string()})),
        )
            .into_response()
    }
}

/// The API routes (HTTP part).
pub fn router(state: ApiState) -> Router {
    let body_limit = state.config.max_event_bytes + 1024;
    Router::new()
        .route("/v1/guilds/{guild_id}/events", post(publish_guild))
        .route("/v1/users/{user_id}/events", post(publish_user))
        .route("/v1/guilds/{guild_id}", put(store_guild))
        .route(
            "/v1/guilds/{guild_id}/members/{user_id}",
            put(add_member).delete(remove_member),
        )
        .route("/v1/dictionaries", get(list_dictionaries))
        .route("/v1/dictionaries/{id}", get(dictionary))
        .route("/api/v10/gateway", get(gateway))
        .route("/api/v10/gateway/bot", get(gateway_bot))
        .route("/api/v10/users/@me", get(users_me))
        .route("/api/v10/oauth2/applications/@me", get(application_me))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Checks `Authorization: Bearer <secret>` in constant time.
pub fn check_bearer(headers: &HeaderMap, secret: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares two byte strings without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    t: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    d: &'a RawValue,
}

/// Parses `{"t": "...", "d": ...}` into a checked event type and the body bytes.
pub fn parse_event(body: &[u8], max: usize) -> Result<(String, Bytes), ApiError> {
    let parsed: PublishBody<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("body must be {{\"t\": string, \"d\": any}}: {e}"))
    })?;
    validate_event(&parsed.t, parsed.d.get().as_bytes(), max)?;
    Ok((
        parsed.t.into_owned(),
        Bytes::copy_from_slice(parsed.d.get().as_bytes()),
    ))
}

/// Checks an event type and a JSON body's size.
pub fn validate_event(t: &str, d: &[u8], max: usize) -> Result<(), ApiError> {
    if !frame::is_valid_event_type(t) {
        return Err(ApiError::BadRequest(
            "t must be 1 to 64 characters of A-Z, 0-9 and _".into(),
        ));
    }
    if d.len() > max {
        return Err(ApiError::BadRequest(format!("d is over {max} bytes")));
    }
    Ok(())
}

async fn publish_guild(
    State(s): State<ApiState>,
    Path(guild): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_bearer(&headers, &s.config.publish_secret)?;
    let (t, d) = parse_event(&body, s.config.max_event_bytes)?;
    let seq = match &s.router {
        Some(router) => router.publish(GuildId(guild), &t, d).await?,
        None => s.hub.publish(Topic::Guild(GuildId(guild)), &t, d).await?,
    };
    Ok((StatusCode::ACCEPTED, Json(json!({ "guild_seq": seq }))).into_response())
}

async fn publish_user(
    State(s): State<ApiState>,
    Path(user): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_bearer(&headers, &s.config.publish_secret)?;
    let (t, d) = parse_event(&body, s.config.max_event_bytes)?;
    let seq = s.hub.publish(Topic::User(UserId(user)), &t, d).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "user_seq": seq }))).into_response())
}

async fn store_guild(
    State(s): State<ApiState>,
    Path(guild): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    check_bearer(&headers, &s.config.publish_secret)?;
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body must be a guild object: {e}")))?;
    // GUILD_CREATE must name the guild it is about.
    object.insert("id".into(), json!(guild.to_string()));
    object.entry("unavailable").or_insert(json!(false));
    let object = serde_json::to_vec(&object).unwrap_or_default();
    s.hub
        .send(HubInput::StoreGuild {
            guild: GuildId(guild),
            object: object.into(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_member(
    State(s): State<ApiState>,
    Path((guild, user)): Path<(u64, u64)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_member(s, guild, user, headers, true).await
}

async fn remove_member(
    State(s): State<ApiState>,
    Path((guild, user)): Path<(u64, u64)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    set_member(s, guild, user, headers, false).await
}

async fn set_member(
    s: ApiState,
    guild: u64,
    user: u64,
    headers: HeaderMap,
    member: bool,
) -> Result<Response, ApiError> {
    check_bearer(&headers, &s.config.publish_secret)?;
    let sessions = s
        .hub
        .set_member(GuildId(guild), UserId(user), member)
        .await?;
    Ok((StatusCode::OK, Json(json!({ "sessions": sessions }))).into_response())
}

async fn list_dictionaries(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let dicts = s.dicts.current();
    let list: Vec<_> = dicts
        .iter()
        .map(|d| json!({"id": d.id().0, "size": d.bytes().len()}))
        .collect();
    let newest = dicts.newest().map(|d| d.id().0);
    Json(json!({"dictionaries": list, "newest": newest}))
}

/// The raw dictionary bytes, for clients of `compress=zstd-dict`. Dictionaries never
/// change under an id, so they may be cached forever. A dictionary retrained on this
/// node's traffic can hold fragments of that traffic, so it is served only with a valid
/// client token (`Authorization`, as for `/users/@me`); the shipped and configured ones
/// are public.
async fn dictionary(
    State(s): State<ApiState>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> Response {
    let id = DictId(id);
    if !s.dicts.is_pinned(id)
        && let Err(e) = token_claims(&headers, &s.config)
    {
        return e.into_response();
    }
    match s.dicts.current().find(id) {
        Some(d) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CACHE_CONTROL,
                    if s.dicts.is_pinned(id) {
                        "public, max-age=31536000, immutable"
                    } else {
                        "private, max-age=31536000, immutable"
                    },
                ),
            ],
            Bytes::copy_from_slice(d.bytes()),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"code": 10_004, "message": format!("unknown dictionary {id}")})),
        )
            .into_response(),
    }
}

async fn gateway(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "url": s.public_url }))
}

async fn gateway_bot(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let c = &s.config;
    Json(json!({
        "url": s.public_url,
        "shards": 1,
        "session_start_limit": {
            "total": 1_000_000,
            "remaining": 1_000_000,
            "reset_after": 86_400_000,
            "max_concurrency": c.identify_max_concurrency,
        }
    }))
}

/// The claims of the `Authorization: Bot <token>` (or bare token) header.
fn token_claims(headers: &HeaderMap, config: &Config) -> Result<Claims, ApiError> {
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized)?;
    let raw = raw.strip_prefix("Bearer ").unwrap_or(raw);
    token::verify(config.token_secret.as_bytes(), raw, crate::conn::unix_now())
        .map_err(|_| ApiError::Unauthorized)
}

async fn users_me(State(s): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let claims = token_claims(&headers, &s.config)?;
    let user = CurrentUser::new(claims.user_id(), &claims.name, claims.bot);
    Ok(Json(user).into_response())
}

async fn application_me(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = token_claims(&headers, &s.config)?;
    let user = CurrentUser::new(claims.user_id(), &claims.name, claims.bot);
    Ok(Json(json!({
        "id": claims.user_id(),
        "name": claims.name,
        "icon": null,
        "description": "",
        "bot_public": false,
        "bot_require_code_grant": false,
        "verify_key": "",
        "flags": 0,
        "owner": user,
        "team": null,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn publish_body_parsing() {
        let (t, d) = parse_event(br#"{"t":"MESSAGE_CREATE","d":{"a":[1,2]}}"#, 100).unwrap();
        assert_eq!(t, "MESSAGE_CREATE");
        assert_eq!(&d[..], br#"{"a":[1,2]}"#);
        assert!(parse_event(br#"{"t":"bad type","d":1}"#, 100).is_err());
        assert!(parse_event(br#"{"t":"X"}"#, 100).is_err());
        assert!(parse_event(br#"{"t":"X","d":"0123456789"}"#, 5).is_err());
        assert!(parse_event(b"nope", 100).is_err());
    }

    #[test]
    fn bearer_check() {
        let mut h = HeaderMap::new();
        assert!(check_bearer(&h, "s").is_err());
        h.insert(header::AUTHORIZATION, "Bearer s".parse().unwrap());
        assert!(check_bearer(&h, "s").is_ok());
        assert!(check_bearer(&h, "t").is_err());
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
