//! Test doubles for the live plane: an in-memory [`Store`] that keeps what the
//! control plane needs and records every live write, and a media plane that answers
//! every offer with a canned SDP and logs what it was asked to do.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use onstage_stage::StoreError;
use onstage_stage::ids::{Account, Arn, ResourceKind};
use onstage_stage::media::{MediaPlane, MediaRefusal, PeerId, SourceId};
use onstage_stage::model::{
    Page, Participant, ParticipantEvent, ParticipantFilter, ParticipantReplica, StageSession, Tags,
};
use onstage_stage::store::{
    DeleteOutcome, InsertOutcome, InterruptedSessions, LiveWrite, ResourceRecord, Store, TagOutcome,
};
use onstage_stage::time_fmt::UnixMillis;
use onstage_stage::{ControlPlane, ControlPlaneConfig};

pub const WHIP_URL: &str = "http://127.0.0.1:7700/whip";
pub const EVENTS_URL: &str = "ws://127.0.0.1:7700/events";

pub fn account() -> Account {
    Account {
        id: "000000000000".into(),
        region: "us-east-1".into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRow {
    pub source_stage: String,
    pub participant_id: String,
    pub source_session: String,
    pub destination_stage: String,
    pub destination_session: String,
    pub state: String,
    pub reason: Option<String>,
}

#[derive(Default)]
struct Memory {
    resources: BTreeMap<String, ResourceRecord>,
    secrets: BTreeMap<String, Vec<u8>>,
    live: Vec<(Arn, LiveWrite)>,
    revoked: HashSet<(String, String)>,
    revoked_tokens: BTreeMap<(String, String, String), UnixMillis>,
    running: BTreeMap<String, String>,
    /// Replication rows: (source stage, participant, source session, destination,
    /// destination session, state, reason).
    replicas: Vec<ReplicaRow>,
    /// Fails the next `write_live` calls while set.
    fail_writes: bool,
}

/// Resources, secrets and the live writes, in memory.
#[derive(Default)]
pub struct MemoryStore {
    memory: Mutex<Memory>,
}

impl MemoryStore {
    /// Every live write so far, in order.
    pub fn live_writes(&self) -> Vec<(Arn, LiveWrite)> {
        self.memory.lock().unwrap().live.clone()
    }

    /// The names of the events written for a participant, in order.
    pub fn events_of(&self, participant_id: &str) -> Vec<String> {
        self.events_with_codes(participant_id)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// Event names with their error codes, in order.
    pub fn events_with_codes(&self, participant_id: &str) -> Vec<(String, Option<String>)> {
        self.live_writes()
            .into_iter()
            .filter_map(|(_, w)| match w {
                LiveWrite::AppendEvent { event, .. } if event.participant_id == participant_id => {
                    Some((event.name, event.error_code))
                }
                _ => None,
            })
            .collect()
    }

    pub fn events(&self) -> Vec<ParticipantEvent> {
        self.live_writes()
            .into_iter()
            .filter_map(|(_, w)| match w {
                LiveWrite::AppendEvent { event, .. } => Some(event),
                _ => None,
            })
            .collect()
    }

    /// The last participant record written for a participant.
    pub fn participant(&self, participant_id: &str) -> Option<Participant> {
        self.live_writes()
            .into_iter()
            .rev()
            .find_map(|(_, w)| match w {
                LiveWrite::UpsertParticipant { participant, .. }
                    if participant.participant_id == participant_id =>
                {
                    Some(*participant)
                }
                _ => None,
            })
    }

    pub fn running_session(&self, stage: &Arn) -> Option<String> {
        self.memory
            .lock()
            .unwrap()
            .running
            .get(&stage.to_string())
            .cloned()
    }

    pub fn sessions_started(&self) -> usize {
        self.live_writes()
            .iter()
            .filter(|(_, w)| matches!(w, LiveWrite::StartSession { .. }))
            .count()
    }

    /// Every replication row, oldest first.
    pub fn replicas(&self) -> Vec<ReplicaRow> {
        self.memory.lock().unwrap().replicas.clone()
    }

    /// The events written for a participant in one stage, in order.
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

    pub fn event_names_in(&self, stage: &Arn, participant_id: &str) -> Vec<String> {
        self.events_in(stage, participant_id)
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    /// The participant's record in one stage, as the writes so far leave it.
    pub fn participant_in(&self, stage: &Arn, participant_id: &str) -> Option<Participant> {
        let mut record: Option<Participant> = None;
        for (s, w) in self.live_writes() {
            if s != *stage {
                continue;
            }
            match w {
                LiveWrite::UpsertParticipant { participant, .. }
                    if participant.participant_id == participant_id =>
                {
                    let published = record.as_ref().is_some_and(|r| r.published);
                    let first = record.as_ref().map(|r| r.first_join_time);
                    let mut p = *participant;
                    p.published |= published;
                    if let Some(first) = first {
                        p.first_join_time = first;
                    }
                    record = Some(p);
                }
                LiveWrite::SetReplicationState {
                    participant_id: id,
                    replication_type,
                    replication_state,
                    ..
                } if id == participant_id => {
                    if let Some(r) = record.as_mut() {
                        r.replication_type = replication_type;
                        r.replication_state = replication_state;
                    }
                }
                LiveWrite::StartSession { .. } => record = None,
                _ => {}
            }
        }
        record
    }

    pub fn set_failing_writes(&self, fail: bool) {
        self.memory.lock().unwrap().fail_writes = fail;
    }
}

fn empty<T>() -> Page<T> {
    Page {
        items: Vec::new(),
        next: None,
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_resource(
        &self,
        record: &ResourceRecord,
        _quota: Option<u32>,
    ) -> Result<InsertOutcome, StoreError> {
        let mut m = self.memory.lock().unwrap();
        m.resources.insert(record.arn.to_string(), record.clone());
        Ok(InsertOutcome::Inserted)
    }

    async fn get_resource(&self, arn: &Arn) -> Result<Option<ResourceRecord>, StoreError> {
        let m = self.memory.lock().unwrap();
        Ok(m.resources.get(&arn.to_string()).map(|r| ResourceRecord {
            active_session_id: m.running.get(&arn.to_string()).cloned(),
            ..r.clone()
        }))
    }

    async fn update_resource(
        &self,
        _arn: &Arn,
        _body: &serde_json::Value,
        _refers_to: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn delete_resource(&self, arn: &Arn) -> Result<DeleteOutcome, StoreError> {
        let mut m = self.memory.lock().unwrap();
        m.running.remove(&arn.to_string());
        // A stage's replications go with it (its rows as a destination stay).
        m.replicas.retain(|r| r.source_stage != arn.to_string());
        Ok(match m.resources.remove(&arn.to_string()) {
            Some(_) => DeleteOutcome::Deleted,
            None => DeleteOutcome::NotFound,
        })
    }

    async fn list_resources(
        &self,
        _account: &Account,
        _kind: ResourceKind,
        _after: Option<i64>,
        _limit: u32,
    ) -> Result<Page<ResourceRecord>, StoreError> {
        Ok(empty())
    }

    async fn change_tags(
        &self,
        _arn: &Arn,
        _add: &Tags,
        _remove: &[String],
        _max_tags: usize,
    ) -> Result<TagOutcome, StoreError> {
        Ok(TagOutcome::NotFound)
    }

    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut m = self.memory.lock().unwrap();
        Ok(m.secrets
            .entry(name.to_owned())
            .or_insert_with(|| candidate.to_vec())
            .clone())
    }

    async fn list_sessions(
        &self,
        _stage: &Arn,
        _after: Option<i64>,
        _limit: u32,
    ) -> Result<Page<StageSession>, StoreError> {
        Ok(empty())
    }

    async fn get_session(
        &self,
        _stage: &Arn,
        _session_id: &str,
    ) -> Result<Option<StageSession>, StoreError> {
        Ok(None)
    }

    async fn list_participants(
        &self,
        _stage: &Arn,
        _session_id: &str,
        _filter: &ParticipantFilter,
        _after: Option<i64>,
        _limit: u32,
    ) -> Result<Page<Participant>, StoreError> {
        Ok(empty())
    }

    async fn get_participant(
        &self,
        _stage: &Arn,
        _session_id: &str,
        _participant_id: &str,
    ) -> Result<Option<Participant>, StoreError> {
        Ok(None)
    }

    async fn list_events(
        &self,
        _stage: &Arn,
        _session_id: &str,
        _participant_id: &str,
        _after: Option<i64>,
        _limit: u32,
    ) -> Result<Page<ParticipantEvent>, StoreError> {
        Ok(empty())
    }

    async fn list_replicas(
        &self,
        source_stage: &Arn,
        participant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ParticipantReplica>, StoreError> {
        let m = self.memory.lock().unwrap();
        let rows: Vec<(i64, ParticipantReplica)> = m
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| (i as i64 + 1, r))
            .filter(|(seq, r)| {
                r.source_stage == source_stage.to_string()
                    && r.participant_id == participant_id
                    && *seq > after.unwrap_or(0)
            })
            .map(|(seq, r)| {
                (
                    seq,
                    ParticipantReplica {
                        source_stage_arn: r.source_stage.clone(),
                        participant_id: r.participant_id.clone(),
                        source_session_id: r.source_session.clone(),
                        destination_stage_arn: r.destination_stage.clone(),
                        destination_session_id: r.destination_session.clone(),
                        replication_state: r.state.clone(),
                    },
                )
            })
            .collect();
        let more = rows.len() > limit as usize;
        let items: Vec<(i64, ParticipantReplica)> = rows.into_iter().take(limit as usize).collect();
        let next = if more {
            items.last().map(|(seq, _)| *seq)
        } else {
            None
        };
        Ok(Page {
            items: items.into_iter().map(|(_, r)| r).collect(),
            next,
        })
    }

    async fn write_live(&self, stage: &Arn, writes: &[LiveWrite]) -> Result<(), StoreError> {
        let mut m = self.memory.lock().unwrap();
        if m.fail_writes {
            return Err(StoreError::Backend("disk full".into()));
        }
        for w in writes {
            match w {
                LiveWrite::StartSession { session_id, .. } => {
                    assert!(
                        m.running
                            .insert(stage.to_string(), session_id.clone())
                            .is_none(),
                        "a session was already running"
                    );
                }
                LiveWrite::EndSession { session_id, .. } => {
                    assert_eq!(
                        m.running.remove(&stage.to_string()).as_ref(),
                        Some(session_id),
                        "ended a session that was not running"
                    );
                }
                LiveWrite::RevokeParticipant { participant_id, .. } => {
                    m.revoked
                        .insert((stage.to_string(), participant_id.clone()));
                }
                LiveWrite::StartReplication {
                    participant_id,
                    source_session_id,
                    destination_stage_arn,
                    destination_session_id,
                } => {
                    let source = stage.to_string();
                    assert!(
                        !m.replicas.iter().any(|r| r.source_stage == source
                            && r.participant_id == *participant_id
                            && r.destination_stage == *destination_stage_arn
                            && r.state == "ACTIVE"),
                        "two ACTIVE replications of the same triple"
                    );
                    m.replicas.push(ReplicaRow {
                        source_stage: source,
                        participant_id: participant_id.clone(),
                        source_session: source_session_id.clone(),
                        destination_stage: destination_stage_arn.clone(),
                        destination_session: destination_session_id.clone(),
                        state: "ACTIVE".into(),
                        reason: None,
                    });
                }
                LiveWrite::StopReplication {
                    participant_id,
                    destination_stage_arn,
                    reason,
                } => {
                    let source = stage.to_string();
                    for r in m.replicas.iter_mut().filter(|r| {
                        r.source_stage == source
                            && r.participant_id == *participant_id
                            && r.destination_stage == *destination_stage_arn
                            && r.state == "ACTIVE"
                    }) {
                        r.state = "STOPPED".into();
                        r.reason = Some(reason.clone());
                    }
                }
                LiveWrite::UpsertParticipant { .. }
                | LiveWrite::AppendEvent { .. }
                | LiveWrite::SetReplicationState { .. } => {}
            }
            m.live.push((stage.clone(), w.clone()));
        }
        Ok(())
    }

    async fn is_participant_revoked(
        &self,
        stage: &Arn,
        participant_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .memory
            .lock()
            .unwrap()
            .revoked
            .contains(&(stage.to_string(), participant_id.to_owned())))
    }

    async fn revoke_token(
        &self,
        account: &Account,
        token_id: &str,
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        let mut m = self.memory.lock().unwrap();
        let key = (
            account.id.clone(),
            account.region.clone(),
            token_id.to_owned(),
        );
        let entry = m.revoked_tokens.entry(key).or_insert(at);
        *entry = (*entry).max(at);
        Ok(())
    }

    async fn token_revoked_at(
        &self,
        account: &Account,
        token_id: &str,
    ) -> Result<Option<UnixMillis>, StoreError> {
        let m = self.memory.lock().unwrap();
        let key = (
            account.id.clone(),
            account.region.clone(),
            token_id.to_owned(),
        );
        Ok(m.revoked_tokens.get(&key).copied())
    }

    async fn close_interrupted_sessions(
        &self,
        _at: UnixMillis,
    ) -> Result<InterruptedSessions, StoreError> {
        let mut m = self.memory.lock().unwrap();
        let sessions = m.running.len() as u64;
        m.running.clear();
        Ok(InterruptedSessions {
            sessions,
            ..Default::default()
        })
    }
}

/// What the fake media plane was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaCall {
    Publish(SourceId, PeerId),
    Subscribe(SourceId, PeerId),
    ClosePeer(PeerId),
    CloseSource(SourceId),
    Keyframe(SourceId),
}

/// Answers every offer with `answer-<peer id>`, or refuses it as told.
#[derive(Default)]
pub struct FakeMedia {
    next_id: AtomicU64,
    calls: Mutex<Vec<MediaCall>>,
    refuse_next: Mutex<Option<MediaRefusal>>,
}

impl FakeMedia {
    pub fn calls(&self) -> Vec<MediaCall> {
        self.calls.lock().unwrap().clone()
    }

    pub fn refuse_next(&self, refusal: MediaRefusal) {
        *self.refuse_next.lock().unwrap() = Some(refusal);
    }

    pub fn closed_peers(&self) -> Vec<PeerId> {
        self.calls()
            .into_iter()
            .filter_map(|c| {
                if let MediaCall::ClosePeer(p) = c {
                    Some(p)
                } else {
                    None
                }
            })
            .collect()
    }

    pub fn closed_sources(&self) -> Vec<SourceId> {
        self.calls()
            .into_iter()
            .filter_map(|c| {
                if let MediaCall::CloseSource(s) = c {
                    Some(s)
                } else {
                    None
                }
            })
            .collect()
    }

    /// The peer of the n-th publish or subscribe answered.
    pub fn peer(&self, n: usize) -> PeerId {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                MediaCall::Publish(_, p) | MediaCall::Subscribe(_, p) => Some(p),
                _ => None,
            })
            .nth(n)
            .expect("no such peer")
    }

    fn answer(&self) -> Result<PeerId, MediaRefusal> {
        if let Some(refusal) = self.refuse_next.lock().unwrap().take() {
            return Err(refusal);
        }
        Ok(PeerId(self.next_id.fetch_add(1, Ordering::Relaxed) + 100))
    }
}

#[async_trait]
impl MediaPlane for FakeMedia {
    fn new_source(&self) -> SourceId {
        SourceId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    async fn publish(
        &self,
        source: SourceId,
        _offer_sdp: String,
    ) -> Result<(PeerId, String), MediaRefusal> {
        let peer = self.answer()?;
        self.calls
            .lock()
            .unwrap()
            .push(MediaCall::Publish(source, peer));
        Ok((peer, format!("answer-{peer}")))
    }

    async fn subscribe(
        &self,
        source: SourceId,
        _offer_sdp: String,
    ) -> Result<(PeerId, String), MediaRefusal> {
        let peer = self.answer()?;
        self.calls
            .lock()
            .unwrap()
            .push(MediaCall::Subscribe(source, peer));
        Ok((peer, format!("answer-{peer}")))
    }

    fn close_peer(&self, peer: PeerId) {
        self.calls.lock().unwrap().push(MediaCall::ClosePeer(peer));
    }

    fn close_source(&self, source: SourceId) {
        self.calls
            .lock()
            .unwrap()
            .push(MediaCall::CloseSource(source));
    }

    fn request_keyframe(&self, source: SourceId) {
        self.calls.lock().unwrap().push(MediaCall::Keyframe(source));
    }
}

pub async fn control_plane(store: Arc<MemoryStore>) -> Arc<ControlPlane> {
    let config = ControlPlaneConfig {
        whip_url: WHIP_URL.into(),
        events_url: EVENTS_URL.into(),
    };
    Arc::new(ControlPlane::open(store, config).await.unwrap())
}

/// A customer's P-384 key pair: the PKCS#8 private key for signing and the SPKI PEM
/// for ImportPublicKey.
pub fn customer_key() -> (Vec<u8>, String) {
    use p384::pkcs8::{EncodePublicKey, LineEnding};
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let public = p384::PublicKey::from_sec1_bytes(pair.public_key().as_ref()).unwrap();
    let pem = public.to_public_key_pem(LineEnding::LF).unwrap();
    (pkcs8.as_ref().to_vec(), pem)
}

/// Signs arbitrary claims with a customer key under `kid`.
pub fn sign(pkcs8: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_der(pkcs8),
    )
    .unwrap()
}

pub fn now_secs() -> i64 {
    onstage_stage::time_fmt::now_millis() / 1000
}
