//! Opening the database and the shape of its connection pools.
//!
//! SQLite allows one writer at a time. Rather than let writers race for the file
//! lock (and retry on `SQLITE_BUSY`), every write goes through a pool of exactly one
//! connection: writes queue in the pool, and a check made inside a write transaction
//! (a quota, a unique key, "in use by") cannot be invalidated by another write
//! before the transaction commits. Reads go through their own pool; in WAL mode they
//! run alongside the writer and each other and always see committed data.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use onstage_stage::StoreError;
use onstage_stage::ids::{Account, Arn, ResourceKind};
use onstage_stage::model::{
    Page, Participant, ParticipantEvent, ParticipantFilter, ParticipantReplica, StageSession, Tags,
};
use onstage_stage::store::{
    DeleteOutcome, IngestFilter, InsertOutcome, InterruptedSessions, LiveWrite, ResourceRecord,
    Store, TagOutcome,
};
use onstage_stage::time_fmt::UnixMillis;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{live, live_writes, resources};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "onstage.db";

/// Concurrent readers. More than the cores of a small machine buys nothing: a read
/// is a few microseconds of CPU once its pages are cached.
const READ_CONNECTIONS: u32 = 4;

/// How long a connection waits for SQLite's file lock before failing. Only another
/// process (a backup tool, the sqlite3 shell) can hold it that long.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, in order. Versions are recorded in `_sqlx_migrations` with a
/// checksum, so an edited migration is refused rather than silently skipped.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial schema",
        include_str!("../migrations/0001_initial.sql"),
    ),
    (
        2,
        "live plane",
        include_str!("../migrations/0002_live_plane.sql"),
    ),
    (
        3,
        "replication",
        include_str!("../migrations/0003_replication.sql"),
    ),
    (
        4,
        "token revocations",
        include_str!("../migrations/0004_token_revocations.sql"),
    ),
    (
        5,
        "participant recording",
        include_str!("../migrations/0005_participant_recording.sql"),
    ),
    (
        6,
        "ingest configurations",
        include_str!("../migrations/0006_ingest.sql"),
    ),
];

/// The [`Store`] on SQLite. Cheap to clone: clones share the pools.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Exactly one connection; every write goes here.
    pub(crate) writer: SqlitePool,
    /// Reads only. For an in-memory database this is the writer pool itself.
    pub(crate) reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/onstage.db` and brings its schema up
    /// to date.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let file: PathBuf = data_dir.join(DATABASE_FILE);
        let dir = data_dir.to_owned();
        let db = file.clone();
        tokio::task::spawn_blocking(move || crate::private::prepare(&dir, &db))
            .await
            .map_err(|e| StoreError::Backend(format!("preparing the data directory: {e}")))??;

        let common = SqliteConnectOptions::new()
            .filename(&file)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // NORMAL is durable against a crash of the process in WAL mode; only a power
        // loss can lose the last commits, and it cannot corrupt the file.
        let writer_options = common
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let writer = pool_options(1)
            .connect_with(writer_options)
            .await
            .map_err(backend)?;
        migrate(&writer).await?;

        // Opened after the writer has switched the file to WAL, which is persistent.
        let reader_options = common.read_only(true);
        let reader = pool_options(READ_CONNECTIONS)
            .connect_with(reader_options)
            .await
            .map_err(backend)?;

        tracing::info!(path = %file.display(), "opened the SQLite store");
        Ok(SqliteStore { writer, reader })
    }

    /// A store that lives only as long as this value and its clones: for tests.
    ///
    /// Separate connections to `:memory:` would be separate databases, so reads and
    /// writes share the single connection.
    pub async fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(backend)?
            .foreign_keys(true);
        let pool = pool_options(1)
            .connect_with(options)
            .await
            .map_err(backend)?;
        migrate(&pool).await?;
        Ok(SqliteStore {
            writer: pool.clone(),
            reader: pool,
        })
    }

    /// Waits for running queries and closes every connection, checkpointing the
    /// write-ahead log into the database file.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Connections are kept for the life of the store: a closed connection would lose
/// its prepared statements (and, in memory, the whole database).
fn pool_options(connections: u32) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(connections)
        .min_connections(connections)
        .idle_timeout(None)
        .max_lifetime(None)
        // SQLite connections do not go stale the way network connections do.
        .test_before_acquire(false)
}

async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                description.into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
        .run(pool)
        .await
        .map_err(|e| StoreError::Backend(format!("cannot migrate the database schema: {e}")))
}

pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_resource(
        &self,
        record: &ResourceRecord,
        quota: Option<u32>,
    ) -> Result<InsertOutcome, StoreError> {
        resources::insert(&self.writer, record, quota).await
    }

    async fn get_resource(&self, arn: &Arn) -> Result<Option<ResourceRecord>, StoreError> {
        resources::get(&self.reader, arn).await
    }

    async fn list_ingest_configurations(
        &self,
        account: &Account,
        filter: &IngestFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ResourceRecord>, StoreError> {
        resources::list_ingest(&self.reader, account, filter, after, limit).await
    }

    async fn release_references(
        &self,
        target: &Arn,
        kind: ResourceKind,
    ) -> Result<u64, StoreError> {
        resources::release_references(&self.writer, target, kind).await
    }

    async fn set_ingest_stream(
        &self,
        arn: &Arn,
        live: Option<(&Arn, &str)>,
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        resources::set_ingest_stream(&self.writer, arn, live, at).await
    }

    async fn update_resource(
        &self,
        arn: &Arn,
        body: &serde_json::Value,
        refers_to: Option<&str>,
    ) -> Result<bool, StoreError> {
        resources::update(&self.writer, arn, body, refers_to).await
    }

    async fn delete_resource(&self, arn: &Arn) -> Result<DeleteOutcome, StoreError> {
        resources::delete(&self.writer, arn).await
    }

    async fn list_resources(
        &self,
        account: &Account,
        kind: ResourceKind,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ResourceRecord>, StoreError> {
        resources::list(&self.reader, account, kind, after, limit).await
    }

    async fn change_tags(
        &self,
        arn: &Arn,
        add: &Tags,
        remove: &[String],
        max_tags: usize,
    ) -> Result<TagOutcome, StoreError> {
        resources::change_tags(&self.writer, arn, add, remove, max_tags).await
    }

    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        resources::secret(&self.writer, name, candidate).await
    }

    async fn list_sessions(
        &self,
        stage: &Arn,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<StageSession>, StoreError> {
        live::list_sessions(&self.reader, stage, after, limit).await
    }

    async fn get_session(
        &self,
        stage: &Arn,
        session_id: &str,
    ) -> Result<Option<StageSession>, StoreError> {
        live::get_session(&self.reader, stage, session_id).await
    }

    async fn list_participants(
        &self,
        stage: &Arn,
        session_id: &str,
        filter: &ParticipantFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<Participant>, StoreError> {
        live::list_participants(&self.reader, stage, session_id, filter, after, limit).await
    }

    async fn get_participant(
        &self,
        stage: &Arn,
        session_id: &str,
        participant_id: &str,
    ) -> Result<Option<Participant>, StoreError> {
        live::get_participant(&self.reader, stage, session_id, participant_id).await
    }

    async fn list_events(
        &self,
        stage: &Arn,
        session_id: &str,
        participant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ParticipantEvent>, StoreError> {
        live::list_events(
            &self.reader,
            stage,
            session_id,
            participant_id,
            after,
            limit,
        )
        .await
    }

    async fn list_replicas(
        &self,
        source_stage: &Arn,
        participant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ParticipantReplica>, StoreError> {
        live::list_replicas(&self.reader, source_stage, participant_id, after, limit).await
    }

    async fn write_live(&self, stage: &Arn, writes: &[LiveWrite]) -> Result<(), StoreError> {
        live_writes::write(&self.writer, stage, writes).await
    }

    async fn is_participant_revoked(
        &self,
        stage: &Arn,
        participant_id: &str,
    ) -> Result<bool, StoreError> {
        live_writes::is_revoked(&self.reader, stage, participant_id).await
    }

    async fn close_interrupted_sessions(
        &self,
        at: UnixMillis,
    ) -> Result<InterruptedSessions, StoreError> {
        live_writes::close_interrupted(&self.writer, at).await
    }

    async fn revoke_token(
        &self,
        account: &Account,
        token_id: &str,
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        live_writes::revoke_token(&self.writer, account, token_id, at).await
    }

    async fn token_revoked_at(
        &self,
        account: &Account,
        token_id: &str,
    ) -> Result<Option<UnixMillis>, StoreError> {
        live_writes::token_revoked_at(&self.reader, account, token_id).await
    }
}

/// Builds a page from up to `limit + 1` rows fetched in list order: the extra row
/// only says that more follow, and the cursor is the position of the last row kept.
pub(crate) fn page<T>(mut rows: Vec<(i64, T)>, limit: u32) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|(seq, _)| *seq)
    } else {
        None
    };
    Page {
        items: rows.into_iter().map(|(_, item)| item).collect(),
        next,
    }
}

/// The `LIMIT` that fetches one row beyond a page.
pub(crate) fn fetch_limit(limit: u32) -> i64 {
    i64::from(limit) + 1
}
