-- onstage's embedded schema. Applied once by the store at start-up and recorded in
-- `_sqlx_migrations`: never edit this file after a release, add a new one instead.
--
-- Every table's `seq` is an AUTOINCREMENT rowid: it only ever grows and is never
-- reused after a delete, which is what makes it a stable keyset-pagination cursor.
-- Times are milliseconds since the Unix epoch. JSON columns hold text.

-- Configuration resources of every kind (stages, public keys, storage and encoder
-- configurations, ...). The domain owns `body`; the store reads only the columns.
CREATE TABLE resources (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    arn        TEXT    NOT NULL UNIQUE,
    account    TEXT    NOT NULL,
    region     TEXT    NOT NULL,
    kind       TEXT    NOT NULL,   -- the ARN's resource-type segment: 'stage', 'public-key', ...
    id         TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    body       TEXT    NOT NULL,   -- JSON document
    tags       TEXT    NOT NULL DEFAULT '{}',  -- JSON object of strings
    unique_key TEXT,
    -- A resource this one depends on. RESTRICT backs up the store's own "in use"
    -- check and refuses a reference to a resource deleted in the meantime.
    refers_to  TEXT REFERENCES resources (arn) ON DELETE RESTRICT
);
CREATE INDEX resources_by_scope ON resources (account, region, kind, seq);
CREATE UNIQUE INDEX resources_unique_key ON resources (account, region, kind, unique_key)
    WHERE unique_key IS NOT NULL;
CREATE INDEX resources_by_refers_to ON resources (refers_to);

-- Secrets every node must share (the token-signing key). Written once, never changed.
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- Sessions of a stage. A stage has at most one running session (end_time NULL):
-- whoever starts a session must end the previous one first.
CREATE TABLE stage_sessions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    stage_arn  TEXT    NOT NULL REFERENCES resources (arn) ON DELETE CASCADE,
    session_id TEXT    NOT NULL,
    start_time INTEGER NOT NULL,
    end_time   INTEGER,
    UNIQUE (stage_arn, session_id)
);
CREATE INDEX stage_sessions_by_stage ON stage_sessions (stage_arn, seq);
CREATE UNIQUE INDEX stage_sessions_running ON stage_sessions (stage_arn) WHERE end_time IS NULL;

-- One row per participant id per session (BEHAVIOUR §5). Deleted with the session.
CREATE TABLE participants (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    stage_arn         TEXT    NOT NULL,
    session_id        TEXT    NOT NULL,
    participant_id    TEXT    NOT NULL,
    user_id           TEXT,
    state             TEXT    NOT NULL,                 -- 'CONNECTED' | 'DISCONNECTED'
    first_join_time   INTEGER NOT NULL,
    attributes        TEXT    NOT NULL DEFAULT '{}',    -- JSON object of strings
    published         INTEGER NOT NULL DEFAULT 0,       -- ever published in this session
    client            TEXT    NOT NULL DEFAULT '{}',    -- JSON of the domain's ClientAttributes
    recording_state   TEXT    NOT NULL DEFAULT 'DISABLED',
    protocol          TEXT    NOT NULL DEFAULT 'WHIP',
    replication_type  TEXT    NOT NULL DEFAULT 'NONE',  -- 'NONE' | 'SOURCE' | 'REPLICA'
    replication_state TEXT,                             -- 'ACTIVE' | 'STOPPED'
    source_stage_arn  TEXT,                             -- for replicas
    source_session_id TEXT,
    UNIQUE (stage_arn, session_id, participant_id),
    FOREIGN KEY (stage_arn, session_id)
        REFERENCES stage_sessions (stage_arn, session_id) ON DELETE CASCADE
);
CREATE INDEX participants_by_session ON participants (stage_arn, session_id, seq);

-- Events of participants in a session (BEHAVIOUR §5). Not tied to a participant row, so
-- that an event can be recorded for a join that never produced one.
CREATE TABLE participant_events (
    seq                    INTEGER PRIMARY KEY AUTOINCREMENT,
    stage_arn              TEXT    NOT NULL,
    session_id             TEXT    NOT NULL,
    participant_id         TEXT    NOT NULL,
    name                   TEXT    NOT NULL,
    event_time             INTEGER NOT NULL,
    remote_participant_id  TEXT,
    error_code             TEXT,
    destination_stage_arn  TEXT,
    destination_session_id TEXT,
    replica                INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (stage_arn, session_id)
        REFERENCES stage_sessions (stage_arn, session_id) ON DELETE CASCADE
);
CREATE INDEX participant_events_by_participant
    ON participant_events (stage_arn, session_id, participant_id, seq);

-- Replications of a participant out of a source stage (BEHAVIOUR §6). They go with the
-- source stage; the destination is deliberately not a foreign key, because a
-- replication stays listed under its source after the destination is deleted.
CREATE TABLE participant_replicas (
    seq                    INTEGER PRIMARY KEY AUTOINCREMENT,
    source_stage_arn       TEXT NOT NULL REFERENCES resources (arn) ON DELETE CASCADE,
    participant_id         TEXT NOT NULL,
    source_session_id      TEXT NOT NULL,
    destination_stage_arn  TEXT NOT NULL,
    destination_session_id TEXT NOT NULL,
    replication_state      TEXT NOT NULL,  -- 'ACTIVE' | 'STOPPED'
    reason                 TEXT            -- why it stopped
);
CREATE INDEX participant_replicas_by_source
    ON participant_replicas (source_stage_arn, participant_id, seq);
CREATE INDEX participant_replicas_by_destination
    ON participant_replicas (destination_stage_arn);
-- A participant is replicated to a given destination at most once at a time.
CREATE UNIQUE INDEX participant_replicas_active
    ON participant_replicas (source_stage_arn, participant_id, destination_stage_arn)
    WHERE replication_state = 'ACTIVE';
