//! Stage 4, credentials: per-(pod, association) cache in front of the upstream
//! (EKS Auth on EKS, STS elsewhere), and the credential values served to pods.
//!
//! * [`types`]: credentials, secrets that redact themselves, the SDK JSON body.
//! * [`cache`]: coalescing, refresh-ahead, stale-on-error, bounds.
//! * [`upstream`]: the [`Fetch`] interface, what one fetch needs, the choice of upstream.
//! * [`sts`]: AssumeRole (EKS session tags), role chaining, AssumeRoleWithWebIdentity.
//! * [`eks_auth`]: EKS Auth `AssumeRoleForPodIdentity` with the pod's token, after
//!   checking that the token names the pod the kernel attributed the call to.

pub mod cache;
pub mod eks_auth;
pub mod sts;
pub mod types;
pub mod upstream;

pub use cache::{CacheOutcome, CacheSettings, CredentialCache};
pub use eks_auth::{EksAuthClient, EksAuthError, EksAuthSettings, PodIdentityCredentials};
pub use sts::{StsError, StsFetcher};
pub use types::{Credentials, Secret};
pub use upstream::{Fetch, FetchRequest, Target, Upstream, UpstreamError};
