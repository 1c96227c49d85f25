//! Stage 6, audit: one record per request and per kernel event, joined by socket
//! cookie into ECS JSON lines (`docs/audit.md`), and the `audit` table reader.
//!
//! * [`access`]: the per-request record and where it goes.
//! * [`log`]: the audit log: kernel events joined with accesses, rotation.

pub mod access;
pub mod log;

pub use access::{Access, AccessSink, TracingSink};
pub use log::*;
