//! Stage 6, audit: one record per request and per kernel event, joined by socket
//! cookie into ECS JSON lines (`docs/audit.md`), and the `audit` table reader.
//!
//! * [`access`]: the per-request record and where it goes.
//! * [`log`]: the audit log: kernel events joined with accesses into ECS JSON lines.
//! * `ecs`: the JSON shape of each record.
//! * [`flood`]: what callers can make it write: capped fields, per-source summaries.
//! * [`writer`]: where the lines go: stdout, or a size-bounded file with rotation.
//! * [`table`]: the `audit` subcommand: the log's lines, filtered, as a table.

pub mod access;
mod ecs;
pub mod flood;
pub mod log;
pub mod table;
pub mod writer;

#[cfg(test)]
mod test_support;

use std::path::PathBuf;

pub use access::{Access, AccessSink, ConnectionEvent, TracingSink};
pub use log::{run_kernel_events, AuditLog, AuditStats, Tee, JOIN_WINDOW};
pub use table::{print_table, Filter};
pub use writer::Target;

/// Failures of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log file could not be opened or written.
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
