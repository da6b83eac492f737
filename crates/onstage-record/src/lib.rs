//! Individual participant recording (BEHAVIOUR §9): a publisher's media, tapped
//! from its source in the media plane, written as fMP4 HLS with IVS's event
//! files into a bucket — a directory under the data directory, or any
//! S3-compatible service.
//!
//! `depacketize.rs` (RTP to frames), `fmp4.rs` (boxes), `hls.rs` (segments and
//! playlists) and `events.rs` (the JSON files) are sans IO; `recorder.rs` is the
//! task per recording that moves packets in and objects out through
//! `storage.rs`. Nothing is transcoded; `thumbnail.rs` decodes one keyframe per
//! interval into a JPEG, on a blocking thread.

pub mod depacketize;
pub mod events;
pub mod fmp4;
pub mod hls;
pub mod recorder;
pub mod storage;
pub mod thumbnail;

pub use recorder::MediaRecorder;
pub use storage::{Buckets, S3Settings, StorageSettings};
