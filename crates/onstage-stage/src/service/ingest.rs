//! Ingest configurations (BEHAVIOUR §10): how an RTMP(S) encoder becomes a
//! participant of a stage. The five operations, and what the ingest server asks
//! of the control plane when an encoder connects.
//!
//! A configuration is a resource whose `refers_to` is its stage (none: every stream
//! is refused); DeleteStage and DisconnectParticipant of its participant drop that
//! reference. Its stream key is `rt_{account}_{region}_{id}_{secret}`: the key
//! names its configuration, so finding it costs one read by ARN, and the secret is
//! compared in constant time.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{ControlPlane, check_attributes, check_tags, from_doc, not_found, parse_arn, to_doc};
use crate::error::{DomainError, StoreError};
use crate::ids::{self, Account, Arn, ResourceKind};
use crate::model::{Attributes, IngestConfiguration, IngestProtocol, IngestState, Page, Tags};
use crate::store::{IngestFilter, ResourceRecord};
use crate::time_fmt::UnixMillis;

/// CreateIngestConfiguration's input, shape-validated by the API.
#[derive(Clone, Debug, Default)]
pub struct NewIngestConfiguration {
    pub name: Option<String>,
    pub stage_arn: Option<String>,
    pub user_id: Option<String>,
    pub attributes: Option<Attributes>,
    pub ingest_protocol: Option<IngestProtocol>,
    pub insecure_ingest: Option<bool>,
    pub redundant_ingest: Option<bool>,
    pub tags: Tags,
}

// The stored document. Its field names are a storage format: change with care.
#[derive(Serialize, Deserialize)]
struct IngestDoc {
    name: String,
    ingest_protocol: String,
    stream_key_secret: String,
    participant_id: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    attributes: Attributes,
    #[serde(default)]
    insecure_ingest: bool,
}

/// Why a stream key was refused, each with the participant event error code the
/// ingest server records when it can (BEHAVIOUR §10).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamKeyRefusal {
    /// Not a key of any configuration, or a wrong secret.
    #[error("the stream key is not valid")]
    Invalid,
    /// The configuration has no stage to publish into.
    #[error("ingest configuration {0} has no stage")]
    NoStage(Arn),
    /// Plain RTMP to a configuration that wants RTMPS (or has not allowed it).
    #[error("ingest configuration {0} accepts only RTMPS")]
    InsecureRefused(Arn),
}

impl ControlPlane {
    pub async fn create_ingest_configuration(
        &self,
        account: &Account,
        req: NewIngestConfiguration,
    ) -> Result<IngestConfiguration, DomainError> {
        check_tags("tags", &req.tags)?;
        let protocol = req.ingest_protocol.ok_or_else(|| {
            DomainError::Validation("ingestProtocol: a value is required (RTMP or RTMPS)".into())
        })?;
        let attributes = req.attributes.unwrap_or_default();
        check_attributes("attributes", &attributes)?;
        check_redundant(req.redundant_ingest)?;
        let stage = self.ingest_stage(account, req.stage_arn.as_deref()).await?;
        let arn = Arn::new(
            account,
            ResourceKind::IngestConfiguration,
            self.ids.resource_id(),
        );
        let doc = IngestDoc {
            name: req.name.unwrap_or_default(),
            ingest_protocol: protocol.as_str().into(),
            stream_key_secret: ids::new_stream_key_secret(),
            participant_id: self.ids.participant_id(),
            user_id: req.user_id,
            attributes,
            insecure_ingest: req.insecure_ingest.unwrap_or(false),
        };
        let record = ResourceRecord {
            arn,
            tags: req.tags,
            created_at: self.clock.now(),
            body: to_doc(&doc)?,
            unique_key: None,
            refers_to: stage.map(|s| s.to_string()),
            active_session_id: None,
        };
        // No quota and no unique key: only a stage deleted meanwhile can refuse it.
        self.store
            .insert_resource(&record, None)
            .await
            .map_err(stage_gone)?;
        ingest_from(record)
    }

    pub async fn get_ingest_configuration(
        &self,
        account: &Account,
        arn: &str,
    ) -> Result<IngestConfiguration, DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::IngestConfiguration)?;
        ingest_from(self.load(&arn).await?)
    }

    /// Moves the configuration to another stage, or to none with an empty ARN. A
    /// stream live now stays where it is until it ends.
    pub async fn update_ingest_configuration(
        &self,
        account: &Account,
        arn: &str,
        stage_arn: Option<String>,
        redundant_ingest: Option<bool>,
    ) -> Result<IngestConfiguration, DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::IngestConfiguration)?;
        check_redundant(redundant_ingest)?;
        let record = self.load(&arn).await?;
        let refers_to = match stage_arn {
            Some(s) => self
                .ingest_stage(account, Some(&s))
                .await?
                .map(|a| a.to_string()),
            None => record.refers_to.clone(),
        };
        if !self
            .store
            .update_resource(&arn, &record.body, refers_to.as_deref())
            .await
            .map_err(stage_gone)?
        {
            return Err(not_found(&arn));
        }
        ingest_from(ResourceRecord {
            refers_to,
            ..record
        })
    }

    /// A configuration whose stream is live is deleted only with `force`, which
    /// ends the stream first.
    pub async fn delete_ingest_configuration(
        &self,
        account: &Account,
        arn: &str,
        force: bool,
    ) -> Result<(), DomainError> {
        let arn = parse_arn(account, "arn", arn, ResourceKind::IngestConfiguration)?;
        let record = self.load(&arn).await?;
        let config = ingest_from(record)?;
        if config.state == IngestState::Active {
            if !force {
                return Err(DomainError::Conflict(format!(
                    "ingest configuration {arn} has a live stream; delete it with force to end the stream"
                )));
            }
            if let (Some(live), Some(stage)) = (
                self.live(),
                config.stage_arn.as_deref().and_then(Arn::parse),
            ) {
                live.disconnect_participant(&stage, &config.participant_id, None)
                    .await?;
            }
        }
        self.delete(&arn).await
    }

    pub async fn list_ingest_configurations(
        &self,
        account: &Account,
        filter: IngestFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<IngestConfiguration>, DomainError> {
        let page = self
            .store
            .list_ingest_configurations(account, &filter, after, limit)
            .await?;
        let items = page
            .items
            .into_iter()
            .map(ingest_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items,
            next: page.next,
        })
    }

    /// The configuration a stream key belongs to, if the key is right and the
    /// configuration can take a stream over this protocol now.
    pub async fn ingest_by_stream_key(
        &self,
        key: &str,
        secure: bool,
    ) -> Result<Result<IngestConfiguration, StreamKeyRefusal>, DomainError> {
        let Some((arn, secret)) = parse_stream_key(key) else {
            return Ok(Err(StreamKeyRefusal::Invalid));
        };
        let Some(record) = self.store.get_resource(&arn).await? else {
            return Ok(Err(StreamKeyRefusal::Invalid));
        };
        if record.arn.kind != ResourceKind::IngestConfiguration {
            return Ok(Err(StreamKeyRefusal::Invalid));
        }
        let doc: IngestDoc = from_doc(&record.body)?;
        if !bool::from(doc.stream_key_secret.as_bytes().ct_eq(secret.as_bytes())) {
            return Ok(Err(StreamKeyRefusal::Invalid));
        }
        let config = ingest_from(record)?;
        if config.stage_arn.is_none() {
            return Ok(Err(StreamKeyRefusal::NoStage(config.arn)));
        }
        if !secure && !config.insecure_ingest {
            return Ok(Err(StreamKeyRefusal::InsecureRefused(config.arn)));
        }
        Ok(Ok(config))
    }

    /// The ingest server says a configuration's stream went live in a stage
    /// session (`Some`) or ended (`None`): its state for Get and List.
    pub async fn ingest_stream_changed(
        &self,
        arn: &Arn,
        live: Option<(&Arn, &str)>,
        at: UnixMillis,
    ) -> Result<(), DomainError> {
        Ok(self.store.set_ingest_stream(arn, live, at).await?)
    }

    /// DisconnectParticipant of an ingest participant: its configuration keeps no
    /// stage, so the encoder cannot come straight back.
    pub(super) async fn detach_ingest_participant(
        &self,
        account: &Account,
        stage: &Arn,
        participant_id: &str,
    ) -> Result<(), DomainError> {
        let filter = IngestFilter {
            stage_arn: Some(stage.to_string()),
            state: None,
        };
        let mut after = None;
        loop {
            let page = self
                .store
                .list_ingest_configurations(account, &filter, after, 100)
                .await?;
            for record in page.items {
                let doc: IngestDoc = from_doc(&record.body)?;
                if doc.participant_id == participant_id {
                    self.store
                        .update_resource(&record.arn, &record.body, None)
                        .await?;
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// A stage given to a configuration: in the caller's account, existing; an
    /// empty ARN means none.
    async fn ingest_stage(
        &self,
        account: &Account,
        stage_arn: Option<&str>,
    ) -> Result<Option<Arn>, DomainError> {
        match stage_arn {
            None | Some("") => Ok(None),
            Some(s) => {
                let arn = parse_arn(account, "stageArn", s, ResourceKind::Stage)?;
                self.load(&arn).await?;
                Ok(Some(arn))
            }
        }
    }
}

/// Redundant ingest (a second key for a backup encoder) is not offered.
fn check_redundant(redundant: Option<bool>) -> Result<(), DomainError> {
    if redundant == Some(true) {
        return Err(DomainError::Validation(
            "redundantIngest: redundant ingest is not supported by onstage".into(),
        ));
    }
    Ok(())
}

/// The stage named by a write was deleted after the check.
fn stage_gone(e: StoreError) -> DomainError {
    match e {
        StoreError::MissingReference(arn) => {
            DomainError::NotFound(format!("stage {arn} does not exist"))
        }
        other => other.into(),
    }
}

/// `rt_{account}_{region}_{id}_{secret}` into the configuration's ARN and the secret.
fn parse_stream_key(key: &str) -> Option<(Arn, &str)> {
    let rest = key.strip_prefix("rt_")?;
    let mut parts = rest.splitn(4, '_');
    let account = parts.next()?;
    let region = parts.next()?;
    let id = parts.next()?;
    let secret = parts.next()?;
    let valid = |s: &str, extra: fn(char) -> bool| !s.is_empty() && s.chars().all(extra);
    if !valid(account, |c| c.is_ascii_digit())
        || !valid(region, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        })
        || !valid(id, |c| c.is_ascii_alphanumeric())
        || secret.is_empty()
    {
        return None;
    }
    let account = Account {
        id: account.into(),
        region: region.into(),
    };
    Some((
        Arn::new(&account, ResourceKind::IngestConfiguration, id),
        secret,
    ))
}

fn ingest_from(r: ResourceRecord) -> Result<IngestConfiguration, DomainError> {
    let d: IngestDoc = from_doc(&r.body)?;
    let ingest_protocol = IngestProtocol::parse(&d.ingest_protocol).ok_or_else(|| {
        DomainError::Internal(format!(
            "stored ingest protocol {:?} of {} is unknown",
            d.ingest_protocol, r.arn
        ))
    })?;
    let state = if r.active_session_id.is_some() {
        IngestState::Active
    } else {
        IngestState::Inactive
    };
    Ok(IngestConfiguration {
        stream_key: format!(
            "rt_{}_{}_{}_{}",
            r.arn.account, r.arn.region, r.arn.id, d.stream_key_secret
        ),
        arn: r.arn,
        name: d.name,
        ingest_protocol,
        stage_arn: r.refers_to,
        participant_id: d.participant_id,
        state,
        user_id: d.user_id,
        attributes: d.attributes,
        insecure_ingest: d.insecure_ingest,
        tags: r.tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_key_names_its_configuration() {
        let (arn, secret) =
            parse_stream_key("rt_123456789012_us-east-1_AbC123_s3cr3t_with_underscores")
                .expect("a well-formed key");
        assert_eq!(
            arn.to_string(),
            "arn:aws:ivs:us-east-1:123456789012:ingest-configuration/AbC123"
        );
        assert_eq!(secret, "s3cr3t_with_underscores");
    }

    #[test]
    fn malformed_stream_keys_name_nothing() {
        for key in [
            "",
            "rt_",
            "live_1_us-east-1_a_b",
            "rt_12x_us-east-1_a_b",
            "rt_1_US_a_b",
            "rt_1_us-east-1_a!_b",
            "rt_1_us-east-1_a_",
            "rt_1_us-east-1_a",
        ] {
            assert!(parse_stream_key(key).is_none(), "{key:?}");
        }
    }
}
