-- Ingest configurations: RTMP(S) encoders publishing into stages (BEHAVIOUR §9).
--
-- A configuration is a row of `resources` (kind 'ingest-configuration'); its stage
-- is `refers_to`, which DeleteStage and DisconnectParticipant clear.

-- The configuration a participant's stream came in through, for RTMP(S) ingest.
ALTER TABLE participants ADD COLUMN ingest_configuration_arn TEXT;

-- The configurations whose stream is live right now (state ACTIVE) and the stage
-- session it is live in. Derived state: emptied at start-up with the interrupted
-- sessions, gone with the configuration.
CREATE TABLE ingest_streams (
    arn        TEXT    PRIMARY KEY REFERENCES resources (arn) ON DELETE CASCADE,
    stage_arn  TEXT    NOT NULL,
    session_id TEXT    NOT NULL,
    started_at INTEGER NOT NULL
) WITHOUT ROWID;
