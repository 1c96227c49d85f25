//! Enforce mode: the agent's per-cgroup verdicts, written to the `VERDICTS` map.

/// Where kernel verdicts go (the eBPF `VERDICTS` map in production).
pub trait VerdictSink: Send + Sync + 'static {
    fn set(&self, cgroup_id: u64, verdict: Option<u32>);
}

impl VerdictSink for super::Kernel {
    fn set(&self, cgroup_id: u64, v: Option<u32>) {
        if let Err(e) = self.set_verdict(cgroup_id, v) {
            tracing::warn!(cgroup_id, error = %e, "updating kernel verdict failed");
        }
    }
}
