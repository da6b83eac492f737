//! What happens on stages: sessions, participants, participant events and
//! replications. The media plane writes these tables; the control plane only reads
//! them, so this module has reads only.
//!
//! Sessions and events are listed newest first, so their cursor means "older than";
//! participants and replicas oldest first, so theirs means "newer than".

use onstage_stage::StoreError;
use onstage_stage::ids::Arn;
use onstage_stage::model::{
    Attributes, ClientAttributes, EventErrorCode, EventName, Page, Participant, ParticipantEvent,
    ParticipantFilter, ParticipantProtocol, ParticipantReplica, ParticipantState, RecordingPlace,
    RecordingState, ReplicationState, ReplicationType, StageSession,
};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use crate::sqlite::{backend, fetch_limit, page};

pub(crate) async fn list_sessions(
    reader: &SqlitePool,
    stage: &Arn,
    after: Option<i64>,
    limit: u32,
) -> Result<Page<StageSession>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, session_id, start_time, end_time FROM stage_sessions
         WHERE stage_arn = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
    )
    .bind(stage.to_string())
    .bind(after.unwrap_or(i64::MAX))
    .bind(fetch_limit(limit))
    .fetch_all(reader)
    .await
    .map_err(backend)?;
    Ok(page(with_seq(&rows, decode_session)?, limit))
}

pub(crate) async fn get_session(
    reader: &SqlitePool,
    stage: &Arn,
    session_id: &str,
) -> Result<Option<StageSession>, StoreError> {
    let row = sqlx::query("SELECT session_id, start_time, end_time FROM stage_sessions WHERE stage_arn = ?1 AND session_id = ?2")
        .bind(stage.to_string())
        .bind(session_id)
        .fetch_optional(reader)
        .await
        .map_err(backend)?;
    row.as_ref().map(decode_session).transpose()
}

macro_rules! participant_columns {
    () => {
        "seq, participant_id, user_id, state, first_join_time, attributes, published, client,
         recording_state, recording_s3_bucket_name, recording_s3_prefix, protocol, replication_type,
         replication_state, source_stage_arn, source_session_id, ingest_configuration_arn"
    };
}

/// `ListParticipants` with its filter, one statement per filter so that each is a
/// plain prepared statement on the session index.
macro_rules! list_participants_sql {
    ($filter:literal) => {
        concat!(
            "SELECT ",
            participant_columns!(),
            " FROM participants WHERE stage_arn = ?1 AND session_id = ?2 AND seq > ?3",
            $filter,
            " ORDER BY seq LIMIT ?4"
        )
    };
}

pub(crate) async fn list_participants(
    reader: &SqlitePool,
    stage: &Arn,
    session_id: &str,
    filter: &ParticipantFilter,
    after: Option<i64>,
    limit: u32,
) -> Result<Page<Participant>, StoreError> {
    let sql = match filter {
        ParticipantFilter::None => list_participants_sql!(""),
        ParticipantFilter::UserId(_) => list_participants_sql!(" AND user_id = ?5"),
        ParticipantFilter::Published(_) => list_participants_sql!(" AND published = ?5"),
        ParticipantFilter::State(_) => list_participants_sql!(" AND state = ?5"),
        ParticipantFilter::RecordingState(_) => list_participants_sql!(" AND recording_state = ?5"),
    };
    let query = sqlx::query(sql)
        .bind(stage.to_string())
        .bind(session_id)
        .bind(after.unwrap_or(0))
        .bind(fetch_limit(limit));
    let query = match filter {
        ParticipantFilter::None => query,
        ParticipantFilter::UserId(user_id) => query.bind(user_id.as_str()),
        ParticipantFilter::Published(published) => query.bind(*published),
        ParticipantFilter::State(state) => query.bind(state.as_str()),
        ParticipantFilter::RecordingState(recording_state) => query.bind(recording_state.as_str()),
    };
    let rows = query.fetch_all(reader).await.map_err(backend)?;
    Ok(page(with_seq(&rows, decode_participant)?, limit))
}

pub(crate) async fn get_participant(
    reader: &SqlitePool,
    stage: &Arn,
    session_id: &str,
    participant_id: &str,
) -> Result<Option<Participant>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        participant_columns!(),
        " FROM participants WHERE stage_arn = ?1 AND session_id = ?2 AND participant_id = ?3"
    ))
    .bind(stage.to_string())
    .bind(session_id)
    .bind(participant_id)
    .fetch_optional(reader)
    .await
    .map_err(backend)?;
    row.as_ref().map(decode_participant).transpose()
}

pub(crate) async fn list_events(
    reader: &SqlitePool,
    stage: &Arn,
    session_id: &str,
    participant_id: &str,
    after: Option<i64>,
    limit: u32,
) -> Result<Page<ParticipantEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, name, participant_id, event_time, remote_participant_id, error_code,
                destination_stage_arn, destination_session_id, replica
         FROM participant_events
         WHERE stage_arn = ?1 AND session_id = ?2 AND participant_id = ?3 AND seq < ?4
         ORDER BY seq DESC LIMIT ?5",
    )
    .bind(stage.to_string())
    .bind(session_id)
    .bind(participant_id)
    .bind(after.unwrap_or(i64::MAX))
    .bind(fetch_limit(limit))
    .fetch_all(reader)
    .await
    .map_err(backend)?;
    Ok(page(with_seq(&rows, decode_event)?, limit))
}

pub(crate) async fn list_replicas(
    reader: &SqlitePool,
    source_stage: &Arn,
    participant_id: &str,
    after: Option<i64>,
    limit: u32,
) -> Result<Page<ParticipantReplica>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, source_stage_arn, participant_id, source_session_id, destination_stage_arn,
                destination_session_id, replication_state
         FROM participant_replicas
         WHERE source_stage_arn = ?1 AND participant_id = ?2 AND seq > ?3
         ORDER BY seq LIMIT ?4",
    )
    .bind(source_stage.to_string())
    .bind(participant_id)
    .bind(after.unwrap_or(0))
    .bind(fetch_limit(limit))
    .fetch_all(reader)
    .await
    .map_err(backend)?;
    Ok(page(with_seq(&rows, decode_replica)?, limit))
}

fn with_seq<T>(
    rows: &[SqliteRow],
    decode: fn(&SqliteRow) -> Result<T, StoreError>,
) -> Result<Vec<(i64, T)>, StoreError> {
    rows.iter()
        .map(|row| Ok((row.try_get("seq").map_err(backend)?, decode(row)?)))
        .collect()
}

fn decode_session(row: &SqliteRow) -> Result<StageSession, StoreError> {
    Ok(StageSession {
        session_id: row.try_get("session_id").map_err(backend)?,
        start_time: row.try_get("start_time").map_err(backend)?,
        end_time: row.try_get("end_time").map_err(backend)?,
    })
}

fn decode_participant(row: &SqliteRow) -> Result<Participant, StoreError> {
    let participant_id: String = row.try_get("participant_id").map_err(backend)?;
    let state: &str = row.try_get("state").map_err(backend)?;
    let state = ParticipantState::parse(state).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "participant {participant_id} has unknown state {state:?}"
        ))
    })?;
    let attributes: Attributes = serde_json::from_str(row.try_get("attributes").map_err(backend)?)
        .map_err(|e| {
            StoreError::Corrupt(format!("attributes of participant {participant_id}: {e}"))
        })?;
    let client: ClientAttributes = serde_json::from_str(row.try_get("client").map_err(backend)?)
        .map_err(|e| {
            StoreError::Corrupt(format!(
                "client attributes of participant {participant_id}: {e}"
            ))
        })?;
    Ok(Participant {
        user_id: row.try_get("user_id").map_err(backend)?,
        state,
        first_join_time: row.try_get("first_join_time").map_err(backend)?,
        attributes,
        published: row.try_get("published").map_err(backend)?,
        client,
        recording_state: named(row, "recording_state", RecordingState::parse)?,
        recording: match (
            row.try_get::<Option<String>, _>("recording_s3_bucket_name")
                .map_err(backend)?,
            row.try_get::<Option<String>, _>("recording_s3_prefix")
                .map_err(backend)?,
        ) {
            (Some(bucket), Some(prefix)) => Some(RecordingPlace { bucket, prefix }),
            _ => None,
        },
        protocol: named(row, "protocol", ParticipantProtocol::parse)?,
        ingest_configuration_arn: row.try_get("ingest_configuration_arn").map_err(backend)?,
        replication_type: named(row, "replication_type", ReplicationType::parse)?,
        replication_state: optional_named(row, "replication_state", ReplicationState::parse)?,
        source_stage_arn: row.try_get("source_stage_arn").map_err(backend)?,
        source_session_id: row.try_get("source_session_id").map_err(backend)?,
        participant_id,
    })
}

fn decode_event(row: &SqliteRow) -> Result<ParticipantEvent, StoreError> {
    Ok(ParticipantEvent {
        name: named(row, "name", EventName::parse)?,
        participant_id: row.try_get("participant_id").map_err(backend)?,
        event_time: row.try_get("event_time").map_err(backend)?,
        remote_participant_id: row.try_get("remote_participant_id").map_err(backend)?,
        error_code: optional_named(row, "error_code", EventErrorCode::parse)?,
        destination_stage_arn: row.try_get("destination_stage_arn").map_err(backend)?,
        destination_session_id: row.try_get("destination_session_id").map_err(backend)?,
        replica: row.try_get("replica").map_err(backend)?,
    })
}

fn decode_replica(row: &SqliteRow) -> Result<ParticipantReplica, StoreError> {
    Ok(ParticipantReplica {
        source_stage_arn: row.try_get("source_stage_arn").map_err(backend)?,
        participant_id: row.try_get("participant_id").map_err(backend)?,
        source_session_id: row.try_get("source_session_id").map_err(backend)?,
        destination_stage_arn: row.try_get("destination_stage_arn").map_err(backend)?,
        destination_session_id: row.try_get("destination_session_id").map_err(backend)?,
        replication_state: named(row, "replication_state", ReplicationState::parse)?,
    })
}

/// A column holding one of the model's names; anything else is corrupt data.
fn named<T>(row: &SqliteRow, column: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    let text: String = row.try_get(column).map_err(backend)?;
    parse(&text).ok_or_else(|| StoreError::Corrupt(format!("unknown {column} {text:?}")))
}

fn optional_named<T>(
    row: &SqliteRow,
    column: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>, StoreError> {
    let text: Option<String> = row.try_get(column).map_err(backend)?;
    text.map(|t| parse(&t).ok_or_else(|| StoreError::Corrupt(format!("unknown {column} {t:?}"))))
        .transpose()
}
