//! Logging: `tracing` to standard error, as plain lines or JSON objects,
//! filtered by `RUST_LOG` or `[log] level` (default `info`), and errors
//! written as one line for it. The access log is the `meridian::access`
//! target: one event per request.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// The target of the access log's events.
pub const ACCESS: &str = "meridian::access";

/// Installs the global subscriber with the defaults (plain, `info`); later
/// calls do nothing.
pub fn init() {
    init_with(&Log::default());
}

/// Installs the global subscriber as `[log]` says; `RUST_LOG`, when set,
/// wins over `log.level`. Later calls do nothing.
pub fn init_with(log: &Log) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        // Colour codes only help a person at a terminal; they garble log files.
        LogFormat::Plain => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// An error and its sources, as one line: hyper's errors say little without
/// their causes ("client error (Connect)": refused? timed out?).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
