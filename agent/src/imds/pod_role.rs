//! `pod-role` mode: the role credential paths answer with the pod's own role, in
//! the form the SDKs' instance profile providers read, from the same per-pod cache
//! as the credentials endpoint.
//!
//! * `…/security-credentials/`: the role's name (the last segment of its ARN).
//! * `…/security-credentials/<that name>`: IMDS's credentials JSON; any other
//!   name gets 404.
//! * A pod without an association gets 404, as an instance without a profile.
//!
//! STS upstream: the pod from the pod directory, its association, the
//! association's effective role. EKS Auth upstream: the pod's own EKS Pod Identity
//! token from the kubelet's pods directory (the kernel says which pod, the token
//! must name it); EKS Auth decides the role, so its name is read from the served
//! credentials' assumed-role ARN.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{HeaderValue, CONTENT_TYPE},
    Response, StatusCode,
};

use super::policy::PodRoleRequest;
use crate::{
    attribution::{Caller, Resolver},
    audit::Access,
    credentials::{
        eks_auth::prefetch_token::{read_prefetch_token, PrefetchTokenError},
        types::rfc3339_utc,
        CredentialCache, Credentials, Fetch, FetchRequest,
    },
    http::Refusal,
    model::{PodInfo, PodUid},
};

/// Why a pod gets no role from the front.
#[derive(Debug, thiserror::Error)]
pub enum PodRoleError {
    /// As on the credentials endpoint (unknown pod, no association, STS...).
    #[error(transparent)]
    Refusal(#[from] Refusal),
    /// A role name that is not the pod's.
    #[error("Not Found: not this pod's role")]
    NotThisRole,
    /// EKS Auth without `--kubelet-pods-dir`: the pod's token cannot be read.
    #[error("Not Found: no role for pod {uid}: the agent has no kubelet pods directory (--kubelet-pods-dir) to read its EKS Pod Identity token from")]
    NoKubeletPodsDir { uid: PodUid },
    /// EKS Auth: the pod has no EKS Pod Identity token (no association).
    #[error("Not Found: no EKS Pod Identity token for pod {uid}")]
    NoPodToken { uid: PodUid },
    /// EKS Auth: the pod's token could not be read or was refused.
    #[error("The EKS Pod Identity token of pod {uid} cannot be used")]
    BadPodToken {
        uid: PodUid,
        #[source]
        source: PrefetchTokenError,
    },
    /// The credentials' assumed-role ARN names no role.
    #[error("Internal error: the credentials name no role")]
    NoRoleName,
}

impl PodRoleError {
    /// The status the pod gets.
    pub fn status(&self) -> StatusCode {
        match self {
            PodRoleError::Refusal(r) => r.status(),
            PodRoleError::NotThisRole
            | PodRoleError::NoKubeletPodsDir { .. }
            | PodRoleError::NoPodToken { .. } => StatusCode::NOT_FOUND,
            PodRoleError::BadPodToken {
                source: PrefetchTokenError::Read { .. },
                ..
            }
            | PodRoleError::NoRoleName => StatusCode::INTERNAL_SERVER_ERROR,
            PodRoleError::BadPodToken { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// Reason code for the audit record.
    pub fn code(&self) -> &str {
        match self {
            PodRoleError::Refusal(r) => r.code(),
            PodRoleError::NotThisRole => "ImdsNotPodRole",
            PodRoleError::NoKubeletPodsDir { .. } => "ImdsNoKubeletPodsDir",
            PodRoleError::NoPodToken { .. } => "ImdsNoPodToken",
            PodRoleError::BadPodToken { .. } => "ImdsBadPodToken",
            PodRoleError::NoRoleName => "ImdsNoRoleName",
        }
    }
}

/// The role name in a role ARN (`arn:aws:iam::ACCT:role/path/name`) or an
/// assumed-role ARN (`arn:aws:sts::ACCT:assumed-role/name/session`).
pub fn role_name(arn: &str) -> Option<&str> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let name = if let Some(rest) = resource.strip_prefix("assumed-role/") {
        rest.split('/').next()?
    } else {
        resource.strip_prefix("role/")?.rsplit('/').next()?
    };
    (!name.is_empty()).then_some(name)
}

/// Field order of IMDS's body; serde_json keeps struct order.
#[derive(serde::Serialize)]
struct ImdsBody<'a> {
    #[serde(rename = "Code")]
    code: &'a str,
    #[serde(rename = "LastUpdated")]
    last_updated: String,
    #[serde(rename = "Type")]
    kind: &'a str,
    #[serde(rename = "AccessKeyId")]
    access_key_id: &'a str,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: &'a str,
    #[serde(rename = "Token")]
    token: &'a str,
    #[serde(rename = "Expiration")]
    expiration: String,
}

/// IMDS's `security-credentials/<role>` body.
pub fn imds_credentials_json(creds: &Credentials, last_updated: SystemTime) -> String {
    let body = ImdsBody {
        code: "Success",
        last_updated: rfc3339_utc(last_updated),
        kind: "AWS-HMAC",
        access_key_id: &creds.access_key_id,
        secret_access_key: creds.secret_access_key.expose(),
        token: creds.session_token.expose(),
        expiration: rfc3339_utc(creds.expiration),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// An IMDS-style answer: `text/plain`, the body as is.
pub fn imds_text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Serves pods their own role on the IMDS credential paths.
pub struct PodRole<F: Fetch> {
    resolver: Resolver,
    cache: CredentialCache<F>,
    eks_auth: bool,
    kubelet_pods_dir: Option<PathBuf>,
}

impl<F: Fetch> PodRole<F> {
    pub fn new(
        resolver: Resolver,
        cache: CredentialCache<F>,
        eks_auth: bool,
        kubelet_pods_dir: Option<PathBuf>,
    ) -> Self {
        PodRole {
            resolver,
            cache,
            eks_auth,
            kubelet_pods_dir,
        }
    }

    /// Answer `what` for the pod `caller` is in (the caller is known to be in a
    /// pod's cgroup). Fills the pod, association and credential fields of `access`.
    pub async fn respond(
        &self,
        caller: &Caller,
        what: &PodRoleRequest,
        access: &mut Access,
    ) -> Result<Response<Full<Bytes>>, PodRoleError> {
        if self.eks_auth {
            self.eks_auth(caller, what, access).await
        } else {
            self.sts(caller, what, access).await
        }
    }

    /// STS: the association names the role; credentials only for the role request.
    async fn sts(
        &self,
        caller: &Caller,
        what: &PodRoleRequest,
        access: &mut Access,
    ) -> Result<Response<Full<Bytes>>, PodRoleError> {
        let resolved = self.resolver.pod_of(caller.cgroup_id).await?;
        access.cgroup_path = Some(resolved.cgroup_path.clone());
        access.container_id = resolved.pod_cgroup.container_id.clone();
        access.pod = Some(resolved.pod.clone());
        let assoc = self.resolver.association(&resolved.pod)?;
        access.association = Some(assoc.clone());
        let name = role_name(assoc.effective_role_arn())
            .ok_or(PodRoleError::NoRoleName)?
            .to_owned();
        match what {
            PodRoleRequest::List => Ok(imds_text(StatusCode::OK, name)),
            PodRoleRequest::Role(asked) if *asked == name => {
                let request = FetchRequest::association(resolved.pod, assoc);
                let creds = self.cached(&request, access).await?;
                Ok(serve(&creds, access))
            }
            PodRoleRequest::Role(_) => Err(PodRoleError::NotThisRole),
        }
    }

    /// EKS Auth: the pod's token from the kubelet's directory; the served
    /// credentials name the role, so both requests need them.
    async fn eks_auth(
        &self,
        caller: &Caller,
        what: &PodRoleRequest,
        access: &mut Access,
    ) -> Result<Response<Full<Bytes>>, PodRoleError> {
        let (path, pod_cgroup) = self.resolver.pod_cgroup_of(caller.cgroup_id).await?;
        access.cgroup_path = Some(path);
        access.container_id = pod_cgroup.container_id.clone();
        let uid = pod_cgroup.pod_uid;
        let known = self.resolver.pods.get(&uid);
        if let Some(p) = &known {
            access.pod = Some(p.clone());
        }
        let Some(dir) = self.kubelet_pods_dir.clone() else {
            return Err(PodRoleError::NoKubeletPodsDir { uid });
        };
        let read = {
            let uid = uid.clone();
            tokio::task::spawn_blocking(move || read_prefetch_token(&dir, &uid, SystemTime::now()))
                .await
                .map_err(|_| PodRoleError::Refusal(Refusal::LookupFailed))?
        };
        let token = match read {
            Ok(t) => t,
            Err(PrefetchTokenError::Missing { .. }) => {
                return Err(PodRoleError::NoPodToken { uid });
            }
            Err(source) => return Err(PodRoleError::BadPodToken { uid, source }),
        };
        let pod = PodInfo {
            uid,
            namespace: token.namespace.clone(),
            name: token.pod_name.clone(),
            service_account: token.service_account.clone(),
            service_account_annotations: Default::default(),
            host_network: known.is_some_and(|p| p.host_network),
        };
        access.pod = Some(pod.clone());
        let creds = self
            .cached(&FetchRequest::pod_identity(pod, token), access)
            .await?;
        let name = role_name(&creds.assumed_role_arn).ok_or(PodRoleError::NoRoleName)?;
        match what {
            PodRoleRequest::List => Ok(imds_text(StatusCode::OK, name.to_owned())),
            PodRoleRequest::Role(asked) if asked == name => Ok(serve(&creds, access)),
            PodRoleRequest::Role(_) => Err(PodRoleError::NotThisRole),
        }
    }

    /// The pod's credentials from the shared cache.
    async fn cached(
        &self,
        request: &FetchRequest,
        access: &mut Access,
    ) -> Result<Arc<Credentials>, PodRoleError> {
        let (creds, outcome) = self.cache.get(request).await.map_err(Refusal::from)?;
        access.cache = Some(outcome);
        access.assumed_role_arn = Some(creds.assumed_role_arn.clone());
        Ok(creds)
    }
}

/// The credentials, in IMDS's form.
fn serve(creds: &Credentials, access: &mut Access) -> Response<Full<Bytes>> {
    access.access_key_id = Some(creds.access_key_id.clone());
    imds_text(
        StatusCode::OK,
        imds_credentials_json(creds, SystemTime::now()),
    )
}

#[cfg(test)]
mod tests;
