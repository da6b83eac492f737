-- RevokeConnectionToken: token ids (a token's `jti`) revoked in an account. A token
-- with this id issued at or before `revoked_at` can no longer connect to any stage
-- of the account; one issued later with the same id (only a self-signed token can
-- reuse an id) is not affected. Kept for good: the API offers no way to undo it.
-- Never edit after a release.
CREATE TABLE revoked_tokens (
    account_id TEXT    NOT NULL,
    region     TEXT    NOT NULL,
    token_id   TEXT    NOT NULL,
    revoked_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, region, token_id)
) WITHOUT ROWID;
