//! pod-identity-agent: AWS credentials for pods, attributed by the kernel.
//!
//! See `ARCHITECTURE.md` at the repository root for how the modules fit together.
//! Only [`ebpf`] may use `unsafe` (the `aya::Pod` impls of the shared records).
#![deny(unsafe_code)]

pub mod associations;
pub mod attribution;
pub mod audit;
pub mod cache;
pub mod cgroup;
pub mod config;
pub mod creds;
pub mod ebpf;
pub mod eks;
pub mod kubernetes;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod pods;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod sts;
pub mod token;
