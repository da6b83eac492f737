//! Time as the domain reads it: the current wall-clock time, and a way to wait
//! until a given time. Every timestamp the domain writes (sessions, events, token
//! `iat`/`exp`, creation times) and every timer it sets (a reconnect window ending)
//! goes through a [`Clock`], so tests can run the live plane in virtual time: a
//! test's clock moves only when the test moves it, and nothing waits for a real
//! window to pass.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use time::OffsetDateTime;

use crate::time_fmt::UnixMillis;

/// A future that resolves once a clock has reached a time.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Now, and waiting until later.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, UTC.
    fn now(&self) -> UnixMillis;
    /// Resolves once [`Clock::now`] has reached `at` (at once if it already has).
    fn sleep_until(&self, at: UnixMillis) -> Sleep;
}

/// The machine's wall clock, waiting with tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }

    fn sleep_until(&self, at: UnixMillis) -> Sleep {
        let delay = u64::try_from(at.saturating_sub(self.now())).unwrap_or(0);
        // One more millisecond: `now` has whole milliseconds, the timer does not,
        // and waking a moment early would find the deadline not yet reached.
        Box::pin(tokio::time::sleep(Duration::from_millis(delay + 1)))
    }
}
