//! The writes of the live plane: sessions starting and ending, participant records,
//! participant events, revocations and replications, each batch in one transaction
//! on the writer,
//! and the clean-up of what a previous process left running.

use onstage_stage::StoreError;
use onstage_stage::ids::{Account, Arn};
use onstage_stage::model::{
    EventErrorCode, EventName, Participant, ParticipantEvent, ParticipantState, RecordingPlace,
    ReplicationState, StopReason,
};
use onstage_stage::store::{InterruptedSessions, LiveWrite};
use onstage_stage::time_fmt::UnixMillis;
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};

use crate::sqlite::backend;

/// What a previous process left running is recorded as stopped for this reason.
pub(crate) const RESTART_REASON: StopReason = StopReason::ServerRestarted;

pub(crate) async fn write(
    writer: &SqlitePool,
    stage: &Arn,
    writes: &[LiveWrite],
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let stage_arn = stage.to_string();
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(backend)?;
    // A stage deleted while its last connections closed: its history went with it.
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM resources WHERE arn = ?1)")
        .bind(&stage_arn)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    if !exists {
        return Ok(());
    }
    for w in writes {
        apply(&mut tx, &stage_arn, w).await?;
    }
    tx.commit().await.map_err(backend)
}

async fn apply(
    tx: &mut Transaction<'_, Sqlite>,
    stage_arn: &str,
    w: &LiveWrite,
) -> Result<(), StoreError> {
    match w {
        LiveWrite::StartSession {
            session_id,
            start_time,
        } => {
            sqlx::query("INSERT INTO stage_sessions (stage_arn, session_id, start_time) VALUES (?1, ?2, ?3)")
                .bind(stage_arn)
                .bind(session_id)
                .bind(start_time)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
        }
        LiveWrite::EndSession {
            session_id,
            end_time,
        } => {
            sqlx::query(
                "UPDATE stage_sessions SET end_time = max(?3, start_time)
                 WHERE stage_arn = ?1 AND session_id = ?2 AND end_time IS NULL",
            )
            .bind(stage_arn)
            .bind(session_id)
            .bind(end_time)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        }
        LiveWrite::UpsertParticipant {
            session_id,
            participant,
        } => upsert_participant(tx, stage_arn, session_id, participant).await?,
        LiveWrite::AppendEvent { session_id, event } => {
            append_event(tx, stage_arn, session_id, event).await?
        }
        LiveWrite::RevokeParticipant {
            participant_id,
            reason,
            at,
        } => {
            sqlx::query(
                "INSERT INTO revoked_participants (stage_arn, participant_id, reason, revoked_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stage_arn, participant_id) DO UPDATE SET reason = excluded.reason, revoked_at = excluded.revoked_at",
            )
            .bind(stage_arn)
            .bind(participant_id)
            .bind(reason.as_deref())
            .bind(at)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        }
        LiveWrite::StartReplication {
            participant_id,
            source_session_id,
            destination_stage_arn,
            destination_session_id,
        } => {
            sqlx::query(
                "INSERT INTO participant_replicas (source_stage_arn, participant_id, source_session_id,
                                                   destination_stage_arn, destination_session_id, replication_state)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'ACTIVE')",
            )
            .bind(stage_arn)
            .bind(participant_id)
            .bind(source_session_id)
            .bind(destination_stage_arn)
            .bind(destination_session_id)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        }
        LiveWrite::StopReplication {
            participant_id,
            destination_stage_arn,
            reason,
        } => {
            sqlx::query(
                "UPDATE participant_replicas SET replication_state = 'STOPPED', reason = ?4
                 WHERE source_stage_arn = ?1 AND participant_id = ?2 AND destination_stage_arn = ?3
                   AND replication_state = 'ACTIVE'",
            )
            .bind(stage_arn)
            .bind(participant_id)
            .bind(destination_stage_arn)
            .bind(reason.as_str())
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        }
        LiveWrite::SetRecording {
            session_id,
            participant_id,
            state,
            place,
        } => {
            sqlx::query(
                "UPDATE participants SET recording_state = ?4,
                     recording_s3_bucket_name = coalesce(?5, recording_s3_bucket_name),
                     recording_s3_prefix = coalesce(?6, recording_s3_prefix)
                 WHERE stage_arn = ?1 AND session_id = ?2 AND participant_id = ?3",
            )
            .bind(stage_arn)
            .bind(session_id)
            .bind(participant_id)
            .bind(state.as_str())
            .bind(place.as_ref().map(|p| p.bucket.as_str()))
            .bind(place.as_ref().map(|p| p.prefix.as_str()))
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        }
        LiveWrite::SetReplicationState {
            session_id,
            participant_id,
            replication_type,
            replication_state,
        } => {
            sqlx::query(
                "UPDATE participants SET replication_type = ?4, replication_state = ?5
                 WHERE stage_arn = ?1 AND session_id = ?2 AND participant_id = ?3",
            )
            .bind(stage_arn)
            .bind(session_id)
            .bind(participant_id)
            .bind(replication_type.as_str())
            .bind(replication_state.map(ReplicationState::as_str))
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        }
    }
    Ok(())
}

async fn upsert_participant(
    tx: &mut Transaction<'_, Sqlite>,
    stage_arn: &str,
    session_id: &str,
    p: &Participant,
) -> Result<(), StoreError> {
    let attributes = serde_json::to_string(&p.attributes)?;
    let client = serde_json::to_string(&p.client)?;
    sqlx::query(
        "INSERT INTO participants (stage_arn, session_id, participant_id, user_id, state, first_join_time,
                                   attributes, published, client, recording_state, protocol,
                                   replication_type, replication_state, source_stage_arn, source_session_id,
                                   ingest_configuration_arn)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (stage_arn, session_id, participant_id) DO UPDATE SET
             user_id = excluded.user_id,
             state = excluded.state,
             attributes = excluded.attributes,
             published = participants.published OR excluded.published,
             client = excluded.client,
             protocol = excluded.protocol,
             replication_type = excluded.replication_type,
             replication_state = excluded.replication_state,
             source_stage_arn = excluded.source_stage_arn,
             source_session_id = excluded.source_session_id,
             ingest_configuration_arn = excluded.ingest_configuration_arn",
    )
    .bind(stage_arn)
    .bind(session_id)
    .bind(&p.participant_id)
    .bind(p.user_id.as_deref())
    .bind(p.state.as_str())
    .bind(p.first_join_time)
    .bind(&attributes)
    .bind(p.published)
    .bind(&client)
    .bind(p.recording_state.as_str())
    .bind(p.protocol.as_str())
    .bind(p.replication_type.as_str())
    .bind(p.replication_state.map(ReplicationState::as_str))
    .bind(p.source_stage_arn.as_deref())
    .bind(p.source_session_id.as_deref())
    .bind(p.ingest_configuration_arn.as_deref())
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn append_event(
    tx: &mut Transaction<'_, Sqlite>,
    stage_arn: &str,
    session_id: &str,
    e: &ParticipantEvent,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO participant_events (stage_arn, session_id, participant_id, name, event_time,
                                         remote_participant_id, error_code, destination_stage_arn,
                                         destination_session_id, replica)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(stage_arn)
    .bind(session_id)
    .bind(&e.participant_id)
    .bind(e.name.as_str())
    .bind(e.event_time)
    .bind(e.remote_participant_id.as_deref())
    .bind(e.error_code.map(EventErrorCode::as_str))
    .bind(e.destination_stage_arn.as_deref())
    .bind(e.destination_session_id.as_deref())
    .bind(e.replica)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

pub(crate) async fn is_revoked(
    reader: &SqlitePool,
    stage: &Arn,
    participant_id: &str,
) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revoked_participants WHERE stage_arn = ?1 AND participant_id = ?2)")
        .bind(stage.to_string())
        .bind(participant_id)
        .fetch_one(reader)
        .await
        .map_err(backend)
}

/// RevokeConnectionToken: a later revocation of the same id moves its time on.
pub(crate) async fn revoke_token(
    writer: &SqlitePool,
    account: &Account,
    token_id: &str,
    at: UnixMillis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revoked_tokens (account_id, region, token_id, revoked_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (account_id, region, token_id) DO UPDATE SET revoked_at = max(revoked_at, excluded.revoked_at)",
    )
    .bind(&account.id)
    .bind(&account.region)
    .bind(token_id)
    .bind(at)
    .execute(writer)
    .await
    .map_err(backend)?;
    Ok(())
}

pub(crate) async fn token_revoked_at(
    reader: &SqlitePool,
    account: &Account,
    token_id: &str,
) -> Result<Option<UnixMillis>, StoreError> {
    sqlx::query_scalar(
        "SELECT revoked_at FROM revoked_tokens WHERE account_id = ?1 AND region = ?2 AND token_id = ?3",
    )
    .bind(&account.id)
    .bind(&account.region)
    .bind(token_id)
    .fetch_optional(reader)
    .await
    .map_err(backend)
}

/// Nobody is connected when a process starts: every participant still marked
/// connected gets its `LEFT` and is disconnected, every running session ends at `at`
/// (never before it started), and every active replication stops.
pub(crate) async fn close_interrupted(
    writer: &SqlitePool,
    at: UnixMillis,
) -> Result<InterruptedSessions, StoreError> {
    let connected = ParticipantState::Connected.as_str();
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(backend)?;
    sqlx::query(
        "INSERT INTO participant_events (stage_arn, session_id, participant_id, name, event_time, replica)
         SELECT stage_arn, session_id, participant_id, ?2, max(?3, first_join_time), replication_type = 'REPLICA'
         FROM participants WHERE state = ?1 ORDER BY seq",
    )
    .bind(connected)
    .bind(EventName::Left.as_str())
    .bind(at)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    let participants = sqlx::query("UPDATE participants SET state = ?2 WHERE state = ?1")
        .bind(connected)
        .bind(ParticipantState::Disconnected.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
    // A recording the previous process was writing ended with it (BEHAVIOUR §9.7).
    let running = sqlx::query(
        "SELECT DISTINCT recording_s3_bucket_name AS bucket, recording_s3_prefix AS prefix
         FROM participants
         WHERE recording_state IN ('STARTING', 'ACTIVE', 'STOPPING')
           AND recording_s3_bucket_name IS NOT NULL AND recording_s3_prefix IS NOT NULL",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(backend)?;
    let mut recordings = Vec::with_capacity(running.len());
    for row in &running {
        recordings.push(RecordingPlace {
            bucket: sqlx::Row::try_get(row, "bucket").map_err(backend)?,
            prefix: sqlx::Row::try_get(row, "prefix").map_err(backend)?,
        });
    }
    sqlx::query(
        "UPDATE participants SET recording_state = 'FAILED'
         WHERE recording_state IN ('STARTING', 'ACTIVE', 'STOPPING')",
    )
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    // Also a source participant that had left inside its reconnect window.
    sqlx::query(
        "UPDATE participants SET replication_state = 'STOPPED' WHERE replication_state = 'ACTIVE'",
    )
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    let sessions = sqlx::query(
        "UPDATE stage_sessions SET end_time = max(?1, start_time) WHERE end_time IS NULL",
    )
    .bind(at)
    .execute(&mut *tx)
    .await
    .map_err(backend)?
    .rows_affected();
    let replications = sqlx::query(
        "UPDATE participant_replicas SET replication_state = 'STOPPED', reason = ?1 WHERE replication_state = 'ACTIVE'",
    )
    .bind(RESTART_REASON.as_str())
    .execute(&mut *tx)
    .await
    .map_err(backend)?
    .rows_affected();
    // No encoder is connected either.
    sqlx::query("DELETE FROM ingest_streams")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(InterruptedSessions {
        sessions,
        participants,
        replications,
        recordings,
    })
}
