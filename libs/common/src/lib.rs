//! What every Aetherium service shares: configuration, telemetry, error helpers and
//! the event bus.

pub mod config;
pub mod events;
pub mod logcapture;
pub mod telemetry;

pub use config::Config;
pub use events::{EventBus, InProcessEventBus};
