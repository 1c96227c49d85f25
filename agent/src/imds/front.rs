//! The IMDS front: what a redirected instance metadata request gets.
//!
//! * No kernel record: 403, as on the credentials endpoint.
//! * A connection the kernel did not record as one to the IMDS address: 403.
//! * A caller whose cgroup is not a pod's (a node process in a cgroup the rescan
//!   has not classified yet): forwarded as is, credential paths included; the
//!   node role is the node's.
//! * A cgroup not found (yet): 503, retryable.
//! * A pod (hostNetwork pods included): [`policy::classify`], then forwarded,
//!   refused, or answered with the pod's own role ([`PodRole`]).
//!
//! Every request gives one [`Access`] record; forwarded requests have no reason,
//! whatever the real IMDS answered.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};

use super::{
    forward::Forwarder,
    pod_role::PodRole,
    policy::{self, Blocked, Decision},
    settings::ImdsSettings,
};
use crate::{
    attribution::{Caller, Resolver},
    audit::{Access, AccessSink},
    credentials::{CredentialCache, Fetch},
    http::{
        listener::{Handler, RequestContext, Unattributed},
        response::text,
        Refusal,
    },
};

/// The IMDS front.
pub struct ImdsFront<F: Fetch> {
    settings: ImdsSettings,
    resolver: Resolver,
    pod_role: PodRole<F>,
    forwarder: Forwarder,
    sink: Arc<dyn AccessSink>,
}

/// The body of a 404 for what `blocked` hides.
fn blocked_message(blocked: Blocked) -> &'static str {
    match blocked {
        Blocked::Credentials | Blocked::IdentityCredentials => {
            "Not Found: the instance's role credentials are not available to pods on this node"
        }
        Blocked::UserData => "Not Found: user data is not available to pods on this node",
    }
}

/// Set the refusal fields of `access`; the plain-text answer.
fn refuse(
    access: &mut Access,
    status: StatusCode,
    code: &str,
    message: String,
) -> Response<Full<Bytes>> {
    let resp = text(status, &message);
    access.reason = Some(code.to_owned());
    access.message = Some(message);
    resp
}

fn refusal(access: &mut Access, r: &Refusal) -> Response<Full<Bytes>> {
    refuse(access, r.status(), r.code(), r.to_string())
}

impl<F: Fetch> ImdsFront<F> {
    /// `eks_auth`: credentials come from EKS Auth with the pod's own token, read
    /// from `kubelet_pods_dir` (`pod-role` mode; without it pods get 404).
    pub fn new(
        settings: ImdsSettings,
        resolver: Resolver,
        cache: CredentialCache<F>,
        sink: Arc<dyn AccessSink>,
        eks_auth: bool,
        kubelet_pods_dir: Option<PathBuf>,
    ) -> Self {
        let forwarder = Forwarder::new(&settings);
        let pod_role = PodRole::new(resolver.clone(), cache, eks_auth, kubelet_pods_dir);
        ImdsFront {
            settings,
            resolver,
            pod_role,
            forwarder,
            sink,
        }
    }

    /// Whether the kernel recorded the connection as one to the IMDS address.
    fn to_imds(&self, dst: SocketAddr) -> bool {
        dst.port() == self.settings.port
            && match dst.ip().to_canonical() {
                IpAddr::V4(a) => a == self.settings.addr4,
                IpAddr::V6(a) => a == self.settings.addr6,
            }
    }

    /// Handle one request; the answer and its audit record.
    pub async fn respond<B>(
        &self,
        ctx: &RequestContext,
        req: &Request<B>,
    ) -> (Response<Full<Bytes>>, Access) {
        let start = Instant::now();
        let mut access = Access {
            path: req.uri().path().to_owned(),
            method: req.method().to_string(),
            peer: Some(ctx.peer),
            ..Access::default()
        };
        let resp = self.answer(ctx, req, &mut access).await;
        access.status = resp.status().as_u16();
        access.latency = start.elapsed();
        (resp, access)
    }

    async fn answer<B>(
        &self,
        ctx: &RequestContext,
        req: &Request<B>,
        access: &mut Access,
    ) -> Response<Full<Bytes>> {
        let caller = match &ctx.caller {
            Ok(c) => c,
            Err(Unattributed::NoRecord) => return refusal(access, &Refusal::Unattributed),
            Err(Unattributed::LookupFailed(e)) => {
                tracing::error!(peer = %ctx.peer, error = %e, "attribution lookup failed");
                return refusal(access, &Refusal::LookupFailed);
            }
        };
        access.caller = Some(caller.clone());
        if !self.to_imds(caller.original_destination) {
            return refuse(
                access,
                StatusCode::FORBIDDEN,
                "ImdsWrongDestination",
                format!(
                    "Access Denied. This port answers instance metadata requests only, not {}",
                    caller.original_destination
                ),
            );
        }
        let pod_cgroup = match self.resolver.pod_cgroup_of(caller.cgroup_id).await {
            Ok((path, pc)) => {
                access.cgroup_path = Some(path);
                pc
            }
            // A node process: the node's own metadata, untouched.
            Err(Refusal::NotAPod { path }) => {
                access.cgroup_path = Some(path);
                return self.forward(req, access).await;
            }
            Err(r) => return refusal(access, &r),
        };
        access.container_id = pod_cgroup.container_id.clone();
        access.pod = self.resolver.pods.get(&pod_cgroup.pod_uid);
        self.pod_request(caller, req, access).await
    }

    /// A pod's request: the policy decides.
    async fn pod_request<B>(
        &self,
        caller: &Caller,
        req: &Request<B>,
        access: &mut Access,
    ) -> Response<Full<Bytes>> {
        let decision = policy::classify(
            req.method(),
            req.uri().path(),
            self.settings.mode,
            self.settings.block_user_data,
        );
        match decision {
            Decision::Forward => self.forward(req, access).await,
            Decision::Block404(b) => refuse(
                access,
                StatusCode::NOT_FOUND,
                b.code(),
                blocked_message(b).to_owned(),
            ),
            Decision::ServePodRole(what) => {
                match self.pod_role.respond(caller, &what, access).await {
                    Ok(r) => r,
                    Err(e) => {
                        let message = e.to_string();
                        refuse(access, e.status(), e.code(), message)
                    }
                }
            }
            Decision::Deny403 => refuse(
                access,
                StatusCode::FORBIDDEN,
                "ImdsDenied",
                "Access Denied. Instance metadata is not available to pods on this node".into(),
            ),
            Decision::BadRequest400 => refuse(
                access,
                StatusCode::BAD_REQUEST,
                "ImdsBadPath",
                "Bad Request: instance metadata paths must be plain (no percent-encoding, no empty, . or .. segments)".into(),
            ),
            Decision::MethodNotAllowed405 => refuse(
                access,
                StatusCode::METHOD_NOT_ALLOWED,
                "ImdsMethodNotAllowed",
                "Method Not Allowed".into(),
            ),
        }
    }

    async fn forward<B>(&self, req: &Request<B>, access: &mut Access) -> Response<Full<Bytes>> {
        match self.forwarder.forward(req).await {
            Ok(r) => r,
            Err(e) => refuse(access, e.status(), e.code(), e.to_string()),
        }
    }
}

impl<F: Fetch> Handler for ImdsFront<F> {
    async fn handle(&self, ctx: RequestContext, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (resp, access) = self.respond(&ctx, &req).await;
        self.sink.record(&access);
        resp
    }

    fn unattributed(&self, peer: SocketAddr, _local: SocketAddr) {
        self.sink.record(&Access {
            peer: Some(peer),
            status: Refusal::Unattributed.status().as_u16(),
            reason: Some(Refusal::Unattributed.code().to_owned()),
            message: Some(Refusal::Unattributed.to_string()),
            ..Access::default()
        });
    }

    fn connection(&self, caller: &Caller, event: crate::audit::ConnectionEvent) {
        self.sink.connection(caller.socket_cookie, event);
    }
}

#[cfg(test)]
mod tests;
