//! Logging: `tracing` to standard error, filtered by `RUST_LOG` (default
//! `info`), and errors written as one line for it.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; they garble log files.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
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
