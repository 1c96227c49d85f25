//! Stage 5, HTTP: the listener pods' redirected connections arrive at, the
//! credentials endpoint, and the localhost probes.
//!
//! * [`listener`]: accept, attribute through the kernel, bound the port.
//! * [`conn_limit`]: connections held, in total and per caller.
//! * [`fd_limit`]: the descriptor limit raised to cover what the listeners may hold.
//! * [`drain`]: graceful shutdown: stop accepting, finish what is in flight.
//! * [`endpoint`]: the credentials endpoint (`/v1/credentials`, `/v1/whoami`).
//! * [`refusal`]: why a caller gets nothing; each reason's status and body.
//! * [`response`]: responses shaped like the stock agent's; the `Host` header.
//! * [`ratelimit`]: per-caller token buckets.
//! * [`token`]: decoding and cross-checking the pod's token (never picks identity).
//! * [`handover`]: passing the listening sockets to the next agent, gaplessly.
//! * [`probes`]: `/healthz`, `/readyz`, `/metrics` on localhost; [`health`]: what
//!   the first two check.

pub mod conn_limit;
pub mod drain;
pub mod endpoint;
pub mod fd_limit;
pub mod handover;
pub mod health;
pub mod listener;
pub mod probes;
pub mod ratelimit;
pub mod refusal;
pub mod response;
pub mod token;

pub use endpoint::{Service, ServiceSettings, CREDENTIALS_PATH, WHOAMI_PATH};
pub use refusal::Refusal;
