//! The gRPC publish service, `concord.v1.Publisher`.

use std::sync::Arc;

use bytes::Bytes;
use concord_protocol::{GuildId, UserId};
use concord_router::Topic;
use tonic::{Request, Response, Status, Streaming};

use crate::api::{constant_time_eq, validate_event};
use crate::config::Config;
use crate::hub::HubHandle;
use crate::peer::{ClusterPublishError, RouterHandle};

/// Generated code for `concord/v1/publish.proto`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("concord.v1");
}

use pb::publish_request::Target;
use pb::publisher_server::{Publisher, PublisherServer};
use pb::{PublishReply, PublishRequest, PublishStreamReply};

/// The Publisher service.
#[derive(Debug, Clone)]
pub struct PublishService {
    config: Arc<Config>,
    hub: HubHandle,
    router: Option<RouterHandle>,
}

impl PublishService {
    /// The service as a tonic server.
    /// With `router` (a clustered node), guild events go through the guild's owner.
    pub fn server(
        config: Arc<Config>,
        hub: HubHandle,
        router: Option<RouterHandle>,
    ) -> PublisherServer<PublishService> {
        let limit = config_limit(&config);
        PublisherServer::new(PublishService {
            config,
            hub,
            router,
        })
        .max_decoding_message_size(limit)
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let ok = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|s| constant_time_eq(s.as_bytes(), self.config.publish_secret.as_bytes()));
        if ok {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or invalid publish secret"))
        }
    }

    async fn publish_one(&self, req: PublishRequest) -> Result<u64, Status> {
        let topic = match req.target {
            Some(Target::GuildId(g)) => Topic::Guild(GuildId(g)),
            Some(Target::UserId(u)) => Topic::User(UserId(u)),
            None => return Err(Status::invalid_argument("set guild_id or user_id")),
        };
        validate_event(&req.event_type, &req.data_json, self.config.max_event_bytes)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        serde_json::from_slice::<&serde_json::value::RawValue>(&req.data_json)
            .map_err(|e| Status::invalid_argument(format!("data_json is not JSON: {e}")))?;
        let body = Bytes::from(req.data_json);
        match (&self.router, topic) {
            (Some(router), Topic::Guild(guild)) => router
                .publish(guild, &req.event_type, body)
                .await
                .map_err(|e| match e {
                    // Unknown outcome: it may still be sequenced.
                    ClusterPublishError::TimedOut => Status::deadline_exceeded(e.to_string()),
                    e => Status::unavailable(e.to_string()),
                }),
            _ => self
                .hub
                .publish(topic, &req.event_type, body)
                .await
                .map_err(|_| Status::unavailable("node is shutting down")),
        }
    }
}

fn config_limit(config: &Config) -> usize {
    config.max_event_bytes + 1024
}

#[tonic::async_trait]
impl Publisher for PublishService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        self.authorize(&request)?;
        let seq = self.publish_one(request.into_inner()).await?;
        Ok(Response::new(PublishReply { seq }))
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<PublishStreamReply>, Status> {
        self.authorize(&request)?;
        let mut stream = request.into_inner();
        let mut reply = PublishStreamReply::default();
        while let Some(req) = stream.message().await? {
            reply.last_seq = self.publish_one(req).await?;
            reply.accepted += 1;
        }
        Ok(Response::new(reply))
    }
}
