//! The real store, watched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use onstage_stage::StoreError;
use onstage_stage::ids::{Account, Arn, ResourceKind};
use onstage_stage::model::{
    Page, Participant, ParticipantEvent, ParticipantFilter, ParticipantReplica, StageSession,
    StopReason, Tags,
};
use onstage_stage::store::{
    DeleteOutcome, IngestFilter, InsertOutcome, InterruptedSessions, LiveWrite, ResourceRecord,
    Store, TagOutcome,
};
use onstage_stage::time_fmt::UnixMillis;
use onstage_store::SqliteStore;

/// `onstage-store`'s SQLite store in memory — the same constraints, transactions
/// and queries as the server's — that also keeps a log of every batch of live
/// writes it was asked for (what the live plane decided, readable even after a
/// stage's history was deleted with it), and can be told to fail those writes.
pub struct TestStore {
    sqlite: SqliteStore,
    live: Mutex<Vec<(Arn, LiveWrite)>>,
    fail_live_writes: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ok<T>(what: &str, r: Result<T, StoreError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

impl TestStore {
    pub async fn new() -> TestStore {
        TestStore {
            sqlite: ok("open SQLite in memory", SqliteStore::open_in_memory().await),
            live: Mutex::new(Vec::new()),
            fail_live_writes: AtomicBool::new(false),
        }
    }

    /// While set, every [`Store::write_live`] fails (and writes nothing), as with a
    /// full disk.
    pub fn fail_live_writes(&self, fail: bool) {
        self.fail_live_writes.store(fail, Ordering::SeqCst);
    }

    // ----- what the live plane asked the store to write -------------------------

    /// Every batch of live writes the store accepted so far, in order, with its
    /// stage (writes for a stage already deleted included: the store accepts and
    /// drops them).
    pub fn live_writes(&self) -> Vec<(Arn, LiveWrite)> {
        lock(&self.live).clone()
    }

    /// Every event written, in order.
    pub fn events(&self) -> Vec<ParticipantEvent> {
        self.live_writes()
            .into_iter()
            .filter_map(|(_, w)| match w {
                LiveWrite::AppendEvent { event, .. } => Some(event),
                _ => None,
            })
            .collect()
    }

    /// The names of a participant's events on any stage, in order.
    pub fn events_of(&self, participant_id: &str) -> Vec<String> {
        self.events_with_codes(participant_id)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// A participant's events on any stage, as (name, error code), in order.
    pub fn events_with_codes(&self, participant_id: &str) -> Vec<(String, Option<String>)> {
        self.events()
            .into_iter()
            .filter(|e| e.participant_id == participant_id)
            .map(|e| {
                (
                    e.name.as_str().to_owned(),
                    e.error_code.map(|c| c.as_str().to_owned()),
                )
            })
            .collect()
    }

    /// A participant's events on one stage, in order.
    pub fn events_in(&self, stage: &Arn, participant_id: &str) -> Vec<ParticipantEvent> {
        self.live_writes()
            .into_iter()
            .filter_map(|(s, w)| match w {
                LiveWrite::AppendEvent { event, .. }
                    if s == *stage && event.participant_id == participant_id =>
                {
                    Some(event)
                }
                _ => None,
            })
            .collect()
    }

    /// The names of a participant's events on one stage, in order.
    pub fn event_names_in(&self, stage: &Arn, participant_id: &str) -> Vec<String> {
        self.events_in(stage, participant_id)
            .into_iter()
            .map(|e| e.name.as_str().to_owned())
            .collect()
    }

    /// How many sessions were started, on any stage.
    pub fn sessions_started(&self) -> usize {
        self.live_writes()
            .iter()
            .filter(|(_, w)| matches!(w, LiveWrite::StartSession { .. }))
            .count()
    }

    /// Why replications stopped, in order.
    pub fn stop_reasons(&self) -> Vec<StopReason> {
        self.live_writes()
            .into_iter()
            .filter_map(|(_, w)| match w {
                LiveWrite::StopReplication { reason, .. } => Some(reason),
                _ => None,
            })
            .collect()
    }

    // ----- what the store holds ---------------------------------------------

    /// The stage's running session, as the store has it.
    pub async fn running_session(&self, stage: &Arn) -> Option<String> {
        ok("read a stage", self.sqlite.get_resource(stage).await).and_then(|r| r.active_session_id)
    }

    /// The stage's sessions, newest first.
    pub async fn sessions(&self, stage: &Arn) -> Vec<StageSession> {
        ok(
            "list sessions",
            self.sqlite.list_sessions(stage, None, 100).await,
        )
        .items
    }

    /// The participant's record in the stage's latest session.
    pub async fn participant_in(&self, stage: &Arn, participant_id: &str) -> Option<Participant> {
        let session = self.sessions(stage).await.into_iter().next()?;
        ok(
            "read a participant",
            self.sqlite
                .get_participant(stage, &session.session_id, participant_id)
                .await,
        )
    }

    /// The participant's events as stored in the stage's latest session, oldest
    /// first.
    pub async fn stored_events(&self, stage: &Arn, participant_id: &str) -> Vec<ParticipantEvent> {
        let Some(session) = self.sessions(stage).await.into_iter().next() else {
            return Vec::new();
        };
        let mut events = ok(
            "list events",
            self.sqlite
                .list_events(stage, &session.session_id, participant_id, None, 100)
                .await,
        )
        .items;
        events.reverse();
        events
    }

    /// The participant's replications out of `source`, oldest first.
    pub async fn replicas(&self, source: &Arn, participant_id: &str) -> Vec<ParticipantReplica> {
        ok(
            "list replicas",
            self.sqlite
                .list_replicas(source, participant_id, None, 100)
                .await,
        )
        .items
    }
}

#[async_trait]
impl Store for TestStore {
    async fn insert_resource(
        &self,
        record: &ResourceRecord,
        quota: Option<u32>,
    ) -> Result<InsertOutcome, StoreError> {
        self.sqlite.insert_resource(record, quota).await
    }

    async fn get_resource(&self, arn: &Arn) -> Result<Option<ResourceRecord>, StoreError> {
        self.sqlite.get_resource(arn).await
    }

    async fn list_ingest_configurations(
        &self,
        account: &Account,
        filter: &IngestFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ResourceRecord>, StoreError> {
        self.sqlite
            .list_ingest_configurations(account, filter, after, limit)
            .await
    }

    async fn release_references(
        &self,
        target: &Arn,
        kind: ResourceKind,
    ) -> Result<u64, StoreError> {
        self.sqlite.release_references(target, kind).await
    }

    async fn set_ingest_stream(
        &self,
        arn: &Arn,
        live: Option<(&Arn, &str)>,
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        self.sqlite.set_ingest_stream(arn, live, at).await
    }

    async fn update_resource(
        &self,
        arn: &Arn,
        body: &serde_json::Value,
        refers_to: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.sqlite.update_resource(arn, body, refers_to).await
    }

    async fn delete_resource(&self, arn: &Arn) -> Result<DeleteOutcome, StoreError> {
        self.sqlite.delete_resource(arn).await
    }

    async fn list_resources(
        &self,
        account: &Account,
        kind: ResourceKind,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ResourceRecord>, StoreError> {
        self.sqlite
            .list_resources(account, kind, after, limit)
            .await
    }

    async fn change_tags(
        &self,
        arn: &Arn,
        add: &Tags,
        remove: &[String],
        max_tags: usize,
    ) -> Result<TagOutcome, StoreError> {
        self.sqlite.change_tags(arn, add, remove, max_tags).await
    }

    async fn revoke_token(
        &self,
        account: &Account,
        token_id: &str,
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        self.sqlite.revoke_token(account, token_id, at).await
    }

    async fn token_revoked_at(
        &self,
        account: &Account,
        token_id: &str,
    ) -> Result<Option<UnixMillis>, StoreError> {
        self.sqlite.token_revoked_at(account, token_id).await
    }

    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.sqlite.secret(name, candidate).await
    }

    async fn list_sessions(
        &self,
        stage: &Arn,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<StageSession>, StoreError> {
        self.sqlite.list_sessions(stage, after, limit).await
    }

    async fn get_session(
        &self,
        stage: &Arn,
        session_id: &str,
    ) -> Result<Option<StageSession>, StoreError> {
        self.sqlite.get_session(stage, session_id).await
    }

    async fn list_participants(
        &self,
        stage: &Arn,
        session_id: &str,
        filter: &ParticipantFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<Participant>, StoreError> {
        self.sqlite
            .list_participants(stage, session_id, filter, after, limit)
            .await
    }

    async fn get_participant(
        &self,
        stage: &Arn,
        session_id: &str,
        participant_id: &str,
    ) -> Result<Option<Participant>, StoreError> {
        self.sqlite
            .get_participant(stage, session_id, participant_id)
            .await
    }

    async fn list_events(
        &self,
        stage: &Arn,
        session_id: &str,
        participant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ParticipantEvent>, StoreError> {
        self.sqlite
            .list_events(stage, session_id, participant_id, after, limit)
            .await
    }

    async fn list_replicas(
        &self,
        source_stage: &Arn,
        participant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ParticipantReplica>, StoreError> {
        self.sqlite
            .list_replicas(source_stage, participant_id, after, limit)
            .await
    }

    async fn write_live(&self, stage: &Arn, writes: &[LiveWrite]) -> Result<(), StoreError> {
        if self.fail_live_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("disk full".into()));
        }
        self.sqlite.write_live(stage, writes).await?;
        lock(&self.live).extend(writes.iter().map(|w| (stage.clone(), w.clone())));
        Ok(())
    }

    async fn is_participant_revoked(
        &self,
        stage: &Arn,
        participant_id: &str,
    ) -> Result<bool, StoreError> {
        self.sqlite
            .is_participant_revoked(stage, participant_id)
            .await
    }

    async fn close_interrupted_sessions(
        &self,
        at: UnixMillis,
    ) -> Result<InterruptedSessions, StoreError> {
        self.sqlite.close_interrupted_sessions(at).await
    }
}
