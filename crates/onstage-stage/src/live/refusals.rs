//! What a refused connection may cost the stage (DECISIONS: "Refusals are recorded
//! only for genuine tokens, at most 10 a minute per participant").
//!
//! A refusal is written to the stage's event log only when its token's signature
//! verified: a forged token names whichever participant its author likes, so
//! recording it would let anyone write into a real participant's history. Forgeries
//! are counted instead, and logged at most once per [`FORGERY_LOG_INTERVAL_MS`] with
//! the number left unlogged.
//!
//! A genuine token holder can still be refused again and again (an expired token
//! retried in a loop), so each participant of a stage has a budget of
//! [`MAX_RECORDED_REFUSALS`] recorded refusals per [`REFUSAL_WINDOW_MS`]; beyond it
//! refusals are answered as usual but only counted, and the count is logged once
//! when the participant's next window begins.
//!
//! Both are plain values with time as an input, driven by the live plane.

use std::collections::HashMap;

use crate::ids::Arn;
use crate::time_fmt::UnixMillis;

/// Recorded refusals per participant and stage in one window.
pub const MAX_RECORDED_REFUSALS: u32 = 10;
/// The length of a participant's refusal window.
pub const REFUSAL_WINDOW_MS: UnixMillis = 60_000;
/// At most one log line about forged tokens per this many milliseconds.
pub const FORGERY_LOG_INTERVAL_MS: UnixMillis = 10_000;
/// Windows kept before the ended ones are swept out (the sweep threshold doubles
/// with what is left, so sweeping costs O(1) per refusal amortised).
const SWEEP_AT_LEAST: usize = 1024;

/// Whether to write a refusal to the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalRecord {
    /// Within the participant's budget: record it.
    Write {
        /// Refusals of this participant not recorded in its previous window, to
        /// report now that a new window has begun.
        unrecorded_before: u64,
    },
    /// Over budget: answer, count, do not record.
    Skip,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: UnixMillis,
    recorded: u32,
    skipped: u64,
}

/// The per-participant budget of recorded refusals.
#[derive(Debug)]
pub struct RefusalBudget {
    windows: HashMap<(Arn, String), Window>,
    sweep_at: usize,
}

impl Default for RefusalBudget {
    fn default() -> Self {
        RefusalBudget {
            windows: HashMap::new(),
            sweep_at: SWEEP_AT_LEAST,
        }
    }
}

impl RefusalBudget {
    /// A refusal of `participant` on `stage` at `now`: record it or not.
    pub fn refusal(&mut self, stage: &Arn, participant: &str, now: UnixMillis) -> RefusalRecord {
        if self.windows.len() >= self.sweep_at {
            // An ended window's skipped count goes with it: the metric has it.
            self.windows
                .retain(|_, w| now.saturating_sub(w.started) < REFUSAL_WINDOW_MS);
            self.sweep_at = (self.windows.len() * 2).max(SWEEP_AT_LEAST);
        }
        let key = (stage.clone(), participant.to_owned());
        let window = self.windows.entry(key).or_insert(Window {
            started: now,
            recorded: 0,
            skipped: 0,
        });
        let mut unrecorded_before = 0;
        if now.saturating_sub(window.started) >= REFUSAL_WINDOW_MS {
            unrecorded_before = window.skipped;
            *window = Window {
                started: now,
                recorded: 0,
                skipped: 0,
            };
        }
        if window.recorded < MAX_RECORDED_REFUSALS {
            window.recorded += 1;
            RefusalRecord::Write { unrecorded_before }
        } else {
            window.skipped += 1;
            RefusalRecord::Skip
        }
    }

    /// Participants with a window in memory; for tests.
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }
}

/// Rate-limits the log line about forged tokens.
#[derive(Debug, Default)]
pub struct ForgeryLog {
    last_line: Option<UnixMillis>,
    unlogged: u64,
}

impl ForgeryLog {
    /// A forged token at `now`. `Some(n)` when a line is due: `n` forgeries since the
    /// last line went unlogged (this one not included).
    pub fn forgery(&mut self, now: UnixMillis) -> Option<u64> {
        match self.last_line {
            Some(at) if now.saturating_sub(at) < FORGERY_LOG_INTERVAL_MS => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last_line = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(id: &str) -> Arn {
        Arn::parse(&format!("arn:aws:ivs:us-east-1:000000000000:stage/{id}")).unwrap()
    }

    #[test]
    fn records_at_most_the_budget_per_window_and_reports_the_rest() {
        let mut budget = RefusalBudget::default();
        let a = stage("aaaaaaaaaaaa");
        let t0 = 1_000_000;
        for i in 0..MAX_RECORDED_REFUSALS {
            assert_eq!(
                budget.refusal(&a, "p1", t0 + UnixMillis::from(i)),
                RefusalRecord::Write {
                    unrecorded_before: 0
                }
            );
        }
        for i in 0..25 {
            assert_eq!(budget.refusal(&a, "p1", t0 + 100 + i), RefusalRecord::Skip);
        }
        // Another participant, and the same one on another stage, have budgets of
        // their own.
        assert!(matches!(
            budget.refusal(&a, "p2", t0 + 200),
            RefusalRecord::Write { .. }
        ));
        assert!(matches!(
            budget.refusal(&stage("bbbbbbbbbbbb"), "p1", t0 + 200),
            RefusalRecord::Write { .. }
        ));
        // Still inside the window a millisecond before it ends.
        assert_eq!(
            budget.refusal(&a, "p1", t0 + REFUSAL_WINDOW_MS - 1),
            RefusalRecord::Skip
        );
        // The next window records again and reports what the last one skipped.
        assert_eq!(
            budget.refusal(&a, "p1", t0 + REFUSAL_WINDOW_MS),
            RefusalRecord::Write {
                unrecorded_before: 26
            }
        );
    }

    #[test]
    fn ended_windows_are_swept_so_memory_stays_bounded() {
        let mut budget = RefusalBudget::default();
        let a = stage("aaaaaaaaaaaa");
        // A new participant every 100 ms: 600 have a window running at any time, and
        // ended windows never pile up past the sweep threshold.
        for i in 0..20_000i64 {
            budget.refusal(&a, &format!("p{i}"), i * 100);
            // At most twice the live windows (or the threshold) between sweeps.
            assert!(budget.tracked() <= (2 * 601).max(SWEEP_AT_LEAST));
        }
    }

    #[test]
    fn forgeries_are_logged_once_per_interval_with_the_count_left_out() {
        let mut log = ForgeryLog::default();
        assert_eq!(log.forgery(5_000), Some(0));
        for i in 1..=999 {
            assert_eq!(log.forgery(5_000 + i), None);
        }
        assert_eq!(log.forgery(5_000 + FORGERY_LOG_INTERVAL_MS - 1), None);
        assert_eq!(log.forgery(5_000 + FORGERY_LOG_INTERVAL_MS), Some(1000));
        assert_eq!(log.forgery(5_000 + FORGERY_LOG_INTERVAL_MS + 1), None);
    }
}
