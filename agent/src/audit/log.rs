//! The audit log: one JSON line per access, in Elastic Common Schema (ECS) field
//! names so SIEM pipelines ingest it without mapping. See `docs/audit.md`.
//!
//! Two streams feed it and are joined here:
//! * the kernel's events (ring buffer): one per `connect()` to a credentials
//!   address, `redirected` or `denied` (enforce mode);
//! * the endpoint's [`Access`] records: what happened to each request.
//!
//! A redirected connect is written once, joined with its first request (by socket
//! cookie). A kernel `denied` event, or a redirected connect that never sent a
//! request within [`JOIN_WINDOW`], is written on its own. Requests on connections
//! without a kernel record (`Unattributed`) are written from the endpoint side.
//! Nothing is dropped silently: a full queue is counted and reported.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use agent_ebpf::{action, Identity};
use serde_json::{json, Value};

use crate::{
    attribution::Caller,
    audit::{Access, AccessSink},
    credentials::types::rfc3339_utc,
};

/// How long a redirected connect waits for its request before it is written alone.
pub const JOIN_WINDOW: Duration = Duration::from_secs(10);

/// Redirected connects held while waiting for their request; beyond this they are
/// written at once, so memory stays bounded under a connect flood.
pub const MAX_PENDING: usize = 100_000;

/// Failures of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log file could not be opened or written.
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// A file rotated at `max_bytes`, keeping `keep` old files (`.1` newest).
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
}

/// Size-bounded writer with rotation.
struct Writer {
    target: Target,
    out: Option<BufWriter<File>>,
    size: u64,
}

impl Writer {
    fn open(target: Target) -> Result<Writer, AuditError> {
        let mut w = Writer {
            target,
            out: None,
            size: 0,
        };
        w.reopen()?;
        Ok(w)
    }

    fn reopen(&mut self) -> Result<(), AuditError> {
        if let Target::File { path, .. } = &self.target {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| AuditError::Io {
                    path: path.clone(),
                    source,
                })?;
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.out = Some(BufWriter::new(f));
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let Target::File { path, keep, .. } = self.target.clone() else {
            return Ok(());
        };
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
        let name = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        if keep > 0 {
            let _ = std::fs::rename(&path, name(1));
        } else {
            let _ = std::fs::remove_file(&path);
        }
        self.reopen()
    }

    fn write_line(&mut self, line: &str) -> Result<(), AuditError> {
        match &self.target {
            Target::Stdout => {
                let mut so = std::io::stdout().lock();
                let _ = writeln!(so, "{line}");
                let _ = so.flush();
                Ok(())
            }
            Target::File {
                path, max_bytes, ..
            } => {
                let (path, max) = (path.clone(), *max_bytes);
                if self.size + line.len() as u64 + 1 > max && self.size > 0 {
                    self.rotate()?;
                }
                // A failed reopen (during rotation) is retried here, line by line,
                // rather than leaving the writer without a file for good.
                if self.out.is_none() {
                    self.reopen()?;
                }
                let Some(out) = self.out.as_mut() else {
                    return Err(AuditError::Io {
                        path,
                        source: std::io::Error::other("audit file not open"),
                    });
                };
                writeln!(out, "{line}")
                    .and_then(|_| out.flush())
                    .map_err(|source| AuditError::Io { path, source })?;
                self.size += line.len() as u64 + 1;
                Ok(())
            }
        }
    }
}

/// Counters of the audit log.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub written: AtomicU64,
    /// Lines dropped because the writer queue was full (counted, reported).
    pub dropped: AtomicU64,
    pub kernel_events: AtomicU64,
}

struct Pending {
    event: Identity,
    seen: Instant,
}

/// The audit log. Cheap to share; lines are written by a dedicated thread so the
/// request path never blocks on disk.
pub struct AuditLog {
    tx: mpsc::SyncSender<String>,
    pub stats: Arc<AuditStats>,
    /// Redirected connects waiting for their request, by socket cookie.
    pending: Mutex<HashMap<u64, Pending>>,
    /// Socket cookies already written from the endpoint side, so a late kernel
    /// event is not written twice.
    joined: Mutex<HashMap<u64, Instant>>,
    cluster: String,
    join_window: Duration,
    /// CLOCK_MONOTONIC → wall clock offset for kernel timestamps.
    boot_offset: Duration,
}

impl AuditLog {
    /// Open with the default [`JOIN_WINDOW`].
    pub fn open(target: Target, cluster: &str) -> Result<Arc<AuditLog>, AuditError> {
        Self::open_with_window(target, cluster, JOIN_WINDOW)
    }

    pub fn open_with_window(
        target: Target,
        cluster: &str,
        join_window: Duration,
    ) -> Result<Arc<AuditLog>, AuditError> {
        let mut writer = Writer::open(target)?;
        let (tx, rx) = mpsc::sync_channel::<String>(65_536);
        let stats = Arc::new(AuditStats::default());
        let s2 = stats.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                for line in rx {
                    match writer.write_line(&line) {
                        Ok(()) => {
                            s2.written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            s2.dropped.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "audit write failed");
                        }
                    }
                }
            })
            .map_err(|source| AuditError::Io {
                path: "audit-writer thread".into(),
                source,
            })?;
        Ok(Arc::new(AuditLog {
            tx,
            stats,
            pending: Mutex::new(HashMap::new()),
            joined: Mutex::new(HashMap::new()),
            cluster: cluster.to_owned(),
            join_window,
            boot_offset: monotonic_to_wall_offset(),
        }))
    }

    fn emit(&self, v: Value) {
        if self.tx.try_send(v.to_string()).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wall time of a kernel CLOCK_MONOTONIC timestamp.
    fn kernel_wall(&self, ktime_ns: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.boot_offset + Duration::from_nanos(ktime_ns)
    }

    /// A kernel event from the ring buffer.
    pub fn kernel_event(&self, ev: Identity) {
        self.stats.kernel_events.fetch_add(1, Ordering::Relaxed);
        if ev.action == action::DENIED {
            self.emit(self.denied_record(&ev));
            return;
        }
        let mut joined = lock(&self.joined);
        if joined.remove(&ev.socket_cookie).is_some() {
            return;
        }
        drop(joined);
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING {
            // A flood of connects that send nothing: write them now instead of
            // holding them for the join window.
            drop(pending);
            self.emit(self.no_request_record(&ev));
            return;
        }
        pending.insert(
            ev.socket_cookie,
            Pending {
                event: ev,
                seen: Instant::now(),
            },
        );
    }

    /// Write redirected connects that never sent a request; forget old joins.
    pub fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Identity> = {
            let mut p = lock(&self.pending);
            let old: Vec<u64> = p
                .iter()
                .filter(|(_, v)| now - v.seen > self.join_window)
                .map(|(k, _)| *k)
                .collect();
            old.into_iter()
                .filter_map(|k| p.remove(&k))
                .map(|v| v.event)
                .collect()
        };
        for ev in expired {
            self.emit(self.no_request_record(&ev));
        }
        lock(&self.joined).retain(|_, t| now - *t < self.join_window * 3);
    }

    fn base(&self, ts: SystemTime, caller: Option<&Caller>) -> Value {
        let mut v = json!({
            "@timestamp": rfc3339_millis(ts),
            "ecs": {"version": "8.11.0"},
            "event": {"kind": "event", "category": ["iam", "network"], "module": "pod_identity", "dataset": "pod_identity.access"},
            "orchestrator": {"type": "kubernetes", "cluster": {"name": self.cluster}},
            "observer": {"type": "agent", "product": "pod-identity-agent"},
        });
        if let Some(c) = caller {
            v["process"] = json!({
                "pid": c.pid, "name": c.comm, "thread": {"id": c.tid},
                "user": {"id": c.uid.to_string()}, "group": {"id": c.gid.to_string()}
            });
            v["user"] = json!({"id": c.uid.to_string()});
            v["group"] = json!({"id": c.gid.to_string()});
            v["destination"] = json!({"ip": c.original_destination.ip().to_string(), "port": c.original_destination.port()});
            v["pod_identity"] = json!({
                "kernel": {
                    "cgroup_id": c.cgroup_id, "netns_cookie": c.netns_cookie, "socket_cookie": c.socket_cookie,
                    "connect_time": rfc3339_millis(self.kernel_wall(c.connect_ktime_ns)),
                    "monotonic_ns": c.connect_ktime_ns,
                }
            });
        }
        v
    }

    fn denied_record(&self, ev: &Identity) -> Value {
        let c = Caller::from(ev);
        let mut v = self.base(self.kernel_wall(ev.ktime_ns), Some(&c));
        v["event"]["action"] = json!("connect-denied");
        v["event"]["type"] = json!(["connection", "denied"]);
        v["event"]["outcome"] = json!("failure");
        v["event"]["reason"] =
            json!("kernel enforce: cgroup has no association or is not a pod (EPERM)");
        v["pod_identity"]["kernel"]["action"] = json!("denied");
        v
    }

    fn no_request_record(&self, ev: &Identity) -> Value {
        let c = Caller::from(ev);
        let mut v = self.base(self.kernel_wall(ev.ktime_ns), Some(&c));
        v["event"]["action"] = json!("connect-without-request");
        v["event"]["type"] = json!(["connection"]);
        v["event"]["outcome"] = json!("unknown");
        v["pod_identity"]["kernel"]["action"] = json!("redirected");
        v
    }

    fn access_record(&self, a: &Access) -> Value {
        let mut v = self.base(SystemTime::now(), a.caller.as_ref());
        let ok = a.status == 200;
        let action = match (a.path.as_str(), ok) {
            (crate::http::endpoint::CREDENTIALS_PATH, true) => "credentials-served",
            (crate::http::endpoint::CREDENTIALS_PATH, false) => "credentials-refused",
            (_, true) => "request-served",
            (_, false) => "request-refused",
        };
        v["event"]["action"] = json!(action);
        v["event"]["type"] = json!(["access", if ok { "allowed" } else { "denied" }]);
        v["event"]["outcome"] = json!(if ok { "success" } else { "failure" });
        v["event"]["duration"] = json!(a.latency.as_nanos() as u64);
        if let Some(r) = &a.reason {
            v["event"]["reason"] = json!(r);
        }
        if let Some(m) = &a.message {
            v["message"] = json!(m);
        }
        v["http"] = json!({"request": {"method": a.method}, "response": {"status_code": a.status}});
        v["url"] = json!({"path": a.path});
        if let Some(p) = a.peer {
            v["source"] = json!({"ip": p.ip().to_string(), "port": p.port()});
        }
        if let Some(id) = &a.container_id {
            v["container"] = json!({"id": id});
        }
        if let Some(p) = &a.pod {
            v["orchestrator"]["namespace"] = json!(p.namespace);
            v["orchestrator"]["resource"] = json!({"type": "pod", "name": p.name, "id": p.uid});
        }
        let pi = v["pod_identity"].as_object_mut().map(|_| ()).is_some();
        if !pi {
            v["pod_identity"] = json!({});
        }
        if let Some(p) = &a.pod {
            v["pod_identity"]["service_account"] = json!(p.service_account);
            v["pod_identity"]["host_network"] = json!(p.host_network);
        }
        if let Some(path) = &a.cgroup_path {
            v["pod_identity"]["cgroup_path"] = json!(path);
        }
        if let Some(s) = &a.association {
            v["pod_identity"]["association"] = json!({
                "source": s.source, "id": s.association_id, "role_arn": s.role_arn,
                "target_role_arn": s.target_role_arn, "mode": s.mode,
            });
            v["pod_identity"]["role_arn"] = json!(s.effective_role_arn());
        }
        if let Some(arn) = &a.assumed_role_arn {
            v["pod_identity"]["assumed_role_arn"] = json!(arn);
            v["pod_identity"]["session_name"] = json!(arn.rsplit('/').next().unwrap_or(""));
            if let Some(acct) = crate::credentials::types::account_id_from_arn(arn) {
                v["cloud"] = json!({"provider": "aws", "account": {"id": acct}});
            }
        }
        // The access key id only: never the secret key or the session token.
        if let Some(k) = &a.access_key_id {
            v["pod_identity"]["access_key_id"] = json!(k);
        }
        if let Some(c) = a.cache {
            v["pod_identity"]["cache"] = json!(c.as_str());
        }
        v
    }
}

impl AccessSink for AuditLog {
    fn record(&self, a: &Access) {
        if let Some(c) = &a.caller {
            let had = lock(&self.pending).remove(&c.socket_cookie).is_some();
            if !had {
                let mut joined = lock(&self.joined);
                if joined.len() < MAX_PENDING {
                    joined.insert(c.socket_cookie, Instant::now());
                }
            }
        }
        self.emit(self.access_record(a));
    }
}

/// Sends to several sinks (the audit log and the tracing log).
pub struct Tee(pub Vec<Arc<dyn AccessSink>>);

impl AccessSink for Tee {
    fn record(&self, a: &Access) {
        for s in &self.0 {
            s.record(a);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `SystemTime` at CLOCK_MONOTONIC zero (the kernel's `bpf_ktime_get_ns` epoch).
fn monotonic_to_wall_offset() -> Duration {
    let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let mono = Duration::new(mono.tv_sec as u64, mono.tv_nsec as u32);
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(mono)
}

fn rfc3339_millis(t: SystemTime) -> String {
    let base = rfc3339_utc(t);
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    format!("{}.{ms:03}Z", base.trim_end_matches('Z'))
}

/// Drain the kernel's events into the audit log until the task is dropped.
pub async fn run_kernel_events(reader: crate::kernel::EventReader, log: Arc<AuditLog>) {
    let mut fd = match reader.into_async() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the kernel event ring buffer; kernel audit events disabled");
            return;
        }
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let Ok(mut guard) = guard else { return };
                while let Some(ev) = guard.get_inner_mut().next_event() {
                    log.kernel_event(ev);
                }
                guard.clear_ready();
            }
            _ = sweep.tick() => log.sweep(),
        }
    }
}

// === reading the log: `pod-identity-agent audit` ===

/// Filters of the `audit` subcommand.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub role: Option<String>,
    /// `success`, `failure` or `unknown`.
    pub outcome: Option<String>,
}

impl Filter {
    pub fn matches(&self, v: &Value) -> bool {
        let s = |x: &Value| x.as_str().unwrap_or("").to_owned();
        let contains = |want: &Option<String>, have: String| {
            want.as_ref().is_none_or(|w| have.contains(w.as_str()))
        };
        contains(&self.pod, s(&v["orchestrator"]["resource"]["name"]))
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| s(&v["orchestrator"]["namespace"]) == *n)
            && contains(&self.role, s(&v["pod_identity"]["role_arn"]))
            && self
                .outcome
                .as_ref()
                .is_none_or(|o| s(&v["event"]["outcome"]) == *o)
    }
}

/// One table row for a log line.
pub fn table_row(v: &Value) -> String {
    let s = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let pod = match (
        v["orchestrator"]["namespace"].as_str(),
        v["orchestrator"]["resource"]["name"].as_str(),
    ) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        _ => format!("cgroup:{}", s(&v["pod_identity"]["kernel"]["cgroup_id"])),
    };
    let role = v["pod_identity"]["role_arn"]
        .as_str()
        .map(|r| r.rsplit('/').next().unwrap_or(r).to_owned())
        .unwrap_or("-".into());
    format!(
        "{:<24} {:<32} {:>7} {:<15} {:<22} {:<18} {:>4} {:<20} {}",
        s(&v["@timestamp"]),
        pod,
        s(&v["process"]["pid"]),
        s(&v["process"]["name"]),
        s(&v["event"]["action"]),
        role,
        s(&v["http"]["response"]["status_code"]),
        v["pod_identity"]["access_key_id"].as_str().unwrap_or("-"),
        v["event"]["reason"].as_str().unwrap_or(""),
    )
}

pub const TABLE_HEADER: &str = "TIME                     POD                                  PID COMM            ACTION                 ROLE               HTTP KEY                  REASON";

/// Print matching lines of `path` as a table; with `follow`, keep reading as it grows.
pub fn print_table(
    path: &Path,
    filter: &Filter,
    follow: bool,
    mut out: impl Write,
) -> Result<usize, AuditError> {
    use std::io::{BufRead, BufReader, Seek};
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let mut r = BufReader::new(f);
    let _ = writeln!(out, "{TABLE_HEADER}");
    let mut n = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let read = r.read_line(&mut line).map_err(io)?;
        if read == 0 {
            if !follow {
                return Ok(n);
            }
            // Rotation: the path now names a new, shorter file.
            let pos = r.stream_position().map_err(io)?;
            if std::fs::metadata(path)
                .map(|m| m.len() < pos)
                .unwrap_or(false)
            {
                r = BufReader::new(File::open(path).map_err(io)?);
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if filter.matches(&v) {
                n += 1;
                let _ = writeln!(out, "{}", table_row(&v));
                let _ = out.flush();
            }
        }
    }
}

/// `SocketAddr` helper for records built in tests.
pub fn peer(addr: &str) -> Option<SocketAddr> {
    addr.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Association, PodInfo};

    fn caller() -> Caller {
        Caller {
            cgroup_id: 4242,
            pid: 77,
            tid: 78,
            uid: 1000,
            gid: 1000,
            comm: "python3".into(),
            netns_cookie: 9,
            socket_cookie: 555,
            original_destination: "169.254.170.23:80".parse().unwrap(),
            connect_ktime_ns: 1_000_000,
        }
    }

    fn access() -> Access {
        Access {
            caller: Some(caller()),
            pod: Some(PodInfo {
                uid: "u".into(),
                namespace: "ns".into(),
                name: "web".into(),
                service_account: "sa".into(),
                ..Default::default()
            }),
            association: Some(Association {
                role_arn: "arn:aws:iam::123456789012:role/r".into(),
                source: "file".into(),
                ..Default::default()
            }),
            access_key_id: Some("ASIAEXAMPLE".into()),
            assumed_role_arn: Some("arn:aws:sts::123456789012:assumed-role/r/eks-c-web-x".into()),
            status: 200,
            path: "/v1/credentials".into(),
            method: "GET".into(),
            ..Default::default()
        }
    }

    fn read_lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_written(log: &AuditLog, n: u64) {
        for _ in 0..200 {
            if log.stats.written.load(Ordering::Relaxed) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("audit lines not written");
    }

    #[test]
    fn access_record_uses_ecs_fields_and_joins_the_kernel_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(
            Target::File {
                path: path.clone(),
                max_bytes: 1 << 20,
                keep: 2,
            },
            "c",
        )
        .unwrap();
        let mut ev = Identity {
            socket_cookie: 555,
            cgroup_id: 4242,
            pid: 77,
            action: action::REDIRECTED,
            ..Default::default()
        };
        ev.comm[..7].copy_from_slice(b"python3");
        log.kernel_event(ev);
        log.record(&access());
        wait_written(&log, 1);
        // The event was joined: a sweep after the window writes nothing more.
        assert!(lock(&log.pending).is_empty());
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 1);
        let v = &lines[0];
        assert_eq!(v["event"]["outcome"], "success");
        assert_eq!(v["process"]["pid"], 77);
        assert_eq!(v["orchestrator"]["resource"]["name"], "web");
        assert_eq!(v["pod_identity"]["access_key_id"], "ASIAEXAMPLE");
        assert_eq!(v["pod_identity"]["session_name"], "eks-c-web-x");
        assert_eq!(v["cloud"]["account"]["id"], "123456789012");
    }

    #[test]
    fn denied_kernel_event_is_written_alone_and_late_events_are_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(
            Target::File {
                path: path.clone(),
                max_bytes: 1 << 20,
                keep: 2,
            },
            "c",
        )
        .unwrap();
        log.kernel_event(Identity {
            socket_cookie: 1,
            action: action::DENIED,
            ..Default::default()
        });
        // Request first, kernel event later (ring buffer lag): still one line.
        log.record(&access());
        log.kernel_event(Identity {
            socket_cookie: 555,
            action: action::REDIRECTED,
            ..Default::default()
        });
        wait_written(&log, 2);
        assert!(lock(&log.pending).is_empty());
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"]["action"], "connect-denied");
    }

    #[test]
    fn rotation_bounds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(
            Target::File {
                path: path.clone(),
                max_bytes: 4096,
                keep: 2,
            },
            "c",
        )
        .unwrap();
        for _ in 0..100 {
            log.record(&access());
        }
        wait_written(&log, 100);
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        assert!(dir.path().join("audit.log.1").exists());
        assert!(dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists());
    }

    #[test]
    fn filter_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(
            Target::File {
                path: path.clone(),
                max_bytes: 1 << 20,
                keep: 1,
            },
            "c",
        )
        .unwrap();
        log.record(&access());
        let mut refused = access();
        refused.status = 404;
        refused.reason = Some("NoAssociation".into());
        refused.pod.as_mut().unwrap().name = "batch".into();
        log.record(&refused);
        wait_written(&log, 2);
        let mut out = Vec::new();
        let f = Filter {
            outcome: Some("failure".into()),
            ..Default::default()
        };
        assert_eq!(print_table(&path, &f, false, &mut out).unwrap(), 1);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("ns/batch") && text.contains("NoAssociation"),
            "{text}"
        );
        let f = Filter {
            pod: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(print_table(&path, &f, false, std::io::sink()).unwrap(), 1);
    }
}
