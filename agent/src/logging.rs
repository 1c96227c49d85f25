//! The agent's own log (stderr): `tracing` lines, access lines among them, written
//! by a dedicated thread so a request never waits on a `write` to stderr.
//!
//! Lines go through a bounded queue ([`MAX_QUEUED_LINES`]) to a thread that writes
//! them buffered and flushes whenever the queue runs dry: under load one `write`
//! carries many lines; when idle each line is out at once. If the queue is full
//! (stderr blocked, or a flood) the line is dropped and counted
//! (`pod_identity_log_lines_dropped_total`); the audit log, which has its own
//! queue, still has every access.

use std::{
    io::{BufWriter, IsTerminal},
    sync::OnceLock,
};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines waiting for the log thread, at most.
pub const MAX_QUEUED_LINES: usize = 65_536;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the log thread; dropping it writes out what is queued (at exit).
#[must_use = "the log thread stops when the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

/// Install the global subscriber: `RUST_LOG` (default `info`), text (colour only
/// on a terminal) or JSON lines, on stderr through the log thread.
pub fn init(json: bool) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(MAX_QUEUED_LINES)
        .lossy(true)
        .thread_name("log-writer")
        .finish(BufWriter::new(std::io::stderr()));
    let _ = DROPPED.set(writer.error_counter());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    if json {
        b.json().init();
    } else {
        b.init();
    }
    LogGuard(guard)
}

/// Log lines dropped because the queue was full, since [`init`] (0 without it).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
