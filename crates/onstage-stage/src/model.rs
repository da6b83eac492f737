//! The resources onstage keeps, as the domain sees them. Wire names and SQL columns
//! live in the API and store crates; these types only say what a thing is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::Arn;
use crate::time_fmt::UnixMillis;

/// An enum whose variants have one fixed name each (the model's, or the text the
/// store keeps): `as_str` gives it, `parse` reads it back.
macro_rules! named {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub type Tags = BTreeMap<String, String>;
pub type Attributes = BTreeMap<String, String>;

/// Where participants of a stage connect. Derived from the deployment's public URL,
/// never from a request's Host header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageEndpoints {
    pub whip: String,
    pub events: String,
    /// Where an RTMP encoder connects (`rtmp://host:port/app/`), when ingest runs.
    pub rtmp: Option<String>,
    /// Where an RTMPS encoder connects, when ingest over TLS runs.
    pub rtmps: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub arn: Arn,
    pub name: String,
    pub tags: Tags,
    pub auto_participant_recording: Option<AutoParticipantRecording>,
    pub active_session_id: Option<String>,
    pub endpoints: StageEndpoints,
    pub created_at: UnixMillis,
}

/// `autoParticipantRecordingConfiguration`, with the model's documented defaults
/// filled in, as IVS returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoParticipantRecording {
    pub storage_configuration_arn: String,
    pub media_types: Vec<RecordingMediaType>,
    pub thumbnail: ThumbnailSettings,
    pub recording_reconnect_window_seconds: i64,
    pub hls_target_segment_duration_seconds: i64,
    pub record_participant_replicas: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbnailSettings {
    pub target_interval_seconds: i64,
    pub storage: Vec<ThumbnailStorage>,
    pub recording_mode: ThumbnailRecordingMode,
}

impl Default for ThumbnailSettings {
    fn default() -> Self {
        ThumbnailSettings {
            target_interval_seconds: 60,
            storage: vec![ThumbnailStorage::Sequential],
            recording_mode: ThumbnailRecordingMode::Disabled,
        }
    }
}

/// A `named!` enum kept in stored documents by its name.
macro_rules! serde_by_name {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    serde::de::Error::custom(format!("unknown {} {s:?}", stringify!($name)))
                })
            }
        }
    };
}

named! {
    /// `ParticipantRecordingMediaType`: what a participant's recording keeps.
    RecordingMediaType {
        AudioVideo => "AUDIO_VIDEO",
        AudioOnly => "AUDIO_ONLY",
        None => "NONE",
    }
}
serde_by_name!(RecordingMediaType);

named! {
    /// `ThumbnailRecordingMode`.
    ThumbnailRecordingMode {
        Interval => "INTERVAL",
        Disabled => "DISABLED",
    }
}
serde_by_name!(ThumbnailRecordingMode);

named! {
    /// `ThumbnailStorageType`: numbered thumbnails, the latest one, or both.
    ThumbnailStorage {
        Sequential => "SEQUENTIAL",
        Latest => "LATEST",
    }
}
serde_by_name!(ThumbnailStorage);

named! {
    /// `ParticipantRecordingState`: where a participant's recording is.
    RecordingState {
        Starting => "STARTING",
        Active => "ACTIVE",
        Stopping => "STOPPING",
        Stopped => "STOPPED",
        Failed => "FAILED",
        Disabled => "DISABLED",
    }
}

/// Where a participant's recording goes: a bucket and a key prefix in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingPlace {
    pub bucket: String,
    pub prefix: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub arn: Arn,
    pub name: String,
    pub material: String,
    pub fingerprint: String,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfiguration {
    pub arn: Arn,
    pub name: String,
    pub s3_bucket_name: String,
    pub tags: Tags,
}

/// An RTMP(S) encoder's way into a stage (BEHAVIOUR §10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestConfiguration {
    pub arn: Arn,
    pub name: String,
    pub ingest_protocol: IngestProtocol,
    /// The secret an encoder presents: `rt_{account}_{region}_{id}_{secret}`.
    pub stream_key: String,
    /// The stage an encoder's stream joins; `None` refuses every stream.
    pub stage_arn: Option<String>,
    /// The participant id every stream of this configuration has.
    pub participant_id: String,
    pub state: IngestState,
    pub user_id: Option<String>,
    pub attributes: Attributes,
    pub insecure_ingest: bool,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfiguration {
    pub arn: Arn,
    pub name: String,
    pub video: Video,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Video {
    pub width: i64,
    pub height: i64,
    pub framerate: f64,
    pub bitrate: i64,
}

impl Default for Video {
    fn default() -> Self {
        Video {
            width: 1280,
            height: 720,
            framerate: 30.0,
            bitrate: 2_500_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageSession {
    pub session_id: String,
    pub start_time: UnixMillis,
    pub end_time: Option<UnixMillis>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantState {
    Connected,
    Disconnected,
}

impl ParticipantState {
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantState::Connected => "CONNECTED",
            ParticipantState::Disconnected => "DISCONNECTED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CONNECTED" => Some(ParticipantState::Connected),
            "DISCONNECTED" => Some(ParticipantState::Disconnected),
            _ => None,
        }
    }
}

/// One participant id in one session of one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    pub participant_id: String,
    pub user_id: Option<String>,
    pub state: ParticipantState,
    pub first_join_time: UnixMillis,
    pub attributes: Attributes,
    pub published: bool,
    pub client: ClientAttributes,
    pub recording_state: RecordingState,
    /// Set once the participant's recording has started (kept after it ends).
    pub recording: Option<RecordingPlace>,
    pub protocol: ParticipantProtocol,
    /// For a participant published by an RTMP(S) encoder: its ingest configuration.
    pub ingest_configuration_arn: Option<String>,
    pub replication_type: ReplicationType,
    pub replication_state: Option<ReplicationState>,
    pub source_stage_arn: Option<String>,
    pub source_session_id: Option<String>,
}

/// What a client says about itself, sanitised to the model's pattern.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAttributes {
    pub isp_name: Option<String>,
    pub os_name: Option<String>,
    pub os_version: Option<String>,
    pub browser_name: Option<String>,
    pub browser_version: Option<String>,
    pub sdk_version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantEvent {
    pub name: EventName,
    pub participant_id: String,
    pub event_time: UnixMillis,
    pub remote_participant_id: Option<String>,
    pub error_code: Option<EventErrorCode>,
    pub destination_stage_arn: Option<String>,
    pub destination_session_id: Option<String>,
    pub replica: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantReplica {
    pub source_stage_arn: String,
    pub participant_id: String,
    pub source_session_id: String,
    pub destination_stage_arn: String,
    pub destination_session_id: String,
    pub replication_state: ReplicationState,
}

/// A page of a list, and the position after its last item when more follow.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<i64>,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

/// The at-most-one filter of ListParticipants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantFilter {
    None,
    UserId(String),
    Published(bool),
    State(ParticipantState),
    RecordingState(RecordingState),
}

named! {
    /// `EventName` of the model: what happened to a participant.
    EventName {
        Joined => "JOINED",
        Left => "LEFT",
        PublishStarted => "PUBLISH_STARTED",
        PublishStopped => "PUBLISH_STOPPED",
        SubscribeStarted => "SUBSCRIBE_STARTED",
        SubscribeStopped => "SUBSCRIBE_STOPPED",
        PublishError => "PUBLISH_ERROR",
        SubscribeError => "SUBSCRIBE_ERROR",
        JoinError => "JOIN_ERROR",
        ReplicationStarted => "REPLICATION_STARTED",
        ReplicationStopped => "REPLICATION_STOPPED",
        TokenExchanged => "TOKEN_EXCHANGED",
    }
}

named! {
    /// `EventErrorCode` of the model: why a join, publish or subscribe failed.
    EventErrorCode {
        InsufficientCapabilities => "INSUFFICIENT_CAPABILITIES",
        QuotaExceeded => "QUOTA_EXCEEDED",
        PublisherNotFound => "PUBLISHER_NOT_FOUND",
        BitrateExceeded => "BITRATE_EXCEEDED",
        ResolutionExceeded => "RESOLUTION_EXCEEDED",
        StreamDurationExceeded => "STREAM_DURATION_EXCEEDED",
        InvalidAudioCodec => "INVALID_AUDIO_CODEC",
        InvalidVideoCodec => "INVALID_VIDEO_CODEC",
        InvalidProtocol => "INVALID_PROTOCOL",
        InvalidStreamKey => "INVALID_STREAM_KEY",
        ReuseOfStreamKey => "REUSE_OF_STREAM_KEY",
        BFramePresent => "B_FRAME_PRESENT",
        InvalidInput => "INVALID_INPUT",
        InternalServerException => "INTERNAL_SERVER_EXCEPTION",
    }
}

named! {
    /// `ParticipantProtocol` of the model: how a participant reached the stage.
    ParticipantProtocol {
        Unknown => "UNKNOWN",
        Whip => "WHIP",
        Rtmp => "RTMP",
        Rtmps => "RTMPS",
    }
}

named! {
    /// `IngestProtocol` of the model: what an ingest configuration's encoder speaks.
    IngestProtocol {
        Rtmp => "RTMP",
        Rtmps => "RTMPS",
    }
}

impl IngestProtocol {
    /// The participant protocol of a stream that arrived this way.
    pub fn participant_protocol(self) -> ParticipantProtocol {
        match self {
            IngestProtocol::Rtmp => ParticipantProtocol::Rtmp,
            IngestProtocol::Rtmps => ParticipantProtocol::Rtmps,
        }
    }
}

named! {
    /// `IngestConfigurationState` of the model: ACTIVE while a stream is live.
    IngestState {
        Active => "ACTIVE",
        Inactive => "INACTIVE",
    }
}

named! {
    /// `ReplicationType` of the model: a participant's part in replication.
    ReplicationType {
        Source => "SOURCE",
        Replica => "REPLICA",
        None => "NONE",
    }
}

named! {
    /// `ReplicationState` of the model.
    ReplicationState {
        Active => "ACTIVE",
        Stopped => "STOPPED",
    }
}

named! {
    /// Why a replication stopped (BEHAVIOUR §6); the store keeps the text with the
    /// stopped replication.
    StopReason {
        StoppedByRequest => "StopParticipantReplication",
        SourceStoppedPublishing => "the source participant stopped publishing",
        WindowPassed => "the source participant did not publish again within the reconnect window",
        SourceDisconnected => "the source participant was disconnected (DisconnectParticipant)",
        ReplicaDisconnected => "the replica was disconnected from the destination (DisconnectParticipant)",
        SourceStageDeleted => "the source stage was deleted",
        DestinationStageDeleted => "the destination stage was deleted",
        ServerShutdown => "the server shut down",
        ServerRestarted => "the server restarted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for name in EventName::ALL {
            assert_eq!(EventName::parse(name.as_str()), Some(*name));
        }
        for code in EventErrorCode::ALL {
            assert_eq!(EventErrorCode::parse(code.as_str()), Some(*code));
        }
        for reason in StopReason::ALL {
            assert_eq!(StopReason::parse(reason.as_str()), Some(*reason));
        }
        assert_eq!(
            ReplicationType::parse("REPLICA"),
            Some(ReplicationType::Replica)
        );
        assert_eq!(
            ReplicationState::parse("STOPPED"),
            Some(ReplicationState::Stopped)
        );
        assert_eq!(EventName::parse("joined"), None);
    }
}
