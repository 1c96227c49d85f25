//! What the IMDS front does and where the real IMDS is.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The instance metadata addresses and port pods call.
pub const IMDS_ADDR4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const IMDS_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
pub const IMDS_PORT: u16 = 80;
/// Where the agent's IMDS front listens on the node address.
pub const DEFAULT_IMDS_FRONT_PORT: u16 = 2712;

/// What pods get from instance metadata (`--imds`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ImdsMode {
    /// No redirect: pods reach the real IMDS (and the node role, unless the hop
    /// limit or something else stops them).
    Off,
    /// Everything but the role credential paths is forwarded; those get 404.
    #[default]
    BlockCredentials,
    /// The role credential paths serve the pod's own association.
    PodRole,
    /// Nothing: 403 from the front, or `EPERM` at `connect()` in enforce mode.
    Deny,
}

/// The IMDS front's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsSettings {
    pub mode: ImdsMode,
    /// Also answer 404 for user data (`/<version>/user-data`), which often holds
    /// bootstrap secrets.
    pub block_user_data: bool,
    /// The real IMDS, as the agent reaches it (its own cgroup is never redirected).
    pub upstream: String,
    /// The address pods call (the kernel matches it; `Host` headers name it).
    pub addr4: Ipv4Addr,
    pub addr6: Ipv6Addr,
    pub port: u16,
    /// The front's port on the node address.
    pub front_port: u16,
    /// One forwarded request, connection included.
    pub timeout: Duration,
    /// Largest body forwarded back (user data is at most 16 KiB).
    pub max_body_bytes: usize,
}

impl Default for ImdsSettings {
    fn default() -> Self {
        Self {
            mode: ImdsMode::default(),
            block_user_data: false,
            upstream: format!("http://{IMDS_ADDR4}:{IMDS_PORT}"),
            addr4: IMDS_ADDR4,
            addr6: IMDS_ADDR6,
            port: IMDS_PORT,
            front_port: DEFAULT_IMDS_FRONT_PORT,
            timeout: Duration::from_secs(2),
            max_body_bytes: 1 << 20,
        }
    }
}

impl ImdsSettings {
    /// Whether the kernel redirects pods' IMDS connections (any mode but `off`).
    pub fn guarded(&self) -> bool {
        self.mode != ImdsMode::Off
    }
}
