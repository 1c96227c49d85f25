//! Stage 2, attribution: from the kernel's record of a connection to the pod that
//! made it. The caller's cgroup id → cgroup directory → pod UID (anchored at the
//! kubelet's tree) → pod → association, failing closed at every step.
//!
//! * [`caller`]: the kernel's record as a value.
//! * [`cgroup`]: cgroup path parsing, cgroup2 mount discovery, the id → path index.
//! * [`resolver`]: caller → pod → association.
//! * [`rescan`]: pods appearing and disappearing in the cgroup tree: prefetch
//!   credentials, stop renewing for gone pods, keep enforce-mode verdicts current.

pub mod caller;
pub mod cgroup;
pub mod rescan;
pub mod resolver;

pub use caller::Caller;
pub use resolver::{Resolved, Resolver};
