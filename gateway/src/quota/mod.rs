//! Limits of API keys and models: [`rate`] (requests/min, tokens/min, concurrency per key,
//! shared between gateway replicas by division), [`fair_queue`] (per-model concurrency with a
//! queue fair across keys) and [`peers`] (how many gateway replicas share the limits).

pub mod fair_queue;
pub mod peers;
pub mod rate;

pub use fair_queue::{FairQueue, ModelSlot, QueueError};
pub use rate::{ConcurrencySlot, LimitKind, Peers, RateStatus, Rejection};
