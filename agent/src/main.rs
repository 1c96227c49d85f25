//! `pod-identity-agent`: the node daemon. Flags become a [`Config`]; everything else
//! lives in the library. `anyhow` is used here only.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use pod_identity_agent::{
    associations::{self, AssociationStore},
    audit,
    cache::CredentialCache,
    cgroup::CgroupIndex,
    config::{self, Config, EnforceMode},
    ebpf::Kernel,
    eks, kubernetes, lifecycle, pods, server,
    service::{Resolver, Service, ServiceSettings, TracingSink},
    sts::StsFetcher,
};

/// Serve AWS credentials to pods, attributed by the kernel.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// cgroup v2 directory to attach to [default: the host's cgroup2 root, from /proc/self/mountinfo].
    #[arg(long, env = "POD_IDENTITY_CGROUP")]
    cgroup: Option<PathBuf>,
    /// The node address pods reach the agent at (IPv4), e.g. status.hostIP.
    #[arg(long, env = "POD_IDENTITY_NODE_IP")]
    agent_addr4: std::net::Ipv4Addr,
    /// The node's IPv6 address, if any (IPv6 clients use the IPv4-mapped address otherwise).
    #[arg(long, env = "POD_IDENTITY_NODE_IP6")]
    agent_addr6: Option<std::net::Ipv6Addr>,
    /// Port the agent listens on (never 80: ingress controllers own hostPort 80).
    #[arg(long, env = "POD_IDENTITY_PORT", default_value_t = config::DEFAULT_AGENT_PORT)]
    port: u16,
    /// The credentials IPv4 address pods call.
    #[arg(long, default_value_t = config::DEFAULT_CRED_ADDR4)]
    cred_addr4: std::net::Ipv4Addr,
    /// The credentials IPv6 address pods call.
    #[arg(long, default_value_t = config::DEFAULT_CRED_ADDR6)]
    cred_addr6: std::net::Ipv6Addr,
    /// The credentials port pods call.
    #[arg(long, default_value_t = config::DEFAULT_CRED_PORT)]
    cred_port: u16,
    /// bpffs directory where links and maps are pinned, so the redirect survives a
    /// restart; `none` to detach on exit.
    #[arg(
        long,
        env = "POD_IDENTITY_BPFFS_DIR",
        default_value = "/sys/fs/bpf/pod-identity-agent"
    )]
    bpffs_dir: String,
    /// audit: record only; enforce: the kernel refuses callers without an association.
    #[arg(long, value_enum, default_value_t = EnforceMode::Audit, env = "POD_IDENTITY_MODE")]
    mode: EnforceMode,
    /// Cluster name (session names, the eks-cluster-name session tag).
    #[arg(long, env = "POD_IDENTITY_CLUSTER_NAME", default_value = "")]
    cluster_name: String,
    /// Cluster ARN (the eks-cluster-arn session tag).
    #[arg(long, env = "POD_IDENTITY_CLUSTER_ARN")]
    cluster_arn: Option<String>,
    /// STS endpoint override (a VPC endpoint; a local STS in tests).
    #[arg(long, env = "POD_IDENTITY_STS_ENDPOINT")]
    sts_endpoint: Option<String>,
    /// STS region [default: from the environment].
    #[arg(long, env = "AWS_REGION", default_value = "")]
    region: String,
    /// Pod directory file (JSON) for standalone nodes.
    #[arg(long, env = "POD_IDENTITY_PODS_FILE")]
    pods_file: Option<PathBuf>,
    /// Associations file (JSON).
    #[arg(long, env = "POD_IDENTITY_ASSOCIATIONS_FILE")]
    associations_file: Option<PathBuf>,
    /// The kubelet's pods directory (IRSA tokens are read from it).
    #[arg(long, default_value = "/var/lib/kubelet/pods")]
    kubelet_pods_dir: PathBuf,
    /// Refuse requests whose Authorization token names another pod than the kernel.
    #[arg(long)]
    token_cross_check: bool,
    /// Where the kubelet's cgroup tree starts below --cgroup, on nested nodes (kind:
    /// `/docker/<node container id>`). Pod cgroups must start there, with kubepods.
    #[arg(long, default_value = "")]
    cgroup_prefix: String,
    /// This node's name (spec.nodeName, via the downward API); required with --kube.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Pods, service accounts and PodIdentityAssociation resources from the Kubernetes API.
    #[arg(long)]
    kube: bool,
    /// With --kube: do not watch the PodIdentityAssociation CRD (not installed).
    #[arg(long)]
    no_crd: bool,
    /// With --kube: a kubeconfig file instead of in-cluster access.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// With --kube: remove this node taint once the agent is ready (schedule pods after it).
    #[arg(long)]
    startup_taint: Option<String>,
    /// Associations from the EKS API (ListPodIdentityAssociations), polled.
    #[arg(long)]
    eks_associations: bool,
    /// EKS endpoint override.
    #[arg(long)]
    eks_endpoint: Option<String>,
    /// Most cached credential sets (pods × associations), as the stock agent's flag.
    #[arg(long, default_value_t = 2000)]
    max_cache_size: usize,
    /// Renew cached credentials at most after this many seconds, whatever their
    /// expiry (the stock agent's --max-credential-retention-before-renewal, 3 h).
    #[arg(long, default_value_t = 3 * 3600)]
    max_credential_retention_secs: u64,
    /// Requests per second each caller (cgroup) may make; 0 disables the limit.
    #[arg(long, default_value_t = 200.0)]
    max_rps_per_caller: f64,
    /// Burst above that rate.
    #[arg(long, default_value_t = 400.0)]
    burst_per_caller: f64,
    /// Serve /healthz and /readyz here (keep it on localhost).
    #[arg(long, env = "POD_IDENTITY_PROBE_ADDR")]
    probe_addr: Option<SocketAddr>,
    /// Audit log: a file path, or `-` for stdout.
    #[arg(long, env = "POD_IDENTITY_AUDIT_LOG", default_value = "-")]
    audit_log: String,
    /// Rotate the audit log file at this size.
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    audit_max_bytes: u64,
    /// Rotated audit files kept.
    #[arg(long, default_value_t = 5)]
    audit_keep: u32,
    /// How long a redirected connect waits for its request before it is audited alone.
    #[arg(long, default_value_t = 10_000, hide = true)]
    audit_join_window_ms: u64,
    /// Log as JSON lines.
    #[arg(long, env = "POD_IDENTITY_LOG_JSON")]
    log_json: bool,
}

/// `pod-identity-agent audit`: read the audit log as a table.
#[derive(Debug, Parser)]
#[command(name = "pod-identity-agent audit")]
struct AuditArgs {
    /// The audit log file.
    #[arg(long, default_value = "/var/log/pod-identity-agent/audit.log")]
    file: PathBuf,
    /// Keep reading as the log grows (and across rotation).
    #[arg(long, short)]
    follow: bool,
    /// Pod name contains.
    #[arg(long)]
    pod: Option<String>,
    /// Namespace equals.
    #[arg(long)]
    namespace: Option<String>,
    /// Role ARN contains.
    #[arg(long)]
    role: Option<String>,
    /// success | failure | unknown.
    #[arg(long)]
    outcome: Option<String>,
}

fn audit_command(args: AuditArgs) -> anyhow::Result<()> {
    let filter = pod_identity_agent::audit::Filter {
        pod: args.pod,
        namespace: args.namespace,
        role: args.role,
        outcome: args.outcome,
    };
    pod_identity_agent::audit::print_table(&args.file, &filter, args.follow, std::io::stdout())?;
    Ok(())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn to_config(args: &Args) -> anyhow::Result<Config> {
    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => pod_identity_agent::cgroup::host_cgroup2_root()
            .context("finding the host cgroup2 root (pass --cgroup)")?,
    };
    let mut cfg = Config::new(cgroup, args.agent_addr4);
    cfg.kernel.agent_addr6 = args.agent_addr6;
    cfg.kernel.agent_port = args.port;
    cfg.kernel.cred_addr4 = args.cred_addr4;
    cfg.kernel.cred_addr6 = args.cred_addr6;
    cfg.kernel.cred_port = args.cred_port;
    cfg.kernel.enforce = args.mode;
    cfg.kernel.pin_dir = (args.bpffs_dir != "none").then(|| PathBuf::from(&args.bpffs_dir));
    cfg.token_cross_check = args.token_cross_check;
    cfg.pods_file = args.pods_file.clone();
    cfg.associations_file = args.associations_file.clone();
    cfg.probe_addr = args.probe_addr;
    cfg.cache.max_entries = args.max_cache_size;
    cfg.cache.max_retention = Duration::from_secs(args.max_credential_retention_secs);
    cfg.limits = pod_identity_agent::ratelimit::Limits {
        rate: args.max_rps_per_caller,
        burst: args.burst_per_caller,
    };
    cfg.sts.cluster_name = args.cluster_name.clone();
    cfg.sts.cluster_arn = args.cluster_arn.clone();
    cfg.sts.endpoint_url = args.sts_endpoint.clone();
    cfg.sts.region = args.region.clone();
    cfg.sts.web_identity_token_dir = args.kubelet_pods_dir.clone();
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("uninstall") {
        // Detach the programs and free the maps a pinned agent left on this node.
        let dir = std::env::args()
            .nth(2)
            .unwrap_or_else(|| "/sys/fs/bpf/pod-identity-agent".into());
        let n = pod_identity_agent::ebpf::unpin_all(std::path::Path::new(&dir))?;
        println!("removed {n} pins from {dir}");
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("audit") {
        let args = AuditArgs::parse_from(std::env::args().skip(1));
        return tokio::task::spawn_blocking(move || audit_command(args)).await?;
    }
    let args = Args::parse();
    init_tracing(args.log_json);
    let mut cfg = to_config(&args)?;

    // Every long-running task lives here: if any ends, the agent exits (and is
    // restarted) rather than serving from a source that silently stopped.
    let mut tasks = tokio::task::JoinSet::new();

    // Sources first: a broken config is a clear error before anything attaches.
    let pod_store = pods::PodStore::new();
    if let Some(path) = &cfg.pods_file {
        let initial = pods::load_pods_file(path)
            .with_context(|| format!("loading pods file {}", path.display()))?;
        pod_store.replace_all(initial);
        pod_store.mark_synced();
        let watch = pods::watch_pods_file(path.clone(), pod_store.clone(), Duration::from_secs(2));
        tasks.spawn(async move {
            if let Err(e) = watch.await {
                tracing::error!(error = %e, "pods file watcher stopped");
            }
        });
    }
    let assoc_store = AssociationStore::new();
    if let Some(path) = &cfg.associations_file {
        let list = associations::load_associations_file(path)
            .with_context(|| format!("loading associations file {}", path.display()))?;
        assoc_store
            .replace_source(associations::FILE_SOURCE, list)
            .with_context(|| format!("associations file {}", path.display()))?;
    }

    let audit_target = if args.audit_log == "-" {
        audit::Target::Stdout
    } else {
        audit::Target::File {
            path: PathBuf::from(&args.audit_log),
            max_bytes: args.audit_max_bytes,
            keep: args.audit_keep,
        }
    };
    let audit_log = audit::AuditLog::open_with_window(
        audit_target,
        &cfg.sts.cluster_name,
        Duration::from_millis(args.audit_join_window_ms),
    )
    .context("opening the audit log")?;

    let mut kernel = Kernel::load(&cfg.kernel).context("loading the kernel side")?;
    let events = kernel.take_events();
    // Bind after the programs are set up: the kernel lets only the agent's cgroup
    // bind the agent port, and a restarted agent (new cgroup) is only recognised
    // once it has written its cgroup id into the (re-adopted) config map.
    let mut listeners = Vec::new();
    let v4 = SocketAddr::from((cfg.kernel.agent_addr4, cfg.kernel.agent_port));
    match tokio::net::TcpListener::bind(v4).await {
        Ok(l) => listeners.push(l),
        Err(e) => {
            // Someone holds our port. Programs a previous agent pinned would send
            // every pod (and its token) there: make them refuse instead, then exit.
            if let Err(fc) = kernel.fail_closed(&cfg.kernel) {
                tracing::error!(error = %fc, "could not switch the kernel to fail-closed");
            }
            return Err(e).with_context(|| {
                format!("binding {v4} (credential connects now fail with EPERM)")
            });
        }
    }
    if let Some(a6) = cfg.kernel.agent_addr6 {
        let v6 = SocketAddr::from((a6, cfg.kernel.agent_port));
        match tokio::net::TcpListener::bind(v6).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                // An IPv4-only node must not crash-loop (stock agent issue #16):
                // send IPv6 clients to the IPv4-mapped address instead, so nothing
                // is ever redirected to an address nobody (or somebody else) serves.
                tracing::warn!(addr = %v6, error = %e, "IPv6 listener unavailable; serving IPv6 clients over IPv4-mapped addresses");
                cfg.kernel.agent_addr6 = None;
                kernel
                    .update_config(&cfg.kernel)
                    .context("updating the kernel config")?;
            }
        }
    }
    // Only now does the redirect go live (or get replaced): someone answers.
    kernel.attach().context("attaching the kernel programs")?;
    kernel.teach_bind_guard(v4);
    let kernel = Arc::new(kernel);
    tracing::info!(
        cgroup = %kernel.attached_to().display(),
        listen4 = %v4,
        listen6 = ?cfg.kernel.agent_addr6,
        mode = ?cfg.kernel.enforce,
        "programs attached"
    );

    // Cluster sources. Readiness: programs attached (done above) and every
    // configured source synced.
    let mut ready_checks: Vec<Box<dyn Fn() -> bool + Send + Sync>> = Vec::new();
    if cfg.pods_file.is_some() {
        let p = pod_store.clone();
        ready_checks.push(Box::new(move || p.is_synced()));
    }
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    if args.kube {
        let node = args
            .node_name
            .clone()
            .context("--kube needs --node-name (or NODE_NAME)")?;
        let mut ks = kubernetes::KubeSettings::new(node);
        ks.crd = !args.no_crd;
        ks.startup_taint = args.startup_taint.clone();
        if let Some(k) = &args.kubeconfig {
            ks.access = kubernetes::ClusterAccess::Kubeconfig(k.clone());
        }
        let src = kubernetes::KubeSources::connect(ks, pod_store.clone(), assoc_store.clone())
            .await
            .context("connecting to the Kubernetes API")?
            .with_ready_gate(gate_rx.clone());
        let status = src.status();
        ready_checks.push(Box::new(move || {
            status.pods_synced() && status.associations_synced()
        }));
        tasks.spawn(src.run());
    }
    if args.eks_associations {
        let mut es = eks::EksSettings::new(cfg.sts.cluster_name.clone());
        es.endpoint_url = args.eks_endpoint.clone();
        if !cfg.sts.region.is_empty() {
            es.region = Some(cfg.sts.region.clone());
        }
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let src = eks::EksSource::new(eks::eks_client(&sdk, &es), es, assoc_store.clone())
            .context("EKS associations source")?;
        let status = src.status();
        ready_checks.push(Box::new(move || status.is_synced()));
        tasks.spawn(src.run());
    }
    let ready: Arc<dyn Fn() -> bool + Send + Sync> =
        Arc::new(move || ready_checks.iter().all(|c| c()));
    {
        // Open the taint gate once everything else is ready.
        let ready = ready.clone();
        tokio::spawn(async move {
            while !ready() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = gate_tx.send(true);
        });
    }

    let fetcher = StsFetcher::new(cfg.sts.clone()).await;
    let cache = CredentialCache::new(fetcher, cfg.cache.clone());
    let resolver = Resolver {
        index: Arc::new(CgroupIndex::new(
            cfg.cgroup_index_root.clone(),
            Duration::from_millis(200),
        )),
        pods: pod_store.clone(),
        assocs: assoc_store.clone(),
        unknown_pod_wait: cfg.unknown_pod_wait,
        cgroup_prefix: args.cgroup_prefix.clone(),
    };
    let request_metrics = Arc::new(pod_identity_agent::metrics::RequestMetrics::default());
    let service = Arc::new(Service::new(
        ServiceSettings::from(&cfg),
        resolver.clone(),
        cache.clone(),
        Arc::new(audit::Tee(vec![
            Arc::new(TracingSink),
            audit_log.clone(),
            request_metrics.clone(),
        ])),
    ));
    let verdicts: Option<Arc<dyn lifecycle::VerdictSink>> = (cfg.kernel.enforce
        == EnforceMode::Enforce)
        .then(|| kernel.clone() as Arc<dyn lifecycle::VerdictSink>);

    if let Some(reader) = events {
        tasks.spawn(audit::run_kernel_events(reader, audit_log.clone()));
    }
    tasks.spawn(lifecycle::run(
        resolver,
        cache.clone(),
        verdicts,
        cfg.rescan_interval,
    ));
    for l in listeners {
        tasks.spawn(server::serve(l, kernel.clone(), service.clone()));
    }
    if let Some(addr) = cfg.probe_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding probe {addr}"))?;
        let (k, c, al) = (kernel.clone(), cache.clone(), audit_log.clone());
        let rm = request_metrics.clone();
        let metrics = Arc::new(move || {
            let s = c.stats();
            rm.render() + &format!(
                "# TYPE pod_identity_cache_hits_total counter\npod_identity_cache_hits_total {}\n\
                 # TYPE pod_identity_cache_misses_total counter\npod_identity_cache_misses_total {}\n\
                 # TYPE pod_identity_cache_stale_served_total counter\npod_identity_cache_stale_served_total {}\n\
                 # TYPE pod_identity_sts_calls_total counter\npod_identity_sts_calls_total {}\n\
                 # TYPE pod_identity_sts_errors_total counter\npod_identity_sts_errors_total {}\n\
                 # TYPE pod_identity_cache_evictions_total counter\npod_identity_cache_evictions_total {}\n\
                 # TYPE pod_identity_cache_entries gauge\npod_identity_cache_entries {}\n\
                 # TYPE pod_identity_kernel_events_lost_total counter\npod_identity_kernel_events_lost_total {}\n\
                 # TYPE pod_identity_kernel_events_total counter\npod_identity_kernel_events_total {}\n\
                 # TYPE pod_identity_audit_written_total counter\npod_identity_audit_written_total {}\n\
                 # TYPE pod_identity_audit_dropped_total counter\npod_identity_audit_dropped_total {}\n",
                s.hits, s.misses, s.stale_served, s.sts_calls, s.sts_errors, s.evictions, c.len(),
                k.events_lost().unwrap_or(0),
                al.stats.kernel_events.load(std::sync::atomic::Ordering::Relaxed),
                al.stats.written.load(std::sync::atomic::Ordering::Relaxed),
                al.stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
            )
        });
        tasks.spawn(server::serve_probes(l, ready.clone(), metrics));
    }
    tracing::info!("pod-identity-agent ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = tasks.join_next() => anyhow::bail!("a server task stopped"),
    }
    tracing::info!("shutting down");
    Ok(())
}
