//! Request counters for `/metrics`, by HTTP status and refusal reason. Names follow
//! the stock agent's (`pod_identity_http_response{code}`) so existing dashboards
//! keep working after a migration.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{atomic::Ordering, Arc, Mutex},
};

use crate::{
    audit::{Access, AccessSink, AuditLog, AuditStats},
    credentials::{CredentialCache, Upstream},
    kernel::Kernel,
};

/// Counts accesses; cheap enough for the request path (one short lock).
#[derive(Default)]
pub struct RequestMetrics {
    by_code: Mutex<BTreeMap<u16, u64>>,
    by_reason: Mutex<BTreeMap<String, u64>>,
}

impl AccessSink for RequestMetrics {
    fn record(&self, a: &Access) {
        *self
            .by_code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(a.status)
            .or_default() += 1;
        if let Some(r) = &a.reason {
            let mut m = self.by_reason.lock().unwrap_or_else(|e| e.into_inner());
            // Reasons are a small fixed set of codes (plus STS error codes); cap anyway.
            if m.len() < 256 || m.contains_key(r) {
                *m.entry(r.clone()).or_default() += 1;
            }
        }
    }
}

impl RequestMetrics {
    /// Prometheus text for these counters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE pod_identity_http_response counter\n");
        for (code, n) in self
            .by_code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "pod_identity_http_response{{code=\"{code}\"}} {n}");
        }
        out.push_str("# TYPE pod_identity_refusals_total counter\n");
        for (reason, n) in self
            .by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let reason: String = reason
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            let _ = writeln!(
                out,
                "pod_identity_refusals_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out
    }
}

/// Everything `/metrics` shows: requests, cache, kernel events, audit lines.
pub struct Renderer {
    pub requests: Arc<RequestMetrics>,
    pub cache: CredentialCache<Upstream>,
    pub kernel: Arc<Kernel>,
    pub audit: Arc<AuditLog>,
}

impl Renderer {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let s = self.cache.stats();
        let mut out = self.requests.render();
        for (name, kind, value) in [
            ("pod_identity_cache_hits_total", "counter", s.hits),
            ("pod_identity_cache_misses_total", "counter", s.misses),
            (
                "pod_identity_cache_stale_served_total",
                "counter",
                s.stale_served,
            ),
            ("pod_identity_sts_calls_total", "counter", s.sts_calls),
            ("pod_identity_sts_errors_total", "counter", s.sts_errors),
            ("pod_identity_cache_evictions_total", "counter", s.evictions),
            (
                "pod_identity_cache_entries",
                "gauge",
                self.cache.len() as u64,
            ),
            (
                "pod_identity_kernel_events_lost_total",
                "counter",
                self.kernel.events_lost().unwrap_or(0),
            ),
        ] {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
        }
        // The stock agent's names, for its dashboards and alerts.
        out.push_str("# TYPE pod_identity_cache_state counter\n");
        for (state, n) in [
            ("hit", s.hits),
            ("miss", s.misses),
            ("evicted", s.evictions),
        ] {
            let _ = writeln!(out, "pod_identity_cache_state{{state=\"{state}\"}} {n}");
        }
        out.push_str("# TYPE pod_identity_cache_errors counter\n");
        for ((kind, code), n) in self.cache.error_counts() {
            let code: String = code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            let _ = writeln!(
                out,
                "pod_identity_cache_errors{{type=\"{kind}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str(&render_audit(&self.audit.stats));
        out
    }
}

/// Prometheus text for the audit log's counters: lines written, dropped (queue
/// full), records summarised by the flood control, fields truncated.
pub fn render_audit(stats: &AuditStats) -> String {
    let mut out = String::new();
    for (name, kind, value) in [
        (
            "pod_identity_kernel_events_total",
            "counter",
            stats.kernel_events.load(Ordering::Relaxed),
        ),
        (
            "pod_identity_audit_written_total",
            "counter",
            stats.written.load(Ordering::Relaxed),
        ),
        (
            "pod_identity_audit_dropped_total",
            "counter",
            stats.dropped.load(Ordering::Relaxed),
        ),
        (
            "pod_identity_audit_summarised_total",
            "counter",
            stats.summarised.load(Ordering::Relaxed),
        ),
        (
            "pod_identity_audit_summaries_total",
            "counter",
            stats.summaries.load(Ordering::Relaxed),
        ),
        (
            "pod_identity_audit_truncated_fields_total",
            "counter",
            stats.truncated.load(Ordering::Relaxed),
        ),
        (
            "pod_identity_audit_queue_bytes",
            "gauge",
            stats.queued_bytes.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_code_and_reason() {
        let m = RequestMetrics::default();
        m.record(&Access {
            status: 200,
            ..Default::default()
        });
        m.record(&Access {
            status: 200,
            ..Default::default()
        });
        m.record(&Access {
            status: 404,
            reason: Some("NoAssociation".into()),
            ..Default::default()
        });
        let text = m.render();
        assert!(
            text.contains("pod_identity_http_response{code=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pod_identity_http_response{code=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pod_identity_refusals_total{reason=\"NoAssociation\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn audit_counters_include_what_was_summarised_and_truncated() {
        let stats = AuditStats::default();
        stats.summarised.store(4960, Ordering::Relaxed);
        stats.summaries.store(4, Ordering::Relaxed);
        stats.truncated.store(7, Ordering::Relaxed);
        stats.dropped.store(2, Ordering::Relaxed);
        let text = render_audit(&stats);
        for line in [
            "pod_identity_audit_summarised_total 4960",
            "pod_identity_audit_summaries_total 4",
            "pod_identity_audit_truncated_fields_total 7",
            "pod_identity_audit_dropped_total 2",
            "# TYPE pod_identity_audit_queue_bytes gauge",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }
}
