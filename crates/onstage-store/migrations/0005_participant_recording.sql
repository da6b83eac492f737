-- Individual participant recording: where a participant's recording goes (set
-- once it started, kept after it ended). `recording_state` (0002) says where the
-- recording is. Never edit after a release.
ALTER TABLE participants ADD COLUMN recording_s3_bucket_name TEXT;
ALTER TABLE participants ADD COLUMN recording_s3_prefix TEXT;
