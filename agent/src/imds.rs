//! Stage 5b, the node-role guard: an instance metadata (IMDS) front for pods.
//!
//! The kernel sends pods' connections to `169.254.169.254:80` (and
//! `[fd00:ec2::254]:80`, and the IPv4-mapped form) to this front instead of the
//! real IMDS, with the same attribution as the credentials endpoint; processes
//! that are not in a pod (and the agent itself) are untouched. The front forwards
//! what is safe to the real IMDS and never hands a pod the node's role:
//!
//! * `block-credentials` (default): everything but the role credential paths
//!   (`meta-data/iam/security-credentials/…`, `meta-data/identity-credentials/…`)
//!   is forwarded, IMDSv2 token flow included; those get 404.
//! * `pod-role`: those paths serve the pod's own association, in IMDS's JSON.
//! * `deny`: pods get nothing (in enforce mode, `EPERM` at `connect()`).
//! * `off`: no redirect.
//!
//! * [`settings`]: [`ImdsMode`] and [`ImdsSettings`].
pub mod forward;
pub mod pod_role;
pub mod policy;
pub mod settings;

#[cfg(test)]
mod test_support;

pub use settings::{ImdsMode, ImdsSettings};
