//! Stage 4, credentials: per-(pod, association) cache in front of the upstream
//! (STS), and the credential values served to pods.
//!
//! * [`types`]: credentials, secrets that redact themselves, the SDK JSON body.
//! * [`cache`]: coalescing, refresh-ahead, stale-on-error, bounds.
//! * [`sts`]: AssumeRole (EKS session tags), role chaining, AssumeRoleWithWebIdentity.

pub mod cache;
pub mod sts;
pub mod types;

pub use cache::{CacheOutcome, CacheSettings, CredentialCache};
pub use sts::{Fetch, StsError, StsFetcher};
pub use types::{Credentials, Secret};
