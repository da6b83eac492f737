//! The onstage target: stages and participant tokens through the SigV4-signed
//! IVS API (the same signer and client as `onstage-loadtest api`), media
//! through WHIP with the token as bearer.
//!
//! - publish: `POST {stage.endpoints.whip}` with a sendonly offer → `201`, the
//!   answer and a `Location` to `DELETE` when leaving;
//! - subscribe: `POST {whip}/subscribe/{participantId}` with a recvonly offer and
//!   a SUBSCRIBE token → `201` and the answer.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};
use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::http::{self as whip_http, Url};
use super::target::{Failure, Published, Room, Session, SubscribeMode, Subscribed, Target};
use crate::api;
use crate::sigv4::Signer;

pub struct Onstage {
    api: api::Target,
    signer: Signer,
    /// Each stage's WHIP endpoint, by stage ARN.
    whip: Mutex<HashMap<String, Url>>,
    /// Every stage's `autoParticipantRecordingConfiguration`, with the storage
    /// configuration this run created (deleted at the end); none without recording.
    recording: Option<(Value, String)>,
}

impl Onstage {
    pub fn new(
        endpoint: &str,
        access_key_id: &str,
        secret_access_key: &str,
        region: &str,
    ) -> anyhow::Result<Self> {
        Ok(Onstage {
            api: api::Target::parse(endpoint)?,
            signer: Signer::new(access_key_id, secret_access_key, region, "ivs"),
            whip: Mutex::new(HashMap::new()),
            recording: None,
        })
    }

    /// Makes every stage created from now on record its publishers into
    /// `bucket` (a storage configuration made here), with a thumbnail every
    /// `thumbnail_interval` seconds if given.
    pub async fn record_into(
        &mut self,
        bucket: &str,
        thumbnail_interval: Option<u32>,
    ) -> anyhow::Result<()> {
        let created = self
            .call(
                "CreateStorageConfiguration",
                json!({ "name": format!("load-{}", api::unix_now()), "s3": { "bucketName": bucket } }),
            )
            .await?;
        let Some(arn) = created
            .pointer("/storageConfiguration/arn")
            .and_then(Value::as_str)
        else {
            bail!(
                "CreateStorageConfiguration answered without storageConfiguration.arn: {created}"
            );
        };
        let thumbnails = match thumbnail_interval {
            Some(seconds) => json!({
                "recordingMode": "INTERVAL", "storage": ["SEQUENTIAL"], "targetIntervalSeconds": seconds,
            }),
            None => json!({ "recordingMode": "DISABLED" }),
        };
        let settings =
            json!({ "storageConfigurationArn": arn, "thumbnailConfiguration": thumbnails });
        self.recording = Some((settings, arn.to_owned()));
        Ok(())
    }

    async fn call(&self, operation: &str, body: Value) -> anyhow::Result<Value> {
        let mut signer = self.signer.clone();
        api::call(&self.api, &mut signer, operation, body)
            .await
            .map_err(|e| Failure::new(operation, format!("{e:#}")))
    }

    fn whip_of(&self, room: &Room) -> anyhow::Result<Url> {
        let map = self
            .whip
            .lock()
            .map_err(|_| anyhow!("stage map poisoned"))?;
        map.get(&room.id)
            .cloned()
            .ok_or_else(|| anyhow!("no WHIP endpoint known for {}", room.id))
    }

    async fn token(
        &self,
        room: &Room,
        user: &str,
        capabilities: &[&str],
    ) -> anyhow::Result<(String, String)> {
        let created = self
            .call(
                "CreateParticipantToken",
                json!({ "stageArn": room.id, "userId": user, "capabilities": capabilities }),
            )
            .await?;
        let token = created
            .pointer("/participantToken/token")
            .and_then(Value::as_str);
        let id = created
            .pointer("/participantToken/participantId")
            .and_then(Value::as_str);
        match (token, id) {
            (Some(t), Some(i)) => Ok((t.to_owned(), i.to_owned())),
            _ => Err(Failure::new(
                "CreateParticipantToken",
                format!("answer without token or participantId: {created}"),
            )),
        }
    }

    /// POSTs an offer to a WHIP URL; `201` with an answer and a `Location`, or a
    /// failure of kind `{what}_{status}`.
    async fn post_offer(
        &self,
        url: &Url,
        token: &str,
        offer: String,
        what: &str,
    ) -> anyhow::Result<(String, Url)> {
        let response = whip_http::request(
            Method::POST,
            url,
            Some(token),
            Some("application/sdp"),
            Bytes::from(offer),
        )
        .await
        .map_err(|e| Failure::new(format!("{what}_transport"), format!("{e:#}")))?;
        if response.status != StatusCode::CREATED {
            return Err(Failure::new(
                format!("{what}_{}", response.status.as_u16()),
                String::from_utf8_lossy(&response.body).into_owned(),
            ));
        }
        let location = response.location.ok_or_else(|| {
            Failure::new(
                format!("{what}_no_location"),
                "201 without a Location header",
            )
        })?;
        let answer = String::from_utf8(response.body.to_vec())
            .map_err(|_| Failure::new(format!("{what}_bad_answer"), "the answer is not UTF-8"))?;
        Ok((answer, url.join(&location)?))
    }
}

/// A WHIP resource to `DELETE` on leaving.
struct WhipSession {
    resource: Url,
    token: String,
}

#[async_trait]
impl Session for WhipSession {
    async fn leave(self: Box<Self>) -> anyhow::Result<()> {
        let response = whip_http::request(
            Method::DELETE,
            &self.resource,
            Some(&self.token),
            None,
            Bytes::new(),
        )
        .await
        .map_err(|e| Failure::new("leave_transport", format!("{e:#}")))?;
        // 404: the server already closed it (e.g. the peer timed out).
        if !response.status.is_success() && response.status != StatusCode::NOT_FOUND {
            return Err(Failure::new(
                format!("leave_{}", response.status.as_u16()),
                String::from_utf8_lossy(&response.body).into_owned(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Target for Onstage {
    fn name(&self) -> &'static str {
        "onstage"
    }

    fn subscribe_mode(&self) -> SubscribeMode {
        SubscribeMode::ClientOffers
    }

    async fn create_room(&self, name: &str, _publishers: u32) -> anyhow::Result<Room> {
        let mut request = json!({ "name": name });
        if let Some((settings, _)) = &self.recording {
            request["autoParticipantRecordingConfiguration"] = settings.clone();
        }
        let created = self.call("CreateStage", request).await?;
        let arn = created.pointer("/stage/arn").and_then(Value::as_str);
        let whip = created
            .pointer("/stage/endpoints/whip")
            .and_then(Value::as_str);
        let (Some(arn), Some(whip)) = (arn, whip) else {
            bail!("CreateStage answered without stage.arn or stage.endpoints.whip: {created}");
        };
        let whip = Url::parse(whip).context("stage.endpoints.whip")?;
        self.whip
            .lock()
            .map_err(|_| anyhow!("stage map poisoned"))?
            .insert(arn.to_owned(), whip);
        Ok(Room {
            id: arn.to_owned(),
            name: name.to_owned(),
        })
    }

    async fn delete_room(&self, room: &Room) -> anyhow::Result<()> {
        self.call("DeleteStage", json!({ "arn": room.id })).await?;
        Ok(())
    }

    async fn publish(
        &self,
        room: &Room,
        user: &str,
        offer_sdp: String,
    ) -> anyhow::Result<Published> {
        let whip = self.whip_of(room)?;
        let (token, participant_id) = self.token(room, user, &["PUBLISH", "SUBSCRIBE"]).await?;
        let (answer_sdp, resource) = self
            .post_offer(&whip, &token, offer_sdp, "whip_publish")
            .await?;
        Ok(Published {
            publisher_id: participant_id,
            answer_sdp,
            session: Box::new(WhipSession { resource, token }),
        })
    }

    async fn subscribe(
        &self,
        room: &Room,
        publisher_id: &str,
        user: &str,
        offer_sdp: Option<String>,
    ) -> anyhow::Result<Subscribed> {
        let Some(offer) = offer_sdp else {
            bail!("onstage subscriptions start with the client's offer");
        };
        let whip = self.whip_of(room)?;
        let url = Url {
            path: format!(
                "{}/subscribe/{publisher_id}",
                whip.path.trim_end_matches('/')
            ),
            ..whip
        };
        let (token, participant_id) = self.token(room, user, &["SUBSCRIBE"]).await?;
        let (server_sdp, resource) = self
            .post_offer(&url, &token, offer, "whip_subscribe")
            .await?;
        Ok(Subscribed {
            participant_id: Some(participant_id),
            server_sdp,
            session: Box::new(WhipSession { resource, token }),
        })
    }

    async fn replicate(
        &self,
        source: &Room,
        publisher_id: &str,
        destination: &Room,
    ) -> anyhow::Result<()> {
        self.call(
            "StartParticipantReplication",
            json!({
                "sourceStageArn": source.id,
                "destinationStageArn": destination.id,
                "participantId": publisher_id,
            }),
        )
        .await?;
        Ok(())
    }

    async fn stop_replication(
        &self,
        source: &Room,
        publisher_id: &str,
        destination: &Room,
    ) -> anyhow::Result<()> {
        self.call(
            "StopParticipantReplication",
            json!({
                "sourceStageArn": source.id,
                "destinationStageArn": destination.id,
                "participantId": publisher_id,
            }),
        )
        .await?;
        Ok(())
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        if let Some((_, arn)) = &self.recording {
            self.call("DeleteStorageConfiguration", json!({ "arn": arn }))
                .await?;
        }
        Ok(())
    }

    async fn connected_participants(&self, room: &Room) -> anyhow::Result<Vec<String>> {
        let stage = self.call("GetStage", json!({ "arn": room.id })).await?;
        let Some(session) = stage
            .pointer("/stage/activeSessionId")
            .and_then(Value::as_str)
        else {
            return Ok(Vec::new());
        };
        let mut ids = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut body = json!({
                "stageArn": room.id, "sessionId": session, "filterByState": "CONNECTED", "maxResults": 100,
            });
            if let Some(token) = &next {
                body["nextToken"] = json!(token);
            }
            let page = self.call("ListParticipants", body).await?;
            if let Some(list) = page.get("participants").and_then(Value::as_array) {
                ids.extend(
                    list.iter()
                        .filter_map(|p| p.get("participantId")?.as_str().map(str::to_owned)),
                );
            }
            match page.get("nextToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => return Ok(ids),
            }
        }
    }
}
