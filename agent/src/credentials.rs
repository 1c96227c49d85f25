//! Stage 4, credentials: per-(pod, association) cache in front of the upstream
//! (STS), and the credential values served to pods.
//!
//! * [`types`]: credentials, secrets that redact themselves, the SDK JSON body.
//! * [`cache`]: coalescing, refresh-ahead, stale-on-error, bounds.
//! * [`sts`]: AssumeRole (EKS session tags), role chaining, AssumeRoleWithWebIdentity.
//! * [`eks_auth`]: EKS Auth `AssumeRoleForPodIdentity` with the pod's token, after
//!   checking that the token names the pod the kernel attributed the call to.

pub mod cache;
pub mod eks_auth;
pub mod sts;
pub mod types;

pub use cache::{CacheOutcome, CacheSettings, CredentialCache};
pub use eks_auth::{EksAuthClient, EksAuthError, EksAuthSettings, PodIdentityCredentials};
pub use sts::{Fetch, StsError, StsFetcher};
pub use types::{Credentials, Secret};
