//! `pod-identity-agent`: the node daemon. Flags become a [`Config`]; everything else
//! lives in the library.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::Parser;
use pod_identity_agent::{
    config::{self, Config, EnforceMode},
    ebpf::Kernel,
    server, service,
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
    /// audit: record only; enforce: the kernel refuses callers without an association.
    #[arg(long, value_enum, default_value_t = EnforceMode::Audit, env = "POD_IDENTITY_MODE")]
    mode: EnforceMode,
    /// Log as JSON lines.
    #[arg(long, env = "POD_IDENTITY_LOG_JSON")]
    log_json: bool,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
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
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);
    let cfg = to_config(&args)?;

    // Bind before attaching: once the programs redirect, someone must answer.
    let mut listeners = Vec::new();
    let v4 = SocketAddr::from((cfg.kernel.agent_addr4, cfg.kernel.agent_port));
    listeners.push(
        tokio::net::TcpListener::bind(v4)
            .await
            .with_context(|| format!("binding {v4}"))?,
    );
    if let Some(a6) = cfg.kernel.agent_addr6 {
        let v6 = SocketAddr::from((a6, cfg.kernel.agent_port));
        listeners.push(
            tokio::net::TcpListener::bind(v6)
                .await
                .with_context(|| format!("binding {v6}"))?,
        );
    }

    let kernel = Arc::new(Kernel::start(&cfg.kernel).context("starting the kernel side")?);
    tracing::info!(
        cgroup = %kernel.attached_to().display(),
        listen4 = %v4,
        listen6 = ?cfg.kernel.agent_addr6,
        "programs attached"
    );

    let handler = Arc::new(service::Service::new(cfg.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        tasks.spawn(server::serve(l, kernel.clone(), handler.clone()));
    }
    tracing::info!("pod-identity-agent ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = tasks.join_next() => anyhow::bail!("a listener stopped"),
    }
    tracing::info!("shutting down");
    Ok(())
}
