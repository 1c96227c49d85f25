//! The command line: `pod-identity-agent [FLAGS]` runs the agent; `audit` reads the
//! audit log as a table; `uninstall` removes the pins. Flags (and their environment
//! variables) become one [`Config`]; nothing past this module reads them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    attribution::cgroup,
    audit,
    config::{self, AuditSettings, Config, EnforceMode},
    http::ratelimit::Limits,
    sources::{eks::EksSettings, kubernetes},
};

/// Serve AWS credentials to pods, attributed by the kernel.
#[derive(Debug, Parser)]
#[command(
    name = "pod-identity-agent",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Option<RunArgs>,
}

/// What to do besides running the agent.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the audit log as a table.
    Audit(AuditArgs),
    /// Detach the programs and free the maps a pinned agent left on this node.
    Uninstall {
        /// The bpffs directory the agent pinned into.
        #[arg(default_value = DEFAULT_BPFFS_DIR)]
        dir: PathBuf,
    },
}

/// Where the agent pins its links and maps by default.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/pod-identity-agent";

/// A flag that cannot become a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("finding the host cgroup2 root (pass --cgroup)")]
    Cgroup(#[source] cgroup::CgroupError),
    #[error("--kube needs --node-name (or NODE_NAME)")]
    KubeWithoutNodeName,
}

/// Flags of the agent itself (no subcommand).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// cgroup v2 directory to attach to [default: the host's cgroup2 root, from /proc/self/mountinfo].
    #[arg(long, env = "POD_IDENTITY_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// The node address pods reach the agent at (IPv4), e.g. status.hostIP.
    #[arg(long, env = "POD_IDENTITY_NODE_IP")]
    pub agent_addr4: std::net::Ipv4Addr,
    /// The node's IPv6 address, if any (IPv6 clients use the IPv4-mapped address otherwise).
    #[arg(long, env = "POD_IDENTITY_NODE_IP6")]
    pub agent_addr6: Option<std::net::Ipv6Addr>,
    /// Port the agent listens on (never 80: ingress controllers own hostPort 80).
    #[arg(long, env = "POD_IDENTITY_PORT", default_value_t = config::DEFAULT_AGENT_PORT)]
    pub port: u16,
    /// The credentials IPv4 address pods call.
    #[arg(long, default_value_t = config::DEFAULT_CRED_ADDR4)]
    pub cred_addr4: std::net::Ipv4Addr,
    /// The credentials IPv6 address pods call.
    #[arg(long, default_value_t = config::DEFAULT_CRED_ADDR6)]
    pub cred_addr6: std::net::Ipv6Addr,
    /// The credentials port pods call.
    #[arg(long, default_value_t = config::DEFAULT_CRED_PORT)]
    pub cred_port: u16,
    /// bpffs directory where links and maps are pinned, so the redirect survives a
    /// restart; `none` to detach on exit.
    #[arg(
        long,
        env = "POD_IDENTITY_BPFFS_DIR",
        default_value = DEFAULT_BPFFS_DIR
    )]
    pub bpffs_dir: String,
    /// audit: record only; enforce: the kernel refuses callers without an association.
    #[arg(long, value_enum, default_value_t = EnforceMode::Audit, env = "POD_IDENTITY_MODE")]
    pub mode: EnforceMode,
    /// Cluster name (session names, the eks-cluster-name session tag).
    #[arg(long, env = "POD_IDENTITY_CLUSTER_NAME", default_value = "")]
    pub cluster_name: String,
    /// Cluster ARN (the eks-cluster-arn session tag).
    #[arg(long, env = "POD_IDENTITY_CLUSTER_ARN")]
    pub cluster_arn: Option<String>,
    /// STS endpoint override (a VPC endpoint; a local STS in tests).
    #[arg(long, env = "POD_IDENTITY_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,
    /// STS region [default: from the environment].
    #[arg(long, env = "AWS_REGION", default_value = "")]
    pub region: String,
    /// Pod directory file (JSON) for standalone nodes.
    #[arg(long, env = "POD_IDENTITY_PODS_FILE")]
    pub pods_file: Option<PathBuf>,
    /// Associations file (JSON).
    #[arg(long, env = "POD_IDENTITY_ASSOCIATIONS_FILE")]
    pub associations_file: Option<PathBuf>,
    /// Let the agent use the node's instance-profile role (from IMDS) as its own AWS
    /// identity for sts:AssumeRole when it has no other credentials. Off by default,
    /// and risky: every pod role must then trust the node role, so any process on the
    /// node that reaches IMDS (a hostNetwork pod, or any pod if the IMDS hop limit
    /// allows) can assume every pod role without the agent. Give the agent its own
    /// role instead (IRSA on its service account; see docs/deploy.md).
    #[arg(long)]
    pub allow_node_role: bool,
    /// The kubelet's pods directory (IRSA tokens are read from it).
    #[arg(long, default_value = "/var/lib/kubelet/pods")]
    pub kubelet_pods_dir: PathBuf,
    /// Refuse requests whose Authorization token names another pod than the kernel.
    #[arg(long)]
    pub token_cross_check: bool,
    /// Where the kubelet's cgroup tree starts below --cgroup, on nested nodes (kind:
    /// `/docker/<node container id>`). Pod cgroups must start there, with kubepods.
    #[arg(long, default_value = "")]
    pub cgroup_prefix: String,
    /// This node's name (spec.nodeName, via the downward API); required with --kube.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Pods, service accounts and PodIdentityAssociation resources from the Kubernetes API.
    #[arg(long)]
    pub kube: bool,
    /// With --kube: do not watch the PodIdentityAssociation CRD (not installed).
    #[arg(long)]
    pub no_crd: bool,
    /// With --kube: a kubeconfig file instead of in-cluster access.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kube: remove this node taint once the agent is ready (schedule pods after it).
    #[arg(long)]
    pub startup_taint: Option<String>,
    /// Associations from the EKS API (ListPodIdentityAssociations), polled.
    #[arg(long)]
    pub eks_associations: bool,
    /// EKS endpoint override.
    #[arg(long)]
    pub eks_endpoint: Option<String>,
    /// Most cached credential sets (pods × associations), as the stock agent's flag.
    #[arg(long, default_value_t = 2000)]
    pub max_cache_size: usize,
    /// Renew cached credentials at most after this many seconds, whatever their
    /// expiry (the stock agent's --max-credential-retention-before-renewal, 3 h).
    #[arg(long, default_value_t = 3 * 3600)]
    pub max_credential_retention_secs: u64,
    /// Requests per second each caller (cgroup) may make; 0 disables the limit.
    #[arg(long, default_value_t = 200.0)]
    pub max_rps_per_caller: f64,
    /// Burst above that rate.
    #[arg(long, default_value_t = 400.0)]
    pub burst_per_caller: f64,
    /// Serve /healthz and /readyz here (keep it on localhost).
    #[arg(long, env = "POD_IDENTITY_PROBE_ADDR")]
    pub probe_addr: Option<SocketAddr>,
    /// Audit log: a file path, or `-` for stdout.
    #[arg(long, env = "POD_IDENTITY_AUDIT_LOG", default_value = "-")]
    pub audit_log: String,
    /// Rotate the audit log file at this size.
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    pub audit_max_bytes: u64,
    /// Rotated audit files kept.
    #[arg(long, default_value_t = 5)]
    pub audit_keep: u32,
    /// How long a redirected connect waits for its request before it is audited alone.
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub audit_join_window_ms: u64,
    /// Log as JSON lines.
    #[arg(long, env = "POD_IDENTITY_LOG_JSON")]
    pub log_json: bool,
}

/// `pod-identity-agent audit`: read the audit log as a table.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The audit log file.
    #[arg(long, default_value = "/var/log/pod-identity-agent/audit.log")]
    pub file: PathBuf,
    /// Keep reading as the log grows (and across rotation).
    #[arg(long, short)]
    pub follow: bool,
    /// Pod name contains.
    #[arg(long)]
    pub pod: Option<String>,
    /// Namespace equals.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Role ARN contains.
    #[arg(long)]
    pub role: Option<String>,
    /// success | failure | unknown.
    #[arg(long)]
    pub outcome: Option<String>,
}

impl AuditArgs {
    /// The table filter these flags describe.
    pub fn filter(&self) -> audit::Filter {
        audit::Filter {
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            role: self.role.clone(),
            outcome: self.outcome.clone(),
        }
    }
}

impl RunArgs {
    /// Every setting, as one value.
    pub fn to_config(&self) -> Result<Config, CliError> {
        let cgroup = match &self.cgroup {
            Some(c) => c.clone(),
            None => cgroup::host_cgroup2_root().map_err(CliError::Cgroup)?,
        };
        let mut cfg = Config::new(cgroup, self.agent_addr4);
        cfg.kernel.agent_addr6 = self.agent_addr6;
        cfg.kernel.agent_port = self.port;
        cfg.kernel.cred_addr4 = self.cred_addr4;
        cfg.kernel.cred_addr6 = self.cred_addr6;
        cfg.kernel.cred_port = self.cred_port;
        cfg.kernel.enforce = self.mode;
        cfg.kernel.pin_dir = (self.bpffs_dir != "none").then(|| PathBuf::from(&self.bpffs_dir));
        cfg.token_cross_check = self.token_cross_check;
        cfg.pods_file = self.pods_file.clone();
        cfg.associations_file = self.associations_file.clone();
        cfg.probe_addr = self.probe_addr;
        cfg.cache.max_entries = self.max_cache_size;
        cfg.cache.max_retention = Duration::from_secs(self.max_credential_retention_secs);
        cfg.limits = Limits {
            rate: self.max_rps_per_caller,
            burst: self.burst_per_caller,
        };
        cfg.sts.cluster_name = self.cluster_name.clone();
        cfg.sts.cluster_arn = self.cluster_arn.clone();
        cfg.sts.endpoint_url = self.sts_endpoint.clone();
        cfg.sts.region = self.region.clone();
        cfg.sts.web_identity_token_dir = self.kubelet_pods_dir.clone();
        cfg.sts.allow_node_role = self.allow_node_role;
        cfg.cgroup_prefix = self.cgroup_prefix.clone();
        cfg.audit = AuditSettings {
            target: if self.audit_log == "-" {
                audit::Target::Stdout
            } else {
                audit::Target::File {
                    path: PathBuf::from(&self.audit_log),
                    max_bytes: self.audit_max_bytes,
                    keep: self.audit_keep,
                }
            },
            join_window: Duration::from_millis(self.audit_join_window_ms),
        };
        if self.kube {
            let node = self
                .node_name
                .clone()
                .ok_or(CliError::KubeWithoutNodeName)?;
            let mut ks = kubernetes::KubeSettings::new(node);
            ks.crd = !self.no_crd;
            ks.startup_taint = self.startup_taint.clone();
            if let Some(k) = &self.kubeconfig {
                ks.access = kubernetes::ClusterAccess::Kubeconfig(k.clone());
            }
            cfg.kube = Some(ks);
        }
        if self.eks_associations {
            let mut es = EksSettings::new(cfg.sts.cluster_name.clone());
            es.endpoint_url = self.eks_endpoint.clone();
            if !cfg.sts.region.is_empty() {
                es.region = Some(cfg.sts.region.clone());
            }
            cfg.eks = Some(es);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec![
            "pod-identity-agent",
            "--agent-addr4",
            "10.0.0.1",
            "--cgroup",
            "/",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().run.unwrap()
    }

    #[test]
    fn node_role_is_refused_unless_allowed() {
        assert!(!run_args(&[]).to_config().unwrap().sts.allow_node_role);
        assert!(
            run_args(&["--allow-node-role"])
                .to_config()
                .unwrap()
                .sts
                .allow_node_role
        );
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--allow-node-role"), "{help}");
        assert!(help.contains("IMDS"), "{help}");
    }
}
