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

/// Receives one [`Access`] per request (the audit log, in production).
pub trait AccessSink: Send + Sync + 'static {
    fn record(&self, access: &Access);
}

/// Logs accesses with `tracing` (never credentials: only the key id).
pub struct TracingSink;

impl AccessSink for TracingSink {
    fn record(&self, a: &Access) {
        let pod = a
            .pod
            .as_ref()
            .map(|p| format!("{}/{}", p.namespace, p.name));
        tracing::info!(
            status = a.status,
            path = %a.path,
            pid = a.caller.as_ref().map(|c| c.pid),
            comm = a.caller.as_ref().map(|c| c.comm.as_str()),
            cgroup_id = a.caller.as_ref().map(|c| c.cgroup_id),
            pod = pod.as_deref(),
            role = a.association.as_ref().map(|s| s.effective_role_arn()),
            access_key_id = a.access_key_id.as_deref(),
            cache = a.cache.map(|c| c.as_str()),
            reason = a.reason.as_deref(),
            latency_us = a.latency.as_micros() as u64,
            "access"
        );
    }
}
