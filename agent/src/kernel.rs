//! Stage 1, the kernel: the eBPF programs that redirect pods' credential connects to
//! the agent and record who made them.
//!
//! * [`floor`]: what the agent needs from the kernel (5.8, cgroup2, bpffs), checked
//!   before loading.
//! * [`loader`]: load, configure, attach, pin and re-adopt; read the maps. The only
//!   userspace module allowed `unsafe` (the `aya::Pod` impls of the shared records).
//! * [`pins`]: bpffs pins (links replaced on restart, `uninstall`).
//! * [`settings`]: the runtime `CONFIG` record built from [`crate::config::KernelConfig`].
//! * [`tuple`](self::tuple): socket addresses ↔ the 4-tuple keys `sock_ops` stores.
//! * [`verdicts`]: enforce mode's per-cgroup verdicts.

pub mod floor;
pub mod loader;
pub mod pins;
pub mod settings;
pub mod tuple;
pub mod verdicts;

pub use loader::{EventReader, Kernel, KernelError};
pub use pins::unpin_all;
pub use verdicts::VerdictSink;
