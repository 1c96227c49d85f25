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
//! * `pod-role`: `security-credentials` serves the pod's own role, in IMDS's
//!   JSON; `identity-credentials` still gets 404.
//! * `deny`: pods get nothing (in enforce mode, `EPERM` at `connect()`).
//! * `off`: no redirect.
//!
//! Node processes the kernel redirects before the rescan has marked their cgroup
//! as not a pod's get the real IMDS, untouched.
//!
//! * [`settings`]: [`ImdsMode`] and [`ImdsSettings`].
//! * [`policy`]: a pod's request → forward, 404, the pod's role, 403, 400, 405
//!   (pure; paths that would need normalising are refused).
//! * [`forward`]: one request to the real IMDS, bounded, only IMDS's headers.
//! * [`pod_role`]: `pod-role` mode: the pod's own role in IMDS's form.
//! * [`front`]: [`ImdsFront`], the listener's handler: attribution, node
//!   processes, pods, one audit record per request.
pub mod forward;
pub mod front;
pub mod pod_role;
pub mod policy;
pub mod settings;

#[cfg(test)]
mod test_support;

pub use front::ImdsFront;
pub use settings::{ImdsMode, ImdsSettings};
