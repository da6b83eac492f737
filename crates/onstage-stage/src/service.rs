//! The control plane: every IVS Real-Time operation as a domain call.
//!
//! Each method takes the caller's [`Account`] and typed, already shape-validated
//! input (the API crate has enforced the model's constraints), applies the rules the
//! model cannot express — cross-resource references, quotas, uniqueness, account
//! isolation — and talks to the [`Store`]. Nothing here knows how a request arrived.

use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

mod ingest;

pub use ingest::{NewIngestConfiguration, StreamKeyRefusal};

use crate::clock::{Clock, SystemClock};
use crate::error::{DomainError, StoreError};
use crate::ids::{Account, Arn, IdSource, RandomIds, ResourceKind};
use crate::model::{
    Attributes, AutoParticipantRecording, EncoderConfiguration, Page, Participant,
    ParticipantEvent, ParticipantFilter, ParticipantReplica, PublicKey, RecordingMediaType, Stage,
    StageEndpoints, StageSession, StorageConfiguration, Tags, ThumbnailSettings, Video,
};
use crate::store::{DeleteOutcome, InsertOutcome, ResourceRecord, Store, TagOutcome};
use crate::time_fmt::UnixMillis;
use crate::token::{
    self, Capabilities, ParticipantClaims, TokenCheck, TokenIssuer, TokenRejection, TokenSigner,
    UnverifiedToken, p384_decoding_key, parse_p384_public_key,
};

/// At most this many tags on one resource.
pub const MAX_TAGS: usize = 50;
/// At most this many imported public keys per account and region.
pub const MAX_PUBLIC_KEYS: u32 = 3;
/// Participant and token attributes: at most 1 KB of keys plus values (UTF-8 bytes).
pub const MAX_ATTRIBUTES_BYTES: usize = 1024;
/// Token lifetime when the request names none: 12 hours.
pub const DEFAULT_TOKEN_DURATION_MINUTES: i64 = 720;

const SIGNING_KEY_SECRET: &str = "token-signing-key-pkcs8";

/// Deployment facts the control plane hands out.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// `endpoints.whip` of every stage, and the `whip_url` claim.
    pub whip_url: String,
    /// `endpoints.events` of every stage, and the `events_url` claim.
    pub events_url: String,
    /// `endpoints.rtmp` of every stage (`rtmp://host:port/app/`), when RTMP ingest runs.
    pub rtmp_url: Option<String>,
    /// `endpoints.rtmps` of every stage, when RTMPS ingest runs.
    pub rtmps_url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    Publish,
    Subscribe,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Publish => "PUBLISH",
            Capability::Subscribe => "SUBSCRIBE",
        }
    }
}

/// What a caller asks of a participant token; `None` means the documented default.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    pub duration_minutes: Option<i64>,
    pub user_id: Option<String>,
    pub attributes: Option<Attributes>,
    pub capabilities: Option<Vec<Capability>>,
}

#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub participant_id: String,
    pub token: String,
    pub user_id: Option<String>,
    pub attributes: Option<Attributes>,
    pub duration_minutes: i64,
    pub capabilities: Vec<Capability>,
    pub expiration_time: UnixMillis,
}

/// `autoParticipantRecordingConfiguration` as a request gives it.
#[derive(Clone, Debug, Default)]
pub struct AutoRecordingRequest {
    pub storage_configuration_arn: String,
    pub media_types: Option<Vec<String>>,
    pub thumbnail_target_interval_seconds: Option<i64>,
    pub thumbnail_storage: Option<Vec<String>>,
    pub thumbnail_recording_mode: Option<String>,
    pub recording_reconnect_window_seconds: Option<i64>,
    pub hls_target_segment_duration_seconds: Option<i64>,
    pub record_participant_replicas: Option<bool>,
}

#[derive(Clone, Debug, Default)]
pub struct NewStage {
    pub name: Option<String>,
    pub tags: Tags,
    pub auto_participant_recording: Option<AutoRecordingRequest>,
    pub participant_tokens: Vec<TokenRequest>,
}

#[derive(Clone, Debug, Default)]
pub struct VideoRequest {
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub framerate: Option<f64>,
    pub bitrate: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct ReplicationRequest {
    pub source_stage_arn: String,
    pub destination_stage_arn: String,
    pub participant_id: String,
    pub reconnect_window_seconds: Option<i64>,
    pub attributes: Option<Attributes>,
}

// Stored documents. Their field names are a storage format: change with care.
#[derive(Serialize, Deserialize)]
struct StageDoc {
    name: String,
    #[serde(default)]
    auto_participant_recording: Option<AutoParticipantRecording>,
}

#[derive(Serialize, Deserialize)]
struct PublicKeyDoc {
    name: String,
    material: String,
    fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct StorageDoc {
    name: String,
    s3_bucket_name: String,
}

#[derive(Serialize, Deserialize)]
struct EncoderDoc {
    name: String,
    video: Video,
}

/// StartParticipantReplication once its preconditions 1–2 hold (BEHAVIOUR §6).
#[derive(Clone, Debug)]
pub struct ReplicationStart {
    pub source: Arn,
    pub destination: Arn,
    pub participant_id: String,
    /// 0–300.
    pub reconnect_window_seconds: u32,
    /// Overlaid on the token's attributes for the replica.
    pub attributes: Attributes,
}

/// Longest reconnect window of a replication (the model's range).
pub const MAX_RECONNECT_WINDOW_SECONDS: i64 = 300;

/// What the control plane needs from whatever holds the live connections of
/// stages (the live plane): the operations that act on connected participants.
#[async_trait]
pub trait LiveStages: Send + Sync {
    /// Ends every connection of a participant at once and refuses its id on the stage
    /// from now on. `false` when the participant is not connected.
    async fn disconnect_participant(
        &self,
        stage: &Arn,
        participant_id: &str,
        reason: Option<&str>,
    ) -> Result<bool, DomainError>;
    /// RevokeConnectionToken: ends at once every connection made with a token of the
    /// account whose id is `token_id` (the store already refuses it from now on).
    async fn revoke_token(&self, account: &Account, token_id: &str) -> Result<(), DomainError>;
    /// Disconnects everyone in a stage that is about to be deleted, and refuses new
    /// connections to it until [`LiveStages::stage_deletion_finished`].
    async fn stage_deletion_started(&self, stage: &Arn);
    /// The deletion of the stage is over (done or failed): connections to it are
    /// judged by the store again.
    async fn stage_deletion_finished(&self, stage: &Arn);
    /// Checks preconditions 3–5 of StartParticipantReplication and, when they hold,
    /// puts the replica in place in the destination before returning.
    async fn start_replication(&self, start: ReplicationStart) -> Result<(), DomainError>;
    /// StopParticipantReplication; `false` when the participant has no active
    /// replication from `source` to `destination`.
    async fn stop_replication(
        &self,
        source: &Arn,
        destination: &Arn,
        participant_id: &str,
    ) -> Result<bool, DomainError>;
}

/// A participant token that passed every check of BEHAVIOUR §3 for its stage.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    pub stage: Stage,
    pub claims: ParticipantClaims,
    pub issuer: TokenIssuer,
}

/// How far a refused token's signature was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The issuer's key verified it: the claims are the issuer's, even if they are
    /// expired or name another stage.
    Verified,
    /// Forged, altered, malformed, or signed with a key onstage does not hold:
    /// nothing it claims can be believed.
    NotVerified,
}

/// Why [`ControlPlane::verify_participant_token`] did not accept a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenVerificationError {
    /// The token does not authenticate its holder. `claimed` is what the token
    /// said about itself: where the refusal may be recorded, and only when
    /// `signature` says its issuer really signed it.
    #[error("{rejection}")]
    Rejected {
        rejection: TokenRejection,
        claimed: Option<UnverifiedToken>,
        signature: SignatureCheck,
    },
    /// The check itself failed (the store, a corrupt stored key).
    #[error(transparent)]
    Internal(#[from] DomainError),
}

pub struct ControlPlane {
    store: Arc<dyn Store>,
    signer: TokenSigner,
    config: ControlPlaneConfig,
    /// What time it is, for creation times and tokens; the live plane reads the same.
    clock: Arc<dyn Clock>,
    /// Where new resource, participant and session ids come from; the live plane
    /// draws session ids from the same source.
    ids: Arc<dyn IdSource>,
    /// Set once the live plane exists; weak, because the live plane holds the control
    /// plane.
    live: OnceLock<Weak<dyn LiveStages>>,
}

impl ControlPlane {
    /// Loads (or, on first start, creates and stores) the token-signing key. Time
    /// is the machine's wall clock.
    pub async fn open(
        store: Arc<dyn Store>,
        config: ControlPlaneConfig,
    ) -> Result<Self, DomainError> {
        Self::open_with_clock(store, config, Arc::new(SystemClock)).await
    }

    /// [`ControlPlane::open`] on another clock (a test's virtual time). The live
    /// plane attached to this control plane uses the same clock.
    pub async fn open_with_clock(
        store: Arc<dyn Store>,
        config: ControlPlaneConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DomainError> {
        Self::open_with(store, config, clock, Arc::new(RandomIds)).await
    }

    /// [`ControlPlane::open_with_clock`] drawing new ids from `ids` (a test's
    /// [`crate::ids::SequentialIds`]).
    pub async fn open_with(
        store: Arc<dyn Store>,
        config: ControlPlaneConfig,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdSource>,
    ) -> Result<Self, DomainError> {
        let candidate = TokenSigner::generate_pkcs8()?;
        let pkcs8 = store.secret(SIGNING_KEY_SECRET, &candidate).await?;
        let signer = TokenSigner::from_pkcs8(&pkcs8)?;
        Ok(ControlPlane {
            store,
            signer,
            config,
            clock,
            ids,
            live: OnceLock::new(),
        })
    }

    /// Connects the live plane, which DisconnectParticipant and DeleteStage act
    /// through. Only the first call has an effect.
    pub fn attach_live_stages(&self, live: Weak<dyn LiveStages>) {
        let _ = self.live.set(live);
    }

    fn live(&self) -> Option<Arc<dyn LiveStages>> {
        self.live.get().and_then(Weak::upgrade)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn ids(&self) -> &Arc<dyn IdSource> {
        &self.ids
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.signer.jwks()
    }

    fn endpoints(&self) -> StageEndpoints {
        StageEndpoints {
            whip: self.config.whip_url.clone(),
            events: self.config.events_url.clone(),
            rtmp: self.config.rtmp_url.clone(),
            rtmps: self.config.rtmps_url.clone(),
        }
    }

    // ----- stages -------------------------------------------------------------

    pub async fn create_stage(
        &self,
        account: &Account,
        req: NewStage,
    ) -> Result<(Stage, Vec<IssuedToken>), DomainError> {
        check_tags("tags", &req.tags)?;
        for (i, t) in req.participant_tokens.iter().enumerate() {
            check_token_request(&format!("participantTokenConfigurations.{}", i + 1), t)?;
        }
        let recording = match req.auto_participant_recording {
            Some(r) => self.resolve_recording(account, r).await?,
            None => None,
        };
        let arn = Arn::new(account, ResourceKind::Stage, self.ids.resource_id());
        let refers_to = recording
            .as_ref()
            .map(|r| r.storage_configuration_arn.clone());
        let doc = StageDoc {
            name: req.name.unwrap_or_default(),
            auto_participant_recording: recording,
        };
        let record = ResourceRecord {
            arn: arn.clone(),
            tags: req.tags,
            created_at: self.clock.now(),
            body: to_doc(&doc)?,
            unique_key: None,
            refers_to,
            active_session_id: None,
        };
        self.insert(&record, None).await?;
        let stage = self.stage_from(record)?;
        let tokens = req
            .participant_tokens
            .into_iter()
            .map(|t| self.issue_token(&stage, t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((stage, tokens))
    }

    pub async fn get_stage(&self, account: &Account, arn: &str) -> Result<Stage, DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::Stage)?;
        let record = self.load(&arn).await?;
        self.stage_from(record)
    }

    pub async fn update_stage(
        &self,
        account: &Account,
        arn: &str,
        name: Option<String>,
        recording: Option<AutoRecordingRequest>,
    ) -> Result<Stage, DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::Stage)?;
        let record = self.load(&arn).await?;
        let mut doc: StageDoc = from_doc(&record.body)?;
        if let Some(name) = name {
            doc.name = name;
        }
        if let Some(r) = recording {
            doc.auto_participant_recording = self.resolve_recording(account, r).await?;
        }
        let refers_to = doc
            .auto_participant_recording
            .as_ref()
            .map(|r| r.storage_configuration_arn.clone());
        let body = to_doc(&doc)?;
        if !self
            .store
            .update_resource(&arn, &body, refers_to.as_deref())
            .await
            .map_err(missing_reference)?
        {
            return Err(not_found(&arn));
        }
        self.stage_from(ResourceRecord {
            body,
            refers_to,
            ..record
        })
    }

    /// Disconnects everyone in the stage first (BEHAVIOUR §5), then deletes it with its
    /// sessions, participants and events; its ingest configurations keep no stage
    /// (BEHAVIOUR §10).
    pub async fn delete_stage(&self, account: &Account, arn: &str) -> Result<(), DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::Stage)?;
        let Some(live) = self.live() else {
            self.store
                .release_references(&arn, ResourceKind::IngestConfiguration)
                .await?;
            return self.delete(&arn).await;
        };
        self.load(&arn).await?;
        live.stage_deletion_started(&arn).await;
        let deleted = match self
            .store
            .release_references(&arn, ResourceKind::IngestConfiguration)
            .await
        {
            Ok(_) => self.delete(&arn).await,
            Err(e) => Err(e.into()),
        };
        live.stage_deletion_finished(&arn).await;
        deleted
    }

    /// The stage a participant connection is for, by ARN; `None` when it does not
    /// exist.
    pub async fn find_stage(&self, arn: &Arn) -> Result<Option<Stage>, DomainError> {
        match self.store.get_resource(arn).await? {
            Some(record) if record.arn.kind == ResourceKind::Stage => {
                Ok(Some(self.stage_from(record)?))
            }
            _ => Ok(None),
        }
    }

    pub async fn list_stages(
        &self,
        account: &Account,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<Stage>, DomainError> {
        let page = self
            .store
            .list_resources(account, ResourceKind::Stage, after, limit)
            .await?;
        let items = page
            .items
            .into_iter()
            .map(|r| self.stage_from(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items,
            next: page.next,
        })
    }

    /// A stage's automatic participant recording and its storage configuration's
    /// bucket, when the stage records (and the storage configuration still exists).
    pub(crate) async fn recording_target(
        &self,
        stage: &Arn,
    ) -> Result<Option<(AutoParticipantRecording, String)>, DomainError> {
        let Some(record) = self.store.get_resource(stage).await? else {
            return Ok(None);
        };
        let doc: StageDoc = from_doc(&record.body)?;
        let Some(recording) = doc.auto_participant_recording else {
            return Ok(None);
        };
        let Some(storage_arn) = Arn::parse(&recording.storage_configuration_arn) else {
            return Ok(None);
        };
        let Some(storage) = self.store.get_resource(&storage_arn).await? else {
            return Ok(None);
        };
        let storage: StorageDoc = from_doc(&storage.body)?;
        Ok(Some((recording, storage.s3_bucket_name)))
    }

    fn stage_from(&self, r: ResourceRecord) -> Result<Stage, DomainError> {
        let doc: StageDoc = from_doc(&r.body)?;
        Ok(Stage {
            arn: r.arn,
            name: doc.name,
            tags: r.tags,
            auto_participant_recording: doc.auto_participant_recording,
            active_session_id: r.active_session_id,
            endpoints: self.endpoints(),
            created_at: r.created_at,
        })
    }

    /// Applies the model's documented defaults; an empty storage ARN disables
    /// recording. A named storage configuration must exist in the caller's account
    /// (ValidationException: CreateStage has no ResourceNotFound in the model).
    async fn resolve_recording(
        &self,
        account: &Account,
        r: AutoRecordingRequest,
    ) -> Result<Option<AutoParticipantRecording>, DomainError> {
        const FIELD: &str = "autoParticipantRecordingConfiguration.storageConfigurationArn";
        if r.storage_configuration_arn.is_empty() {
            return Ok(None);
        }
        let missing = || {
            DomainError::Validation(format!(
                "{FIELD}: storage configuration {} does not exist",
                r.storage_configuration_arn
            ))
        };
        let arn = match Arn::parse(&r.storage_configuration_arn) {
            Some(a) if a.kind == ResourceKind::StorageConfiguration && a.is_in(account) => a,
            _ => return Err(missing()),
        };
        if self.store.get_resource(&arn).await?.is_none() {
            return Err(missing());
        }
        let default_thumbnail = ThumbnailSettings::default();
        Ok(Some(AutoParticipantRecording {
            storage_configuration_arn: arn.to_string(),
            media_types: match r.media_types.filter(|m| !m.is_empty()) {
                Some(m) => parse_all(&m, "autoParticipantRecordingConfiguration.mediaTypes")?,
                None => vec![RecordingMediaType::AudioVideo],
            },
            thumbnail: ThumbnailSettings {
                target_interval_seconds: r
                    .thumbnail_target_interval_seconds
                    .unwrap_or(default_thumbnail.target_interval_seconds),
                storage: match r.thumbnail_storage.filter(|s| !s.is_empty()) {
                    Some(s) => parse_all(
                        &s,
                        "autoParticipantRecordingConfiguration.thumbnailConfiguration.storage",
                    )?,
                    None => default_thumbnail.storage,
                },
                recording_mode: match r.thumbnail_recording_mode {
                    Some(m) => parse_all(
                        std::slice::from_ref(&m),
                        "autoParticipantRecordingConfiguration.thumbnailConfiguration.recordingMode",
                    )?
                    .remove(0),
                    None => default_thumbnail.recording_mode,
                },
            },
            recording_reconnect_window_seconds: r.recording_reconnect_window_seconds.unwrap_or(0),
            hls_target_segment_duration_seconds: r.hls_target_segment_duration_seconds.unwrap_or(6),
            record_participant_replicas: r.record_participant_replicas.unwrap_or(true),
        }))
    }

    // ----- participant tokens ----------------------------------------------------

    pub async fn create_participant_token(
        &self,
        account: &Account,
        stage_arn: &str,
        req: TokenRequest,
    ) -> Result<IssuedToken, DomainError> {
        check_token_request("", &req)?;
        let stage = self.get_stage_as(account, "stageArn", stage_arn).await?;
        self.issue_token(&stage, req)
    }

    fn issue_token(&self, stage: &Stage, req: TokenRequest) -> Result<IssuedToken, DomainError> {
        let duration = req
            .duration_minutes
            .unwrap_or(DEFAULT_TOKEN_DURATION_MINUTES);
        let mut capabilities = req
            .capabilities
            .unwrap_or_else(|| vec![Capability::Publish, Capability::Subscribe]);
        capabilities.dedup();
        let granted = Capabilities {
            allow_publish: capabilities.contains(&Capability::Publish),
            allow_subscribe: capabilities.contains(&Capability::Subscribe),
        };
        let now = self.clock.now();
        let iat = now / 1000;
        let exp = iat + duration * 60;
        let participant_id = self.ids.participant_id();
        let attributes = req.attributes.filter(|a| !a.is_empty());
        let claims = ParticipantClaims {
            exp,
            iat,
            jti: participant_id.clone(),
            resource: stage.arn.to_string(),
            topic: stage.arn.id.clone(),
            events_url: stage.endpoints.events.clone(),
            whip_url: stage.endpoints.whip.clone(),
            user_id: req.user_id.clone(),
            attributes: attributes.clone(),
            capabilities: granted,
            version: "0.0".into(),
        };
        let token = self.signer.sign(&claims)?;
        Ok(IssuedToken {
            participant_id,
            token,
            user_id: req.user_id,
            attributes,
            duration_minutes: duration,
            capabilities,
            expiration_time: exp * 1000,
        })
    }

    async fn get_stage_as(
        &self,
        account: &Account,
        field: &str,
        arn: &str,
    ) -> Result<Stage, DomainError> {
        let arn = parse_arn(account, field, arn, ResourceKind::Stage)?;
        let record = self.load(&arn).await?;
        self.stage_from(record)
    }

    /// Checks a participant token presented to the media plane (BEHAVIOUR §3): its
    /// signature under the server key or under the imported public key its `kid`
    /// names (in the stage's account; a deleted key verifies nothing), its expiry, its
    /// claims, and that its stage exists — and, when the URL names a stage
    /// (`presented_to`, a stage id), that it is that stage.
    pub async fn verify_participant_token(
        &self,
        token: &str,
        presented_to: Option<&str>,
        now_secs: i64,
    ) -> Result<VerifiedToken, TokenVerificationError> {
        let unverified =
            token::inspect(token).map_err(|rejection| TokenVerificationError::Rejected {
                rejection,
                claimed: None,
                signature: SignatureCheck::NotVerified,
            })?;
        let forged = |rejection: TokenRejection| TokenVerificationError::Rejected {
            rejection,
            claimed: Some(unverified.clone()),
            signature: SignatureCheck::NotVerified,
        };
        let issuer = unverified.issuer(self.signer.kid()).map_err(forged)?;
        let Some(stage_arn) = unverified.stage_arn.clone() else {
            return Err(forged(TokenRejection::Malformed(
                "resource must be a stage ARN".into(),
            )));
        };
        // The signature is checked first, before the store is asked about the
        // stage: until it verifies, nothing the token claims is believed, and a
        // forgery costs no more than one signature check.
        let customer_key;
        let key = match &issuer {
            TokenIssuer::Server => self.signer.decoding_key(),
            TokenIssuer::PublicKey(key_arn) => {
                let unknown = || forged(TokenRejection::UnknownKey(key_arn.to_string()));
                if key_arn.account != stage_arn.account || key_arn.region != stage_arn.region {
                    return Err(unknown());
                }
                let Some(record) = self
                    .store
                    .get_resource(key_arn)
                    .await
                    .map_err(DomainError::from)?
                else {
                    return Err(unknown());
                };
                let doc: PublicKeyDoc = from_doc(&record.body)?;
                customer_key = p384_decoding_key(&doc.material).map_err(|e| {
                    DomainError::Internal(format!("stored public key {key_arn} is unreadable: {e}"))
                })?;
                &customer_key
            }
        };
        let signed = token::verify_signature(token, key).map_err(forged)?;
        let reject = |rejection: TokenRejection| TokenVerificationError::Rejected {
            rejection,
            claimed: Some(unverified.clone()),
            signature: SignatureCheck::Verified,
        };
        if let Some(expected) = presented_to
            && expected != stage_arn.id
        {
            return Err(reject(TokenRejection::WrongStage(format!(
                "the token is for stage {}, not {expected}",
                stage_arn.id
            ))));
        }
        let Some(stage) = self.find_stage(&stage_arn).await? else {
            return Err(reject(TokenRejection::WrongStage(format!(
                "stage {stage_arn} does not exist"
            ))));
        };
        let check = TokenCheck {
            issuer: &issuer,
            key,
            stage_arn: &stage.arn,
            endpoints: &stage.endpoints,
            now: now_secs,
        };
        let claims = token::check_claims(signed, &check).map_err(reject)?;
        Ok(VerifiedToken {
            stage,
            claims,
            issuer,
        })
    }

    // ----- public keys -------------------------------------------------------

    pub async fn import_public_key(
        &self,
        account: &Account,
        material: &str,
        name: Option<String>,
        tags: Tags,
    ) -> Result<PublicKey, DomainError> {
        check_tags("tags", &tags)?;
        let (_der, fingerprint) = parse_p384_public_key(material)?;
        let arn = Arn::new(account, ResourceKind::PublicKey, self.ids.resource_id());
        let doc = PublicKeyDoc {
            name: name.unwrap_or_default(),
            material: material.to_owned(),
            fingerprint: fingerprint.clone(),
        };
        let record = ResourceRecord {
            arn,
            tags,
            created_at: self.clock.now(),
            body: to_doc(&doc)?,
            unique_key: Some(fingerprint),
            refers_to: None,
            active_session_id: None,
        };
        self.insert(&record, Some(MAX_PUBLIC_KEYS)).await?;
        public_key_from(record)
    }

    pub async fn get_public_key(
        &self,
        account: &Account,
        arn: &str,
    ) -> Result<PublicKey, DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::PublicKey)?;
        public_key_from(self.load(&arn).await?)
    }

    pub async fn delete_public_key(&self, account: &Account, arn: &str) -> Result<(), DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::PublicKey)?;
        self.delete(&arn).await
    }

    pub async fn list_public_keys(
        &self,
        account: &Account,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<PublicKey>, DomainError> {
        self.list(
            account,
            ResourceKind::PublicKey,
            after,
            limit,
            public_key_from,
        )
        .await
    }

    // ----- storage configurations ---------------------------------------------

    pub async fn create_storage_configuration(
        &self,
        account: &Account,
        name: Option<String>,
        s3_bucket_name: String,
        tags: Tags,
    ) -> Result<StorageConfiguration, DomainError> {
        check_tags("tags", &tags)?;
        let doc = StorageDoc {
            name: name.unwrap_or_default(),
            s3_bucket_name,
        };
        let record = ResourceRecord {
            arn: Arn::new(
                account,
                ResourceKind::StorageConfiguration,
                self.ids.resource_id(),
            ),
            tags,
            created_at: self.clock.now(),
            body: to_doc(&doc)?,
            unique_key: None,
            refers_to: None,
            active_session_id: None,
        };
        self.insert(&record, None).await?;
        storage_from(record)
    }

    pub async fn get_storage_configuration(
        &self,
        account: &Account,
        arn: &str,
    ) -> Result<StorageConfiguration, DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::StorageConfiguration)?;
        storage_from(self.load(&arn).await?)
    }

    pub async fn delete_storage_configuration(
        &self,
        account: &Account,
        arn: &str,
    ) -> Result<(), DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::StorageConfiguration)?;
        self.delete(&arn).await
    }

    pub async fn list_storage_configurations(
        &self,
        account: &Account,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<StorageConfiguration>, DomainError> {
        self.list(
            account,
            ResourceKind::StorageConfiguration,
            after,
            limit,
            storage_from,
        )
        .await
    }

    // ----- encoder configurations ---------------------------------------------

    pub async fn create_encoder_configuration(
        &self,
        account: &Account,
        name: Option<String>,
        video: Option<VideoRequest>,
        tags: Tags,
    ) -> Result<EncoderConfiguration, DomainError> {
        check_tags("tags", &tags)?;
        let v = video.unwrap_or_default();
        let d = Video::default();
        let video = Video {
            width: v.width.unwrap_or(d.width),
            height: v.height.unwrap_or(d.height),
            framerate: v.framerate.unwrap_or(d.framerate),
            bitrate: v.bitrate.unwrap_or(d.bitrate),
        };
        if video.width % 2 != 0 {
            return Err(DomainError::Validation(format!(
                "video.width: must be an even number, got {}",
                video.width
            )));
        }
        if video.height % 2 != 0 {
            return Err(DomainError::Validation(format!(
                "video.height: must be an even number, got {}",
                video.height
            )));
        }
        if video.width * video.height > 1920 * 1080 {
            return Err(DomainError::Validation(format!(
                "video: width x height must be at most 2073600 pixels (1920x1080), got {}x{}",
                video.width, video.height
            )));
        }
        let doc = EncoderDoc {
            name: name.unwrap_or_default(),
            video,
        };
        let record = ResourceRecord {
            arn: Arn::new(
                account,
                ResourceKind::EncoderConfiguration,
                self.ids.resource_id(),
            ),
            tags,
            created_at: self.clock.now(),
            body: to_doc(&doc)?,
            unique_key: None,
            refers_to: None,
            active_session_id: None,
        };
        self.insert(&record, None).await?;
        encoder_from(record)
    }

    pub async fn get_encoder_configuration(
        &self,
        account: &Account,
        arn: &str,
    ) -> Result<EncoderConfiguration, DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::EncoderConfiguration)?;
        encoder_from(self.load(&arn).await?)
    }

    /// Encoder configurations are referenced only by compositions, which onstage
    /// does not run yet, so they always delete.
    pub async fn delete_encoder_configuration(
        &self,
        account: &Account,
        arn: &str,
    ) -> Result<(), DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::EncoderConfiguration)?;
        self.delete(&arn).await
    }

    pub async fn list_encoder_configurations(
        &self,
        account: &Account,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<EncoderConfiguration>, DomainError> {
        self.list(
            account,
            ResourceKind::EncoderConfiguration,
            after,
            limit,
            encoder_from,
        )
        .await
    }

    // ----- tags --------------------------------------------------------------

    pub async fn tag_resource(
        &self,
        account: &Account,
        arn: &str,
        tags: Tags,
    ) -> Result<(), DomainError> {
        check_tags("tags", &tags)?;
        let arn = parse_taggable(account, arn)?;
        self.change_tags(&arn, &tags, &[]).await
    }

    pub async fn untag_resource(
        &self,
        account: &Account,
        arn: &str,
        keys: &[String],
    ) -> Result<(), DomainError> {
        let arn = parse_taggable(account, arn)?;
        self.change_tags(&arn, &Tags::new(), keys).await
    }

    pub async fn list_tags(&self, account: &Account, arn: &str) -> Result<Tags, DomainError> {
        let arn = parse_taggable(account, arn)?;
        Ok(self.load(&arn).await?.tags)
    }

    async fn change_tags(
        &self,
        arn: &Arn,
        add: &Tags,
        remove: &[String],
    ) -> Result<(), DomainError> {
        match self.store.change_tags(arn, add, remove, MAX_TAGS).await? {
            TagOutcome::Changed => Ok(()),
            TagOutcome::NotFound => Err(not_found(arn)),
            TagOutcome::TooMany => Err(DomainError::Validation(format!(
                "tags: a resource can have at most {MAX_TAGS} tags; {arn} would have more"
            ))),
        }
    }

    // ----- sessions, participants, events ----------------------------------------

    /// Lists of live data answer an unknown or foreign stage with an empty page, as
    /// the model gives these operations no ResourceNotFound.
    fn visible_stage(account: &Account, arn: &str) -> Option<Arn> {
        Arn::parse(arn).filter(|a| a.kind == ResourceKind::Stage && a.is_in(account))
    }

    pub async fn list_stage_sessions(
        &self,
        account: &Account,
        stage_arn: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<StageSession>, DomainError> {
        match Self::visible_stage(account, stage_arn) {
            Some(arn) => Ok(self.store.list_sessions(&arn, after, limit).await?),
            None => Ok(empty_page()),
        }
    }

    pub async fn get_stage_session(
        &self,
        account: &Account,
        stage_arn: &str,
        session_id: &str,
    ) -> Result<StageSession, DomainError> {
        let arn = parse_arn(account, "stageArn", stage_arn, ResourceKind::Stage)?;
        self.load(&arn).await?;
        self.store
            .get_session(&arn, session_id)
            .await?
            .ok_or_else(|| {
                DomainError::NotFound(format!(
                    "session {session_id} of stage {arn} does not exist"
                ))
            })
    }

    pub async fn list_participants(
        &self,
        account: &Account,
        stage_arn: &str,
        session_id: &str,
        filter: &ParticipantFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<Participant>, DomainError> {
        match Self::visible_stage(account, stage_arn) {
            Some(arn) => Ok(self
                .store
                .list_participants(&arn, session_id, filter, after, limit)
                .await?),
            None => Ok(empty_page()),
        }
    }

    pub async fn get_participant(
        &self,
        account: &Account,
        stage_arn: &str,
        session_id: &str,
        participant_id: &str,
    ) -> Result<Participant, DomainError> {
        let arn = parse_arn(account, "stageArn", stage_arn, ResourceKind::Stage)?;
        self.load(&arn).await?;
        self.store.get_participant(&arn, session_id, participant_id).await?.ok_or_else(|| {
            DomainError::NotFound(format!("participant {participant_id} of session {session_id} of stage {arn} does not exist"))
        })
    }

    pub async fn list_participant_events(
        &self,
        account: &Account,
        stage_arn: &str,
        session_id: &str,
        participant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ParticipantEvent>, DomainError> {
        match Self::visible_stage(account, stage_arn) {
            Some(arn) => Ok(self
                .store
                .list_events(&arn, session_id, participant_id, after, limit)
                .await?),
            None => Ok(empty_page()),
        }
    }

    /// Ends the participant's connections at once and revokes its id on the stage
    /// (BEHAVIOUR §5). A participant that is not connected is ResourceNotFound.
    pub async fn disconnect_participant(
        &self,
        account: &Account,
        stage_arn: &str,
        participant_id: &str,
        reason: Option<String>,
    ) -> Result<(), DomainError> {
        let arn = parse_arn(account, "stageArn", stage_arn, ResourceKind::Stage)?;
        self.load(&arn).await?;
        let disconnected = match self.live() {
            Some(live) => {
                live.disconnect_participant(&arn, participant_id, reason.as_deref())
                    .await?
            }
            None => false,
        };
        if disconnected {
            self.detach_ingest_participant(account, &arn, participant_id)
                .await
        } else {
            Err(DomainError::NotFound(format!(
                "participant {participant_id} is not connected to stage {arn}"
            )))
        }
    }

    /// RevokeConnectionToken: tokens of the account with this id (`jti`) issued up
    /// to now can no longer connect to any stage — also after a restart — and every
    /// connection made with one ends at once. Unknown ids succeed too (the model
    /// has no ResourceNotFound here).
    pub async fn revoke_connection_token(
        &self,
        account: &Account,
        token_id: &str,
    ) -> Result<(), DomainError> {
        self.store
            .revoke_token(account, token_id, self.clock.now())
            .await?;
        if let Some(live) = self.live() {
            live.revoke_token(account, token_id).await?;
        }
        Ok(())
    }

    // ----- participant replication ---------------------------------------------

    /// Checks the preconditions of BEHAVIOUR §6 in order — 1 and 2 here, 3 to 5 on the
    /// live stages — and returns once the replica is in place in the destination.
    /// Without a live plane nobody publishes, so a valid request ends at 3.
    pub async fn start_participant_replication(
        &self,
        account: &Account,
        req: ReplicationRequest,
    ) -> Result<(), DomainError> {
        if req.source_stage_arn == req.destination_stage_arn {
            return Err(DomainError::Validation(
                "destinationStageArn: must differ from sourceStageArn".into(),
            ));
        }
        let window = req.reconnect_window_seconds.unwrap_or(0);
        let window = u32::try_from(window)
            .ok()
            .filter(|w| i64::from(*w) <= MAX_RECONNECT_WINDOW_SECONDS)
            .ok_or_else(|| {
                DomainError::Validation(format!(
                    "reconnectWindowSeconds: must be between 0 and {MAX_RECONNECT_WINDOW_SECONDS}, got {window}"
                ))
            })?;
        if let Some(a) = &req.attributes {
            check_attributes("attributes", a)?;
        }
        let source = parse_arn(
            account,
            "sourceStageArn",
            &req.source_stage_arn,
            ResourceKind::Stage,
        )?;
        let destination = parse_arn(
            account,
            "destinationStageArn",
            &req.destination_stage_arn,
            ResourceKind::Stage,
        )?;
        self.load(&source).await?;
        self.load(&destination).await?;
        let Some(live) = self.live() else {
            return Err(DomainError::Conflict(format!(
                "participant {} is not publishing in {}",
                req.participant_id, source
            )));
        };
        live.start_replication(ReplicationStart {
            source,
            destination,
            participant_id: req.participant_id,
            reconnect_window_seconds: window,
            attributes: req.attributes.unwrap_or_default(),
        })
        .await
    }

    /// Stops an ACTIVE replication (BEHAVIOUR §6); ResourceNotFound when there is none
    /// for the three ids.
    pub async fn stop_participant_replication(
        &self,
        account: &Account,
        source_stage_arn: &str,
        destination_stage_arn: &str,
        participant_id: &str,
    ) -> Result<(), DomainError> {
        let source = parse_arn(
            account,
            "sourceStageArn",
            source_stage_arn,
            ResourceKind::Stage,
        )?;
        let destination = parse_arn(
            account,
            "destinationStageArn",
            destination_stage_arn,
            ResourceKind::Stage,
        )?;
        let stopped = match self.live() {
            Some(live) => {
                live.stop_replication(&source, &destination, participant_id)
                    .await?
            }
            None => false,
        };
        if stopped {
            Ok(())
        } else {
            Err(DomainError::NotFound(format!(
                "no active replication of participant {participant_id} from {source} to {destination}"
            )))
        }
    }

    pub async fn list_participant_replicas(
        &self,
        account: &Account,
        source_stage_arn: &str,
        participant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ParticipantReplica>, DomainError> {
        match Self::visible_stage(account, source_stage_arn) {
            Some(arn) => Ok(self
                .store
                .list_replicas(&arn, participant_id, after, limit)
                .await?),
            None => Ok(empty_page()),
        }
    }

    // ----- shared plumbing ---------------------------------------------------

    async fn load(&self, arn: &Arn) -> Result<ResourceRecord, DomainError> {
        self.store
            .get_resource(arn)
            .await?
            .ok_or_else(|| not_found(arn))
    }

    async fn insert(&self, record: &ResourceRecord, quota: Option<u32>) -> Result<(), DomainError> {
        match self
            .store
            .insert_resource(record, quota)
            .await
            .map_err(missing_reference)?
        {
            InsertOutcome::Inserted => Ok(()),
            InsertOutcome::DuplicateKey => Err(DomainError::Conflict(format!(
                "a {} with the same key material already exists",
                record.arn.kind.label()
            ))),
            InsertOutcome::QuotaExceeded => Err(DomainError::QuotaExceeded(format!(
                "at most {} {}s per account and region",
                quota.unwrap_or_default(),
                record.arn.kind.label()
            ))),
        }
    }

    async fn delete(&self, arn: &Arn) -> Result<(), DomainError> {
        match self.store.delete_resource(arn).await? {
            DeleteOutcome::Deleted => Ok(()),
            DeleteOutcome::NotFound => Err(not_found(arn)),
            DeleteOutcome::InUseBy(user) => Err(DomainError::Conflict(format!(
                "{} {arn} is in use by {user}",
                arn.kind.label()
            ))),
        }
    }

    async fn list<T>(
        &self,
        account: &Account,
        kind: ResourceKind,
        after: Option<i64>,
        limit: u32,
        convert: fn(ResourceRecord) -> Result<T, DomainError>,
    ) -> Result<Page<T>, DomainError> {
        let page = self
            .store
            .list_resources(account, kind, after, limit)
            .await?;
        let items = page
            .items
            .into_iter()
            .map(convert)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items,
            next: page.next,
        })
    }
}

/// The only reference a resource holds is a stage's storage configuration; one
/// deleted between the check in `resolve_recording` and the write is reported as
/// that check would have reported it.
fn missing_reference(e: StoreError) -> DomainError {
    match e {
        StoreError::MissingReference(arn) => DomainError::Validation(format!(
            "autoParticipantRecordingConfiguration.storageConfigurationArn: storage configuration {arn} does not exist"
        )),
        other => other.into(),
    }
}

fn empty_page<T>() -> Page<T> {
    Page {
        items: Vec::new(),
        next: None,
    }
}

fn not_found(arn: &Arn) -> DomainError {
    DomainError::NotFound(format!("{} {arn} does not exist", arn.kind.label()))
}

/// Parses an ARN the API has already matched against the model's pattern. Another
/// account's or region's resource answers exactly like a missing one.
fn parse_arn(
    account: &Account,
    field: &str,
    s: &str,
    kind: ResourceKind,
) -> Result<Arn, DomainError> {
    let arn = Arn::parse(s).filter(|a| a.kind == kind).ok_or_else(|| {
        DomainError::Validation(format!("{field}: {s} is not a {} ARN", kind.label()))
    })?;
    if arn.is_in(account) {
        Ok(arn)
    } else {
        Err(not_found(&arn))
    }
}

/// Tagging takes any ARN; one of a kind onstage does not keep cannot exist.
fn parse_taggable(account: &Account, s: &str) -> Result<Arn, DomainError> {
    match Arn::parse(s) {
        Some(arn) if arn.is_in(account) => Ok(arn),
        _ => Err(DomainError::NotFound(format!(
            "resource {s} does not exist"
        ))),
    }
}

fn check_tags(field: &str, tags: &Tags) -> Result<(), DomainError> {
    if tags.len() > MAX_TAGS {
        return Err(DomainError::Validation(format!(
            "{field}: at most {MAX_TAGS} tags, got {}",
            tags.len()
        )));
    }
    match tags.keys().find(|k| k.starts_with("aws:")) {
        Some(k) => Err(DomainError::Validation(format!(
            "{field}: tag key {k} uses the reserved prefix aws:"
        ))),
        None => Ok(()),
    }
}

fn check_attributes(field: &str, attributes: &Attributes) -> Result<(), DomainError> {
    let bytes: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_ATTRIBUTES_BYTES {
        return Err(DomainError::Validation(format!(
            "{field}: must be at most 1 KB ({MAX_ATTRIBUTES_BYTES} bytes of keys and values), got {bytes} bytes"
        )));
    }
    Ok(())
}

fn check_token_request(prefix: &str, t: &TokenRequest) -> Result<(), DomainError> {
    match &t.attributes {
        Some(a) if prefix.is_empty() => check_attributes("attributes", a),
        Some(a) => check_attributes(&format!("{prefix}.attributes"), a),
        None => Ok(()),
    }
}

fn to_doc<T: Serialize>(doc: &T) -> Result<serde_json::Value, DomainError> {
    serde_json::to_value(doc).map_err(|e| DomainError::Internal(e.to_string()))
}

fn from_doc<T: for<'de> Deserialize<'de>>(v: &serde_json::Value) -> Result<T, DomainError> {
    serde_json::from_value(v.clone()).map_err(|e| DomainError::Store(e.into()))
}

fn public_key_from(r: ResourceRecord) -> Result<PublicKey, DomainError> {
    let d: PublicKeyDoc = from_doc(&r.body)?;
    Ok(PublicKey {
        arn: r.arn,
        name: d.name,
        material: d.material,
        fingerprint: d.fingerprint,
        tags: r.tags,
    })
}

fn storage_from(r: ResourceRecord) -> Result<StorageConfiguration, DomainError> {
    let d: StorageDoc = from_doc(&r.body)?;
    Ok(StorageConfiguration {
        arn: r.arn,
        name: d.name,
        s3_bucket_name: d.s3_bucket_name,
        tags: r.tags,
    })
}

fn encoder_from(r: ResourceRecord) -> Result<EncoderConfiguration, DomainError> {
    let d: EncoderDoc = from_doc(&r.body)?;
    Ok(EncoderConfiguration {
        arn: r.arn,
        name: d.name,
        video: d.video,
        tags: r.tags,
    })
}

/// Reads each of a list of names as one of a `named!` enum, or says which field
/// holds what is not one.
fn parse_all<T: ParseName>(names: &[String], field: &str) -> Result<Vec<T>, DomainError> {
    names
        .iter()
        .map(|n| {
            T::parse_name(n).ok_or_else(|| {
                DomainError::Validation(format!("{field}: {n:?} is not one of {}", T::names()))
            })
        })
        .collect()
}

/// The `named!` enums a request may name.
trait ParseName: Sized {
    fn parse_name(s: &str) -> Option<Self>;
    fn names() -> String;
}

macro_rules! parse_name {
    ($($t:ty),*) => {$(
        impl ParseName for $t {
            fn parse_name(s: &str) -> Option<Self> {
                <$t>::parse(s)
            }
            fn names() -> String {
                <$t>::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }
    )*};
}
parse_name!(
    RecordingMediaType,
    crate::model::ThumbnailStorage,
    crate::model::ThumbnailRecordingMode
);
