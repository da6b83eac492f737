//! The recorder: one task per recording, fed by a tap on the participant's media
//! source, writing its objects into the bucket in order.
//!
//! A recording's task takes packets from the tap (a bounded channel the
//! forwarding shard fills with `try_send`, so a slow store makes the tap drop
//! packets, never the forwarder wait), turns them into frames
//! (`depacketize.rs`) and the frames into HLS objects (`hls.rs`), and stores each
//! object before the next (a segment before the playlist naming it). It runs on
//! the server's runtime, never on a forwarding thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use onstage_media::{MediaPacket, MediaServer, TapCodec};
use onstage_stage::Clock;
use onstage_stage::media::{MediaPlane, SourceId};
use onstage_stage::model::{RecordingMediaType, RecordingPlace};
use onstage_stage::recording::{Recorder, RecordingId, RecordingJob, RecordingSignal};
use onstage_stage::time_fmt::UnixMillis;
use tokio::sync::mpsc;

use crate::depacketize::{VideoCodec, VideoDepacketizer};
use crate::events::{self, EndStatus};
use crate::hls::{HlsWriter, Object, Tracks};
use crate::storage::{Bucket, Buckets, StorageError};
use crate::thumbnail::{self, Jpeg, Keyframe, Plan, Schedule, ThumbnailError};

/// Packets a tap holds before it drops (about three seconds of a 2.5 Mbit/s
/// stream and its audio).
pub const TAP_CAPACITY: usize = 1024;

/// How often the recorder asks for a keyframe while it waits for one, in
/// milliseconds of the recorder's clock.
const KEYFRAME_ASK_EVERY_MS: UnixMillis = 1_000;

/// When the recorder last asked for a keyframe: it asks at most once per
/// [`KEYFRAME_ASK_EVERY_MS`] of its clock (time is an input).
#[derive(Default)]
struct KeyframeAsks {
    last: Option<UnixMillis>,
}

impl KeyframeAsks {
    /// Whether to ask now; if so, the ask is noted.
    fn ask(&mut self, now: UnixMillis) -> bool {
        let ask = self
            .last
            .is_none_or(|at| now.saturating_sub(at) >= KEYFRAME_ASK_EVERY_MS);
        if ask {
            self.last = Some(now);
        }
        ask
    }
}

enum Command {
    Resume(SourceId),
    Finish(UnixMillis),
}

/// Records sources into buckets ([`Recorder`] for the live plane).
pub struct MediaRecorder {
    media: Arc<MediaServer>,
    buckets: Arc<Buckets>,
    clock: Arc<dyn Clock>,
    signals: mpsc::UnboundedSender<RecordingSignal>,
    /// Each running recording's commands (its task removes it when it ends).
    running: Arc<Running>,
}

impl MediaRecorder {
    pub fn new(
        media: Arc<MediaServer>,
        buckets: Arc<Buckets>,
        clock: Arc<dyn Clock>,
        signals: mpsc::UnboundedSender<RecordingSignal>,
    ) -> Arc<Self> {
        Arc::new(MediaRecorder {
            media,
            buckets,
            clock,
            signals,
            running: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn send(&self, id: RecordingId, command: Command) {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = running.get(&id) {
            let _ = tx.send(command);
        }
    }
}

impl Recorder for MediaRecorder {
    fn start(&self, id: RecordingId, job: RecordingJob, source: SourceId) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let task = Recording {
            id,
            media: self.media.clone(),
            clock: self.clock.clone(),
            signals: self.signals.clone(),
            job,
        };
        let buckets = self.buckets.clone();
        let me = Arc::downgrade(&self.running);
        tokio::spawn(async move {
            task.run(&buckets, source, rx).await;
            if let Some(running) = me.upgrade() {
                running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
            }
        });
    }

    fn resume(&self, id: RecordingId, source: SourceId) {
        self.send(id, Command::Resume(source));
    }

    fn finish(&self, id: RecordingId, at: UnixMillis) {
        self.send(id, Command::Finish(at));
    }

    fn end_interrupted(&self, place: RecordingPlace) {
        let buckets = self.buckets.clone();
        let now = self.clock.now();
        tokio::spawn(async move {
            if let Err(e) = end_interrupted(&buckets, &place, now).await {
                tracing::warn!(bucket = %place.bucket, prefix = %place.prefix, error = %e,
                    "could not end a recording the previous run left");
            }
        });
    }
}

/// Ends a recording a previous process left: the playlist gets its end (so
/// players stop at its last stored segment rather than wait for more) and
/// `events/recording-failed.json` is written from the start file.
async fn end_interrupted(
    buckets: &Buckets,
    place: &RecordingPlace,
    now: UnixMillis,
) -> Result<(), StorageError> {
    let bucket = buckets.bucket(&place.bucket)?;
    let key = |k: &str| format!("{}/{k}", place.prefix);
    let playlist_key = key("media/hls/high/playlist.m3u8");
    let mut seconds = 0.0;
    if let Some(playlist) = bucket.get(&playlist_key).await? {
        let mut text = String::from_utf8_lossy(&playlist).into_owned();
        seconds = crate::hls::playlist_seconds(&text);
        if !text.contains("#EXT-X-ENDLIST") {
            text.push_str("#EXT-X-ENDLIST\n");
            bucket.put(&playlist_key, text.into_bytes()).await?;
        }
    }
    let Some(started) = bucket.get(&key("events/recording-started.json")).await? else {
        return Ok(());
    };
    let doc = events::interrupted(&started, now, seconds);
    bucket.put(&key("events/recording-failed.json"), doc).await
}

type Running = Mutex<HashMap<RecordingId, mpsc::UnboundedSender<Command>>>;

struct Recording {
    id: RecordingId,
    media: Arc<MediaServer>,
    clock: Arc<dyn Clock>,
    signals: mpsc::UnboundedSender<RecordingSignal>,
    job: RecordingJob,
}

/// A recording's media as it goes: the writer and the depacketizer of the
/// current video feed.
struct Media {
    writer: HlsWriter,
    video: Option<(u64, VideoDepacketizer)>,
    last_video_seq: Option<(u64, u64)>,
    out: Vec<Object>,
    asked: KeyframeAsks,
    thumbs: Option<Thumbs>,
}

/// A recording's thumbnails as they go.
struct Thumbs {
    plan: Plan,
    schedule: Schedule,
    /// The recording's start on the recorder's clock; interval marks count from it.
    since: UnixMillis,
    /// The stream's last H.264 parameter sets (a keyframe may come without).
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    /// A keyframe taken for a thumbnail, waiting to be handed to the encoder.
    job: Option<Keyframe>,
    /// A thumbnail is being encoded (one at a time).
    busy: bool,
    /// Numbered thumbnails stored so far (the next one's number).
    stored: u64,
    /// The last thumbnail's size.
    size: Option<(u32, u32)>,
}

impl Thumbs {
    /// Time since the recording started, at `now`.
    fn elapsed(&self, now: UnixMillis) -> Duration {
        Duration::from_millis(u64::try_from(now.saturating_sub(self.since)).unwrap_or(0))
    }

    fn due(&self, now: UnixMillis) -> bool {
        !self.busy && self.job.is_none() && self.schedule.due(self.elapsed(now))
    }
}

type Encoding = tokio::task::JoinHandle<Result<Jpeg, ThumbnailError>>;

impl Recording {
    async fn run(
        self,
        buckets: &Buckets,
        mut source: SourceId,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let bucket = match buckets.bucket(&self.job.place.bucket) {
            Ok(b) => b,
            Err(e) => return self.fail_early(e).await,
        };
        let started = events::document(&self.job, None, EndStatus::Started, "", None, None);
        if let Err(e) = self
            .put(&bucket, "events/recording-started.json", started)
            .await
        {
            return self.fail_early(e).await;
        }
        let types = &self.job.settings.media_types;
        let tracks = Tracks {
            video: types.contains(&RecordingMediaType::AudioVideo),
            audio: types.contains(&RecordingMediaType::AudioVideo)
                || types.contains(&RecordingMediaType::AudioOnly),
        };
        let target = self
            .job
            .settings
            .hls_target_segment_duration_seconds
            .clamp(2, 10) as u32;
        let mut media = Media {
            writer: HlsWriter::new(tracks, target),
            video: None,
            last_video_seq: None,
            out: Vec::new(),
            asked: KeyframeAsks::default(),
            thumbs: Plan::from_settings(&self.job.settings.thumbnail).map(|plan| Thumbs {
                plan,
                schedule: Schedule::new(plan.interval),
                since: self.clock.now(),
                sps: None,
                pps: None,
                job: None,
                busy: false,
                stored: 0,
                size: None,
            }),
        };
        let mut encoding: Option<Encoding> = None;
        let mut packets = Some(self.media.tap(source, TAP_CAPACITY));
        self.media.request_keyframe(source);
        let mut active = false;
        let ended_at = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Resume(s)) => {
                        source = s;
                        packets = Some(self.media.tap(source, TAP_CAPACITY));
                        media.writer.video_lost();
                        self.media.request_keyframe(source);
                    }
                    Some(Command::Finish(at)) => break Some(at),
                    None => break None,
                },
                packet = async {
                    match packets.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match packet {
                    Some(p) => self.packet(&mut media, source, p),
                    // The source closed: wait to be resumed or finished.
                    None => packets = None,
                },
                done = async {
                    match encoding.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                } => {
                    encoding = None;
                    if let Err(e) = self.thumbnail_done(&bucket, &mut media, done).await {
                        return self.fail(&bucket, &media, e).await;
                    }
                    if !active {
                        active = true;
                        let _ = self.signals.send(RecordingSignal::Active(self.id));
                    }
                }
            }
            if let Some(t) = media.thumbs.as_mut()
                && encoding.is_none()
                && let Some(job) = t.job.take()
            {
                // Off the runtime's workers: decoding and encoding block.
                t.busy = true;
                encoding = Some(tokio::task::spawn_blocking(move || thumbnail::encode(&job)));
            }
            if !media.out.is_empty() {
                let objects = std::mem::take(&mut media.out);
                for o in objects {
                    let key = format!("media/hls/{}", o.path);
                    if let Err(e) = self.put(&bucket, &key, o.bytes).await {
                        return self.fail(&bucket, &media, e).await;
                    }
                }
                if !active && media.writer.started() {
                    active = true;
                    let _ = self.signals.send(RecordingSignal::Active(self.id));
                }
            }
        };
        drop(packets);
        if let Some(h) = encoding.take() {
            // The thumbnail being made is kept (its encoding is bounded in time).
            let done = h.await;
            if let Err(e) = self.thumbnail_done(&bucket, &mut media, done).await {
                return self.fail(&bucket, &media, e).await;
            }
        }
        media.writer.finish(&mut media.out);
        for o in std::mem::take(&mut media.out) {
            let key = format!("media/hls/{}", o.path);
            if let Err(e) = self.put(&bucket, &key, o.bytes).await {
                return self.fail(&bucket, &media, e).await;
            }
        }
        let at = ended_at.unwrap_or_else(|| self.clock.now());
        let ended = events::document(
            &self.job,
            Some(at),
            EndStatus::Ended,
            "",
            Some(&media.writer),
            media.thumbs.as_ref().and_then(|t| t.size),
        );
        match self
            .put(&bucket, "events/recording-ended.json", ended)
            .await
        {
            Ok(()) => {
                let _ = self.signals.send(RecordingSignal::Ended(self.id));
            }
            Err(e) => {
                let _ = self
                    .signals
                    .send(RecordingSignal::Failed(self.id, e.to_string()));
            }
        }
    }

    fn packet(&self, media: &mut Media, source: SourceId, p: MediaPacket) {
        match p.codec {
            TapCodec::Opus => media
                .writer
                .audio(p.feed, p.time, &p.payload, &mut media.out),
            TapCodec::H264 | TapCodec::Vp8 if p.video => {
                let now = self.clock.now();
                let codec = if p.codec == TapCodec::H264 {
                    VideoCodec::H264
                } else {
                    VideoCodec::Vp8
                };
                if media
                    .last_video_seq
                    .is_some_and(|(feed, seq)| feed == p.feed && p.seq != seq + 1)
                {
                    media.writer.video_lost();
                }
                media.last_video_seq = Some((p.feed, p.seq));
                let depacketizer = match &mut media.video {
                    Some((feed, d)) if *feed == p.feed && d.codec() == codec => d,
                    slot => &mut slot.insert((p.feed, VideoDepacketizer::new(codec))).1,
                };
                if let Some(frame) = depacketizer.push(p.seq, p.time, p.marker, &p.payload) {
                    if let Some(t) = media.thumbs.as_mut() {
                        if frame.sps.is_some() {
                            t.sps.clone_from(&frame.sps);
                        }
                        if frame.pps.is_some() {
                            t.pps.clone_from(&frame.pps);
                        }
                        // An IDR seen before any parameter set (the tap began
                        // inside its access unit) cannot be decoded: wait for the next.
                        let decodable =
                            codec == VideoCodec::Vp8 || (t.sps.is_some() && t.pps.is_some());
                        if frame.keyframe && decodable && t.due(now) {
                            t.schedule.take(t.elapsed(now));
                            t.job = Some(Keyframe::from_frame(
                                codec,
                                &frame,
                                t.sps.as_deref(),
                                t.pps.as_deref(),
                            ));
                        }
                    }
                    media.writer.video(p.feed, codec, frame, &mut media.out);
                }
                let thumbnail_due = media.thumbs.as_ref().is_some_and(|t| t.due(now));
                if (media.writer.wants_keyframe() || thumbnail_due) && media.asked.ask(now) {
                    self.media.request_keyframe(source);
                }
            }
            _ => {}
        }
    }

    /// Stores a finished thumbnail; one that could not be made is skipped (the
    /// next interval mark tries again).
    async fn thumbnail_done(
        &self,
        bucket: &Bucket,
        media: &mut Media,
        done: Result<Result<Jpeg, ThumbnailError>, tokio::task::JoinError>,
    ) -> Result<(), StorageError> {
        let Some(t) = media.thumbs.as_mut() else {
            return Ok(());
        };
        t.busy = false;
        let jpeg = match done {
            Ok(Ok(jpeg)) => jpeg,
            Ok(Err(e)) => {
                tracing::warn!(recording = self.id.0, error = %e, "a thumbnail could not be made");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(recording = self.id.0, error = %e, "a thumbnail's encoder stopped");
                return Ok(());
            }
        };
        t.size = Some((jpeg.width, jpeg.height));
        if t.plan.sequential {
            let key = format!(
                "{}/{}/{}.jpg",
                thumbnail::SEQUENTIAL_DIR,
                crate::hls::RENDITION,
                t.stored
            );
            t.stored += 1;
            self.put(bucket, &key, jpeg.bytes.clone()).await?;
        }
        if t.plan.latest {
            let key = format!(
                "{}/{}/{}",
                thumbnail::LATEST_DIR,
                crate::hls::RENDITION,
                thumbnail::LATEST_NAME
            );
            self.put(bucket, &key, jpeg.bytes).await?;
        }
        Ok(())
    }

    async fn put(&self, bucket: &Bucket, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        bucket
            .put(&format!("{}/{key}", self.job.place.prefix), bytes)
            .await
    }

    /// Nothing could be stored at all.
    async fn fail_early(&self, e: StorageError) {
        tracing::warn!(recording = self.id.0, error = %e, "recording could not start");
        let _ = self
            .signals
            .send(RecordingSignal::Failed(self.id, e.to_string()));
    }

    /// The store failed mid-recording: what was stored stays; the failure is
    /// written down if the store takes that still.
    async fn fail(&self, bucket: &Bucket, media: &Media, e: StorageError) {
        let message = e.to_string();
        let doc = events::document(
            &self.job,
            Some(self.clock.now()),
            EndStatus::Failed,
            &message,
            Some(&media.writer),
            media.thumbs.as_ref().and_then(|t| t.size),
        );
        let _ = self.put(bucket, "events/recording-failed.json", doc).await;
        let _ = self.signals.send(RecordingSignal::Failed(self.id, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_asks_are_paced_on_the_clock_given() {
        let mut asks = KeyframeAsks::default();
        assert!(asks.ask(10_000), "the first ask goes");
        assert!(!asks.ask(10_000));
        assert!(!asks.ask(10_999), "within a second of the last");
        assert!(asks.ask(11_000));
        assert!(!asks.ask(11_500));
        // A clock that went back (a step of the wall clock) does not ask again early.
        assert!(!asks.ask(9_000));
        assert!(asks.ask(12_000));
    }
}
