-- What participant replication needs beyond the earlier schema. Never edit after a release.

-- Start-up stops the replications a previous process left ACTIVE, including on the
-- records of source participants that had already left (inside a reconnect window).
CREATE INDEX participants_replication_active ON participants (replication_state)
    WHERE replication_state = 'ACTIVE';
