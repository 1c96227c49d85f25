//! pod-identity-agent: AWS credentials for pods, attributed by the kernel.
//!
//! The modules follow a request's path (see `ARCHITECTURE.md`):
//!
//! 1. [`kernel`]: eBPF redirects the pod's `connect()` and records who made it.
//! 2. [`attribution`]: cgroup id → pod → association, failing closed.
//! 3. [`sources`]: the pod directory and associations (files, Kubernetes, EKS).
//! 4. [`credentials`]: the per-pod cache and STS.
//! 5. [`http`]: the listener, the endpoint, refusals and probes; [`imds`]: the
//!    instance metadata front that keeps pods from the node's role.
//! 6. [`audit`], [`logging`] and [`metrics`]: what happened, for people and for
//!    Prometheus.
//!
//! [`config`] holds every setting; [`app`] builds the running agent from one.
//! Only [`kernel::loader`] may use `unsafe`.
#![deny(unsafe_code)]

pub mod model;

pub mod dir_watch;

pub mod kernel;

pub mod attribution;

pub mod sources;

pub mod credentials;

pub mod http;

pub mod imds;

pub mod audit;
pub mod batched;
pub mod logging;
pub mod metrics;

pub mod app;
pub mod cli;
pub mod config;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
