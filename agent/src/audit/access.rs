//! One record per request (who, which pod, which role, what answer), and where it goes.

use std::time::Duration;

use crate::{
    attribution::Caller,
    credentials::CacheOutcome,
    model::{Association, PodInfo},
};

/// Everything known about one request, for logs and the audit log.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub caller: Option<Caller>,
    pub cgroup_path: Option<String>,
    pub container_id: Option<String>,
    pub pod: Option<PodInfo>,
    pub association: Option<Association>,
    pub access_key_id: Option<String>,
    pub assumed_role_arn: Option<String>,
    pub cache: Option<CacheOutcome>,
    pub status: u16,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub path: String,
    pub method: String,
    /// The client's address as the agent saw it.
    pub peer: Option<std::net::SocketAddr>,
    pub latency: Duration,
}

/// What the listener tells the sinks about an attributed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The listener accepted it; its requests (if any) follow.
    Accepted,
    /// It ended (closed by either side, or at the end of its lifetime).
    Closed,
}

/// Receives one [`Access`] per request (the audit log, in production).
pub trait AccessSink: Send + Sync + 'static {
    fn record(&self, access: &Access);

    /// The attributed connection whose kernel socket cookie is `socket_cookie`
    /// was accepted or has ended (the audit log then knows a request may still
    /// come, or will not). Default: nothing.
    fn connection(&self, _socket_cookie: u64, _event: ConnectionEvent) {}
}

/// Logs accesses with `tracing` (never credentials: only the key id). Echoed
/// fields are capped as in the audit log; refusals of connections without a
/// kernel record (anyone on the node's network can cause them) are logged at
/// `debug`: the audit log has them, flood-controlled.
pub struct TracingSink;

impl AccessSink for TracingSink {
    fn record(&self, a: &Access) {
        use super::flood::{cap_string, MAX_FIELD_BYTES};
        let capped = |s: &str| {
            let mut s = s.to_owned();
            cap_string(&mut s, MAX_FIELD_BYTES);
            s
        };
        let pod = a
            .pod
            .as_ref()
            .map(|p| capped(&format!("{}/{}", p.namespace, p.name)));
        let path = capped(&a.path);
        let comm = a.caller.as_ref().map(|c| capped(&c.comm));
        let reason = a.reason.as_deref().map(capped);
        // The association's role, or (EKS Auth chose it) the role of what was issued.
        let role = a
            .association
            .as_ref()
            .map(|s| s.effective_role_arn().to_owned())
            .or_else(|| {
                a.assumed_role_arn
                    .as_deref()
                    .and_then(crate::credentials::types::role_arn_from_assumed)
            });
        macro_rules! access {
            ($level:ident) => {
                tracing::$level!(
                    status = a.status,
                    path = %path,
                    pid = a.caller.as_ref().map(|c| c.pid),
                    comm = comm.as_deref(),
                    cgroup_id = a.caller.as_ref().map(|c| c.cgroup_id),
                    pod = pod.as_deref(),
                    role = role.as_deref(),
                    access_key_id = a.access_key_id.as_deref(),
                    cache = a.cache.map(|c| c.as_str()),
                    reason = reason.as_deref(),
                    latency_us = a.latency.as_micros() as u64,
                    "access"
                )
            };
        }
        if a.caller.is_none() {
            access!(debug);
        } else {
            access!(info);
        }
    }
}
