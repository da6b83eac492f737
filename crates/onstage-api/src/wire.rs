//! The rest-json shapes of requests and responses, and their conversion from and to
//! domain types. Only this module knows IVS's member names.

use std::collections::BTreeMap;

use onstage_stage::model::{
    AutoParticipantRecording, EncoderConfiguration, IngestConfiguration, Participant,
    ParticipantEvent, ParticipantReplica, PublicKey, Stage, StageEndpoints, StageSession,
    StorageConfiguration, Tags,
};
use onstage_stage::service::{
    AutoRecordingRequest, Capability, IssuedToken, TokenRequest, VideoRequest,
};
use onstage_stage::time_fmt::iso8601;
use serde::Deserialize;
use serde_json::{Map, Value, json};

// ----- requests ----------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenConfigurationIn {
    pub duration: Option<i64>,
    pub user_id: Option<String>,
    pub attributes: Option<BTreeMap<String, String>>,
    pub capabilities: Option<Vec<String>>,
}

impl From<TokenConfigurationIn> for TokenRequest {
    fn from(t: TokenConfigurationIn) -> Self {
        TokenRequest {
            duration_minutes: t.duration,
            user_id: t.user_id,
            attributes: t.attributes,
            capabilities: t.capabilities.map(|c| {
                c.iter()
                    .map(|s| {
                        if s == "PUBLISH" {
                            Capability::Publish
                        } else {
                            Capability::Subscribe
                        }
                    })
                    .collect()
            }),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ThumbnailIn {
    pub target_interval_seconds: Option<i64>,
    pub storage: Option<Vec<String>>,
    pub recording_mode: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HlsIn {
    pub target_segment_duration_seconds: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoRecordingIn {
    pub storage_configuration_arn: String,
    pub media_types: Option<Vec<String>>,
    pub thumbnail_configuration: Option<ThumbnailIn>,
    pub recording_reconnect_window_seconds: Option<i64>,
    pub hls_configuration: Option<HlsIn>,
    pub record_participant_replicas: Option<bool>,
}

impl From<AutoRecordingIn> for AutoRecordingRequest {
    fn from(a: AutoRecordingIn) -> Self {
        let t = a.thumbnail_configuration.unwrap_or_default();
        AutoRecordingRequest {
            storage_configuration_arn: a.storage_configuration_arn,
            media_types: a.media_types,
            thumbnail_target_interval_seconds: t.target_interval_seconds,
            thumbnail_storage: t.storage,
            thumbnail_recording_mode: t.recording_mode,
            recording_reconnect_window_seconds: a.recording_reconnect_window_seconds,
            hls_target_segment_duration_seconds: a
                .hls_configuration
                .and_then(|h| h.target_segment_duration_seconds),
            record_participant_replicas: a.record_participant_replicas,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct VideoIn {
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub framerate: Option<f64>,
    pub bitrate: Option<i64>,
}

impl From<VideoIn> for VideoRequest {
    fn from(v: VideoIn) -> Self {
        VideoRequest {
            width: v.width,
            height: v.height,
            framerate: v.framerate,
            bitrate: v.bitrate,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3In {
    pub bucket_name: String,
}

// ----- responses ---------------------------------------------------------------

/// Inserts `value` under `key` only when there is one.
fn put(m: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        m.insert(key.to_owned(), v);
    }
}

pub fn tags(t: &Tags) -> Value {
    json!(t)
}

pub fn auto_recording(r: &AutoParticipantRecording) -> Value {
    json!({
        "storageConfigurationArn": r.storage_configuration_arn,
        "mediaTypes": r.media_types,
        "thumbnailConfiguration": {
            "targetIntervalSeconds": r.thumbnail.target_interval_seconds,
            "storage": r.thumbnail.storage,
            "recordingMode": r.thumbnail.recording_mode,
        },
        "recordingReconnectWindowSeconds": r.recording_reconnect_window_seconds,
        "hlsConfiguration": { "targetSegmentDurationSeconds": r.hls_target_segment_duration_seconds },
        "recordParticipantReplicas": r.record_participant_replicas,
    })
}

pub fn stage(s: &Stage) -> Value {
    let mut m = Map::new();
    m.insert("arn".into(), json!(s.arn.to_string()));
    m.insert("name".into(), json!(s.name));
    put(
        &mut m,
        "activeSessionId",
        s.active_session_id.as_ref().map(|v| json!(v)),
    );
    m.insert("tags".into(), tags(&s.tags));
    put(
        &mut m,
        "autoParticipantRecordingConfiguration",
        s.auto_participant_recording.as_ref().map(auto_recording),
    );
    m.insert("endpoints".into(), endpoints(&s.endpoints));
    Value::Object(m)
}

fn endpoints(e: &StageEndpoints) -> Value {
    let mut m = Map::new();
    m.insert("whip".into(), json!(e.whip));
    m.insert("events".into(), json!(e.events));
    put(&mut m, "rtmp", e.rtmp.as_ref().map(|v| json!(v)));
    put(&mut m, "rtmps", e.rtmps.as_ref().map(|v| json!(v)));
    Value::Object(m)
}

pub fn stage_summary(s: &Stage) -> Value {
    let mut m = Map::new();
    m.insert("arn".into(), json!(s.arn.to_string()));
    m.insert("name".into(), json!(s.name));
    put(
        &mut m,
        "activeSessionId",
        s.active_session_id.as_ref().map(|v| json!(v)),
    );
    m.insert("tags".into(), tags(&s.tags));
    Value::Object(m)
}

pub fn participant_token(t: &IssuedToken) -> Value {
    let mut m = Map::new();
    m.insert("participantId".into(), json!(t.participant_id));
    m.insert("token".into(), json!(t.token));
    put(&mut m, "userId", t.user_id.as_ref().map(|v| json!(v)));
    put(
        &mut m,
        "attributes",
        t.attributes.as_ref().map(|v| json!(v)),
    );
    m.insert("duration".into(), json!(t.duration_minutes));
    m.insert(
        "capabilities".into(),
        json!(
            t.capabilities
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        ),
    );
    m.insert("expirationTime".into(), json!(iso8601(t.expiration_time)));
    Value::Object(m)
}

pub fn public_key(k: &PublicKey) -> Value {
    json!({
        "arn": k.arn.to_string(),
        "name": k.name,
        "publicKeyMaterial": k.material,
        "fingerprint": k.fingerprint,
        "tags": tags(&k.tags),
    })
}

pub fn public_key_summary(k: &PublicKey) -> Value {
    json!({ "arn": k.arn.to_string(), "name": k.name, "tags": tags(&k.tags) })
}

pub fn storage_configuration(s: &StorageConfiguration) -> Value {
    json!({
        "arn": s.arn.to_string(),
        "name": s.name,
        "s3": { "bucketName": s.s3_bucket_name },
        "tags": tags(&s.tags),
    })
}

pub fn encoder_configuration(e: &EncoderConfiguration) -> Value {
    json!({
        "arn": e.arn.to_string(),
        "name": e.name,
        "video": {
            "width": e.video.width,
            "height": e.video.height,
            "framerate": e.video.framerate,
            "bitrate": e.video.bitrate,
        },
        "tags": tags(&e.tags),
    })
}

pub fn encoder_configuration_summary(e: &EncoderConfiguration) -> Value {
    json!({ "arn": e.arn.to_string(), "name": e.name, "tags": tags(&e.tags) })
}

fn ingest_common(c: &IngestConfiguration) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("arn".into(), json!(c.arn.to_string()));
    m.insert("name".into(), json!(c.name));
    m.insert("ingestProtocol".into(), json!(c.ingest_protocol.as_str()));
    // Required by the model: a configuration without a stage says so with "".
    m.insert(
        "stageArn".into(),
        json!(c.stage_arn.as_deref().unwrap_or_default()),
    );
    m.insert("participantId".into(), json!(c.participant_id));
    m.insert("state".into(), json!(c.state.as_str()));
    put(&mut m, "userId", c.user_id.as_ref().map(|v| json!(v)));
    m.insert("redundantIngest".into(), json!(false));
    m
}

pub fn ingest_configuration(c: &IngestConfiguration) -> Value {
    let mut m = ingest_common(c);
    m.insert("streamKey".into(), json!(c.stream_key));
    m.insert("attributes".into(), json!(c.attributes));
    m.insert("tags".into(), tags(&c.tags));
    Value::Object(m)
}

pub fn ingest_configuration_summary(c: &IngestConfiguration) -> Value {
    Value::Object(ingest_common(c))
}

pub fn stage_session(s: &StageSession) -> Value {
    let mut m = Map::new();
    m.insert("sessionId".into(), json!(s.session_id));
    m.insert("startTime".into(), json!(iso8601(s.start_time)));
    put(&mut m, "endTime", s.end_time.map(|t| json!(iso8601(t))));
    Value::Object(m)
}

fn participant_common(p: &Participant) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("participantId".into(), json!(p.participant_id));
    put(&mut m, "userId", p.user_id.as_ref().map(|v| json!(v)));
    m.insert("state".into(), json!(p.state.as_str()));
    m.insert("firstJoinTime".into(), json!(iso8601(p.first_join_time)));
    m.insert("published".into(), json!(p.published));
    m.insert("recordingState".into(), json!(p.recording_state.as_str()));
    m.insert("replicationType".into(), json!(p.replication_type.as_str()));
    put(
        &mut m,
        "replicationState",
        p.replication_state.map(|v| json!(v.as_str())),
    );
    put(
        &mut m,
        "sourceStageArn",
        p.source_stage_arn.as_ref().map(|v| json!(v)),
    );
    put(
        &mut m,
        "sourceSessionId",
        p.source_session_id.as_ref().map(|v| json!(v)),
    );
    m
}

pub fn participant(p: &Participant) -> Value {
    let mut m = participant_common(p);
    m.insert("attributes".into(), json!(p.attributes));
    m.insert("protocol".into(), json!(p.protocol.as_str()));
    if let Some(place) = &p.recording {
        m.insert("recordingS3BucketName".into(), json!(place.bucket));
        m.insert("recordingS3Prefix".into(), json!(place.prefix));
    }
    put(
        &mut m,
        "ingestConfigurationArn",
        p.ingest_configuration_arn.as_ref().map(|v| json!(v)),
    );
    let c = &p.client;
    put(&mut m, "ispName", c.isp_name.as_ref().map(|v| json!(v)));
    put(&mut m, "osName", c.os_name.as_ref().map(|v| json!(v)));
    put(&mut m, "osVersion", c.os_version.as_ref().map(|v| json!(v)));
    put(
        &mut m,
        "browserName",
        c.browser_name.as_ref().map(|v| json!(v)),
    );
    put(
        &mut m,
        "browserVersion",
        c.browser_version.as_ref().map(|v| json!(v)),
    );
    put(
        &mut m,
        "sdkVersion",
        c.sdk_version.as_ref().map(|v| json!(v)),
    );
    Value::Object(m)
}

pub fn participant_summary(p: &Participant) -> Value {
    Value::Object(participant_common(p))
}

pub fn participant_event(e: &ParticipantEvent) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(e.name.as_str()));
    m.insert("participantId".into(), json!(e.participant_id));
    m.insert("eventTime".into(), json!(iso8601(e.event_time)));
    put(
        &mut m,
        "remoteParticipantId",
        e.remote_participant_id.as_ref().map(|v| json!(v)),
    );
    put(&mut m, "errorCode", e.error_code.map(|v| json!(v.as_str())));
    put(
        &mut m,
        "destinationStageArn",
        e.destination_stage_arn.as_ref().map(|v| json!(v)),
    );
    put(
        &mut m,
        "destinationSessionId",
        e.destination_session_id.as_ref().map(|v| json!(v)),
    );
    m.insert("replica".into(), json!(e.replica));
    Value::Object(m)
}

pub fn participant_replica(r: &ParticipantReplica) -> Value {
    json!({
        "sourceStageArn": r.source_stage_arn,
        "participantId": r.participant_id,
        "sourceSessionId": r.source_session_id,
        "destinationStageArn": r.destination_stage_arn,
        "destinationSessionId": r.destination_session_id,
        "replicationState": r.replication_state.as_str(),
    })
}
