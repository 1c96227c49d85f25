//! The command line: `pod-identity-agent [FLAGS]` runs the agent; `audit` reads the
//! audit log as a table; `uninstall` removes the pins. Flags (and their environment
//! variables) become one [`Config`]; nothing past this module reads them.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::{
    attribution::cgroup,
    audit,
    config::{self, AuditSettings, Config, EnforceMode, UpstreamConfig},
    credentials::eks_auth::EksAuthSettings,
    http::ratelimit::Limits,
    imds::{ImdsMode, ImdsSettings},
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

pub mod config_file;

pub use config_file::ConfigFileError;

/// What to do besides running the agent.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a config file: every key a setting, every value valid, the whole a
    /// usable configuration (with this process's environment applied).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read the audit log as a table.
    Audit(AuditArgs),
    /// Detach the programs and free the maps a pinned agent left on this node.
    Uninstall {
        /// The bpffs directory the agent pinned into.
        #[arg(default_value = DEFAULT_BPFFS_DIR)]
        dir: PathBuf,
    },
}

/// `pod-identity-agent config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check FILE; exits non-zero naming the bad key and value.
    Check {
        /// The config file (TOML).
        file: PathBuf,
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
    #[error("--upstream eks-auth needs --cluster-name (the EKS cluster this node belongs to)")]
    EksAuthWithoutClusterName,
    #[error(
        "{flag}: with --upstream eks-auth, EKS Auth finds each pod's association; \
         pass --upstream sts to use associations of your own"
    )]
    AssociationsWithEksAuth { flag: &'static str },
}

/// Where pods' credentials come from (`--upstream`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamKind {
    /// EKS Auth AssumeRoleForPodIdentity with the pod's own token (EKS clusters).
    #[default]
    EksAuth,
    /// sts:AssumeRole by the agent, with associations from --associations-file,
    /// the CRD (--kube) or the EKS API (--eks-associations).
    Sts,
}

/// A duration as Go writes it (the stock agent's flags): `3h`, `90m`, `1h30m`,
/// `45s`, `500ms`; `0` alone is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("invalid duration {text:?}: use Go's form, e.g. 3h, 90m, 1h30m, 45s");
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = Duration::try_from_secs_f64(value * secs).map_err(|_| bad())?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

/// A factor of at least 1 (`--upstream-timeout-scale`).
fn parse_scale(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (1.0..=1000.0).contains(s))
        .ok_or_else(|| format!("{text:?}: a number from 1 to 1000"))
}

/// Flags of the agent itself (no subcommand).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A config file (TOML) whose keys are these flags' long names, e.g.
    /// `cluster-name = "prod"`. Flags, then environment variables, override it.
    #[arg(long, env = "POD_IDENTITY_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// Where pods' credentials come from: eks-auth (EKS: the pod's own token, no
    /// IAM change, no local associations) or sts (elsewhere: the agent assumes the
    /// roles of its own associations).
    #[arg(long, value_enum, env = "POD_IDENTITY_UPSTREAM", default_value_t = UpstreamKind::EksAuth)]
    pub upstream: UpstreamKind,
    /// Cluster name: EKS Auth's cluster (required with --upstream eks-auth); with
    /// sts, in session names and the eks-cluster-name session tag.
    #[arg(long, env = "POD_IDENTITY_CLUSTER_NAME", default_value = "")]
    pub cluster_name: String,
    /// EKS Auth endpoint override (a VPC endpoint; a stand-in in tests), as the
    /// stock agent's --endpoint.
    #[arg(long, env = "POD_IDENTITY_EKS_AUTH_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Background calls (refresh ahead, prefetch) per second to the upstream, as
    /// the stock agent's flag; requests waiting for credentials are not limited.
    #[arg(long, default_value_t = 3.0)]
    pub max_service_qps: f64,
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
    /// The kubelet's pods directory (read-only). sts: IRSA tokens are read from it
    /// [default: /var/lib/kubelet/pods]. eks-auth: when set, a pod's
    /// eks-pod-identity-token is read from it when its cgroup appears, to prefetch.
    #[arg(long)]
    pub kubelet_pods_dir: Option<PathBuf>,
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
    /// With --kube: do not post Kubernetes Events on pods refused for lack of an
    /// association, another pod's token, or the upstream's AccessDenied.
    #[arg(long)]
    pub no_kube_events: bool,
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
    /// Renew cached credentials after this long, whatever their expiry, as the
    /// stock agent's flag (Go duration: 3h, 90m, 1h30m).
    #[arg(long, default_value = "3h", value_parser = parse_duration)]
    pub max_credential_retention_before_renewal: Duration,
    /// Requests per second each caller (cgroup) may make; 0 disables the limit.
    #[arg(long, default_value_t = 200.0)]
    pub max_rps_per_caller: f64,
    /// Burst above that rate.
    #[arg(long, default_value_t = 400.0)]
    pub burst_per_caller: f64,
    /// Serve /healthz and /readyz here (keep it on localhost).
    #[arg(long, env = "POD_IDENTITY_PROBE_ADDR", conflicts_with = "probe_port")]
    pub probe_addr: Option<SocketAddr>,
    /// Serve /healthz and /readyz on localhost at this port, as the stock agent's
    /// flag (its default is 2703).
    #[arg(long)]
    pub probe_port: Option<u16>,
    /// Address for /metrics, as the stock agent's flag (with --metrics-port).
    #[arg(long, default_value = "0.0.0.0")]
    pub metrics_address: std::net::IpAddr,
    /// Serve Prometheus /metrics on --metrics-address at this port, as the stock
    /// agent's flag (its default is 2705); /metrics is on the probe port too.
    #[arg(long)]
    pub metrics_port: Option<u16>,
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
    /// Multiply the upstream timeouts (STS, EKS Auth, the real IMDS) by this factor:
    /// for the tests under emulation (`cargo xtask test-kernels`), where every
    /// process runs many times slower. Not for production.
    #[arg(long, default_value_t = 1.0, hide = true, value_parser = parse_scale)]
    pub upstream_timeout_scale: f64,
    /// Log as JSON lines.
    #[arg(long, env = "POD_IDENTITY_LOG_JSON")]
    pub log_json: bool,
    /// What pods get from instance metadata (169.254.169.254): off (no redirect),
    /// block-credentials (everything but the node role's credentials), pod-role
    /// (the credential paths serve the pod's own role), deny (nothing; EPERM at
    /// connect() in enforce mode). Node processes are never affected.
    #[arg(long, value_enum, env = "POD_IDENTITY_IMDS", default_value_t = ImdsMode::BlockCredentials)]
    pub imds: ImdsMode,
    /// Port of the agent's IMDS front on the node address.
    #[arg(long, default_value_t = crate::imds::settings::DEFAULT_IMDS_FRONT_PORT)]
    pub imds_port: u16,
    /// The real instance metadata service, as the agent reaches it.
    #[arg(long, default_value = "http://169.254.169.254:80")]
    pub imds_endpoint: String,
    /// With --imds: also refuse pods the instance's user data (often bootstrap secrets).
    #[arg(long)]
    pub imds_block_user_data: bool,
    /// On SIGTERM: stop accepting, and give requests in flight this long to finish
    /// (Go duration); the pinned redirect stays for the next agent.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Why the command line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
}

const SUBCOMMANDS: [&str; 4] = ["audit", "uninstall", "config", "help"];

/// The agent's command as parsed with a config file: later occurrences of a flag
/// override earlier ones (the file's arguments come first).
fn command() -> clap::Command {
    Cli::command().args_override_self(true)
}

/// Parses `argv` (program name first), applying the config file named by
/// `--config` or `POD_IDENTITY_CONFIG` (see [`config_file`] for the precedence);
/// `env` reads the environment.
pub fn parse_from(
    argv: Vec<OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Cli, ParseError> {
    let cmd = command();
    let is_subcommand = argv
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|a| SUBCOMMANDS.contains(&a));
    let mut full: Vec<OsString> = argv.iter().take(1).cloned().collect();
    if !is_subcommand {
        if let Some(path) = config_file::config_path(&argv, &env) {
            full.extend(config_file::file_args(&path, &cmd, &env)?);
        }
    }
    full.extend(argv.into_iter().skip(1));
    let matches = cmd.try_get_matches_from(full)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// [`parse_from`] with the process's arguments and environment; prints the error
/// and exits as clap does.
pub fn parse() -> Cli {
    match parse_from(std::env::args_os().collect(), |k| std::env::var(k).ok()) {
        Ok(cli) => cli,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}

/// `config check FILE`: the configuration the agent would run with, given FILE
/// and the environment `env`. The node address and the cgroup, which usually come
/// from the downward API and the host, get placeholders when neither the file nor
/// the environment sets them.
pub fn check_config_file(
    file: &std::path::Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let text = std::fs::read_to_string(file).map_err(|source| {
        config_file::ConfigFileError::Read {
            path: file.to_owned(),
            source,
        }
        .to_string()
    })?;
    check_config_text(file, &text, env)
}

/// [`check_config_file`] for the file's text, already read from `file` (which only
/// names the file in errors).
pub fn check_config_text(
    file: &std::path::Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let cmd = command();
    let args = config_file::args_from_text(file, text, &cmd, &env).map_err(|e| e.to_string())?;
    let mut argv: Vec<OsString> = vec![
        "pod-identity-agent".into(),
        "--agent-addr4=192.0.2.1".into(),
        "--cgroup=/".into(),
    ];
    argv.extend(args);
    let matches = cmd
        .try_get_matches_from(argv)
        .map_err(|e| format!("{}: {}", file.display(), e.render().to_string().trim()))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let run = cli.run.ok_or("no settings")?;
    run.to_config()
        .map_err(|e| format!("{}: {e}", file.display()))
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
        cfg.probe_addr = self.probe_addr.or_else(|| {
            self.probe_port
                .map(|p| SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, p)))
        });
        cfg.metrics_addr = self
            .metrics_port
            .map(|p| SocketAddr::new(self.metrics_address, p));
        cfg.cache.max_entries = self.max_cache_size;
        cfg.cache.max_retention = self.max_credential_retention_before_renewal;
        cfg.cache.request_wait = cfg.cache.request_wait.mul_f64(self.upstream_timeout_scale);
        cfg.cache.max_service_qps = self.max_service_qps;
        cfg.limits = Limits {
            rate: self.max_rps_per_caller,
            burst: self.burst_per_caller,
        };
        cfg.sts.cluster_name = self.cluster_name.clone();
        cfg.sts.cluster_arn = self.cluster_arn.clone();
        cfg.sts.endpoint_url = self.sts_endpoint.clone();
        cfg.sts.region = self.region.clone();
        if let Some(dir) = &self.kubelet_pods_dir {
            cfg.sts.web_identity_token_dir = dir.clone();
        }
        cfg.sts.allow_node_role = self.allow_node_role;
        cfg.sts.call_timeout = cfg.sts.call_timeout.mul_f64(self.upstream_timeout_scale);
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
        match self.upstream {
            UpstreamKind::Sts => cfg.upstream = UpstreamConfig::Sts,
            UpstreamKind::EksAuth => {
                if self.cluster_name.is_empty() {
                    return Err(CliError::EksAuthWithoutClusterName);
                }
                if self.associations_file.is_some() {
                    return Err(CliError::AssociationsWithEksAuth {
                        flag: "--associations-file",
                    });
                }
                if self.eks_associations {
                    return Err(CliError::AssociationsWithEksAuth {
                        flag: "--eks-associations",
                    });
                }
                cfg.upstream = UpstreamConfig::EksAuth(EksAuthSettings {
                    endpoint_url: self.endpoint.clone(),
                    region: self.region.clone(),
                    cluster_name: self.cluster_name.clone(),
                    node_name: self.node_name.clone(),
                    ..EksAuthSettings::default().scaled(self.upstream_timeout_scale)
                });
                cfg.prefetch_tokens_dir = self.kubelet_pods_dir.clone();
            }
        }
        cfg.shutdown_timeout = self.shutdown_timeout;
        cfg.set_imds(ImdsSettings {
            mode: self.imds,
            block_user_data: self.imds_block_user_data,
            upstream: self.imds_endpoint.clone(),
            front_port: self.imds_port,
            timeout: ImdsSettings::default()
                .timeout
                .mul_f64(self.upstream_timeout_scale),
            ..ImdsSettings::default()
        });
        if self.kube {
            let node = self
                .node_name
                .clone()
                .ok_or(CliError::KubeWithoutNodeName)?;
            let mut ks = kubernetes::KubeSettings::new(node);
            // EKS Auth finds associations itself: the CRD would be unused.
            ks.crd = !self.no_crd && self.upstream == UpstreamKind::Sts;
            ks.startup_taint = self.startup_taint.clone();
            if self.no_kube_events {
                ks.events = None;
            }
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
            "--cluster-name",
            "c",
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

    #[test]
    fn eks_auth_is_the_default_and_needs_a_cluster_name() {
        let cfg = run_args(&["--endpoint", "http://127.0.0.1:1"])
            .to_config()
            .unwrap();
        let UpstreamConfig::EksAuth(eks) = &cfg.upstream else {
            panic!("default upstream: {:?}", cfg.upstream);
        };
        assert_eq!(eks.cluster_name, "c");
        assert_eq!(eks.endpoint_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(cfg.prefetch_tokens_dir, None);
        let no_name = Cli::try_parse_from([
            "pod-identity-agent",
            "--agent-addr4",
            "10.0.0.1",
            "--cgroup",
            "/",
        ])
        .unwrap()
        .run
        .unwrap();
        let err = no_name.to_config().unwrap_err();
        assert!(err.to_string().contains("--cluster-name"), "{err}");
        let err = run_args(&["--associations-file", "a.json"])
            .to_config()
            .unwrap_err();
        assert!(err.to_string().contains("--upstream sts"), "{err}");
        let cfg = run_args(&["--upstream", "sts", "--associations-file", "a.json"])
            .to_config()
            .unwrap();
        assert!(!cfg.upstream.is_eks_auth());
    }

    #[test]
    fn upstream_timeouts_scale_only_when_asked() {
        let base = run_args(&[]).to_config().unwrap();
        let scaled = run_args(&["--upstream-timeout-scale", "20"])
            .to_config()
            .unwrap();
        assert_eq!(base.sts.call_timeout, Duration::from_secs(5));
        assert_eq!(scaled.sts.call_timeout, Duration::from_secs(100));
        assert_eq!(scaled.imds.timeout, base.imds.timeout * 20);
        let (UpstreamConfig::EksAuth(b), UpstreamConfig::EksAuth(s)) =
            (&base.upstream, &scaled.upstream)
        else {
            panic!("eks-auth is the default upstream");
        };
        assert_eq!(s.call_timeout, b.call_timeout * 20);
        assert_eq!(s.attempt_timeout, b.attempt_timeout * 20);
        assert_eq!(s.connect_timeout, b.connect_timeout * 20);
        for bad in ["0.5", "0", "-1", "nan", "inf", "x"] {
            assert!(
                Cli::try_parse_from([
                    "pod-identity-agent",
                    "--agent-addr4",
                    "10.0.0.1",
                    "--upstream-timeout-scale",
                    bad,
                ])
                .is_err(),
                "{bad}"
            );
        }
        // A test knob: not in --help (nor in README's flag table).
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("--upstream-timeout-scale"), "{help}");
    }

    #[test]
    fn kube_events_are_on_with_kube_unless_turned_off() {
        let kube = ["--upstream", "sts", "--kube", "--node-name", "n1"];
        let on = run_args(&kube).to_config().unwrap();
        let ks = on.kube.expect("--kube");
        assert_eq!(ks.events, Some(kubernetes::EventSettings::default()));
        let mut off_args = kube.to_vec();
        off_args.push("--no-kube-events");
        let off = run_args(&off_args).to_config().unwrap();
        assert_eq!(off.kube.expect("--kube").events, None);
        // Without --kube there is no API access, hence no Events.
        assert!(run_args(&[]).to_config().unwrap().kube.is_none());
    }

    #[test]
    fn stock_agent_flags() {
        let cfg = run_args(&[
            "--probe-port",
            "2703",
            "--metrics-port",
            "2705",
            "--max-service-qps",
            "5",
            "--max-credential-retention-before-renewal",
            "1h30m",
            "--kubelet-pods-dir",
            "/var/lib/kubelet/pods",
        ])
        .to_config()
        .unwrap();
        assert_eq!(cfg.probe_addr, Some("127.0.0.1:2703".parse().unwrap()));
        assert_eq!(cfg.metrics_addr, Some("0.0.0.0:2705".parse().unwrap()));
        assert_eq!(cfg.cache.max_service_qps, 5.0);
        assert_eq!(cfg.cache.max_retention, Duration::from_secs(5400));
        assert_eq!(
            cfg.prefetch_tokens_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/kubelet/pods"))
        );
        let defaults = run_args(&[]).to_config().unwrap();
        assert_eq!(defaults.cache.max_retention, Duration::from_secs(3 * 3600));
        assert_eq!(defaults.cache.max_service_qps, 3.0);
        assert_eq!(defaults.metrics_addr, None);
    }

    #[test]
    fn go_durations() {
        for (text, secs) in [
            ("3h", 10800.0),
            ("90m", 5400.0),
            ("1h30m", 5400.0),
            ("45s", 45.0),
            ("500ms", 0.5),
            ("0", 0.0),
            ("1.5h", 5400.0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs_f64(secs)),
                "{text}"
            );
        }
        for bad in ["", "3", "h", "3d", "-1h", "1h-", "ms"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("Go's form"), "{bad}: {err}");
        }
    }

    /// Parts that each fit a `Duration` but whose sum does not: an error, not the
    /// "overflow when adding durations" panic (a config file's
    /// `shutdown-timeout` took the agent and `config check` down).
    #[test]
    fn durations_whose_sum_overflows_are_refused() {
        let part = "5000000000000000000s";
        let err = parse_duration(&part.repeat(4)).unwrap_err();
        assert!(err.contains("Go's form"), "{err}");
        let err = crate::cli::check_config_text(
            std::path::Path::new("c.toml"),
            &format!("shutdown-timeout = \"{}\"\n", part.repeat(4)),
            |_| None,
        )
        .unwrap_err();
        assert!(err.contains("shutdown-timeout"), "{err}");
    }
}
