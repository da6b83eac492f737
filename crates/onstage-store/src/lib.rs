//! onstage's persistence: the domain's [`Store`] trait on an embedded SQLite
//! database, so that a single `onstage serve` keeps its stages, keys, tags, session
//! history and replications across restarts with nothing else to install (BEHAVIOUR §7).
//!
//! The domain decides what is stored and why; this crate only decides how. The
//! schema lives in `migrations/` and is compiled into the binary, so a data
//! directory is brought up to date by whichever onstage opens it.
//!
//! [`Store`]: onstage_stage::Store

mod live;
mod live_writes;
mod private;
mod resources;
mod sqlite;

pub use sqlite::SqliteStore;

#[cfg(test)]
mod live_write_tests;
#[cfg(test)]
mod tests;
