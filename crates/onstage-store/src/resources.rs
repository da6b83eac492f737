//! Configuration resources and secrets: the `resources` and `secrets` tables.
//!
//! Every function that checks something before writing runs on the one-connection
//! writer pool inside `BEGIN IMMEDIATE`, so the check and the write see the same
//! data. (IMMEDIATE takes SQLite's write lock at the start; a deferred transaction
//! that reads first could fail to upgrade if another process held the lock.)

use onstage_stage::StoreError;
use onstage_stage::ids::{Account, Arn, ResourceKind};
use onstage_stage::model::{IngestState, Page, Tags};
use onstage_stage::store::{
    DeleteOutcome, IngestFilter, InsertOutcome, ResourceRecord, TagOutcome,
};
use onstage_stage::time_fmt::UnixMillis;
use sqlx::Row;
use sqlx::error::ErrorKind;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use crate::sqlite::{backend, fetch_limit, page};

/// The columns `decode` reads. The running session is looked up only for stages,
/// the session a live stream is in only for ingest configurations.
macro_rules! resource_columns {
    () => {
        "r.seq, r.arn, r.tags, r.created_at, r.body, r.unique_key, r.refers_to,
         CASE r.kind
             WHEN 'stage' THEN
                 (SELECT s.session_id FROM stage_sessions s WHERE s.stage_arn = r.arn AND s.end_time IS NULL)
             WHEN 'ingest-configuration' THEN
                 (SELECT i.session_id FROM ingest_streams i WHERE i.arn = r.arn)
         END AS active_session_id"
    };
}

pub(crate) async fn insert(
    writer: &SqlitePool,
    record: &ResourceRecord,
    quota: Option<u32>,
) -> Result<InsertOutcome, StoreError> {
    let arn = record.arn.to_string();
    let kind = record.arn.kind.arn_segment();
    let body = serde_json::to_string(&record.body)?;
    let tags = serde_json::to_string(&record.tags)?;

    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(backend)?;
    let (held, duplicate): (i64, bool) = sqlx::query_as(
        "SELECT
             CASE WHEN ?5 IS NULL THEN 0 ELSE
                 (SELECT count(*) FROM resources WHERE account = ?1 AND region = ?2 AND kind = ?3)
             END,
             EXISTS (SELECT 1 FROM resources
                     WHERE account = ?1 AND region = ?2 AND kind = ?3 AND unique_key = ?4)",
    )
    .bind(&record.arn.account)
    .bind(&record.arn.region)
    .bind(kind)
    .bind(record.unique_key.as_deref())
    .bind(quota.map(i64::from))
    .fetch_one(&mut *tx)
    .await
    .map_err(backend)?;
    if duplicate {
        return Ok(InsertOutcome::DuplicateKey);
    }
    if quota.is_some_and(|quota| held >= i64::from(quota)) {
        return Ok(InsertOutcome::QuotaExceeded);
    }

    sqlx::query(
        "INSERT INTO resources (arn, account, region, kind, id, created_at, body, tags, unique_key, refers_to)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(&arn)
    .bind(&record.arn.account)
    .bind(&record.arn.region)
    .bind(kind)
    .bind(&record.arn.id)
    .bind(record.created_at)
    .bind(&body)
    .bind(&tags)
    .bind(record.unique_key.as_deref())
    .bind(record.refers_to.as_deref())
    .execute(&mut *tx)
    .await
    .map_err(|e| reference_error(e, record.refers_to.as_deref()))?;
    tx.commit().await.map_err(backend)?;
    Ok(InsertOutcome::Inserted)
}

pub(crate) async fn get(
    reader: &SqlitePool,
    arn: &Arn,
) -> Result<Option<ResourceRecord>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        resource_columns!(),
        " FROM resources r WHERE r.arn = ?1"
    ))
    .bind(arn.to_string())
    .fetch_optional(reader)
    .await
    .map_err(backend)?;
    row.as_ref().map(decode).transpose()
}

pub(crate) async fn update(
    writer: &SqlitePool,
    arn: &Arn,
    body: &serde_json::Value,
    refers_to: Option<&str>,
) -> Result<bool, StoreError> {
    let arn = arn.to_string();
    let body = serde_json::to_string(body)?;
    let done = sqlx::query("UPDATE resources SET body = ?2, refers_to = ?3 WHERE arn = ?1")
        .bind(&arn)
        .bind(&body)
        .bind(refers_to)
        .execute(writer)
        .await
        .map_err(|e| reference_error(e, refers_to))?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn delete(writer: &SqlitePool, arn: &Arn) -> Result<DeleteOutcome, StoreError> {
    let arn = arn.to_string();
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(backend)?;
    let (exists, user): (bool, Option<String>) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM resources WHERE arn = ?1),
                (SELECT arn FROM resources WHERE refers_to = ?1 AND arn <> ?1 ORDER BY seq LIMIT 1)",
    )
    .bind(&arn)
    .fetch_one(&mut *tx)
    .await
    .map_err(backend)?;
    if !exists {
        return Ok(DeleteOutcome::NotFound);
    }
    if let Some(user) = user {
        return Ok(DeleteOutcome::InUseBy(user));
    }
    // Foreign keys cascade the rest: a stage's sessions, their participants and
    // events, and the replications whose source it is (see the migration).
    sqlx::query("DELETE FROM resources WHERE arn = ?1")
        .bind(&arn)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(DeleteOutcome::Deleted)
}

pub(crate) async fn list(
    reader: &SqlitePool,
    account: &Account,
    kind: ResourceKind,
    after: Option<i64>,
    limit: u32,
) -> Result<Page<ResourceRecord>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        resource_columns!(),
        " FROM resources r
          WHERE r.account = ?1 AND r.region = ?2 AND r.kind = ?3 AND r.seq > ?4
          ORDER BY r.seq LIMIT ?5"
    ))
    .bind(&account.id)
    .bind(&account.region)
    .bind(kind.arn_segment())
    .bind(after.unwrap_or(0))
    .bind(fetch_limit(limit))
    .fetch_all(reader)
    .await
    .map_err(backend)?;
    resource_page(&rows, limit)
}

/// A page of resources from rows of `resource_columns!()` in `seq` order.
fn resource_page(
    rows: &[sqlx::sqlite::SqliteRow],
    limit: u32,
) -> Result<Page<ResourceRecord>, StoreError> {
    let rows = rows
        .iter()
        .map(|row| Ok((row.try_get("seq").map_err(backend)?, decode(row)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(page(rows, limit))
}

pub(crate) async fn list_ingest(
    reader: &SqlitePool,
    account: &Account,
    filter: &IngestFilter,
    after: Option<i64>,
    limit: u32,
) -> Result<Page<ResourceRecord>, StoreError> {
    let live = filter.state.map(|s| s == IngestState::Active);
    let rows = sqlx::query(concat!(
        "SELECT ",
        resource_columns!(),
        " FROM resources r
          WHERE r.account = ?1 AND r.region = ?2 AND r.kind = ?3 AND r.seq > ?4
            AND (?6 IS NULL OR r.refers_to = ?6)
            AND (?7 IS NULL OR EXISTS (SELECT 1 FROM ingest_streams i WHERE i.arn = r.arn) = ?7)
          ORDER BY r.seq LIMIT ?5"
    ))
    .bind(&account.id)
    .bind(&account.region)
    .bind(ResourceKind::IngestConfiguration.arn_segment())
    .bind(after.unwrap_or(0))
    .bind(fetch_limit(limit))
    .bind(filter.stage_arn.as_deref())
    .bind(live)
    .fetch_all(reader)
    .await
    .map_err(backend)?;
    resource_page(&rows, limit)
}

pub(crate) async fn release_references(
    writer: &SqlitePool,
    target: &Arn,
    kind: ResourceKind,
) -> Result<u64, StoreError> {
    let done =
        sqlx::query("UPDATE resources SET refers_to = NULL WHERE refers_to = ?1 AND kind = ?2")
            .bind(target.to_string())
            .bind(kind.arn_segment())
            .execute(writer)
            .await
            .map_err(backend)?;
    Ok(done.rows_affected())
}

pub(crate) async fn set_ingest_stream(
    writer: &SqlitePool,
    arn: &Arn,
    live: Option<(&Arn, &str)>,
    at: UnixMillis,
) -> Result<(), StoreError> {
    let arn = arn.to_string();
    match live {
        // A configuration deleted meanwhile has no row to refer to: nothing to record.
        Some((stage, session_id)) => sqlx::query(
            "INSERT INTO ingest_streams (arn, stage_arn, session_id, started_at)
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM resources WHERE arn = ?1)
             ON CONFLICT (arn) DO UPDATE SET stage_arn = excluded.stage_arn,
                 session_id = excluded.session_id, started_at = excluded.started_at",
        )
        .bind(&arn)
        .bind(stage.to_string())
        .bind(session_id)
        .bind(at)
        .execute(writer)
        .await
        .map_err(backend)?,
        None => sqlx::query("DELETE FROM ingest_streams WHERE arn = ?1")
            .bind(&arn)
            .execute(writer)
            .await
            .map_err(backend)?,
    };
    Ok(())
}

pub(crate) async fn change_tags(
    writer: &SqlitePool,
    arn: &Arn,
    add: &Tags,
    remove: &[String],
    max_tags: usize,
) -> Result<TagOutcome, StoreError> {
    let arn = arn.to_string();
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(backend)?;
    let stored: Option<String> = sqlx::query_scalar("SELECT tags FROM resources WHERE arn = ?1")
        .bind(&arn)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    let Some(stored) = stored else {
        return Ok(TagOutcome::NotFound);
    };
    let mut tags = decode_tags(&arn, &stored)?;
    tags.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
    for key in remove {
        tags.remove(key);
    }
    if tags.len() > max_tags {
        return Ok(TagOutcome::TooMany);
    }
    sqlx::query("UPDATE resources SET tags = ?2 WHERE arn = ?1")
        .bind(&arn)
        .bind(serde_json::to_string(&tags)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(TagOutcome::Changed)
}

/// The first caller's candidate wins, on this node and every other one sharing the
/// database; the secret is never replaced.
pub(crate) async fn secret(
    writer: &SqlitePool,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let mut conn = writer.acquire().await.map_err(backend)?;
    sqlx::query("INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)")
        .bind(name)
        .bind(candidate)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    sqlx::query_scalar("SELECT value FROM secrets WHERE name = ?1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)
}

fn decode(row: &SqliteRow) -> Result<ResourceRecord, StoreError> {
    let arn_text: &str = row.try_get("arn").map_err(backend)?;
    let arn = Arn::parse(arn_text)
        .ok_or_else(|| StoreError::Corrupt(format!("stored ARN {arn_text:?} is not an ARN")))?;
    let tags = decode_tags(arn_text, row.try_get("tags").map_err(backend)?)?;
    let body = serde_json::from_str(row.try_get("body").map_err(backend)?)
        .map_err(|e| StoreError::Corrupt(format!("document of {arn_text}: {e}")))?;
    Ok(ResourceRecord {
        tags,
        created_at: row.try_get("created_at").map_err(backend)?,
        body,
        unique_key: row.try_get("unique_key").map_err(backend)?,
        refers_to: row.try_get("refers_to").map_err(backend)?,
        active_session_id: row.try_get("active_session_id").map_err(backend)?,
        arn,
    })
}

fn decode_tags(arn: &str, json: &str) -> Result<Tags, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("tags of {arn}: {e}")))
}

/// A foreign-key failure on insert or update means the referenced resource was
/// deleted after the domain checked it; say so instead of quoting SQLite.
fn reference_error(e: sqlx::Error, refers_to: Option<&str>) -> StoreError {
    match (&e, refers_to) {
        (sqlx::Error::Database(db), Some(target))
            if db.kind() == ErrorKind::ForeignKeyViolation =>
        {
            StoreError::MissingReference(target.to_owned())
        }
        _ => backend(e),
    }
}
