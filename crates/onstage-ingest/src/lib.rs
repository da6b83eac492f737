//! RTMP(S) ingest (BEHAVIOUR §10): an encoder (OBS, ffmpeg, a hardware box) publishes
//! into a stage as a participant.
//!
//! Split the way the media plane is, sans IO beside a thin driver:
//!
//! - [`flv`] reads the FLV audio and video tags RTMP carries (AVC decoder
//!   configuration, length-prefixed NAL units, the composition time offset).
//! - [`sps`] (the media plane's `h264` module) reads the picture size from an H.264
//!   sequence parameter set and the slice type of a slice.
//! - [`packetize`] turns an access unit's NAL units into RTP payloads without
//!   transcoding: single NAL unit packets or FU-A fragments, SPS and PPS before each
//!   IDR, the marker on the access unit's last packet.
//! - [`bridge`] is one stream's video path: tags in, RTP payloads with 90 kHz
//!   timestamps out, and the limits an ingest stream must keep (no B-frames, at
//!   most 720p, at most 8.5 Mbps) as typed [`bridge::Violation`]s.
//! - [`server`] is the driver: the RTMP listener (connection cap, handshake deadline,
//!   bounded buffers), `rml_rtmp`'s handshake and session, and the stream key
//!   checked against the control plane; RTMPS is the same loop inside TLS.
//! - [`tls`] makes the RTMPS acceptor from a configured certificate, or a
//!   development certificate generated on first start.

pub mod audio;
pub mod bridge;
pub mod flv;
pub mod live;
pub mod packetize;
pub mod server;
pub mod tls;

pub use onstage_media::h264 as sps;
