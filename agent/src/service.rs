//! What the agent answers on the credentials endpoint: kernel caller → cgroup →
//! pod → association → cached STS credentials, in the format every SDK expects.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};

use crate::{
    associations::{AssociationError, AssociationStore},
    attribution::Caller,
    cache::{CacheOutcome, CredentialCache},
    cgroup::{self, CgroupError, CgroupIndex, PodCgroup},
    config::Config,
    model::{Association, PodInfo},
    pods::{PodError, PodStore},
    server::{json, text, Handler, RequestContext, Unattributed},
    sts::Fetch,
    token,
};

/// Path of the credentials endpoint.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// Diagnostic endpoint: what the kernel says about the caller (its own data only).
pub const WHOAMI_PATH: &str = "/v1/whoami";

/// cgroup → pod resolution, shared by the endpoint and the lifecycle task.
#[derive(Clone)]
pub struct Resolver {
    pub index: Arc<CgroupIndex>,
    pub pods: PodStore,
    pub assocs: AssociationStore,
    pub unknown_pod_wait: Duration,
}

/// Why a caller gets no credentials. Each maps to a status and a plain-text body.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No kernel record for the connection.
    #[error("Access Denied. The kernel has no record of this connection: call http://169.254.170.23/v1/credentials from a pod on this node")]
    Unattributed,
    /// The attribution map lookup failed.
    #[error("Internal error: attribution lookup failed")]
    LookupFailed,
    /// Wrong `Host` header.
    #[error("Access Denied. Called agent through invalid address, please use either [{addr4} {addr6}] address not {host}")]
    InvalidHost { addr4: String, addr6: String, host: String },
    /// The caller's cgroup is gone or not indexed yet.
    #[error("The caller's cgroup {cgroup_id} was not found on this node; retry")]
    CgroupNotFound { cgroup_id: u64 },
    /// The caller is not in a pod's cgroup (a host process).
    #[error("Access Denied. The caller (cgroup {path}) is not in a Kubernetes pod")]
    NotAPod { path: String },
    /// The cgroup path could not be attributed safely.
    #[error("Access Denied. The caller's cgroup cannot be attributed to one pod: {0}")]
    Ambiguous(Box<CgroupError>),
    /// Other cgroup index failure.
    #[error("Internal error resolving the caller's cgroup: {0}")]
    Cgroup(Box<CgroupError>),
    /// The pod directory does not know the pod (yet).
    #[error("Pod {uid} is not known to the agent yet; retry")]
    UnknownPod { uid: String },
    /// No association for the pod's service account.
    #[error("No Pod Identity association for service account {namespace}/{service_account} (pod {namespace}/{pod})")]
    NoAssociation { namespace: String, service_account: String, pod: String },
    /// An association exists but is unusable.
    #[error("Invalid Pod Identity association: {0}")]
    BadAssociation(Box<AssociationError>),
    /// Token cross-check failed.
    #[error("{0}")]
    Token(token::TokenError),
    /// STS (or the cache) could not produce credentials.
    #[error("{message}")]
    Credentials { status: u16, code: String, message: String },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unattributed | Refusal::InvalidHost { .. } | Refusal::NotAPod { .. } | Refusal::Ambiguous(_) => 403,
            Refusal::LookupFailed | Refusal::Cgroup(_) => 500,
            // Retryable: the cgroup index or the pod watch may be a moment behind.
            Refusal::CgroupNotFound { .. } | Refusal::UnknownPod { .. } => 503,
            Refusal::NoAssociation { .. } => 404,
            Refusal::BadAssociation(_) => 400,
            Refusal::Token(e) => e.http_status(),
            Refusal::Credentials { status, .. } => *status,
        }
    }

    /// Short reason code for logs and audit records.
    pub fn code(&self) -> &str {
        match self {
            Refusal::Unattributed => "Unattributed",
            Refusal::LookupFailed => "LookupFailed",
            Refusal::InvalidHost { .. } => "InvalidHost",
            Refusal::CgroupNotFound { .. } => "CgroupNotFound",
            Refusal::NotAPod { .. } => "NotAPod",
            Refusal::Ambiguous(_) => "AmbiguousCgroup",
            Refusal::Cgroup(_) => "CgroupError",
            Refusal::UnknownPod { .. } => "UnknownPod",
            Refusal::NoAssociation { .. } => "NoAssociation",
            Refusal::BadAssociation(_) => "BadAssociation",
            Refusal::Token(token::TokenError::PodMismatch { .. }) => "TokenPodMismatch",
            Refusal::Token(_) => "BadToken",
            Refusal::Credentials { code, .. } => code,
        }
    }
}

/// A resolved caller.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub cgroup_path: String,
    pub pod_cgroup: PodCgroup,
    pub pod: PodInfo,
}

impl Resolver {
    /// cgroup id → pod, failing closed.
    pub async fn pod_of(&self, cgroup_id: u64) -> Result<Resolved, Refusal> {
        let path = self.cgroup_path(cgroup_id).await?;
        let pod_cgroup = match cgroup::parse_cgroup_path(&path) {
            Ok(Some(pc)) => pc,
            Ok(None) => return Err(Refusal::NotAPod { path }),
            Err(e) => return Err(Refusal::Ambiguous(Box::new(e))),
        };
        let pod = self
            .pods
            .lookup(&pod_cgroup.pod_uid, self.unknown_pod_wait)
            .await
            .map_err(|e| match e {
                PodError::UnknownPod { uid } => Refusal::UnknownPod { uid },
                other => Refusal::UnknownPod { uid: format!("{} ({other})", pod_cgroup.pod_uid) },
            })?;
        Ok(Resolved { cgroup_path: path, pod_cgroup, pod })
    }

    async fn cgroup_path(&self, cgroup_id: u64) -> Result<String, Refusal> {
        // A brand-new pod can call before the index has seen its cgroup; the index
        // rescans on a miss at most every `min_rescan_interval`, so try twice.
        for attempt in 0..2 {
            let index = self.index.clone();
            let r = tokio::task::spawn_blocking(move || index.resolve(cgroup_id))
                .await
                .map_err(|_| Refusal::LookupFailed)?;
            match r {
                Ok(p) => return Ok(p),
                Err(CgroupError::NotFound { .. }) if attempt == 0 => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(CgroupError::NotFound { cgroup_id }) => return Err(Refusal::CgroupNotFound { cgroup_id }),
                Err(e) => return Err(Refusal::Cgroup(Box::new(e))),
            }
        }
        Err(Refusal::CgroupNotFound { cgroup_id })
    }

    pub fn association(&self, pod: &PodInfo) -> Result<Association, Refusal> {
        self.assocs.resolve(pod).map_err(|e| match e {
            AssociationError::NoAssociation { namespace, service_account } => Refusal::NoAssociation {
                namespace,
                service_account,
                pod: pod.name.clone(),
            },
            other => Refusal::BadAssociation(Box::new(other)),
        })
    }
}

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
        let pod = a.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name));
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

/// Settings of the endpoint itself.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    pub cred_addr4: String,
    pub cred_addr6: String,
    /// Refuse a token whose pod claims differ from the kernel's attribution.
    pub token_cross_check: bool,
}

impl From<&Config> for ServiceSettings {
    fn from(cfg: &Config) -> Self {
        ServiceSettings {
            cred_addr4: cfg.kernel.cred_addr4.to_string(),
            cred_addr6: cfg.kernel.cred_addr6.to_string(),
            token_cross_check: cfg.token_cross_check,
        }
    }
}

/// The credentials endpoint.
pub struct Service<F: Fetch> {
    settings: ServiceSettings,
    resolver: Resolver,
    cache: CredentialCache<F>,
    sink: Arc<dyn AccessSink>,
}

impl<F: Fetch> Service<F> {
    pub fn new(settings: ServiceSettings, resolver: Resolver, cache: CredentialCache<F>, sink: Arc<dyn AccessSink>) -> Self {
        Service { settings, resolver, cache, sink }
    }

    fn check_host<B>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let host = crate::server::host_of(req).unwrap_or_default();
        if host == self.settings.cred_addr4 || host == self.settings.cred_addr6 {
            return Ok(());
        }
        Err(Refusal::InvalidHost {
            addr4: self.settings.cred_addr4.clone(),
            addr6: self.settings.cred_addr6.clone(),
            host,
        })
    }

    async fn credentials<B>(&self, caller: &Caller, req: &Request<B>, access: &mut Access) -> Result<Response<Full<Bytes>>, Refusal> {
        let resolved = self.resolver.pod_of(caller.cgroup_id).await?;
        access.cgroup_path = Some(resolved.cgroup_path.clone());
        access.container_id = resolved.pod_cgroup.container_id.clone();
        access.pod = Some(resolved.pod.clone());
        if self.settings.token_cross_check {
            let tok = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            token::cross_check(tok, &resolved.pod.uid, SystemTime::now()).map_err(Refusal::Token)?;
        }
        let assoc = self.resolver.association(&resolved.pod)?;
        access.association = Some(assoc.clone());
        let (creds, outcome) = self.cache.get(&resolved.pod, &assoc).await.map_err(|e| Refusal::Credentials {
            status: e.http_status(),
            code: e.code().to_owned(),
            message: e.to_string(),
        })?;
        access.cache = Some(outcome);
        access.access_key_id = Some(creds.access_key_id.clone());
        access.assumed_role_arn = Some(creds.assumed_role_arn.clone());
        Ok(json(StatusCode::OK, creds.to_sdk_json()))
    }

    /// Handle one request from an attributed (or not) connection.
    pub async fn respond<B>(&self, ctx: &RequestContext, req: &Request<B>) -> (Response<Full<Bytes>>, Access) {
        let start = Instant::now();
        let mut access = Access {
            path: req.uri().path().to_owned(),
            method: req.method().to_string(),
            peer: Some(ctx.peer),
            ..Access::default()
        };
        let result = async {
            let caller = match &ctx.caller {
                Ok(c) => c,
                Err(Unattributed::NoRecord) => return Err(Refusal::Unattributed),
                Err(Unattributed::LookupFailed(e)) => {
                    tracing::error!(peer = %ctx.peer, error = %e, "attribution lookup failed");
                    return Err(Refusal::LookupFailed);
                }
            };
            access.caller = Some(caller.clone());
            self.check_host(req)?;
            match req.uri().path() {
                // The stock agent answers any method on the credentials path.
                CREDENTIALS_PATH => self.credentials(caller, req, &mut access).await,
                WHOAMI_PATH => Ok(json(StatusCode::OK, serde_json::to_string(caller).unwrap_or_default())),
                _ => Ok(text(StatusCode::NOT_FOUND, "404 page not found")),
            }
        }
        .await;
        let resp = match result {
            Ok(r) => r,
            Err(refusal) => {
                access.reason = Some(refusal.code().to_owned());
                access.message = Some(refusal.to_string());
                let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                text(status, &refusal.to_string())
            }
        };
        access.status = resp.status().as_u16();
        access.latency = start.elapsed();
        (resp, access)
    }
}

impl<F: Fetch> Handler for Service<F> {
    async fn handle(&self, ctx: RequestContext, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (resp, access) = self.respond(&ctx, &req).await;
        self.sink.record(&access);
        resp
    }
}
