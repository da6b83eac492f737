//! The persistence boundary. The domain states what it needs; `onstage-store`
//! implements it on SQLite.
//!
//! Configuration resources (stages, public keys, storage and encoder configurations)
//! share one shape — an ARN, tags, a creation order and a small document — so they
//! are stored as [`ResourceRecord`]s. Every check that must be atomic with a write
//! (quota, unique key material, "in use by") is a parameter of the write itself, so
//! concurrent requests can never both pass it.
//!
//! What happens on stages (sessions, participants, events, revocations) is written
//! by the live plane alone, as batches of [`LiveWrite`]s: one batch per change of a
//! stage, applied in one transaction, so a reader never sees a participant without
//! its session or a JOINED without its participant.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::ids::{Account, Arn, ResourceKind};
use crate::model::{
    IngestState, Page, Participant, ParticipantEvent, ParticipantFilter, ParticipantReplica,
    RecordingPlace, RecordingState, ReplicationState, ReplicationType, StageSession, StopReason,
    Tags,
};
use crate::time_fmt::UnixMillis;

#[derive(Clone, Debug, PartialEq)]
pub struct ResourceRecord {
    pub arn: Arn,
    pub tags: Tags,
    pub created_at: UnixMillis,
    /// The resource's own fields, as a JSON document the domain reads back.
    pub body: serde_json::Value,
    /// A value unique among resources of the same kind in the same account and
    /// region (a public key's fingerprint).
    pub unique_key: Option<String>,
    /// The ARN of a resource this one depends on; that resource cannot be deleted
    /// while the reference stands.
    pub refers_to: Option<String>,
    /// For stages: the session running now. For ingest configurations: the
    /// session their stream is live in. Filled in by the store on reads.
    pub active_session_id: Option<String>,
}

/// The filters of ListIngestConfigurations, both optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestFilter {
    /// Only configurations whose stage (`refers_to`) is this one.
    pub stage_arn: Option<String>,
    pub state: Option<IngestState>,
}

/// One change to the record of what happens on a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveWrite {
    /// A session starts. The stage has no running session (the live plane ends one
    /// before it starts the next).
    StartSession {
        session_id: String,
        start_time: UnixMillis,
    },
    /// The running session ends.
    EndSession {
        session_id: String,
        end_time: UnixMillis,
    },
    /// Inserts the participant's record in the session, or updates the one there:
    /// the stored `first_join_time` is kept and `published` never turns back to
    /// false; the recording fields are left as they are (only `SetRecording`
    /// writes them); every other field is overwritten.
    UpsertParticipant {
        session_id: String,
        participant: Box<Participant>,
    },
    /// The participant's recording state, and where it records (set once it
    /// started). The participant's record exists.
    SetRecording {
        session_id: String,
        participant_id: String,
        state: RecordingState,
        place: Option<RecordingPlace>,
    },
    /// Appends an event to the session.
    AppendEvent {
        session_id: String,
        event: ParticipantEvent,
    },
    /// The participant id may never connect to the stage again
    /// (DisconnectParticipant); the reason is kept.
    RevokeParticipant {
        participant_id: String,
        reason: Option<String>,
        at: UnixMillis,
    },
    /// A replication of a participant out of this stage (its source) starts: an
    /// ACTIVE `participant_replicas` row (BEHAVIOUR §6).
    StartReplication {
        participant_id: String,
        source_session_id: String,
        destination_stage_arn: String,
        destination_session_id: String,
    },
    /// The ACTIVE replication of the participant from this stage to the destination
    /// stops (STOPPED, with why). Nothing happens when there is none.
    StopReplication {
        participant_id: String,
        destination_stage_arn: String,
        reason: StopReason,
    },
    /// Sets only the replication fields of a participant's record in the session:
    /// for a source participant that is not on the stage right now (inside its
    /// reconnect window, or gone), whose other fields must stay as they are.
    SetReplicationState {
        session_id: String,
        participant_id: String,
        replication_type: ReplicationType,
        replication_state: Option<ReplicationState>,
    },
}

/// What [`Store::close_interrupted_sessions`] found and closed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterruptedSessions {
    pub sessions: u64,
    pub participants: u64,
    pub replications: u64,
    /// Recordings that were running (now `FAILED`), each once.
    pub recordings: Vec<RecordingPlace>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// Another resource of the kind already has this `unique_key`.
    DuplicateKey,
    /// The account already holds `quota` resources of this kind in this region.
    QuotaExceeded,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// Another resource refers to this one (its ARN is given).
    InUseBy(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum TagOutcome {
    Changed,
    NotFound,
    /// The change would leave more than the allowed number of tags.
    TooMany,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a new resource. With `quota`, refuses when the account already holds
    /// that many of the kind; with a `unique_key`, refuses a duplicate.
    async fn insert_resource(
        &self,
        record: &ResourceRecord,
        quota: Option<u32>,
    ) -> Result<InsertOutcome, StoreError>;
    async fn get_resource(&self, arn: &Arn) -> Result<Option<ResourceRecord>, StoreError>;
    /// Replaces a resource's document; `false` when it does not exist.
    async fn update_resource(
        &self,
        arn: &Arn,
        body: &serde_json::Value,
        refers_to: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Deletes a resource unless another refers to it. Deleting a stage removes its
    /// sessions, participants and events with it.
    async fn delete_resource(&self, arn: &Arn) -> Result<DeleteOutcome, StoreError>;
    /// Resources of one kind in creation order, starting after position `after`.
    async fn list_resources(
        &self,
        account: &Account,
        kind: ResourceKind,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ResourceRecord>, StoreError>;
    /// Ingest configurations of the account in creation order, filtered.
    async fn list_ingest_configurations(
        &self,
        account: &Account,
        filter: &IngestFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ResourceRecord>, StoreError>;
    /// Drops every reference of resources of `kind` to `target` (DeleteStage
    /// detaching its ingest configurations); returns how many were dropped.
    async fn release_references(&self, target: &Arn, kind: ResourceKind)
    -> Result<u64, StoreError>;
    /// Records an ingest configuration's stream as live in a stage session
    /// (`Some`) or over (`None`). Deleted with the configuration; cleared at
    /// start-up by [`Store::close_interrupted_sessions`].
    async fn set_ingest_stream(
        &self,
        arn: &Arn,
        live: Option<(&Arn, &str)>,
        at: UnixMillis,
    ) -> Result<(), StoreError>;
    /// Adds or overwrites `add`, then removes `remove`, refusing to leave more than
    /// `max_tags`.
    async fn change_tags(
        &self,
        arn: &Arn,
        add: &Tags,
        remove: &[String],
        max_tags: usize,
    ) -> Result<TagOutcome, StoreError>;

    /// Returns the secret stored under `name`, storing `candidate` first if there is
    /// none. Every node and every restart gets the same value.
    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Sessions of a stage, newest first, starting after position `after`.
    async fn list_sessions(
        &self,
        stage: &Arn,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<StageSession>, StoreError>;
    async fn get_session(
        &self,
        stage: &Arn,
        session_id: &str,
    ) -> Result<Option<StageSession>, StoreError>;
    async fn list_participants(
        &self,
        stage: &Arn,
        session_id: &str,
        filter: &ParticipantFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<Participant>, StoreError>;
    async fn get_participant(
        &self,
        stage: &Arn,
        session_id: &str,
        participant_id: &str,
    ) -> Result<Option<Participant>, StoreError>;
    /// A participant's events in one session, newest first.
    async fn list_events(
        &self,
        stage: &Arn,
        session_id: &str,
        participant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ParticipantEvent>, StoreError>;
    /// Replications of a participant out of a source stage, oldest first.
    async fn list_replicas(
        &self,
        source_stage: &Arn,
        participant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ParticipantReplica>, StoreError>;

    /// Applies changes to a stage's live record in order, all or none. Writes for a
    /// stage that no longer exists are dropped.
    async fn write_live(&self, stage: &Arn, writes: &[LiveWrite]) -> Result<(), StoreError>;
    /// Whether DisconnectParticipant revoked this participant id on this stage.
    async fn is_participant_revoked(
        &self,
        stage: &Arn,
        participant_id: &str,
    ) -> Result<bool, StoreError>;
    /// RevokeConnectionToken: tokens of the account with this id (`jti`) issued at
    /// or before `at` may no longer connect. Revoking again moves the time on.
    async fn revoke_token(
        &self,
        account: &Account,
        token_id: &str,
        at: UnixMillis,
    ) -> Result<(), StoreError>;
    /// When tokens of the account with this id were last revoked, if ever.
    async fn token_revoked_at(
        &self,
        account: &Account,
        token_id: &str,
    ) -> Result<Option<UnixMillis>, StoreError>;
    /// At start-up: whatever a previous process left running is over. Ends running
    /// sessions at `at`, marks their connected participants DISCONNECTED with a
    /// `LEFT` event, stops active replications, marks running recordings FAILED
    /// (returning where they were), and forgets live ingest streams.
    async fn close_interrupted_sessions(
        &self,
        at: UnixMillis,
    ) -> Result<InterruptedSessions, StoreError>;
}
