//! Stage 3, sources: what the agent knows about pods and their associations.
//!
//! * [`pods`]: the pod directory (pod UID → namespace, name, service account).
//! * [`associations`]: (namespace, service account) → role, merged from every
//!   source by precedence.
//! * [`kubernetes`]: node-scoped pod and service-account watch, the
//!   `PodIdentityAssociation` CRD, the startup taint.
//! * [`eks`]: associations polled from the EKS API.
//! * [`files`]: the node-local file formats (pods file, associations file).

pub mod associations;
pub mod eks;
pub mod files;
pub mod kubernetes;
pub mod pods;
