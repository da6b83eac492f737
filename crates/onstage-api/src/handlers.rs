//! One function per operation: read the validated request, call the control plane,
//! shape the response. Nothing else happens here.

use std::collections::BTreeMap;

use onstage_stage::Account;
use onstage_stage::model::{
    IngestProtocol, IngestState, Page, ParticipantFilter, ParticipantState, RecordingState, Tags,
};
use onstage_stage::service::{NewIngestConfiguration, NewStage, ReplicationRequest, TokenRequest};
use onstage_stage::store::IngestFilter;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::ApiState;
use crate::error::{ApiError, ErrorKind};
use crate::wire::{self, AutoRecordingIn, S3In, TokenConfigurationIn, VideoIn};

pub type Reply = Result<Value, ApiError>;

/// Runs the operation `name` on a request document that has passed validation.
pub async fn dispatch(state: &ApiState, account: &Account, name: &str, doc: Value) -> Reply {
    match name {
        "CreateStage" => create_stage(state, account, doc).await,
        "GetStage" => get_stage(state, account, doc).await,
        "UpdateStage" => update_stage(state, account, doc).await,
        "DeleteStage" => delete_stage(state, account, doc).await,
        "ListStages" => list_stages(state, account, doc).await,
        "CreateParticipantToken" => create_participant_token(state, account, doc).await,
        "ImportPublicKey" => import_public_key(state, account, doc).await,
        "GetPublicKey" => get_public_key(state, account, doc).await,
        "DeletePublicKey" => delete_public_key(state, account, doc).await,
        "ListPublicKeys" => list_public_keys(state, account, doc).await,
        "TagResource" => tag_resource(state, account, doc).await,
        "UntagResource" => untag_resource(state, account, doc).await,
        "ListTagsForResource" => list_tags_for_resource(state, account, doc).await,
        "CreateStorageConfiguration" => create_storage_configuration(state, account, doc).await,
        "GetStorageConfiguration" => get_storage_configuration(state, account, doc).await,
        "DeleteStorageConfiguration" => delete_storage_configuration(state, account, doc).await,
        "ListStorageConfigurations" => list_storage_configurations(state, account, doc).await,
        "CreateEncoderConfiguration" => create_encoder_configuration(state, account, doc).await,
        "GetEncoderConfiguration" => get_encoder_configuration(state, account, doc).await,
        "DeleteEncoderConfiguration" => delete_encoder_configuration(state, account, doc).await,
        "ListEncoderConfigurations" => list_encoder_configurations(state, account, doc).await,
        "CreateIngestConfiguration" => create_ingest_configuration(state, account, doc).await,
        "GetIngestConfiguration" => get_ingest_configuration(state, account, doc).await,
        "UpdateIngestConfiguration" => update_ingest_configuration(state, account, doc).await,
        "DeleteIngestConfiguration" => delete_ingest_configuration(state, account, doc).await,
        "ListIngestConfigurations" => list_ingest_configurations(state, account, doc).await,
        "GetStageSession" => get_stage_session(state, account, doc).await,
        "ListStageSessions" => list_stage_sessions(state, account, doc).await,
        "GetParticipant" => get_participant(state, account, doc).await,
        "ListParticipants" => list_participants(state, account, doc).await,
        "ListParticipantEvents" => list_participant_events(state, account, doc).await,
        "DisconnectParticipant" => disconnect_participant(state, account, doc).await,
        "RevokeConnectionToken" => revoke_connection_token(state, account, doc).await,
        "StartParticipantReplication" => start_participant_replication(state, account, doc).await,
        "StopParticipantReplication" => stop_participant_replication(state, account, doc).await,
        "ListParticipantReplicas" => list_participant_replicas(state, account, doc).await,
        other => Err(ApiError::new(
            ErrorKind::NotImplemented,
            format!("{other} is not implemented by onstage yet"),
        )),
    }
}

fn input<T: DeserializeOwned>(doc: Value) -> Result<T, ApiError> {
    serde_json::from_value(doc).map_err(|e| ApiError::new(ErrorKind::Serialization, e.to_string()))
}

#[derive(Deserialize)]
struct ByArn {
    arn: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageIn {
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// Decodes `nextToken`/`maxResults` and, after the call, encodes the next token.
struct Paging<'a> {
    state: &'a ApiState,
    operation: &'static str,
    account: &'a Account,
}

impl<'a> Paging<'a> {
    fn new(state: &'a ApiState, operation: &'static str, account: &'a Account) -> Self {
        Paging {
            state,
            operation,
            account,
        }
    }

    fn request(&self, p: &PageIn, default_max: u32) -> Result<(Option<i64>, u32), ApiError> {
        let after = self.state.page_tokens.decode(
            self.operation,
            &self.account.id,
            p.next_token.as_deref(),
        )?;
        // The model's range has been enforced; the default is per operation.
        let limit = p.max_results.map(|m| m as u32).unwrap_or(default_max);
        Ok((after, limit))
    }

    fn reply<T>(&self, key: &str, page: Page<T>, shape: impl Fn(&T) -> Value) -> Reply {
        let mut body = serde_json::Map::new();
        body.insert(
            key.into(),
            Value::Array(page.items.iter().map(shape).collect()),
        );
        if let Some(next) = page.next {
            body.insert(
                "nextToken".into(),
                json!(
                    self.state
                        .page_tokens
                        .encode(self.operation, &self.account.id, next)
                ),
            );
        }
        Ok(Value::Object(body))
    }
}

// ----- stages ----------------------------------------------------------------

async fn create_stage(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        name: Option<String>,
        participant_token_configurations: Option<Vec<TokenConfigurationIn>>,
        tags: Option<Tags>,
        auto_participant_recording_configuration: Option<AutoRecordingIn>,
    }
    let i: In = input(doc)?;
    let (stage, tokens) = state
        .control
        .create_stage(
            account,
            NewStage {
                name: i.name,
                tags: i.tags.unwrap_or_default(),
                auto_participant_recording: i
                    .auto_participant_recording_configuration
                    .map(Into::into),
                participant_tokens: i
                    .participant_token_configurations
                    .unwrap_or_default()
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            },
        )
        .await?;
    Ok(json!({
        "stage": wire::stage(&stage),
        "participantTokens": tokens.iter().map(wire::participant_token).collect::<Vec<_>>(),
    }))
}

async fn get_stage(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let i: ByArn = input(doc)?;
    let stage = state.control.get_stage(account, &i.arn).await?;
    Ok(json!({ "stage": wire::stage(&stage) }))
}

async fn update_stage(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        arn: String,
        name: Option<String>,
        auto_participant_recording_configuration: Option<AutoRecordingIn>,
    }
    let i: In = input(doc)?;
    let stage = state
        .control
        .update_stage(
            account,
            &i.arn,
            i.name,
            i.auto_participant_recording_configuration.map(Into::into),
        )
        .await?;
    Ok(json!({ "stage": wire::stage(&stage) }))
}

async fn delete_stage(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let i: ByArn = input(doc)?;
    state.control.delete_stage(account, &i.arn).await?;
    Ok(json!({}))
}

async fn list_stages(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let paging = Paging::new(state, "ListStages", account);
    let (after, limit) = paging.request(&input(doc)?, 50)?;
    let page = state.control.list_stages(account, after, limit).await?;
    paging.reply("stages", page, wire::stage_summary)
}

// ----- participant tokens ---------------------------------------------------

async fn create_participant_token(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        stage_arn: String,
        #[serde(flatten)]
        token: TokenConfigurationIn,
    }
    let i: In = input(doc)?;
    let token = state
        .control
        .create_participant_token(account, &i.stage_arn, TokenRequest::from(i.token))
        .await?;
    Ok(json!({ "participantToken": wire::participant_token(&token) }))
}

// ----- public keys ------------------------------------------------------------

async fn import_public_key(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        public_key_material: String,
        name: Option<String>,
        tags: Option<Tags>,
    }
    let i: In = input(doc)?;
    let key = state
        .control
        .import_public_key(
            account,
            &i.public_key_material,
            i.name,
            i.tags.unwrap_or_default(),
        )
        .await?;
    Ok(json!({ "publicKey": wire::public_key(&key) }))
}

async fn get_public_key(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let i: ByArn = input(doc)?;
    let key = state.control.get_public_key(account, &i.arn).await?;
    Ok(json!({ "publicKey": wire::public_key(&key) }))
}

async fn delete_public_key(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let i: ByArn = input(doc)?;
    state.control.delete_public_key(account, &i.arn).await?;
    Ok(json!({}))
}

async fn list_public_keys(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let paging = Paging::new(state, "ListPublicKeys", account);
    let (after, limit) = paging.request(&input(doc)?, 50)?;
    let page = state
        .control
        .list_public_keys(account, after, limit)
        .await?;
    paging.reply("publicKeys", page, wire::public_key_summary)
}

// ----- tags -------------------------------------------------------------------

async fn tag_resource(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        resource_arn: String,
        tags: Tags,
    }
    let i: In = input(doc)?;
    state
        .control
        .tag_resource(account, &i.resource_arn, i.tags)
        .await?;
    Ok(json!({}))
}

async fn untag_resource(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        resource_arn: String,
        tag_keys: Vec<String>,
    }
    let i: In = input(doc)?;
    state
        .control
        .untag_resource(account, &i.resource_arn, &i.tag_keys)
        .await?;
    Ok(json!({}))
}

async fn list_tags_for_resource(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        resource_arn: String,
    }
    let i: In = input(doc)?;
    let tags = state.control.list_tags(account, &i.resource_arn).await?;
    Ok(json!({ "tags": wire::tags(&tags) }))
}

// ----- storage and encoder configurations --------------------------------------

async fn create_storage_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    struct In {
        name: Option<String>,
        s3: S3In,
        tags: Option<Tags>,
    }
    let i: In = input(doc)?;
    let s = state
        .control
        .create_storage_configuration(
            account,
            i.name,
            i.s3.bucket_name,
            i.tags.unwrap_or_default(),
        )
        .await?;
    Ok(json!({ "storageConfiguration": wire::storage_configuration(&s) }))
}

async fn get_storage_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let i: ByArn = input(doc)?;
    let s = state
        .control
        .get_storage_configuration(account, &i.arn)
        .await?;
    Ok(json!({ "storageConfiguration": wire::storage_configuration(&s) }))
}

async fn delete_storage_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let i: ByArn = input(doc)?;
    state
        .control
        .delete_storage_configuration(account, &i.arn)
        .await?;
    Ok(json!({}))
}

async fn list_storage_configurations(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let paging = Paging::new(state, "ListStorageConfigurations", account);
    let (after, limit) = paging.request(&input(doc)?, 100)?;
    let page = state
        .control
        .list_storage_configurations(account, after, limit)
        .await?;
    paging.reply("storageConfigurations", page, wire::storage_configuration)
}

// ----- ingest configurations ---------------------------------------------------

async fn create_ingest_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        name: Option<String>,
        stage_arn: Option<String>,
        user_id: Option<String>,
        attributes: Option<BTreeMap<String, String>>,
        ingest_protocol: String,
        insecure_ingest: Option<bool>,
        redundant_ingest: Option<bool>,
        tags: Option<Tags>,
    }
    let i: In = input(doc)?;
    let c = state
        .control
        .create_ingest_configuration(
            account,
            NewIngestConfiguration {
                name: i.name,
                stage_arn: i.stage_arn,
                user_id: i.user_id,
                attributes: i.attributes,
                // The model's enum has been enforced.
                ingest_protocol: IngestProtocol::parse(&i.ingest_protocol),
                insecure_ingest: i.insecure_ingest,
                redundant_ingest: i.redundant_ingest,
                tags: i.tags.unwrap_or_default(),
            },
        )
        .await?;
    Ok(json!({ "ingestConfiguration": wire::ingest_configuration(&c) }))
}

async fn get_ingest_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let i: ByArn = input(doc)?;
    let c = state
        .control
        .get_ingest_configuration(account, &i.arn)
        .await?;
    Ok(json!({ "ingestConfiguration": wire::ingest_configuration(&c) }))
}

async fn update_ingest_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        arn: String,
        stage_arn: Option<String>,
        redundant_ingest: Option<bool>,
    }
    let i: In = input(doc)?;
    let c = state
        .control
        .update_ingest_configuration(account, &i.arn, i.stage_arn, i.redundant_ingest)
        .await?;
    Ok(json!({ "ingestConfiguration": wire::ingest_configuration(&c) }))
}

async fn delete_ingest_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    struct In {
        arn: String,
        force: Option<bool>,
    }
    let i: In = input(doc)?;
    state
        .control
        .delete_ingest_configuration(account, &i.arn, i.force.unwrap_or(false))
        .await?;
    Ok(json!({}))
}

async fn list_ingest_configurations(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        filter_by_stage_arn: Option<String>,
        filter_by_state: Option<String>,
        #[serde(flatten)]
        page: PageIn,
    }
    let i: In = input(doc)?;
    let paging = Paging::new(state, "ListIngestConfigurations", account);
    let (after, limit) = paging.request(&i.page, 50)?;
    let filter = IngestFilter {
        stage_arn: i.filter_by_stage_arn,
        // The model's enum has been enforced.
        state: i.filter_by_state.as_deref().and_then(IngestState::parse),
    };
    let page = state
        .control
        .list_ingest_configurations(account, filter, after, limit)
        .await?;
    paging.reply(
        "ingestConfigurations",
        page,
        wire::ingest_configuration_summary,
    )
}

async fn create_encoder_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    struct In {
        name: Option<String>,
        video: Option<VideoIn>,
        tags: Option<Tags>,
    }
    let i: In = input(doc)?;
    let e = state
        .control
        .create_encoder_configuration(
            account,
            i.name,
            i.video.map(Into::into),
            i.tags.unwrap_or_default(),
        )
        .await?;
    Ok(json!({ "encoderConfiguration": wire::encoder_configuration(&e) }))
}

async fn get_encoder_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let i: ByArn = input(doc)?;
    let e = state
        .control
        .get_encoder_configuration(account, &i.arn)
        .await?;
    Ok(json!({ "encoderConfiguration": wire::encoder_configuration(&e) }))
}

async fn delete_encoder_configuration(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let i: ByArn = input(doc)?;
    state
        .control
        .delete_encoder_configuration(account, &i.arn)
        .await?;
    Ok(json!({}))
}

async fn list_encoder_configurations(state: &ApiState, account: &Account, doc: Value) -> Reply {
    let paging = Paging::new(state, "ListEncoderConfigurations", account);
    let (after, limit) = paging.request(&input(doc)?, 100)?;
    let page = state
        .control
        .list_encoder_configurations(account, after, limit)
        .await?;
    paging.reply(
        "encoderConfigurations",
        page,
        wire::encoder_configuration_summary,
    )
}

// ----- sessions, participants, events --------------------------------------------

async fn get_stage_session(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        stage_arn: String,
        session_id: String,
    }
    let i: In = input(doc)?;
    let s = state
        .control
        .get_stage_session(account, &i.stage_arn, &i.session_id)
        .await?;
    Ok(json!({ "stageSession": wire::stage_session(&s) }))
}

async fn list_stage_sessions(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        stage_arn: String,
        #[serde(flatten)]
        page: PageIn,
    }
    let i: In = input(doc)?;
    let paging = Paging::new(state, "ListStageSessions", account);
    let (after, limit) = paging.request(&i.page, 50)?;
    let page = state
        .control
        .list_stage_sessions(account, &i.stage_arn, after, limit)
        .await?;
    paging.reply("stageSessions", page, wire::stage_session)
}

async fn get_participant(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        stage_arn: String,
        session_id: String,
        participant_id: String,
    }
    let i: In = input(doc)?;
    let p = state
        .control
        .get_participant(account, &i.stage_arn, &i.session_id, &i.participant_id)
        .await?;
    Ok(json!({ "participant": wire::participant(&p) }))
}

async fn list_participants(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        stage_arn: String,
        session_id: String,
        filter_by_user_id: Option<String>,
        filter_by_published: Option<bool>,
        filter_by_state: Option<String>,
        filter_by_recording_state: Option<String>,
        #[serde(flatten)]
        page: PageIn,
    }
    let i: In = input(doc)?;
    let mut filters = Vec::new();
    if let Some(u) = i.filter_by_user_id {
        filters.push(ParticipantFilter::UserId(u));
    }
    if let Some(p) = i.filter_by_published {
        filters.push(ParticipantFilter::Published(p));
    }
    if let Some(s) = i
        .filter_by_state
        .as_deref()
        .and_then(ParticipantState::parse)
    {
        filters.push(ParticipantFilter::State(s));
    }
    if let Some(r) = i.filter_by_recording_state {
        let state = RecordingState::parse(&r).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Validation,
                "filterByRecordingState: not a participant recording state",
            )
        })?;
        filters.push(ParticipantFilter::RecordingState(state));
    }
    if filters.len() > 1 {
        return Err(ApiError::new(
            ErrorKind::Validation,
            "Only one of filterByUserId, filterByPublished, filterByState and filterByRecordingState may be given",
        ));
    }
    let filter = filters.pop().unwrap_or(ParticipantFilter::None);
    let paging = Paging::new(state, "ListParticipants", account);
    let (after, limit) = paging.request(&i.page, 50)?;
    let page = state
        .control
        .list_participants(account, &i.stage_arn, &i.session_id, &filter, after, limit)
        .await?;
    paging.reply("participants", page, wire::participant_summary)
}

async fn list_participant_events(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        stage_arn: String,
        session_id: String,
        participant_id: String,
        #[serde(flatten)]
        page: PageIn,
    }
    let i: In = input(doc)?;
    let paging = Paging::new(state, "ListParticipantEvents", account);
    let (after, limit) = paging.request(&i.page, 50)?;
    let page = state
        .control
        .list_participant_events(
            account,
            &i.stage_arn,
            &i.session_id,
            &i.participant_id,
            after,
            limit,
        )
        .await?;
    paging.reply("events", page, wire::participant_event)
}

async fn disconnect_participant(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        stage_arn: String,
        participant_id: String,
        reason: Option<String>,
    }
    let i: In = input(doc)?;
    state
        .control
        .disconnect_participant(account, &i.stage_arn, &i.participant_id, i.reason)
        .await?;
    Ok(json!({}))
}

async fn revoke_connection_token(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        token_id: String,
    }
    let i: In = input(doc)?;
    state
        .control
        .revoke_connection_token(account, &i.token_id)
        .await?;
    Ok(json!({}))
}

// ----- participant replication ---------------------------------------------

async fn start_participant_replication(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        source_stage_arn: String,
        destination_stage_arn: String,
        participant_id: String,
        reconnect_window_seconds: Option<i64>,
        attributes: Option<BTreeMap<String, String>>,
    }
    let i: In = input(doc)?;
    state
        .control
        .start_participant_replication(
            account,
            ReplicationRequest {
                source_stage_arn: i.source_stage_arn,
                destination_stage_arn: i.destination_stage_arn,
                participant_id: i.participant_id,
                reconnect_window_seconds: i.reconnect_window_seconds,
                attributes: i.attributes,
            },
        )
        .await?;
    Ok(json!({}))
}

async fn stop_participant_replication(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        source_stage_arn: String,
        destination_stage_arn: String,
        participant_id: String,
    }
    let i: In = input(doc)?;
    state
        .control
        .stop_participant_replication(
            account,
            &i.source_stage_arn,
            &i.destination_stage_arn,
            &i.participant_id,
        )
        .await?;
    Ok(json!({}))
}

async fn list_participant_replicas(state: &ApiState, account: &Account, doc: Value) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct In {
        source_stage_arn: String,
        participant_id: String,
        #[serde(flatten)]
        page: PageIn,
    }
    let i: In = input(doc)?;
    let paging = Paging::new(state, "ListParticipantReplicas", account);
    let (after, limit) = paging.request(&i.page, 50)?;
    let page = state
        .control
        .list_participant_replicas(
            account,
            &i.source_stage_arn,
            &i.participant_id,
            after,
            limit,
        )
        .await?;
    paging.reply("replicas", page, wire::participant_replica)
}
