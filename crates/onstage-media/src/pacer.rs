//! The keyframe-request pacer: at most one request per source per interval.
//!
//! However many subscribers ask (each new one, each that lost packets), the
//! publisher is asked at most once per interval; a request inside the interval is
//! postponed to its end, never dropped — dropping it would leave a new subscriber
//! waiting for the publisher's next scheduled keyframe, seconds away.

use std::time::{Duration, Instant};

/// What to do with a keyframe request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Ask the publisher now (then call [`KeyframePacer::sent`] if it was asked).
    Send,
    /// Too soon after the last one: it is due at [`KeyframePacer::due`].
    Postponed,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyframePacer {
    last: Option<Instant>,
    due: Option<Instant>,
}

impl KeyframePacer {
    /// A request at `now`.
    pub(crate) fn ask(&mut self, now: Instant, interval: Duration) -> Pace {
        if let Some(last) = self
            .last
            .filter(|t| now.saturating_duration_since(*t) < interval)
        {
            self.due.get_or_insert(last + interval);
            return Pace::Postponed;
        }
        self.due = None;
        Pace::Send
    }

    /// The publisher was asked at `now`.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// When a postponed request is to be sent.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);

    #[test]
    fn the_first_request_goes_at_once() {
        let mut p = KeyframePacer::default();
        assert_eq!(p.ask(Instant::now(), INTERVAL), Pace::Send);
        assert_eq!(p.due(), None);
    }

    #[test]
    fn requests_inside_the_interval_are_postponed_to_its_end_once() {
        let t0 = Instant::now();
        let mut p = KeyframePacer::default();
        assert_eq!(p.ask(t0, INTERVAL), Pace::Send);
        p.sent(t0);
        for ms in [1, 30, 99] {
            assert_eq!(
                p.ask(t0 + Duration::from_millis(ms), INTERVAL),
                Pace::Postponed
            );
            assert_eq!(p.due(), Some(t0 + INTERVAL));
        }
        assert_eq!(p.ask(t0 + INTERVAL, INTERVAL), Pace::Send);
        assert_eq!(p.due(), None);
    }

    #[test]
    fn a_request_that_was_not_sent_does_not_start_an_interval() {
        let t0 = Instant::now();
        let mut p = KeyframePacer::default();
        assert_eq!(p.ask(t0, INTERVAL), Pace::Send);
        // Nobody to ask (no publisher yet): the next request is not held back.
        assert_eq!(p.ask(t0 + Duration::from_millis(1), INTERVAL), Pace::Send);
    }
}
