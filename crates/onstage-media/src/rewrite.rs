//! Renumbering a forwarded RTP stream for one subscriber.
//!
//! A subscriber's track is one RTP stream from its point of view, but what feeds
//! it changes: it joins mid-stream, its publisher is replaced (a reconnect, a
//! replication's window), the publisher restarts its encoder on a new SSRC. Each
//! of those is a different incoming stream with its own sequence numbers and
//! timestamps. [`OutgoingStream`] maps whatever feeds the track onto one
//! continuous outgoing numbering: sequence numbers go on from the last one sent
//! (so the receiver sees no gap to ask retransmission for), and timestamps go on
//! by the wall-clock time that passed (so its jitter buffer sees no jump).
//! Within one feed, differences are kept as they came: a gap stays a gap (the
//! receiver's NACK finds it), a reordered packet stays reordered.
//!
//! Sans I/O: it only computes numbers.

use std::time::Instant;

/// How the packets of one incoming stream are renumbered for one subscriber.
#[derive(Debug)]
pub(crate) struct OutgoingStream {
    /// The incoming stream followed now, and where it was joined.
    feed: Option<Feed>,
    /// One past the highest extended sequence number sent.
    next_seq: u64,
    /// The RTP timestamp and arrival time of the newest packet sent.
    last: Option<(u32, Instant)>,
    /// RTP clock rate (Hz) of the track, to carry timestamps across feeds.
    clock_rate: u32,
}

#[derive(Debug, Clone, Copy)]
struct Feed {
    id: u64,
    /// The first incoming sequence number forwarded from this feed: anything
    /// older belongs to before the join and is not sent.
    first_seq: u64,
    seq_delta: u64,
    ts_delta: u32,
}

/// Sequence and timestamp for the outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Renumbered {
    pub(crate) seq: u64,
    pub(crate) time: u32,
}

impl OutgoingStream {
    /// `first_seq` is the first outgoing sequence number; below 2^15 it leaves
    /// the receiver's rollover counter at zero, as RFC 3711 expects of a new stream.
    pub(crate) fn new(clock_rate: u32, first_seq: u16) -> Self {
        OutgoingStream {
            feed: None,
            next_seq: u64::from(first_seq & 0x7FFF),
            last: None,
            clock_rate,
        }
    }

    /// Whether a feed is followed (for video: whether a keyframe started it).
    pub(crate) fn is_following(&self) -> bool {
        self.feed.is_some()
    }

    /// Stop following the current feed: the next packet must be allowed to start
    /// one (for video, a keyframe's first).
    pub(crate) fn restart(&mut self) {
        self.feed = None;
    }

    /// The outgoing numbers for a packet of feed `feed` with incoming extended
    /// sequence number `seq` and RTP timestamp `time`, arrived at `at`; `None` if
    /// it is not to be sent. A packet of a feed other than the one followed
    /// switches to that feed if `can_start` (audio: always; video: the first
    /// packet of a keyframe) and is dropped otherwise.
    pub(crate) fn renumber(
        &mut self,
        feed: u64,
        seq: u64,
        time: u32,
        at: Instant,
        can_start: bool,
    ) -> Option<Renumbered> {
        let current = match self.feed {
            Some(f) if f.id == feed => f,
            _ => {
                if !can_start {
                    return None;
                }
                let next_time = match self.last {
                    // Go on from the last packet sent by the time that passed since;
                    // at least one tick, so the new feed's first frame is not taken
                    // for part of the last one.
                    Some((last_time, last_at)) => {
                        let elapsed = at.saturating_duration_since(last_at);
                        let ticks = (elapsed.as_micros() as u64 * u64::from(self.clock_rate)
                            / 1_000_000)
                            .max(1);
                        last_time.wrapping_add(ticks as u32)
                    }
                    None => time,
                };
                let f = Feed {
                    id: feed,
                    first_seq: seq,
                    seq_delta: self.next_seq.wrapping_sub(seq),
                    ts_delta: next_time.wrapping_sub(time),
                };
                self.feed = Some(f);
                f
            }
        };
        if seq < current.first_seq {
            return None;
        }
        let out = Renumbered {
            seq: seq.wrapping_add(current.seq_delta),
            time: time.wrapping_add(current.ts_delta),
        };
        if out.seq >= self.next_seq {
            self.next_seq = out.seq + 1;
            self.last = Some((out.time, at));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_feed_keeps_its_gaps_and_order() {
        let t0 = Instant::now();
        let mut s = OutgoingStream::new(90_000, 1000);
        let a = s.renumber(7, 50_000, 1_000, t0, true).unwrap();
        assert_eq!(
            a,
            Renumbered {
                seq: 1000,
                time: 1_000
            }
        );
        // A gap of one packet stays a gap.
        assert_eq!(s.renumber(7, 50_002, 4_000, t0, false).unwrap().seq, 1002);
        // The missing one arrives late (a retransmission): it fills the gap.
        assert_eq!(s.renumber(7, 50_001, 1_000, t0, false).unwrap().seq, 1001);
        assert_eq!(s.renumber(7, 50_003, 4_000, t0, false).unwrap().seq, 1003);
    }

    #[test]
    fn video_waits_for_a_start() {
        let t0 = Instant::now();
        let mut s = OutgoingStream::new(90_000, 10);
        assert!(s.renumber(1, 5, 0, t0, false).is_none());
        assert!(!s.is_following());
        assert_eq!(s.renumber(1, 6, 3000, t0, true).unwrap().seq, 10);
        // Packets from before the start (reordered) are not sent.
        assert!(s.renumber(1, 5, 0, t0, false).is_none());
    }

    #[test]
    fn a_new_feed_goes_on_where_the_old_one_stopped() {
        let t0 = Instant::now();
        let mut s = OutgoingStream::new(90_000, 100);
        s.renumber(1, 40_000, 500_000, t0, true).unwrap();
        s.renumber(1, 40_001, 503_000, t0, false).unwrap();
        // A replacing publisher, half a second later, numbering from elsewhere.
        let later = t0 + Duration::from_millis(500);
        let r = s.renumber(2, 7, 12, later, true).unwrap();
        assert_eq!(r.seq, 102);
        assert_eq!(r.time, 503_000 + 45_000);
        assert_eq!(
            s.renumber(2, 8, 3012, later, false).unwrap(),
            Renumbered {
                seq: 103,
                time: 503_000 + 48_000
            }
        );
        // The old feed's stragglers no longer get through.
        assert!(s.renumber(1, 40_002, 506_000, later, false).is_none());
    }

    #[test]
    fn restart_waits_for_the_next_start_of_the_same_feed() {
        let t0 = Instant::now();
        let mut s = OutgoingStream::new(48_000, 0);
        s.renumber(3, 10, 960, t0, true).unwrap();
        s.restart();
        assert!(s.renumber(3, 11, 1920, t0, false).is_none());
        assert_eq!(
            s.renumber(3, 12, 2880, t0 + Duration::from_millis(40), true)
                .unwrap()
                .seq,
            1
        );
    }

    #[test]
    fn wraps_without_overflow() {
        let t0 = Instant::now();
        let mut s = OutgoingStream::new(90_000, 0x7FFF);
        let r = s.renumber(9, u64::MAX - 1, u32::MAX, t0, true).unwrap();
        assert_eq!(r.seq, 0x7FFF);
        let r = s.renumber(9, u64::MAX, 1, t0, false).unwrap();
        assert_eq!(
            r,
            Renumbered {
                seq: 0x8000,
                time: 1
            }
        );
    }
}
