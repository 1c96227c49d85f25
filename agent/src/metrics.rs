//! `/metrics`: a [`prometheus_client`] registry built once ([`Renderer::new`]),
//! encoded in the Prometheus text format (0.0.4) at each scrape.
//!
//! What moves on the request path is cheap: one short lock for the per-code and
//! per-reason counters, one histogram observation. Everything that already has a
//! counter elsewhere (the cache's, the kernel's, the audit log's, the process's)
//! is read by a [`Collector`] at scrape time.
//!
//! Names follow the stock agent's (`pod_identity_http_response{code}`,
//! `pod_identity_cache_state{state}`, `pod_identity_cache_errors{type,code}`) so
//! existing dashboards keep working after a migration. `prometheus-client` appends
//! `_total` to every counter; those three have no `_total` in the stock agent, so
//! they are exposed as `untyped` (Prometheus stores and `rate()`s them all the same).

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        family::Family,
        gauge::ConstGauge,
        histogram::{exponential_buckets, Histogram},
        info::Info,
        MetricType,
    },
    registry::Registry,
};

use crate::{
    audit::{Access, AccessSink, AuditLog, AuditStats},
    credentials::{CredentialCache, Upstream},
    kernel::Kernel,
    sources::kubernetes::EventStats,
};

/// The `Content-Type` of what [`Renderer::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Refusal reasons that mean the agent could not tell which pod is calling
/// (`pod_identity_attribution_misses_total{reason}`).
const ATTRIBUTION_MISSES: &[&str] = &[
    "Unattributed",
    "LookupFailed",
    "CgroupNotFound",
    "NotAPod",
    "AmbiguousCgroup",
    "CgroupError",
    "UnknownPod",
];

/// Distinct refusal reasons kept (they are a small fixed set plus upstream codes).
const MAX_REASONS: usize = 256;

/// Request latency by outcome, in seconds.
type RequestLatency = Family<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>;

/// Buckets from 250 µs to ~16 s: cache hits answer in well under a millisecond,
/// misses wait for the upstream.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 17))
}

/// Counts accesses; cheap enough for the request path (one short lock).
pub struct RequestMetrics {
    by_code: Mutex<BTreeMap<u16, u64>>,
    by_reason: Mutex<BTreeMap<String, u64>>,
    latency: RequestLatency,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            by_code: Mutex::default(),
            by_reason: Mutex::default(),
            latency: Family::new_with_constructor(request_histogram),
        }
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}

/// `served` (2xx/3xx), `refused` (4xx: the agent said no), `error` (5xx: the
/// upstream or the agent failed).
fn outcome(status: u16) -> &'static str {
    match status {
        0..=399 => "served",
        400..=499 => "refused",
        _ => "error",
    }
}

/// Keeps label values to `[A-Za-z0-9_-]` (codes come from the upstream).
fn label_safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
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
            if m.len() < MAX_REASONS || m.contains_key(r) {
                *m.entry(r.clone()).or_default() += 1;
            }
        }
        self.latency
            .get_or_create(&[("outcome", outcome(a.status))])
            .observe(a.latency.as_secs_f64());
    }
}

impl RequestMetrics {
    /// Registers the latency histogram and the counters' collector.
    fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register(
            "pod_identity_request_duration_seconds",
            "Time to answer a credential request, by outcome (served, refused, error)",
            self.latency.clone(),
        );
        registry.register_collector(Box::new(self.clone()));
    }

    /// Prometheus text for these counters alone (tests).
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        encode(&registry)
    }
}

impl Collector for RequestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let codes: Vec<(u16, u64)> = self
            .by_code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(c, n)| (*c, *n))
            .collect();
        let reasons: Vec<(String, u64)> = self
            .by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, n)| (label_safe(r), *n))
            .collect();
        untyped_family(
            &mut encoder,
            "pod_identity_http_response",
            "Responses by HTTP status code (the stock agent's name; a counter)",
            codes.iter().map(|(c, n)| ([("code", c.to_string())], *n)),
        )?;
        counter_family(
            &mut encoder,
            "pod_identity_refusals",
            "Refused requests by reason",
            reasons.iter().map(|(r, n)| ([("reason", r.clone())], *n)),
        )?;
        counter_family(
            &mut encoder,
            "pod_identity_attribution_misses",
            "Requests whose caller could not be tied to a pod, by reason \
             (no kernel record, cgroup not found, not a pod, unknown pod)",
            reasons
                .iter()
                .filter(|(r, _)| ATTRIBUTION_MISSES.contains(&r.as_str()))
                .map(|(r, n)| ([("reason", r.clone())], *n)),
        )
    }
}

/// One counter family (`name_total{labels}`) from values read at scrape time.
fn counter_family<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in values {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One `untyped` family: a counter whose name must stay without `_total`.
fn untyped_family<L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Unknown)?;
    for (labels, v) in values {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// One counter without labels.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// One gauge without labels.
fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug here.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics");
    }
    out
}

/// The cache's counters, read at scrape time.
struct CacheCollector(CredentialCache<Upstream>);

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheCollector").finish_non_exhaustive()
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        counter(
            &mut e,
            "pod_identity_cache_hits",
            "Requests served from the cache",
            s.hits,
        )?;
        counter(
            &mut e,
            "pod_identity_cache_misses",
            "Requests that waited for an upstream call",
            s.misses,
        )?;
        counter(
            &mut e,
            "pod_identity_cache_stale_served",
            "Requests served older credentials because the upstream failed",
            s.stale_served,
        )?;
        counter(
            &mut e,
            "pod_identity_sts_calls",
            "Upstream (STS or EKS Auth) calls started",
            s.sts_calls,
        )?;
        counter(
            &mut e,
            "pod_identity_sts_errors",
            "Upstream (STS or EKS Auth) calls that failed",
            s.sts_errors,
        )?;
        counter(
            &mut e,
            "pod_identity_cache_evictions",
            "Cache entries removed (pod gone, final error, size bound)",
            s.evictions,
        )?;
        gauge(
            &mut e,
            "pod_identity_cache_entries",
            "Cache entries (credentials held, or being fetched)",
            self.0.len() as u64,
        )?;
        // The stock agent's names, for its dashboards and alerts.
        untyped_family(
            &mut e,
            "pod_identity_cache_state",
            "Cache lookups by state: hit, miss, evicted (the stock agent's name; a counter)",
            [
                ("hit", s.hits),
                ("miss", s.misses),
                ("evicted", s.evictions),
            ]
            .into_iter()
            .map(|(state, n)| ([("state", state)], n)),
        )?;
        let errors = self.0.error_counts();
        untyped_family(
            &mut e,
            "pod_identity_cache_errors",
            "Failed upstream calls by type (fetch, refresh) and error code \
             (the stock agent's name; a counter)",
            errors.iter().map(|((kind, code), n)| {
                ([("type", kind.to_string()), ("code", label_safe(code))], *n)
            }),
        )
    }
}

/// The kernel's event counters (the ring buffer's losses), read at scrape time.
struct KernelCollector(Arc<Kernel>);

impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCollector").finish_non_exhaustive()
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter(
            &mut e,
            "pod_identity_kernel_events_lost",
            "Kernel connection events lost (ring buffer full); such connections are refused as unattributed",
            self.0.events_lost().unwrap_or(0),
        )
    }
}

/// The audit log's counters, read at scrape time.
struct AuditCollector(Arc<AuditLog>);

impl std::fmt::Debug for AuditCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditCollector").finish_non_exhaustive()
    }
}

impl Collector for AuditCollector {
    fn encode(&self, e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_audit(&self.0.stats, e)
    }
}

fn encode_audit(stats: &AuditStats, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter(
        &mut e,
        "pod_identity_kernel_events",
        "Kernel connection events read",
        get(&stats.kernel_events),
    )?;
    counter(
        &mut e,
        "pod_identity_audit_written",
        "Audit lines written",
        get(&stats.written),
    )?;
    counter(
        &mut e,
        "pod_identity_audit_dropped",
        "Audit records dropped (queue full)",
        get(&stats.dropped),
    )?;
    counter(
        &mut e,
        "pod_identity_audit_summarised",
        "Audit records folded into summaries by the flood control",
        get(&stats.summarised),
    )?;
    counter(
        &mut e,
        "pod_identity_audit_summaries",
        "Summary lines the flood control wrote",
        get(&stats.summaries),
    )?;
    counter(
        &mut e,
        "pod_identity_audit_truncated_fields",
        "Audit fields truncated to their size cap",
        get(&stats.truncated),
    )?;
    gauge(
        &mut e,
        "pod_identity_audit_queue_bytes",
        "Bytes waiting in the audit queue",
        get(&stats.queued_bytes),
    )
}

/// The Kubernetes Events' counters, read at scrape time.
#[derive(Debug)]
struct KubeEventsCollector(Arc<EventStats>);

impl Collector for KubeEventsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter_family(
            &mut e,
            "pod_identity_kubernetes_events",
            "Kubernetes Events for refused pods by outcome: created, series_updated, rate_limited (folded into an Event), dropped (queue full or too many pods), failed (API call)",
            self.0
                .snapshot()
                .into_iter()
                .map(|(outcome, n)| ([("outcome", outcome)], n)),
        )
    }
}

/// Prometheus text for the Kubernetes Events' counters alone (tests).
pub fn render_kube_events(stats: Arc<EventStats>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(KubeEventsCollector(stats)));
    encode(&registry)
}

/// The audit counters alone (tests).
#[derive(Debug)]
struct AuditStatsCollector(Arc<AuditStats>);

impl Collector for AuditStatsCollector {
    fn encode(&self, e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_audit(&self.0, e)
    }
}

/// Prometheus text for the audit log's counters: lines written, dropped (queue
/// full), records summarised by the flood control, fields truncated.
pub fn render_audit(stats: Arc<AuditStats>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AuditStatsCollector(stats)));
    encode(&registry)
}

/// The agent process: memory, file descriptors, CPU time, read from `/proc/self`
/// at scrape time (a few small reads). Standard `process_*` names.
#[derive(Debug)]
pub struct ProcessCollector;

/// What [`ProcessCollector`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub cpu_seconds: f64,
    pub threads: i64,
}

impl ProcessStats {
    /// This process's, from `/proc/self/stat` and `/proc/self/fd`.
    pub fn read() -> Option<Self> {
        let me = procfs::process::Process::myself().ok()?;
        let stat = me.stat().ok()?;
        let ticks = procfs::ticks_per_second().max(1) as f64;
        Some(Self {
            resident_bytes: stat.rss.saturating_mul(procfs::page_size()),
            virtual_bytes: stat.vsize,
            open_fds: me.fd_count().map(|n| n as u64).unwrap_or(0),
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            threads: stat.num_threads,
        })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        gauge(
            &mut e,
            "process_resident_memory_bytes",
            "Resident memory size, in bytes",
            p.resident_bytes,
        )?;
        gauge(
            &mut e,
            "process_virtual_memory_bytes",
            "Virtual memory size, in bytes",
            p.virtual_bytes,
        )?;
        gauge(
            &mut e,
            "process_open_fds",
            "Open file descriptors",
            p.open_fds,
        )?;
        counter(
            &mut e,
            "pod_identity_log_lines_dropped",
            "Log lines (stderr) dropped because the log queue was full",
            crate::logging::dropped_lines(),
        )?;
        gauge(&mut e, "process_threads", "OS threads", p.threads)
    }
}

/// Everything `/metrics` shows: requests, upstream calls, cache, kernel events,
/// audit lines, the process, the build. The registry is built once.
pub struct Renderer {
    registry: Registry,
}

impl Renderer {
    pub fn new(
        requests: Arc<RequestMetrics>,
        cache: CredentialCache<Upstream>,
        kernel: Arc<Kernel>,
        audit: Arc<AuditLog>,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "pod_identity_build",
            "The agent's version (value 1)",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        requests.register(&mut registry);
        registry.register(
            "pod_identity_upstream_request_duration_seconds",
            "Upstream call latency by API (sts, eks-auth) and outcome (ok or the error code)",
            cache.upstream_latency(),
        );
        registry.register_collector(Box::new(CacheCollector(cache)));
        registry.register_collector(Box::new(KernelCollector(kernel)));
        registry.register_collector(Box::new(AuditCollector(audit)));
        registry.register_collector(Box::new(ProcessCollector));
        Self { registry }
    }

    /// Also count the Kubernetes Events posted for refused pods.
    pub fn with_kube_events(mut self, stats: Arc<EventStats>) -> Self {
        self.registry
            .register_collector(Box::new(KubeEventsCollector(stats)));
        self
    }

    /// Prometheus text exposition (0.0.4, [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        encode(&self.registry)
    }
}

/// A checked sample line of the text exposition.
#[cfg(test)]
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the text exposition strictly enough to catch what a scraper would
/// reject: `# HELP`/`# TYPE` before their samples, one `# TYPE` per family, valid
/// names and label syntax, numeric values, a sample's family declared.
#[cfg(test)]
fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').ok_or(line)?;
            if !valid_name(name)
                || !["counter", "gauge", "histogram", "untyped", "summary"].contains(&ty)
            {
                return Err(format!("bad TYPE: {line}"));
            }
            if types.insert(name.to_owned(), ty.to_owned()).is_some() {
                return Err(format!("TYPE twice: {line}"));
            }
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            return Err(format!("stray comment: {line}"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or(line)?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().map_err(|_| format!("bad value: {line}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or(line)?;
                let mut labels = Vec::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or(line)?;
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or(format!("unquoted label: {line}"))?;
                    if !valid_name(k) {
                        return Err(format!("bad label name: {line}"));
                    }
                    labels.push((k.to_owned(), v.to_owned()));
                }
                (name, labels)
            }
        };
        if !valid_name(name) {
            return Err(format!("bad name: {line}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("sample without TYPE: {line}"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The value of the sample `name` whose labels include `labels`.
#[cfg(test)]
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_by_code_and_reason() {
        let m = Arc::new(RequestMetrics::default());
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
        parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn the_request_histogram_moves_by_outcome_and_misses_are_counted() {
        let m = Arc::new(RequestMetrics::default());
        for (status, reason, ms) in [
            (200, None, 1),
            (200, None, 300),
            (404, Some("CgroupNotFound"), 2),
            (404, Some("Unattributed"), 2),
            (404, Some("NoAssociation"), 2),
            (500, Some("InternalFailure"), 20),
        ] {
            m.record(&Access {
                status,
                reason: reason.map(Into::into),
                latency: Duration::from_millis(ms),
                ..Default::default()
            });
        }
        let text = m.render();
        let s = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let h = "pod_identity_request_duration_seconds";
        let count = |o| value(&s, &format!("{h}_count"), &[("outcome", o)]);
        assert_eq!(count("served"), Some(2.0), "{text}");
        assert_eq!(count("refused"), Some(3.0), "{text}");
        assert_eq!(count("error"), Some(1.0), "{text}");
        let sum = value(&s, &format!("{h}_sum"), &[("outcome", "served")]).unwrap();
        assert!((sum - 0.301).abs() < 1e-9, "{text}");
        // One fast request under 2 ms, both under +Inf.
        let le = |b| {
            value(
                &s,
                &format!("{h}_bucket"),
                &[("outcome", "served"), ("le", b)],
            )
        };
        assert_eq!(le("0.002"), Some(1.0), "{text}");
        assert_eq!(le("+Inf"), Some(2.0), "{text}");
        let miss = |r| {
            value(
                &s,
                "pod_identity_attribution_misses_total",
                &[("reason", r)],
            )
        };
        assert_eq!(miss("CgroupNotFound"), Some(1.0), "{text}");
        assert_eq!(miss("Unattributed"), Some(1.0), "{text}");
        assert_eq!(miss("NoAssociation"), None, "{text}");
    }

    #[test]
    fn audit_counters_include_what_was_summarised_and_truncated() {
        let stats = Arc::new(AuditStats::default());
        stats.summarised.store(4960, Ordering::Relaxed);
        stats.summaries.store(4, Ordering::Relaxed);
        stats.truncated.store(7, Ordering::Relaxed);
        stats.dropped.store(2, Ordering::Relaxed);
        let text = render_audit(stats);
        for line in [
            "pod_identity_audit_summarised_total 4960",
            "pod_identity_audit_summaries_total 4",
            "pod_identity_audit_truncated_fields_total 7",
            "pod_identity_audit_dropped_total 2",
            "# TYPE pod_identity_audit_queue_bytes gauge",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn process_metrics_are_read_and_non_zero() {
        let p = ProcessStats::read().expect("/proc/self");
        assert!(p.resident_bytes > 0, "{p:?}");
        assert!(p.open_fds > 0, "{p:?}");
        assert!(p.threads > 0, "{p:?}");
        // Burn a little CPU so the tick count cannot be zero.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let text = encode(&registry);
        let s = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            let v = value(&s, name, &[]).unwrap_or_else(|| panic!("{name}: {text}"));
            assert!(v > 0.0, "{name}: {text}");
        }
    }

    #[test]
    fn the_parser_rejects_what_a_scraper_would() {
        for bad in [
            "x 1\n",
            "# TYPE x counter\nx{a=b} 1\n",
            "# TYPE x counter\nx one\n",
            "# TYPE x counter\n# TYPE x counter\nx 1\n",
            "# TYPE x bogus\nx 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(
            parse("# TYPE x counter\nx_total 1\n").is_err(),
            "a counter's samples need their family declared"
        );
    }
}
