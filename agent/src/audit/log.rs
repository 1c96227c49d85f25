//! The audit log: one JSON line per access, in Elastic Common Schema (ECS) field
//! names so SIEM pipelines ingest it without mapping. See `docs/audit.md`.
//!
//! Two streams feed it and are joined here:
//! * the kernel's events (ring buffer): one per `connect()` to a credentials
//!   address, `redirected` or `denied` (enforce mode);
//! * the endpoint's [`Access`] records: what happened to each request.
//!
//! A redirected connect is written once, joined with its first request (by socket
//! cookie). A kernel `denied` event is written on its own, and so is a redirected
//! connect that sent no request: when its connection closes, if the listener
//! reported accepting it ([`AccessSink::connection`]), else after [`JOIN_WINDOW`].
//! An accepted connection's event waits for its request however slow the answer
//! is (bounded by the connection's lifetime). Requests on connections without a
//! kernel record (`Unattributed`) are written from the endpoint side.
//!
//! What callers can make it write is bounded ([`super::flood`]): string fields
//! are capped, and records other than `credentials-served` are written the first
//! few times per source and interval, then counted into one `records-summarised`
//! record. The writer queue is bounded in lines and in bytes. Nothing is dropped
//! silently: a full queue is counted and reported.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use agent_ebpf::{action, Identity};
use serde_json::Value;

use super::ecs::{access_action, summary_context};
use super::flood::{cap_strings, FloodControl, Source, Summary, MAX_FIELD_BYTES};
use super::writer::{Target, Writer, MAX_BATCH};
use crate::{
    audit::{Access, AccessSink, AuditError, ConnectionEvent},
    batched,
    http::listener::CONNECTION_LIFETIME,
};

/// How long a redirected connect the listener has not reported accepting waits for
/// its request before it is written alone. Once accepted, it waits until its
/// connection closes (at most [`CONNECTION_LIFETIME`] and this window).
pub const JOIN_WINDOW: Duration = Duration::from_secs(10);

/// Redirected connects held while waiting for their request; beyond this they are
/// written at once, so memory stays bounded under a connect flood.
pub const MAX_PENDING: usize = 100_000;

/// Lines waiting for the writer, at most (with at most [`MAX_QUEUE_BYTES`]).
pub const MAX_QUEUE_LINES: usize = 65_536;
/// Bytes of lines waiting for the writer, at most; beyond, lines are dropped and
/// counted (`pod_identity_audit_dropped_total`).
pub const MAX_QUEUE_BYTES: u64 = 16 << 20;

/// Counters of the audit log.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub written: AtomicU64,
    /// Lines dropped because the writer queue was full (counted, reported).
    pub dropped: AtomicU64,
    pub kernel_events: AtomicU64,
    /// Records not written one by one but counted in a `records-summarised` record.
    pub summarised: AtomicU64,
    /// `records-summarised` records emitted.
    pub summaries: AtomicU64,
    /// Fields cut to their size bound.
    pub truncated: AtomicU64,
    /// Bytes of lines waiting for the writer now.
    pub queued_bytes: AtomicU64,
}

/// What the writer thread receives.
enum Msg {
    Line(String),
    /// Answer once every line sent before has been written.
    Flush(mpsc::Sender<()>),
}

struct Pending {
    event: Identity,
    /// Written as `connect-without-request` at this time, unless its request or
    /// its connection's close comes first.
    deadline: Instant,
}

/// The join state, by socket cookie (one lock).
#[derive(Default)]
struct Joins {
    /// Redirected connects waiting for their request.
    pending: HashMap<u64, Pending>,
    /// Connections the listener accepted, with no request and no kernel event yet.
    accepted: HashMap<u64, Instant>,
    /// Connections already written from the endpoint side, so a late kernel event
    /// is not written twice.
    joined: HashMap<u64, Instant>,
}

/// The audit log. Cheap to share; lines are written by a dedicated thread so the
/// request path never blocks on disk.
pub struct AuditLog {
    tx: mpsc::SyncSender<Msg>,
    pub stats: Arc<AuditStats>,
    /// Kernel events and connections waiting for each other.
    joins: Mutex<Joins>,
    /// Per-source flood control of records other than `credentials-served`.
    flood: Mutex<FloodControl>,
    max_queue_bytes: u64,
    pub(super) cluster: String,
    pub(super) join_window: Duration,
    /// CLOCK_MONOTONIC → wall clock offset for kernel timestamps.
    pub(super) boot_offset: Duration,
}

/// The writer thread's side: lines buffered as they come, flushed whenever the
/// queue runs dry (or every [`MAX_BATCH`] lines) by [`batched::drain`].
/// `written` counts lines once flushed.
struct LineWriter<'a> {
    writer: Writer,
    stats: &'a AuditStats,
    /// Lines buffered since the last flush.
    batch: u64,
}

impl batched::Consumer<Msg> for LineWriter<'_> {
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Line(line) => {
                let result = self.writer.write_line(&line);
                self.stats
                    .queued_bytes
                    .fetch_sub(line.len() as u64, Ordering::Relaxed);
                match result {
                    Ok(()) => self.batch += 1,
                    Err(e) => {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "audit write failed");
                    }
                }
            }
            Msg::Flush(done) => {
                self.flush();
                let _ = done.send(());
            }
        }
    }

    fn flush(&mut self) {
        match self.writer.flush() {
            Ok(()) => self.stats.written.fetch_add(self.batch, Ordering::Relaxed),
            Err(e) => {
                tracing::error!(error = %e, "audit write failed");
                self.stats.dropped.fetch_add(self.batch, Ordering::Relaxed)
            }
        };
        self.batch = 0;
    }
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
        Self::open_with_queue(target, cluster, join_window, MAX_QUEUE_BYTES)
    }

    fn open_with_queue(
        target: Target,
        cluster: &str,
        join_window: Duration,
        max_queue_bytes: u64,
    ) -> Result<Arc<AuditLog>, AuditError> {
        let writer = Writer::open(target)?;
        let (tx, rx) = mpsc::sync_channel::<Msg>(MAX_QUEUE_LINES);
        let stats = Arc::new(AuditStats::default());
        let s2 = stats.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let mut w = LineWriter {
                    writer,
                    stats: &s2,
                    batch: 0,
                };
                batched::drain(&rx, &mut w, MAX_BATCH)
            })
            .map_err(|source| AuditError::Io {
                path: "audit-writer thread".into(),
                source,
            })?;
        Ok(Arc::new(AuditLog {
            tx,
            stats,
            joins: Mutex::new(Joins::default()),
            flood: Mutex::new(FloodControl::new(Instant::now())),
            max_queue_bytes,
            cluster: cluster.to_owned(),
            join_window,
            boot_offset: monotonic_to_wall_offset(),
        }))
    }

    /// Queue one record for the writer, its strings capped; a full queue (in
    /// lines or bytes) drops it and counts it.
    fn emit(&self, mut v: Value) {
        let cut = cap_strings(&mut v, MAX_FIELD_BYTES);
        if cut > 0 {
            self.stats.truncated.fetch_add(cut, Ordering::Relaxed);
        }
        self.emit_line(v.to_string());
    }

    /// Queue one line (its record capped when built).
    fn emit_line(&self, line: String) {
        let n = line.len() as u64;
        let queued = &self.stats.queued_bytes;
        if queued.fetch_add(n, Ordering::Relaxed) + n > self.max_queue_bytes {
            queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.try_send(Msg::Line(line)).is_err() {
            queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Emit a record other than `credentials-served` through the flood control:
    /// written, or counted for its source's summary. `build` makes the record.
    fn emit_limited(
        &self,
        source: Source,
        action: &'static str,
        reason: &str,
        build: impl Fn() -> Value,
    ) {
        let now = Instant::now();
        let (admit, ended) = {
            let mut flood = lock(&self.flood);
            let ended = flood.roll(now);
            let admit = flood.admit(source, action, reason, SystemTime::now(), || {
                summary_context(&build())
            });
            (admit, ended)
        };
        self.emit_summaries(ended);
        if admit {
            self.emit(build());
        } else {
            self.stats.summarised.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn emit_summaries(&self, summaries: Vec<Summary>) {
        for s in summaries {
            self.stats.summaries.fetch_add(1, Ordering::Relaxed);
            self.emit(self.summary_record(s));
        }
    }

    /// Wait (up to `timeout`) until every line emitted so far has been written;
    /// false if the writer did not answer in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Wall time of a kernel CLOCK_MONOTONIC timestamp.
    pub(super) fn kernel_wall(&self, ktime_ns: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.boot_offset + Duration::from_nanos(ktime_ns)
    }

    /// A kernel event from the ring buffer.
    pub fn kernel_event(&self, ev: Identity) {
        self.stats.kernel_events.fetch_add(1, Ordering::Relaxed);
        if ev.action == action::DENIED {
            self.emit_kernel_only(&ev);
            return;
        }
        let now = Instant::now();
        let mut joins = lock(&self.joins);
        if joins.joined.remove(&ev.socket_cookie).is_some() {
            return;
        }
        if joins.pending.len() >= MAX_PENDING {
            // A flood of connects that send nothing: write them now instead of
            // holding them for the join window.
            drop(joins);
            self.emit_kernel_only(&ev);
            return;
        }
        // Accepted already (the ring buffer lags the accept at times): wait for
        // the request or the close.
        let wait = match joins.accepted.remove(&ev.socket_cookie) {
            Some(_) => self.connection_wait(),
            None => self.join_window,
        };
        joins.pending.insert(
            ev.socket_cookie,
            Pending {
                event: ev,
                deadline: now + wait,
            },
        );
    }

    /// Longest wait of an accepted connection's kernel event for its request: the
    /// connection's lifetime, and a join window for the request's answer.
    fn connection_wait(&self) -> Duration {
        CONNECTION_LIFETIME + self.join_window
    }

    /// A kernel event written on its own (`connect-denied`,
    /// `connect-without-request`), charged to its cgroup.
    fn emit_kernel_only(&self, ev: &Identity) {
        let (action, build): (&'static str, fn(&Self, &Identity) -> Value) =
            if ev.action == action::DENIED {
                ("connect-denied", Self::denied_record)
            } else {
                ("connect-without-request", Self::no_request_record)
            };
        self.emit_limited(Source::Cgroup(ev.cgroup_id), action, "", || build(self, ev));
    }

    /// Write redirected connects that never sent a request and the summaries of
    /// an ended flood-control interval; forget old joins.
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    /// [`sweep`](Self::sweep) as of `now` (tests pass a later instant instead of
    /// waiting).
    pub fn sweep_at(&self, now: Instant) {
        let expired: Vec<Identity> = {
            let mut joins = lock(&self.joins);
            let old: Vec<u64> = joins
                .pending
                .iter()
                .filter(|(_, v)| now > v.deadline)
                .map(|(k, _)| *k)
                .collect();
            let wait = self.connection_wait();
            joins
                .accepted
                .retain(|_, t| now.saturating_duration_since(*t) < wait);
            let window = self.join_window * 3;
            joins
                .joined
                .retain(|_, t| now.saturating_duration_since(*t) < window);
            old.into_iter()
                .filter_map(|k| joins.pending.remove(&k))
                .map(|v| v.event)
                .collect()
        };
        for ev in expired {
            self.emit_kernel_only(&ev);
        }
        let ended = lock(&self.flood).roll(now);
        self.emit_summaries(ended);
    }
}

impl AccessSink for AuditLog {
    fn record(&self, a: &Access) {
        if let Some(c) = &a.caller {
            let mut joins = lock(&self.joins);
            joins.accepted.remove(&c.socket_cookie);
            let had = joins.pending.remove(&c.socket_cookie).is_some();
            if !had && joins.joined.len() < MAX_PENDING {
                joins.joined.insert(c.socket_cookie, Instant::now());
            }
        }
        let action = access_action(a);
        if action == "credentials-served" {
            // The audit trail proper: never summarised (rate-limited per caller
            // by the endpoint).
            self.emit_line(self.access_record(a).to_line());
            return;
        }
        let source = match (&a.caller, a.peer) {
            (Some(c), _) => Source::Cgroup(c.cgroup_id),
            (None, Some(peer)) => Source::peer(peer.ip()),
            (None, None) => Source::Many,
        };
        self.emit_limited(source, action, a.reason.as_deref().unwrap_or(""), || {
            self.access_record(a).to_value()
        });
    }

    fn connection(&self, socket_cookie: u64, event: ConnectionEvent) {
        self.on_connection(socket_cookie, event);
    }
}

impl AuditLog {
    /// See [`AccessSink::connection`]: an accepted connection's kernel event waits
    /// for its request; a closed one's that is still waiting had none.
    fn on_connection(&self, socket_cookie: u64, event: ConnectionEvent) {
        let now = Instant::now();
        let mut joins = lock(&self.joins);
        match event {
            ConnectionEvent::Accepted => {
                let wait = self.connection_wait();
                if let Some(p) = joins.pending.get_mut(&socket_cookie) {
                    p.deadline = p.deadline.max(now + wait);
                } else if joins.accepted.len() < MAX_PENDING {
                    joins.accepted.insert(socket_cookie, now);
                }
            }
            ConnectionEvent::Closed => {
                joins.accepted.remove(&socket_cookie);
                if let Some(p) = joins.pending.remove(&socket_cookie) {
                    drop(joins);
                    self.emit_kernel_only(&p.event);
                }
            }
        }
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

    fn connection(&self, socket_cookie: u64, event: ConnectionEvent) {
        for s in &self.0 {
            s.connection(socket_cookie, event);
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

#[cfg(test)]
mod tests;
