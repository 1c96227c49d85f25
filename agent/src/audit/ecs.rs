//! The ECS JSON shapes of audit records (`docs/audit.md`): the common base, and
//! the records for denied and unanswered connects, accesses and summaries.
//!
//! Records are typed structs of borrowed fields, serialised straight into their
//! line: a `credentials-served` record (one per served request) costs one string
//! and the few fields that needed a cut, not a tree of JSON maps. Fields are
//! declared in alphabetical order, which is the order the lines have always had.
//! String fields a caller can choose are capped ([`super::flood`]) as the record
//! is built.

use std::{borrow::Cow, sync::atomic::Ordering, time::SystemTime};

use agent_ebpf::Identity;
use serde::Serialize;
use serde_json::{json, Value};

use super::flood::{capped, Source, Summary, MAX_FIELD_BYTES, MAX_METHOD_BYTES, SUMMARY_INTERVAL};
use super::log::AuditLog;
use crate::{
    attribution::Caller,
    audit::Access,
    credentials::types::{account_id_from_arn, rfc3339_utc, role_arn_from_assumed},
    model::{AssumeMode, Source as AssociationSource},
};

type Text<'a> = Cow<'a, str>;

/// One audit line.
#[derive(Serialize)]
pub(super) struct Record<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cloud: Option<Cloud>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<Id<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<Address>,
    ecs: Ecs,
    event: Event<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Id<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<Http<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Text<'a>>,
    observer: Observer,
    orchestrator: Orchestrator<'a>,
    pod_identity: PodIdentity<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<Url<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Id<'a>>,
}

#[derive(Serialize)]
struct Cloud {
    account: Id<'static>,
    provider: &'static str,
}

#[derive(Serialize)]
struct Id<'a> {
    id: Text<'a>,
}

#[derive(Serialize)]
struct Address {
    ip: String,
    port: u16,
}

#[derive(Serialize)]
struct Ecs {
    version: &'static str,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    category: [&'static str; 2],
    dataset: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<u64>,
    kind: &'static str,
    module: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Text<'a>>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind_of: Option<&'static [&'static str]>,
}

#[derive(Serialize)]
struct Http<'a> {
    request: Method<'a>,
    response: Status,
}

#[derive(Serialize)]
struct Method<'a> {
    method: Text<'a>,
}

#[derive(Serialize)]
struct Status {
    status_code: u16,
}

#[derive(Serialize)]
struct Observer {
    product: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Orchestrator<'a> {
    cluster: Name<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<Resource<'a>>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Name<'a> {
    name: Text<'a>,
}

#[derive(Serialize)]
struct Resource<'a> {
    id: Text<'a>,
    name: Text<'a>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize, Default)]
struct PodIdentity<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    association: Option<AssociationRecord<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    assumed_role_arn: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_path: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_network: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<Kernel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role_arn: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_name: Option<Text<'a>>,
}

/// `null` for an absent id or target role, as always.
#[derive(Serialize)]
struct AssociationRecord<'a> {
    id: Option<Text<'a>>,
    mode: AssumeMode,
    role_arn: Text<'a>,
    source: AssociationSource,
    target_role_arn: Option<Text<'a>>,
}

#[derive(Serialize)]
struct Kernel {
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    cgroup_id: u64,
    connect_time: String,
    monotonic_ns: u64,
    netns_cookie: u64,
    socket_cookie: u64,
}

#[derive(Serialize)]
struct Process<'a> {
    group: Id<'a>,
    name: Text<'a>,
    pid: u32,
    thread: Thread,
    user: Id<'a>,
}

#[derive(Serialize)]
struct Thread {
    id: u32,
}

#[derive(Serialize)]
struct Url<'a> {
    path: Text<'a>,
}

impl Record<'_> {
    /// The line (without newline).
    pub(super) fn to_line(&self) -> String {
        // Strings, integers and bools only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// As a JSON value, for the flood-controlled path (summaries keep a part).
    pub(super) fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl AuditLog {
    /// `s` cut to [`MAX_FIELD_BYTES`], counted when cut.
    fn text<'a>(&self, s: &'a str) -> Text<'a> {
        let t = capped(s, MAX_FIELD_BYTES);
        if matches!(t, Cow::Owned(_)) {
            self.stats.truncated.fetch_add(1, Ordering::Relaxed);
        }
        t
    }

    fn base<'a>(&'a self, ts: SystemTime, caller: Option<&'a Caller>) -> Record<'a> {
        let id = |n: u32| Id {
            id: Cow::Owned(n.to_string()),
        };
        Record {
            timestamp: rfc3339_millis(ts),
            cloud: None,
            container: None,
            destination: caller.map(|c| Address {
                ip: c.original_destination.ip().to_string(),
                port: c.original_destination.port(),
            }),
            ecs: Ecs { version: "8.11.0" },
            event: Event {
                action: None,
                category: ["iam", "network"],
                dataset: "pod_identity.access",
                duration: None,
                kind: "event",
                module: "pod_identity",
                outcome: None,
                reason: None,
                kind_of: None,
            },
            group: caller.map(|c| id(c.gid)),
            http: None,
            message: None,
            observer: Observer {
                product: "pod-identity-agent",
                kind: "agent",
            },
            orchestrator: Orchestrator {
                cluster: Name {
                    name: self.text(&self.cluster),
                },
                namespace: None,
                resource: None,
                kind: "kubernetes",
            },
            pod_identity: PodIdentity {
                kernel: caller.map(|c| Kernel {
                    action: None,
                    cgroup_id: c.cgroup_id,
                    connect_time: rfc3339_millis(self.kernel_wall(c.connect_ktime_ns)),
                    monotonic_ns: c.connect_ktime_ns,
                    netns_cookie: c.netns_cookie,
                    socket_cookie: c.socket_cookie,
                }),
                ..PodIdentity::default()
            },
            process: caller.map(|c| Process {
                group: id(c.gid),
                name: self.text(&c.comm),
                pid: c.pid,
                thread: Thread { id: c.tid },
                user: id(c.uid),
            }),
            source: None,
            url: None,
            user: caller.map(|c| id(c.uid)),
        }
    }

    /// A kernel event written on its own: `denied` (enforce mode) or a redirected
    /// connect that sent no request.
    fn kernel_only(&self, ev: &Identity, denied: bool) -> Value {
        let c = Caller::from(ev);
        let mut r = self.base(self.kernel_wall(ev.ktime_ns), Some(&c));
        if denied {
            r.event.action = Some("connect-denied");
            r.event.kind_of = Some(&["connection", "denied"]);
            r.event.outcome = Some("failure");
            r.event.reason = Some(Cow::Borrowed(
                "kernel enforce: cgroup has no association or is not a pod (EPERM)",
            ));
        } else {
            r.event.action = Some("connect-without-request");
            r.event.kind_of = Some(&["connection"]);
            r.event.outcome = Some("unknown");
        }
        if let Some(k) = &mut r.pod_identity.kernel {
            k.action = Some(if denied { "denied" } else { "redirected" });
        }
        r.to_value()
    }

    pub(super) fn denied_record(&self, ev: &Identity) -> Value {
        self.kernel_only(ev, true)
    }

    pub(super) fn no_request_record(&self, ev: &Identity) -> Value {
        self.kernel_only(ev, false)
    }

    /// A `records-summarised` record: what was counted instead of written.
    pub(super) fn summary_record(&self, s: Summary) -> Value {
        let mut r = self.base(SystemTime::now(), None);
        r.event.action = Some("records-summarised");
        let mut v = r.to_value();
        let Summary {
            source,
            action,
            reason,
            count,
            first,
            last,
            context,
        } = s;
        if let Value::Object(ctx) = context {
            for (k, field) in ctx {
                if k == "event" {
                    for (ek, ev) in field.as_object().into_iter().flatten() {
                        v["event"][ek] = ev.clone();
                    }
                } else {
                    v[k] = field;
                }
            }
        }
        v["event"]["action"] = json!("records-summarised");
        v["event"]["start"] = json!(rfc3339_millis(first));
        v["event"]["end"] = json!(rfc3339_millis(last));
        if !reason.is_empty() {
            v["event"]["reason"] = json!(reason);
        }
        let described = source.describe();
        v["message"] = json!(format!(
            "{count} {action} records{} from {described} counted, not written one by one",
            if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            }
        ));
        if !v["pod_identity"].is_object() {
            v["pod_identity"] = json!({});
        }
        v["pod_identity"]["summary"] = json!({
            "action": action,
            "count": count,
            "source": source.kind(),
            "interval_s": SUMMARY_INTERVAL.as_secs(),
        });
        if let Source::Cgroup(id) = source {
            v["pod_identity"]["kernel"]["cgroup_id"] = json!(id);
        }
        v
    }

    /// What happened to one request.
    pub(super) fn access_record<'a>(&'a self, a: &'a Access) -> Record<'a> {
        let mut r = self.base(SystemTime::now(), a.caller.as_ref());
        let ok = a.status == 200;
        r.event.action = Some(access_action(a));
        r.event.kind_of = Some(if ok {
            &["access", "allowed"]
        } else {
            &["access", "denied"]
        });
        r.event.outcome = Some(if ok { "success" } else { "failure" });
        r.event.duration = Some(a.latency.as_nanos() as u64);
        r.event.reason = a.reason.as_deref().map(|s| self.text(s));
        r.message = a.message.as_deref().map(|s| self.text(s));
        r.http = Some(Http {
            request: Method {
                method: capped(&a.method, MAX_METHOD_BYTES),
            },
            response: Status {
                status_code: a.status,
            },
        });
        r.url = Some(Url {
            path: self.text(&a.path),
        });
        r.source = a.peer.map(|p| Address {
            ip: p.ip().to_string(),
            port: p.port(),
        });
        r.container = a.container_id.as_deref().map(|id| Id { id: self.text(id) });
        let pi = &mut r.pod_identity;
        if let Some(p) = &a.pod {
            r.orchestrator.namespace = Some(self.text(&p.namespace));
            r.orchestrator.resource = Some(Resource {
                id: self.text(p.uid.as_str()),
                name: self.text(&p.name),
                kind: "pod",
            });
            pi.service_account = Some(self.text(&p.service_account));
            pi.host_network = Some(p.host_network);
        }
        pi.cgroup_path = a.cgroup_path.as_deref().map(|s| self.text(s));
        if let Some(s) = &a.association {
            pi.association = Some(AssociationRecord {
                id: s.association_id.as_deref().map(|s| self.text(s)),
                mode: s.mode,
                role_arn: self.text(&s.role_arn),
                source: s.source,
                target_role_arn: s.target_role_arn.as_deref().map(|s| self.text(s)),
            });
            pi.role_arn = Some(self.text(s.effective_role_arn()));
        }
        if let Some(arn) = &a.assumed_role_arn {
            // EKS Auth chose the role: name it from what it issued.
            if a.association.is_none() {
                if let Some(role) = role_arn_from_assumed(arn) {
                    pi.role_arn = Some(Cow::Owned(self.text(&role).into_owned()));
                }
            }
            pi.assumed_role_arn = Some(self.text(arn));
            pi.session_name = Some(self.text(arn.rsplit('/').next().unwrap_or("")));
            r.cloud = account_id_from_arn(arn).map(|acct| Cloud {
                account: Id {
                    id: Cow::Owned(acct),
                },
                provider: "aws",
            });
        }
        // The access key id only: never the secret key or the session token.
        pi.access_key_id = a.access_key_id.as_deref().map(|k| self.text(k));
        pi.cache = a.cache.map(|c| c.as_str());
        r
    }
}

/// `event.action` of an access record.
pub(super) fn access_action(a: &Access) -> &'static str {
    match (a.path.as_str(), a.status == 200) {
        (crate::http::endpoint::CREDENTIALS_PATH, true) => "credentials-served",
        (crate::http::endpoint::CREDENTIALS_PATH, false) => "credentials-refused",
        (_, true) => "request-served",
        (_, false) => "request-refused",
    }
}

/// What a summary shows of the first record it counts: who (pod, peer,
/// cgroup), and the kind of record (type, outcome).
pub(super) fn summary_context(v: &Value) -> Value {
    let mut ctx = json!({});
    if let Some(ip) = v["source"].get("ip") {
        ctx["source"] = json!({ "ip": ip });
    }
    for k in ["orchestrator", "container"] {
        if !v[k].is_null() {
            ctx[k] = v[k].clone();
        }
    }
    let pi = &v["pod_identity"];
    let mut p = json!({});
    for k in ["cgroup_path", "service_account", "host_network"] {
        if !pi[k].is_null() {
            p[k] = pi[k].clone();
        }
    }
    ctx["pod_identity"] = p;
    ctx["event"] = json!({"type": v["event"]["type"], "outcome": v["event"]["outcome"]});
    ctx
}

pub(super) fn rfc3339_millis(t: SystemTime) -> String {
    let base = rfc3339_utc(t);
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    format!("{}.{ms:03}Z", base.trim_end_matches('Z'))
}
