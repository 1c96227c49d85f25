//! Kubernetes Events for refused pods, so `kubectl describe pod` says why a pod
//! gets no credentials.
//!
//! * What gets one: no Pod Identity association (`NoPodIdentityAssociation`), a
//!   token naming another pod (`TokenMismatch`), the upstream's AccessDenied
//!   (`CredentialsAccessDenied`). Other refusals (a caller that is not a pod,
//!   throttling, an outage) have no pod to blame or are not the pod's to fix.
//! * The Event (`events.k8s.io/v1`, what `kube::runtime::events::Recorder` of kube
//!   5 posts too): type `Warning`, on the pod (`regarding`: v1 Pod with its UID),
//!   `reportingController` [`REPORTING_CONTROLLER`], `reportingInstance` the node
//!   name, `action` [`ACTION`], `note` the refusal's message as the pod got it
//!   (which names the service account, pod UIDs or the upstream's error text, and
//!   never a token or a credential), capped at the API's 1024 bytes.
//! * The request path never waits for the API server: [`EventQueue::refused`]
//!   only classifies and `try_send`s into a bounded queue; a full queue drops the
//!   notice and counts it. [`EventPublisher::run`] posts in the background, each
//!   call bounded by [`API_TIMEOUT`].
//! * Rate: one Event per (pod, reason) per [`EventSettings::window`] (5 minutes);
//!   repeats are folded into it as a series (`series.count`, merge PATCH) when
//!   the window ends ([`super::event_limiter`]).
//!
//! Recorder itself is not used: it posts every call (its cache only turns repeats
//! into PATCHes), and its cache is unbounded in the number of pods.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::kube::api::{Api, Patch, PatchParams, PostParams};
use ::kube::Client;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::sync::mpsc;

use super::event_limiter::{EventLimiter, Verdict};
use crate::http::refusal::{Refusal, RefusalObserver};
use crate::http::token::TokenError;
use crate::model::{PodInfo, PodUid};
use crate::sources::pods::PodStore;

/// `reportingController` of every Event.
pub const REPORTING_CONTROLLER: &str = "pod-identity-agent";
/// `action` of every Event: what was refused.
pub const ACTION: &str = "ServeCredentials";
/// Longest wait for one API call.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);
/// The API server's limits (events.k8s.io/v1 validation).
const NOTE_LIMIT: usize = 1024;
const INSTANCE_LIMIT: usize = 128;

/// Why a pod gets an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventReason {
    /// No association for the pod's service account.
    NoPodIdentityAssociation,
    /// The pod presented another pod's service account token.
    TokenMismatch,
    /// STS or EKS Auth answered AccessDenied.
    CredentialsAccessDenied,
}

impl EventReason {
    /// The Event's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::NoPodIdentityAssociation => "NoPodIdentityAssociation",
            EventReason::TokenMismatch => "TokenMismatch",
            EventReason::CredentialsAccessDenied => "CredentialsAccessDenied",
        }
    }

    /// The reason for this refusal, if it gets an Event.
    pub fn of(refusal: &Refusal) -> Option<Self> {
        match refusal {
            Refusal::NoAssociation { .. } => Some(EventReason::NoPodIdentityAssociation),
            Refusal::Token(TokenError::PodMismatch { .. }) => Some(EventReason::TokenMismatch),
            Refusal::Credentials { error, .. }
                if matches!(error.code(), "AccessDenied" | "AccessDeniedException") =>
            {
                Some(EventReason::CredentialsAccessDenied)
            }
            _ => None,
        }
    }
}

/// The Event's `note` for a refusal: what the pod was told, with the status, and
/// what to do. Never longer than the API allows.
pub fn note(reason: EventReason, refusal: &Refusal) -> String {
    let hint = match reason {
        EventReason::NoPodIdentityAssociation => {
            "create a Pod Identity association for this service account"
        }
        EventReason::TokenMismatch => {
            "a process in this pod sent another pod's service account token; the agent checks tokens against the kernel's view of the caller"
        }
        EventReason::CredentialsAccessDenied => {
            "check the role's trust policy and the agent's permissions"
        }
    };
    let text = format!(
        "No AWS credentials ({}): {refusal}. Fix: {hint}.",
        refusal.status().as_u16()
    );
    truncate(text, NOTE_LIMIT)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Settings of the Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSettings {
    /// One Event per (pod, reason) per window; repeats become its series.
    pub window: Duration,
    /// Notices waiting for the publisher; more are dropped (and counted).
    pub queue: usize,
    /// (pod, reason) pairs tracked at once; more are dropped (and counted).
    pub max_keys: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            queue: 256,
            max_keys: 4096,
        }
    }
}

/// Counters of the Events (`pod_identity_kubernetes_events_total{outcome}`).
#[derive(Debug, Default)]
pub struct EventStats {
    /// Events created (POST accepted).
    pub created: AtomicU64,
    /// Series updates (PATCH accepted).
    pub series_updated: AtomicU64,
    /// Refusals folded into an existing Event.
    pub rate_limited: AtomicU64,
    /// Notices dropped: queue full, or too many (pod, reason) pairs.
    pub dropped: AtomicU64,
    /// API calls that failed (RBAC, timeouts, validation).
    pub failed: AtomicU64,
}

impl EventStats {
    /// `(outcome, count)` for the metric.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("created", get(&self.created)),
            ("series_updated", get(&self.series_updated)),
            ("rate_limited", get(&self.rate_limited)),
            ("dropped", get(&self.dropped)),
            ("failed", get(&self.failed)),
        ]
    }
}

/// One refusal on its way to the publisher.
#[derive(Clone, Debug)]
struct Notice {
    pod: PodRef,
    reason: EventReason,
    note: String,
    at: Instant,
}

/// The pod an Event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PodRef {
    namespace: String,
    name: String,
    uid: PodUid,
}

impl From<&PodInfo> for PodRef {
    fn from(p: &PodInfo) -> Self {
        PodRef {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
        }
    }
}

/// The request path's side: classifies refusals and queues them, never blocking.
#[derive(Debug)]
pub struct EventQueue {
    tx: mpsc::Sender<Notice>,
    pods: PodStore,
    stats: Arc<EventStats>,
}

impl RefusalObserver for EventQueue {
    fn refused(&self, pod: Option<&PodInfo>, refusal: &Refusal) {
        let Some(reason) = EventReason::of(refusal) else {
            return;
        };
        // A token refused before the pod was looked up: the kernel's pod, from
        // the pod directory.
        let known;
        let pod = match (pod, refusal) {
            (Some(p), _) => p,
            (None, Refusal::Token(TokenError::PodMismatch { kernel_pod, .. })) => {
                match self.pods.get(kernel_pod) {
                    Some(p) => {
                        known = p;
                        &known
                    }
                    None => return,
                }
            }
            (None, _) => return,
        };
        let notice = Notice {
            pod: PodRef::from(pod),
            reason,
            note: note(reason, refusal),
            at: Instant::now(),
        };
        if self.tx.try_send(notice).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The background side: rate-limits and talks to the API server.
pub struct EventPublisher {
    client: Client,
    instance: String,
    /// The same moment on both clocks, taken before any notice was queued:
    /// notices carry Instants, Events wall-clock times.
    epoch: (Instant, Timestamp),
    /// Nanoseconds in the last Event name: names stay unique even for Events
    /// created within the same clock tick.
    last_name: i128,
    settings: EventSettings,
    rx: mpsc::Receiver<Notice>,
    stats: Arc<EventStats>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("instance", &self.instance)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The queue for the endpoint and the publisher to run, for `node_name`'s agent;
/// `pods` names the pod of a token refused before the pod was looked up.
pub fn event_channel(
    client: Client,
    node_name: &str,
    settings: EventSettings,
    pods: PodStore,
) -> (Arc<EventQueue>, EventPublisher, Arc<EventStats>) {
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    let stats = Arc::new(EventStats::default());
    let queue = Arc::new(EventQueue {
        tx,
        pods,
        stats: stats.clone(),
    });
    let publisher = EventPublisher {
        client,
        instance: truncate(node_name.to_owned(), INSTANCE_LIMIT),
        epoch: (Instant::now(), Timestamp::now()),
        last_name: 0,
        settings,
        rx,
        stats: stats.clone(),
    };
    (queue, publisher, stats)
}

type Key = (PodRef, EventReason);

impl EventPublisher {
    /// Post Events until the queue's senders are gone.
    pub async fn run(mut self) {
        let mut limiter: EventLimiter<Key> =
            EventLimiter::new(self.settings.window, self.settings.max_keys);
        let tick =
            (self.settings.window / 5).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (start_instant, start_wall) = self.epoch;
        let wall = move |i: Instant| {
            let since = SignedDuration::try_from(i.saturating_duration_since(start_instant))
                .unwrap_or(SignedDuration::ZERO);
            start_wall.checked_add(since).unwrap_or(start_wall)
        };
        loop {
            tokio::select! {
                notice = self.rx.recv() => {
                    let Some(n) = notice else { return };
                    let key = (n.pod.clone(), n.reason);
                    match limiter.observe(&key, n.at) {
                        Verdict::Create => {
                            if let Some(name) = self.create(&n, wall(n.at)).await {
                                limiter.created(&key, name);
                            }
                        }
                        Verdict::Suppressed => {
                            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                        }
                        Verdict::Full => {
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                _ = ticker.tick() => {
                    for u in limiter.due(Instant::now()) {
                        self.update(&u.key.0, &u.name, u.count, wall(u.last_seen)).await;
                    }
                }
            }
        }
    }

    /// POST a new Event; its name on success.
    async fn create(&mut self, n: &Notice, at: Timestamp) -> Option<String> {
        // `<pod>.<hex nanoseconds>`, as kube's Recorder and client-go name them.
        let nanos = at.as_nanosecond().max(self.last_name + 1);
        self.last_name = nanos;
        let name = format!("{}.{:x}", n.pod.name, nanos);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(n.pod.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(at)),
            type_: Some("Warning".into()),
            reason: Some(n.reason.as_str().into()),
            action: Some(ACTION.into()),
            note: Some(n.note.clone()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(n.pod.name.clone()),
                namespace: Some(n.pod.namespace.clone()),
                uid: Some(n.pod.uid.as_str().to_owned()),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &n.pod.namespace);
        let params = PostParams::default();
        let call = api.create(&params, &event);
        match tokio::time::timeout(API_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                self.stats.created.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pod = %format!("{}/{}", n.pod.namespace, n.pod.name), reason = n.reason.as_str(), event = %name, "event created");
                Some(name)
            }
            Ok(Err(error)) => {
                self.failed(&n.pod, "create", &error.to_string());
                None
            }
            Err(_) => {
                self.failed(&n.pod, "create", "timed out");
                None
            }
        }
    }

    /// PATCH the Event's series.
    async fn update(&self, pod: &PodRef, name: &str, count: u32, last: Timestamp) {
        let series = EventSeries {
            count: i32::try_from(count).unwrap_or(i32::MAX),
            last_observed_time: MicroTime(last),
        };
        let patch = serde_json::json!({ "series": series });
        let api: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
        let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
        let call = api.patch(name, &params, &patch);
        match tokio::time::timeout(API_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                self.stats.series_updated.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(error)) => self.failed(pod, "update", &error.to_string()),
            Err(_) => self.failed(pod, "update", "timed out"),
        }
    }

    fn failed(&self, pod: &PodRef, what: &str, error: &str) {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        // At most one line per (pod, reason) per window: the limiter holds the
        // repeats back whether or not the call worked.
        tracing::warn!(
            pod = %format!("{}/{}", pod.namespace, pod.name),
            %error,
            "cannot {what} a Kubernetes Event (RBAC: create and patch on events.k8s.io events)"
        );
    }
}

#[cfg(test)]
mod tests;
