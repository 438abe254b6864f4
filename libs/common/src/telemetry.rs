//! Logging setup: human-readable output on a terminal, JSON lines for machines, and
//! the capture of the platform's own records for the logs API
//! ([`crate::logcapture`]).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, LoggingConfig};
use crate::logcapture::CaptureLayer;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured
/// level of the terminal output; `logging.capture_level` filters what the logs API
/// keeps. Calling it twice is harmless (the second call is ignored).
pub fn init(config: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let capture_filter =
        EnvFilter::try_new(&config.capture_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let capture = CaptureLayer.with_filter(capture_filter);
    let registry = tracing_subscriber::registry().with(capture);
    let _ = match config.format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
    };
}
