//! Agent configuration as a plain value.
//!
//! [`crate::cli`] turns command-line flags (and their environment variables) into a
//! [`Config`]; tests build one directly, without touching the process environment,
//! and [`crate::app::build`] starts the whole agent from it.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use crate::{
    audit::Target,
    credentials::{cache::CacheSettings, eks_auth::EksAuthSettings, sts::StsSettings},
    http::{conn_limit::ConnectionLimits, ratelimit::Limits},
    imds::{ImdsMode, ImdsSettings},
    sources::{eks::EksSettings, kubernetes::KubeSettings},
};

/// The EKS Pod Identity credentials addresses and port.
pub const DEFAULT_CRED_ADDR4: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 23);
pub const DEFAULT_CRED_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23);
pub const DEFAULT_CRED_PORT: u16 = 80;
/// Where the agent listens on the node. Not 80: hostPort 80 collides with ingress
/// controllers (stock agent issue #10). Not 2703/2705 (the stock agent's probe and
/// metrics ports), so both can run side by side during a migration.
pub const DEFAULT_AGENT_PORT: u16 = 2710;

/// Whether the kernel refuses callers that cannot get credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EnforceMode {
    /// Record only; refusals happen in the agent (HTTP 4xx).
    #[default]
    Audit,
    /// `connect()` fails with EPERM for cgroups without an association.
    Enforce,
}

/// Everything the kernel side needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// cgroup v2 directory the programs attach to (the host's cgroup2 root in
    /// production; a test-made subtree in tests).
    pub cgroup: PathBuf,
    pub cred_addr4: Ipv4Addr,
    pub cred_addr6: Ipv6Addr,
    pub cred_port: u16,
    /// The agent's IPv4 address as reachable from pods (the node IP).
    pub agent_addr4: Ipv4Addr,
    /// The agent's IPv6 address, if the node has one. Without it IPv6 clients are
    /// sent to the IPv4-mapped agent address (IPv4-only nodes, stock agent issue #16).
    pub agent_addr6: Option<Ipv6Addr>,
    pub agent_port: u16,
    pub enforce: EnforceMode,
    /// bpffs directory for pinned links and maps: the redirect survives an agent
    /// restart (invariant 8). `None`: programs detach when the agent exits.
    pub pin_dir: Option<PathBuf>,
    /// The node-role guard: pods' connections to instance metadata (`None`: off).
    pub imds: Option<KernelImds>,
}

/// What the kernel does with pods' connections to instance metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelImds {
    pub addr4: Ipv4Addr,
    pub addr6: Ipv6Addr,
    pub port: u16,
    /// The agent's IMDS front, on the agent addresses.
    pub front_port: u16,
    /// Refuse with `EPERM` instead of redirecting (`--imds deny`, enforce mode).
    pub deny: bool,
}

/// Where pods' credentials come from.
#[derive(Clone, Debug)]
pub enum UpstreamConfig {
    /// The agent assumes each association's role with STS (clusters outside EKS):
    /// associations come from the file, the CRD or the EKS API.
    Sts,
    /// EKS Auth `AssumeRoleForPodIdentity` with the pod's own token (EKS): no
    /// local associations, no pod directory, no Kubernetes API needed.
    EksAuth(EksAuthSettings),
}

impl UpstreamConfig {
    /// Whether credentials come from EKS Auth.
    pub fn is_eks_auth(&self) -> bool {
        matches!(self, UpstreamConfig::EksAuth(_))
    }
}

/// The whole agent configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub kernel: KernelConfig,
    /// How long a request waits for a pod the directory does not know yet (the pod
    /// watch can lag behind the pod's first process).
    pub unknown_pod_wait: Duration,
    /// Refuse a token whose pod claims differ from the kernel's attribution.
    pub token_cross_check: bool,
    /// Pod directory file (standalone nodes, demo, tests).
    pub pods_file: Option<PathBuf>,
    /// Associations file.
    pub associations_file: Option<PathBuf>,
    /// Root of the cgroup index (defaults to the attach point).
    pub cgroup_index_root: PathBuf,
    /// How often the cgroup tree is rescanned for pods that came or went
    /// (prefetch, eviction, kernel verdicts).
    pub rescan_interval: Duration,
    /// Where credentials come from.
    pub upstream: UpstreamConfig,
    /// EKS Auth mode: prefetch with the pod's token read from this kubelet pods
    /// directory when the pod's cgroup appears (`None`: no prefetch).
    pub prefetch_tokens_dir: Option<PathBuf>,
    /// STS access (the STS upstream; the agent's own AWS identity in both modes).
    pub sts: StsSettings,
    /// Credential cache tuning.
    pub cache: CacheSettings,
    /// Where `/healthz` and `/readyz` are served (localhost only).
    pub probe_addr: Option<std::net::SocketAddr>,
    /// Where `/metrics` is served for Prometheus (the stock agent: `0.0.0.0:2705`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Request limits per caller cgroup.
    pub limits: Limits,
    /// Connections the credentials listener holds, in total and per caller.
    pub connections: ConnectionLimits,
    /// Where the kubelet's cgroup tree starts below the cgroup root ("" normally;
    /// `/docker/<id>` on a nested node such as kind).
    pub cgroup_prefix: String,
    /// The audit log.
    pub audit: AuditSettings,
    /// Pods, service accounts and the CRD from the Kubernetes API (`None`: off).
    pub kube: Option<KubeSettings>,
    /// Associations polled from the EKS API (`None`: off).
    pub eks: Option<EksSettings>,
    /// The instance metadata front (the node-role guard).
    pub imds: ImdsSettings,
    /// On SIGTERM, how long requests in flight may take to finish.
    pub shutdown_timeout: Duration,
}

/// Where the audit log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    pub target: Target,
    /// How long a redirected connect waits for its request before it is audited alone.
    pub join_window: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            target: Target::Stdout,
            join_window: crate::audit::JOIN_WINDOW,
        }
    }
}

impl Config {
    /// Sets the IMDS front's settings and the kernel's side of them together.
    pub fn set_imds(&mut self, imds: ImdsSettings) {
        self.kernel.imds = imds.guarded().then(|| KernelImds {
            addr4: imds.addr4,
            addr6: imds.addr6,
            port: imds.port,
            front_port: imds.front_port,
            deny: imds.mode == ImdsMode::Deny && self.kernel.enforce == EnforceMode::Enforce,
        });
        self.imds = imds;
    }

    /// A config for an agent reachable at `agent_addr4`, attached at `cgroup`, with
    /// every other setting at its default.
    pub fn new(cgroup: PathBuf, agent_addr4: Ipv4Addr) -> Self {
        Config {
            kernel: KernelConfig {
                cgroup: cgroup.clone(),
                cred_addr4: DEFAULT_CRED_ADDR4,
                cred_addr6: DEFAULT_CRED_ADDR6,
                cred_port: DEFAULT_CRED_PORT,
                agent_addr4,
                agent_addr6: None,
                agent_port: DEFAULT_AGENT_PORT,
                enforce: EnforceMode::Audit,
                pin_dir: None,
                imds: None,
            },
            unknown_pod_wait: Duration::from_secs(2),
            token_cross_check: false,
            pods_file: None,
            associations_file: None,
            cgroup_index_root: cgroup.clone(),
            rescan_interval: Duration::from_secs(1),
            upstream: UpstreamConfig::Sts,
            prefetch_tokens_dir: None,
            sts: StsSettings::default(),
            cache: CacheSettings::default(),
            probe_addr: None,
            metrics_addr: None,
            limits: Limits::default(),
            connections: ConnectionLimits::default(),
            cgroup_prefix: String::new(),
            audit: AuditSettings::default(),
            kube: None,
            eks: None,
            imds: ImdsSettings {
                mode: ImdsMode::Off,
                ..ImdsSettings::default()
            },
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}
