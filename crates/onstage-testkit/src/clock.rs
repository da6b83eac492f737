//! Virtual time for the domain.

use std::sync::Arc;
use std::time::Duration;

use onstage_stage::clock::{Clock, Sleep};
use onstage_stage::time_fmt::UnixMillis;
use tokio::sync::watch;

/// Where a [`ManualClock`] starts: 2026-01-01T00:00:00Z.
pub const EPOCH: UnixMillis = 1_767_225_600_000;

/// A clock that stands still until the test moves it. Timers set on it
/// ([`Clock::sleep_until`]) fire when [`ManualClock::advance`] reaches them, on
/// whatever runtime awaits them; real time plays no part.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<UnixMillis>,
}

impl ManualClock {
    /// A clock at [`EPOCH`].
    pub fn new() -> Arc<ManualClock> {
        ManualClock::starting_at(EPOCH)
    }

    pub fn starting_at(at: UnixMillis) -> Arc<ManualClock> {
        let (now, _) = watch::channel(at);
        Arc::new(ManualClock { now })
    }

    /// Moves time forward by `by`, waking every timer it reaches.
    pub fn advance(&self, by: Duration) {
        let by = UnixMillis::try_from(by.as_millis()).unwrap_or(UnixMillis::MAX);
        self.now.send_modify(|now| *now = now.saturating_add(by));
    }

    /// Seconds since the Unix epoch, as tokens count them.
    pub fn now_secs(&self) -> i64 {
        self.now() / 1000
    }

    /// Timers set and not yet fired (more precisely: futures waiting on this clock).
    pub fn waiting(&self) -> usize {
        self.now.receiver_count()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: UnixMillis) -> Sleep {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            loop {
                if *now.borrow_and_update() >= at {
                    return;
                }
                if now.changed().await.is_err() {
                    // The clock is gone: its time never comes.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}
