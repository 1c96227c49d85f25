//! The ECS JSON shapes of audit records (`docs/audit.md`): the common base, and
//! the records for denied and unanswered connects, accesses and summaries.

use std::time::SystemTime;

use agent_ebpf::Identity;
use serde_json::{json, Value};

use super::flood::{cap_string, Source, Summary, MAX_METHOD_BYTES, SUMMARY_INTERVAL};
use super::log::AuditLog;
use crate::{attribution::Caller, audit::Access, credentials::types::rfc3339_utc};

impl AuditLog {
    pub(super) fn base(&self, ts: SystemTime, caller: Option<&Caller>) -> Value {
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

    pub(super) fn denied_record(&self, ev: &Identity) -> Value {
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

    pub(super) fn no_request_record(&self, ev: &Identity) -> Value {
        let c = Caller::from(ev);
        let mut v = self.base(self.kernel_wall(ev.ktime_ns), Some(&c));
        v["event"]["action"] = json!("connect-without-request");
        v["event"]["type"] = json!(["connection"]);
        v["event"]["outcome"] = json!("unknown");
        v["pod_identity"]["kernel"]["action"] = json!("redirected");
        v
    }

    /// A `records-summarised` record: what was counted instead of written.
    pub(super) fn summary_record(&self, s: Summary) -> Value {
        let mut v = self.base(SystemTime::now(), None);
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
        if v["pod_identity"].is_null() {
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

    pub(super) fn access_record(&self, a: &Access) -> Value {
        let mut v = self.base(SystemTime::now(), a.caller.as_ref());
        let ok = a.status == 200;
        let action = access_action(a);
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
        let mut method = a.method.clone();
        cap_string(&mut method, MAX_METHOD_BYTES);
        v["http"] = json!({"request": {"method": method}, "response": {"status_code": a.status}});
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
            // EKS Auth chose the role: name it from what it issued.
            if a.association.is_none() {
                if let Some(role) = crate::credentials::types::role_arn_from_assumed(arn) {
                    v["pod_identity"]["role_arn"] = json!(role);
                }
            }
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
