-- What the live plane needs beyond the initial schema. Never edit after a release.

-- Participant ids that DisconnectParticipant removed from a stage: they may not
-- connect to it again (BEHAVIOUR §5, "revokes the participant permanently"). The reason
-- given to DisconnectParticipant is kept here. Deleted with the stage.
CREATE TABLE revoked_participants (
    stage_arn      TEXT    NOT NULL REFERENCES resources (arn) ON DELETE CASCADE,
    participant_id TEXT    NOT NULL,
    reason         TEXT,
    revoked_at     INTEGER NOT NULL,
    PRIMARY KEY (stage_arn, participant_id)
) WITHOUT ROWID;

-- Start-up looks for participants still marked connected.
CREATE INDEX participants_connected ON participants (state) WHERE state = 'CONNECTED';
