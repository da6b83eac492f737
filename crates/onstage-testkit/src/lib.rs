//! What onstage's tests share, so that each test file does not grow its own
//! imitation of the rest of the system:
//!
//! - [`ManualClock`]: virtual time for the domain; it moves only when the test
//!   moves it, and timers set on it (a reconnect window ending) fire then.
//! - [`FakeMedia`]: a media plane that answers every offer with a canned SDP, hands
//!   out ids in a fixed order, refuses when told to, and logs what it was asked.
//! - [`TestStore`]: the real SQLite store (in memory), with a log of every batch the
//!   live plane wrote and a switch that makes those writes fail.
//! - [`tokens`]: customer key pairs and self-signed participant tokens.
//! - [`fixtures`]: domain values (records, participants, events, replicas) with
//!   plain defaults.
//! - [`SequentialIds`]: ids numbered in the order asked for, so tests know them.
//! - [`control_plane`]: a control plane on all of the above.
//!
//! A dev-dependency only (`publish = false`). `onstage-store` depends on
//! `onstage-stage`, and this crate on both, so `onstage-stage` may use it only from
//! its integration tests (`tests/`), where cargo allows the cycle.

mod clock;
pub mod fixtures;
mod media;
mod store;
pub mod tokens;

use std::sync::Arc;

use onstage_stage::clock::Clock;
pub use onstage_stage::ids::SequentialIds;
use onstage_stage::ids::{Account, IdSource};
use onstage_stage::{ControlPlane, ControlPlaneConfig, Store};

pub use clock::{EPOCH, ManualClock};
pub use media::{FakeMedia, MediaCall};
pub use store::TestStore;

pub const WHIP_URL: &str = "http://127.0.0.1:7700/whip";
pub const EVENTS_URL: &str = "ws://127.0.0.1:7700/events";

/// The account every test acts as, unless it needs a second one.
pub fn account() -> Account {
    Account {
        id: "000000000000".into(),
        region: "us-east-1".into(),
    }
}

/// Another account in the same region.
pub fn other_account() -> Account {
    Account {
        id: "111111111111".into(),
        region: "us-east-1".into(),
    }
}

pub fn config() -> ControlPlaneConfig {
    ControlPlaneConfig {
        whip_url: WHIP_URL.into(),
        events_url: EVENTS_URL.into(),
        rtmp_url: None,
        rtmps_url: None,
    }
}

/// A control plane on `store`, reading time from `clock`, with ids numbered from 1
/// ([`SequentialIds`]): the first stage a test creates is `res000000001`.
pub async fn control_plane(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Arc<ControlPlane> {
    control_plane_with_ids(store, clock, Arc::new(SequentialIds::new())).await
}

/// A control plane drawing ids from `ids`: a second control plane on the same store
/// (a restart) continues the first one's sequence by sharing its source.
pub async fn control_plane_with_ids(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
) -> Arc<ControlPlane> {
    match ControlPlane::open_with(store, config(), clock, ids).await {
        Ok(control) => Arc::new(control),
        Err(e) => panic!("the control plane did not open: {e}"),
    }
}

/// Waits, without moving any clock, until `condition` holds: for what a spawned
/// task (a timer that fired, a socket's close) finishes doing. Gives up after five
/// seconds of real time, which only a broken test reaches.
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::task::yield_now().await;
    }
}
