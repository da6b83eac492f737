//! The domain of onstage: what a stage, a participant token, a public key or a
//! storage configuration *is*, and the rules that hold between them.
//!
//! This crate is the one place where IVS behaviour is decided. It knows nothing of
//! HTTP (the `onstage-api` crate turns wire requests into calls on [`ControlPlane`]),
//! nothing of SQL (persistence goes through the [`Store`] trait, implemented by
//! `onstage-store`), and nothing of WebRTC.

pub mod clock;
pub mod error;
pub mod ids;
pub mod live;
pub mod media;
pub mod model;
pub mod recording;
pub mod service;
pub mod store;
pub mod time_fmt;
pub mod token;

pub use clock::{Clock, SystemClock};
pub use error::{DomainError, StoreError};
pub use ids::{Account, Arn, ResourceKind};
pub use live::LivePlane;
pub use service::{ControlPlane, ControlPlaneConfig, LiveStages};
pub use store::Store;
