//! The running agent, built from one [`Config`]: sources, the kernel side, the
//! listeners, the rescan and audit tasks, and the probes.
//!
//! Start-up order matters (see ARCHITECTURE.md): sources are loaded first (a broken
//! file is an error before anything attaches); the kernel object is loaded and its
//! config written; the agent binds its port; only then are the programs attached.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    attribution::{cgroup::CgroupIndex, rescan, Resolver},
    audit::{self, AuditLog, TracingSink},
    config::{Config, EnforceMode, UpstreamConfig},
    credentials::{CredentialCache, EksAuthClient, StsFetcher, Upstream},
    http::{
        drain::DrainHandle, fd_limit, handover, health::Health, listener, probes, Service,
        ServiceSettings,
    },
    imds::ImdsFront,
    kernel::{Kernel, KernelError, VerdictSink},
    metrics,
    model::Source,
    sources::{
        associations::{self, AssociationError, AssociationStore},
        eks, kubernetes,
        pods::{self, PodError, PodStore},
    },
};

/// Why the agent could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("loading pods file {path}")]
    PodsFile {
        path: PathBuf,
        #[source]
        source: PodError,
    },
    #[error("loading associations file {path}")]
    AssociationsFile {
        path: PathBuf,
        #[source]
        source: AssociationError,
    },
    #[error("opening the audit log")]
    Audit(#[source] audit::AuditError),
    #[error("{what}")]
    Kernel {
        what: &'static str,
        #[source]
        source: KernelError,
    },
    #[error("binding {addr} (credential connects now fail with EPERM)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the IMDS front {addr} (pods' metadata connects now fail)")]
    BindImds {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the metrics listener {addr}")]
    BindMetrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the probe listener {addr}")]
    BindProbes {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the Kubernetes API")]
    Kube(#[source] kubernetes::KubeError),
    #[error("EKS associations source")]
    Eks(#[source] eks::EksError),
    #[error("installing the signal handler")]
    Signal(#[source] std::io::Error),
    /// A long-running task ended: the agent stops rather than serve from a source
    /// (or through a listener) that silently stopped.
    #[error("task {task} stopped")]
    TaskStopped { task: &'static str },
    #[error("task {task} panicked")]
    TaskPanicked {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

fn kernel_err(what: &'static str) -> impl FnOnce(KernelError) -> AppError {
    move |source| AppError::Kernel { what, source }
}

/// Long-running tasks, by name: if any ends, [`Agent::run`] says which.
#[derive(Default)]
struct Tasks {
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn spawn(
        &mut self,
        name: &'static str,
        f: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let id = self.set.spawn(f).id();
        self.names.insert(id, name);
    }

    /// Wait for the first task to end; an empty set waits forever.
    async fn first_stopped(&mut self) -> AppError {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => AppError::TaskStopped {
                task: self.names.get(&id).copied().unwrap_or("unknown"),
            },
            Some(Err(e)) => AppError::TaskPanicked {
                task: self.names.get(&e.id()).copied().unwrap_or("unknown"),
                source: e,
            },
            None => std::future::pending().await,
        }
    }
}

/// The running agent.
pub struct Agent {
    /// Everything that serves pods; stopped when the sockets are handed over.
    tasks: Tasks,
    /// The probe and metrics listeners; stopped after a handover too (their
    /// sockets went to the next agent).
    probes: Tasks,
    ready: watch::Receiver<bool>,
    handed_over: watch::Receiver<bool>,
    kernel: Arc<Kernel>,
    listen: Vec<SocketAddr>,
    drain: DrainHandle,
    shutdown_timeout: Duration,
}

impl Agent {
    /// Fires (becomes `true`) once the programs are attached and every configured
    /// source has synced; `/readyz` and the startup taint follow the same checks.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// The cgroup the programs are attached to.
    pub fn attached_to(&self) -> &std::path::Path {
        self.kernel.attached_to()
    }

    /// The addresses pods' connections are redirected to.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Becomes `true` once this agent handed its sockets to the next one.
    pub fn handed_over(&self) -> watch::Receiver<bool> {
        self.handed_over.clone()
    }

    /// Serve until SIGTERM/SIGINT (`Ok`, after draining) or until a task stops
    /// (`Err`, naming it). After handing its sockets over, the agent stops serving
    /// and waits, not ready, to be terminated: exiting would make Kubernetes
    /// restart it, and the restarted agent would take the sockets back.
    ///
    /// On SIGTERM the agent stops accepting and is no longer ready; requests in
    /// flight get `shutdown_timeout` to finish; the pinned redirect stays, so a
    /// pod connecting meanwhile waits for the next agent (or, with a `maxSurge`
    /// rollout, has already been served by it).
    pub async fn run(mut self) -> Result<(), AppError> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(AppError::Signal)?;
        let mut serving = true;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = became_true(&mut self.handed_over), if serving => {
                    // Connections already accepted finish on their own tasks. The
                    // probe and metrics sockets went over too: the next agent
                    // answers them (for this agent's pod as well, until it is
                    // deleted), never this handed-over one.
                    self.tasks.set.abort_all();
                    self.probes.set.abort_all();
                    serving = false;
                    tracing::info!("handed over to the next agent; idle until terminated");
                }
                e = self.tasks.first_stopped(), if serving => return Err(e),
                e = self.probes.first_stopped(), if serving => return Err(e),
            }
        }
        tracing::info!(open = self.drain.open(), "shutting down: draining");
        let left = self.drain.drain(self.shutdown_timeout).await;
        if left > 0 {
            tracing::warn!(
                open = left,
                "connections still open after the shutdown timeout; closing them"
            );
        }
        tracing::info!("shut down");
        Ok(())
    }

    /// Starts the drain as SIGTERM does and waits for it (tests).
    pub async fn shutdown(self) -> usize {
        self.drain.drain(self.shutdown_timeout).await
    }
}

/// Resolves once `rx` is true; never if its sender is gone first (no handover
/// server: nothing will ever be handed over).
async fn became_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type ReadyCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// Start the agent described by `cfg`.
pub async fn build(mut cfg: Config) -> Result<Agent, AppError> {
    let mut tasks = Tasks::default();

    // Sources first: a broken config is a clear error before anything attaches.
    let pod_store = PodStore::new();
    let mut ready_checks: Vec<ReadyCheck> = Vec::new();
    if let Some(path) = &cfg.pods_file {
        let initial = pods::load_pods_file(path).map_err(|source| AppError::PodsFile {
            path: path.clone(),
            source,
        })?;
        pod_store.replace_all(initial);
        pod_store.mark_synced();
        let watch = pods::watch_pods_file(path.clone(), pod_store.clone(), Duration::from_secs(2));
        tasks.spawn("pods-file watcher", async move {
            if let Err(e) = watch.await {
                tracing::error!(error = %e, "pods file watcher stopped");
            }
        });
        let p = pod_store.clone();
        ready_checks.push(Box::new(move || p.is_synced()));
    }
    let assoc_store = AssociationStore::new();
    if let Some(path) = &cfg.associations_file {
        let file_err = |source| AppError::AssociationsFile {
            path: path.clone(),
            source,
        };
        let list = associations::load_associations_file(path).map_err(file_err)?;
        assoc_store
            .replace_source(Source::File, list)
            .map_err(file_err)?;
        let watch = associations::watch_associations_file(
            path.clone(),
            assoc_store.clone(),
            Duration::from_secs(2),
        );
        tasks.spawn("associations-file watcher", async move {
            if let Err(e) = watch.await {
                tracing::error!(error = %e, "associations file watcher stopped");
            }
        });
    }

    let audit_log = AuditLog::open_with_window(
        cfg.audit.target.clone(),
        &cfg.sts.cluster_name,
        cfg.audit.join_window,
    )
    .map_err(AppError::Audit)?;

    let mut kernel = Kernel::load(&cfg.kernel).map_err(kernel_err("loading the kernel side"))?;
    let events = kernel.take_events();
    let (listeners, taken_over) = listen(&mut kernel, &mut cfg).await?;
    let Listeners {
        creds: listeners,
        imds: mut imds_listeners,
        probes: probe_listener,
        metrics: metrics_listener,
    } = split_listeners(listeners, &cfg);
    // Taken over, but not the pods' endpoint (its port changed between versions):
    // bind it as on a first start.
    let listeners = if listeners.is_empty() {
        bind_or_fail_closed(&mut kernel, &mut cfg).await?
    } else {
        listeners
    };
    // Probes and metrics: taken over, or bound now (before anything attaches).
    let probe_listener = match (cfg.probe_addr, probe_listener) {
        (Some(_), Some(l)) => Some(l),
        (Some(addr), None) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::BindProbes { addr, source })?,
        ),
        (None, _) => None,
    };
    let metrics_listener = match (cfg.metrics_addr, metrics_listener) {
        (Some(_), Some(l)) => Some(l),
        (Some(addr), None) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::BindMetrics { addr, source })?,
        ),
        (None, _) => None,
    };
    if cfg.kernel.imds.is_some() && imds_listeners.is_empty() {
        // Fresh start, or the serving agent ran without the guard.
        imds_listeners = match bind_imds(&cfg).await {
            Ok(l) => l,
            Err(e) => return Err(fail_closed(&kernel, &cfg, e)),
        };
    }
    raise_fd_limit(&cfg, listeners.len() + imds_listeners.len());
    // Only now does the redirect go live (or get replaced): someone answers.
    kernel
        .attach()
        .map_err(kernel_err("attaching the kernel programs"))?;
    let v4 = SocketAddr::from((cfg.kernel.agent_addr4, cfg.kernel.agent_port));
    kernel.teach_bind_guard(v4);
    let kernel = Arc::new(kernel);
    let listen: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    tracing::info!(
        cgroup = %kernel.attached_to().display(),
        listen = ?listen,
        mode = ?cfg.kernel.enforce,
        "programs attached"
    );

    // Cluster sources. Readiness: programs attached (done above) and every
    // configured source synced.
    let (gate_tx, gate_rx) = watch::channel(false);
    let mut refusal_events = None;
    if let Some(ks) = cfg.kube.clone() {
        let events = ks.events.clone();
        let node_name = ks.node_name.clone();
        let src = kubernetes::KubeSources::connect(ks, pod_store.clone(), assoc_store.clone())
            .await
            .map_err(AppError::Kube)?
            .with_ready_gate(gate_rx.clone());
        if let Some(settings) = events {
            let (queue, publisher, stats) =
                kubernetes::event_channel(src.client(), &node_name, settings, pod_store.clone());
            tasks.spawn("kubernetes events", publisher.run());
            refusal_events = Some((queue, stats));
        }
        let status = src.status();
        ready_checks.push(Box::new(move || {
            status.pods_synced() && status.associations_synced()
        }));
        tasks.spawn("kubernetes sources", src.run());
    }
    if let Some(es) = cfg.eks.clone() {
        // The agent's own identity, as for STS: never the node role unless allowed.
        let sdk = crate::credentials::sts::agent_sdk_config(&cfg.sts).await;
        let src = eks::EksSource::new(eks::eks_client(&sdk, &es), es, assoc_store.clone())
            .map_err(AppError::Eks)?;
        let status = src.status();
        ready_checks.push(Box::new(move || status.is_synced()));
        tasks.spawn("eks associations", src.run());
    }
    let (handed_over_tx, handed_over) = watch::channel(false);
    {
        let h = handed_over.clone();
        ready_checks.push(Box::new(move || !*h.borrow()));
    }
    let (drain_handle, drain) = DrainHandle::new();
    {
        let d = drain.clone();
        ready_checks.push(Box::new(move || !d.is_stopping()));
    }
    let is_ready: Arc<dyn Fn() -> bool + Send + Sync> =
        Arc::new(move || ready_checks.iter().all(|c| c()));
    let cache = CredentialCache::new(upstream(&cfg).await, cfg.cache.clone());
    let resolver = Resolver {
        index: Arc::new(CgroupIndex::new(
            cfg.cgroup_index_root.clone(),
            Duration::from_millis(200),
        )),
        pods: pod_store.clone(),
        assocs: assoc_store.clone(),
        unknown_pod_wait: cfg.unknown_pod_wait,
        cgroup_prefix: cfg.cgroup_prefix.clone(),
    };
    let request_metrics = Arc::new(metrics::RequestMetrics::default());
    let audit_sink: Arc<dyn audit::AccessSink> = Arc::new(audit::Tee(vec![
        Arc::new(TracingSink),
        audit_log.clone(),
        request_metrics.clone(),
    ]));
    let mut service = Service::new(
        ServiceSettings::from(&cfg),
        resolver.clone(),
        cache.clone(),
        audit_sink.clone(),
    );
    if let Some((queue, _)) = &refusal_events {
        service = service.with_refusal_observer(queue.clone());
    }
    let service = Arc::new(service);
    // Verdicts serve enforce mode and the IMDS guard (which leaves node processes,
    // verdict NODE, alone).
    let verdicts: Option<Arc<dyn VerdictSink>> = (cfg.kernel.enforce == EnforceMode::Enforce
        || cfg.kernel.imds.is_some())
    .then(|| kernel.clone() as Arc<dyn VerdictSink>);

    // A taken-over agent starts serving once it is ready; the old agent serves
    // until then (both would otherwise read the one event ring buffer, and this
    // agent would answer before its sources synced).
    let (ready_tx, ready) = watch::channel(false);
    let start_when = |ready: &watch::Receiver<bool>| {
        let mut ready = ready.clone();
        let wait = taken_over.is_some();
        async move {
            if wait {
                became_true(&mut ready).await;
            }
        }
    };
    if let Some(reader) = events {
        let start = start_when(&ready);
        let log = audit_log.clone();
        tasks.spawn("kernel events", async move {
            start.await;
            audit::run_kernel_events(reader, log).await
        });
    }
    let rescan_settings = rescan::RescanSettings {
        interval: cfg.rescan_interval,
        eks_auth: cfg.upstream.is_eks_auth(),
        prefetch_tokens_dir: cfg.prefetch_tokens_dir.clone(),
    };
    tasks.spawn(
        "cgroup rescan",
        rescan::run(resolver.clone(), cache.clone(), verdicts, rescan_settings),
    );
    if let Some(dir) = cfg.kernel.pin_dir.clone() {
        // Be ready to hand these sockets to the next agent, once this one is
        // ready (an agent that took them over binds the name after confirming).
        // All of them: the probe and metrics ports too (see [`listen`]).
        let copies: Vec<std::net::TcpListener> = listeners
            .iter()
            .chain(imds_listeners.iter())
            .chain(probe_listener.iter())
            .chain(metrics_listener.iter())
            .filter_map(|l| {
                let fd = std::os::fd::AsFd::as_fd(l).try_clone_to_owned().ok()?;
                Some(std::net::TcpListener::from(fd))
            })
            .collect();
        let (mut ready, kernel) = (ready.clone(), kernel.clone());
        tasks.spawn("handover", async move {
            became_true(&mut ready).await;
            match tokio::task::spawn_blocking(move || handover::HandoverServer::bind(&dir)).await {
                Ok(Ok(server)) => server.run(kernel, copies, handed_over_tx).await,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "no handover socket: the next agent will have to wait for this one to exit");
                    std::future::pending().await
                }
                Err(_) => std::future::pending().await,
            }
        });
    }
    for l in listeners {
        let start = start_when(&ready);
        let serve = listener::serve_until(
            l,
            kernel.clone(),
            service.clone(),
            cfg.connections,
            drain.clone(),
        );
        tasks.spawn("credentials listener", async move {
            start.await;
            serve.await
        });
    }
    if !imds_listeners.is_empty() {
        let front = Arc::new(ImdsFront::new(
            cfg.imds.clone(),
            resolver.clone(),
            cache.clone(),
            audit_sink.clone(),
            cfg.upstream.is_eks_auth(),
            cfg.prefetch_tokens_dir.clone(),
        ));
        for l in imds_listeners {
            let start = start_when(&ready);
            let serve = listener::serve_until(
                l,
                kernel.clone(),
                front.clone(),
                cfg.connections,
                drain.clone(),
            );
            tasks.spawn("IMDS front listener", async move {
                start.await;
                serve.await
            });
        }
    }
    let mut probe_tasks = Tasks::default();
    let render = metrics::Renderer::new(
        request_metrics,
        cache.clone(),
        kernel.clone(),
        audit_log.clone(),
    );
    let render = match refusal_events {
        Some((_, stats)) => render.with_kube_events(stats),
        None => render,
    };
    let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || render.render());
    let sources_ready = is_ready.clone();
    let health = Health::new(
        Arc::new(move || {
            (!sources_ready()).then(|| "sources not synced, handed over, or draining".to_owned())
        }),
        kernel.clone(),
        listen.first().copied(),
    );
    if let Some(l) = probe_listener {
        probe_tasks.spawn(
            "probe listener",
            probes::serve_probes(l, health.clone(), render.clone()),
        );
    }
    if let Some(l) = metrics_listener {
        probe_tasks.spawn("metrics listener", probes::serve_probes(l, health, render));
    }

    // The readiness signal, once everything above serves: fires once when the
    // sources have synced; the startup-taint gate opens with it.
    tokio::spawn(async move {
        while !is_ready() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!("pod-identity-agent ready");
        let _ = gate_tx.send(true);
        let _ = ready_tx.send(true);
        if let Some(t) = taken_over {
            // This agent accepts now: the one we took the sockets from stops.
            let _ = tokio::task::spawn_blocking(move || t.confirm()).await;
        }
    });

    Ok(Agent {
        tasks,
        probes: probe_tasks,
        ready,
        handed_over,
        kernel,
        listen,
        drain: drain_handle,
        shutdown_timeout: cfg.shutdown_timeout,
    })
}

/// The upstream `cfg` asks for, signing with the agent's own AWS identity.
///
/// With EKS Auth that identity is the node role (IMDS) unless the environment
/// gives another: all it needs is `eks-auth:AssumeRoleForPodIdentity`, which is
/// useless without a pod's token, so the node role is safe to use. With STS the
/// node role would have to be trusted by every pod role: refused unless
/// `--allow-node-role`.
async fn upstream(cfg: &Config) -> Upstream {
    match &cfg.upstream {
        UpstreamConfig::Sts => Upstream::Sts(StsFetcher::new(cfg.sts.clone()).await),
        UpstreamConfig::EksAuth(settings) => {
            let mut own = cfg.sts.clone();
            own.allow_node_role = true;
            if own.region.is_empty() {
                own.region = settings.region.clone();
            }
            let sdk = crate::credentials::sts::agent_sdk_config_quiet(&own).await;
            tracing::info!(
                cluster = %settings.cluster_name,
                endpoint = settings.endpoint_url.as_deref().unwrap_or("(regional)"),
                "credentials from EKS Auth with each pod's own token; the agent's \
                 identity (the node role on EKS) needs only eks-auth:AssumeRoleForPodIdentity"
            );
            Upstream::EksAuth(EksAuthClient::with_sdk_config(settings.clone(), &sdk))
        }
    }
}

/// The agent's listening sockets: taken over from a serving agent when there is
/// one (no gap, nothing refused; confirm the handover once serving), else bound
/// here. The kernel lets only the agent's cgroup bind the agent port, and a
/// restarted agent (new cgroup) is only recognised once it has written its cgroup
/// id into the (re-adopted) config map: so this runs after [`Kernel::load`] and
/// before [`Kernel::attach`].
async fn listen(
    kernel: &mut Kernel,
    cfg: &mut Config,
) -> Result<(Vec<TcpListener>, Option<handover::TakenOver>), AppError> {
    let Some(dir) = cfg.kernel.pin_dir.clone() else {
        return Ok((bind_or_fail_closed(kernel, cfg).await?, None));
    };
    let mut expected = vec![SocketAddr::from((
        cfg.kernel.agent_addr4,
        cfg.kernel.agent_port,
    ))];
    if let Some(a6) = cfg.kernel.agent_addr6 {
        expected.push(SocketAddr::from((a6, cfg.kernel.agent_port)));
    }
    // The serving agent's IMDS front sockets are taken too (and dropped if this
    // agent runs without the guard), so turning the guard on or off never makes a
    // rollout fail.
    expected.push(SocketAddr::from((
        cfg.kernel.agent_addr4,
        cfg.imds.front_port,
    )));
    if let Some(a6) = cfg.kernel.agent_addr6 {
        expected.push(SocketAddr::from((a6, cfg.imds.front_port)));
    }
    // And the probe and metrics sockets: the ports are the node's (hostNetwork),
    // so with both agents up (`maxSurge`) this one could bind neither; the old
    // agent stops answering them once this one serves.
    expected.extend(
        [cfg.probe_addr, cfg.metrics_addr]
            .into_iter()
            .flatten()
            .filter(|a| a.port() != 0),
    );
    // Fresh pins: no agent ran here before, nobody to take over from.
    let Some(serving) = kernel.serving_handover_nonce() else {
        return Ok((bind_or_fail_closed(kernel, cfg).await?, None));
    };
    // Two agents may start at once: if the port is taken, the other one may be
    // about to offer it. Ask again for a few seconds before failing closed.
    for _ in 1..HANDOVER_ATTEMPTS {
        let (d, e, nonce) = (dir.clone(), expected.clone(), kernel.handover_nonce());
        let taken =
            match tokio::task::spawn_blocking(move || handover::take_over(&d, nonce, serving, &e))
                .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "handover failed; trying again");
                    None
                }
                Err(_) => None,
            };
        if let Some(mut t) = taken {
            let v6 = t
                .listeners
                .iter()
                .any(|l| l.local_addr().is_ok_and(|a| a.is_ipv6()));
            if cfg.kernel.agent_addr6.is_some() && !v6 {
                // The serving agent had no IPv6 listener (it fell back too).
                cfg.kernel.agent_addr6 = None;
                kernel
                    .update_config(&cfg.kernel)
                    .map_err(kernel_err("updating the kernel config"))?;
            }
            tracing::info!(
                listeners = t.listeners.len(),
                "took the listening sockets over from the serving agent"
            );
            let listeners = std::mem::take(&mut t.listeners)
                .into_iter()
                .map(TcpListener::from_std)
                .collect::<Result<_, _>>()
                .map_err(|source| AppError::Bind {
                    addr: expected[0],
                    source,
                })?;
            return Ok((listeners, Some(t)));
        }
        match bind(kernel, cfg).await {
            Err(AppError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e @ AppError::Bind { .. }) => return Err(fail_closed(kernel, cfg, e)),
            other => return other.map(|l| (l, None)),
        }
    }
    Ok((bind_or_fail_closed(kernel, cfg).await?, None))
}

/// Tries of [`listen`] (250 ms apart) before the port counts as squatted.
const HANDOVER_ATTEMPTS: usize = 20;

async fn bind_or_fail_closed(
    kernel: &mut Kernel,
    cfg: &mut Config,
) -> Result<Vec<TcpListener>, AppError> {
    match bind(kernel, cfg).await {
        Err(e @ AppError::Bind { .. }) => Err(fail_closed(kernel, cfg, e)),
        other => other,
    }
}

/// Someone who is not an agent holds our port. Programs a previous agent pinned
/// would send every pod (and its token) there: make them refuse instead.
fn fail_closed(kernel: &Kernel, cfg: &Config, e: AppError) -> AppError {
    if let Err(fc) = kernel.fail_closed(&cfg.kernel) {
        tracing::error!(error = %fc, "could not switch the kernel to fail-closed");
    }
    e
}

/// The IMDS front's listeners, on the agent addresses (the kernel lets only the
/// agent bind them while the guard is on).
async fn bind_imds(cfg: &Config) -> Result<Vec<TcpListener>, AppError> {
    let mut listeners = Vec::new();
    let Some(imds) = cfg.kernel.imds else {
        return Ok(listeners);
    };
    let mut addrs = vec![SocketAddr::from((cfg.kernel.agent_addr4, imds.front_port))];
    if let Some(a6) = cfg.kernel.agent_addr6 {
        addrs.push(SocketAddr::from((a6, imds.front_port)));
    }
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::BindImds { addr, source })?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Splits the listening sockets into (credentials, IMDS front), by port; IMDS
/// front sockets taken over while the guard is off are closed.
/// The listeners an agent serves, sorted out of what [`listen`] bound or took over.
struct Listeners {
    /// The pods' endpoint (IPv4, and IPv6 when the node has it).
    creds: Vec<TcpListener>,
    /// The IMDS front (only with the guard on; a serving agent's are dropped
    /// otherwise).
    imds: Vec<TcpListener>,
    /// The probe and metrics listeners taken over from the serving agent (`None`:
    /// bind them).
    probes: Option<TcpListener>,
    metrics: Option<TcpListener>,
}

fn split_listeners(listeners: Vec<TcpListener>, cfg: &Config) -> Listeners {
    let mut out = Listeners {
        creds: Vec::new(),
        imds: Vec::new(),
        probes: None,
        metrics: None,
    };
    for l in listeners {
        let Ok(a) = l.local_addr() else { continue };
        if Some(a) == cfg.probe_addr {
            out.probes = Some(l);
        } else if Some(a) == cfg.metrics_addr {
            out.metrics = Some(l);
        } else if a.port() == cfg.imds.front_port && a.port() != cfg.kernel.agent_port {
            if cfg.kernel.imds.is_some() {
                out.imds.push(l);
            }
        } else {
            out.creds.push(l);
        }
    }
    out
}

/// Bind the agent's listeners.
async fn bind(kernel: &mut Kernel, cfg: &mut Config) -> Result<Vec<TcpListener>, AppError> {
    let mut listeners = Vec::new();
    let v4 = SocketAddr::from((cfg.kernel.agent_addr4, cfg.kernel.agent_port));
    match TcpListener::bind(v4).await {
        Ok(l) => listeners.push(l),
        Err(source) => return Err(AppError::Bind { addr: v4, source }),
    }
    if let Some(a6) = cfg.kernel.agent_addr6 {
        let v6 = SocketAddr::from((a6, cfg.kernel.agent_port));
        match TcpListener::bind(v6).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                // An IPv4-only node must not crash-loop (stock agent issue #16):
                // send IPv6 clients to the IPv4-mapped address instead, so nothing
                // is ever redirected to an address nobody (or somebody else) serves.
                tracing::warn!(addr = %v6, error = %e, "IPv6 listener unavailable; serving IPv6 clients over IPv4-mapped addresses");
                cfg.kernel.agent_addr6 = None;
                kernel
                    .update_config(&cfg.kernel)
                    .map_err(kernel_err("updating the kernel config"))?;
            }
        }
    }
    Ok(listeners)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard one (as Go programs do at start) and
/// say whether it covers what `listeners` pods' listeners and the probe listeners
/// may hold at once ([`fd_limit`]): runtimes often start the agent at 1024.
fn raise_fd_limit(cfg: &Config, listeners: usize) {
    let probes = usize::from(cfg.probe_addr.is_some()) + usize::from(cfg.metrics_addr.is_some());
    let needed = fd_limit::needed(cfg.connections, listeners, probes);
    match fd_limit::raise() {
        Ok(n) if fd_limit::covers(n.soft, needed) => {
            tracing::info!(soft = ?n.soft, needed, "file descriptor limit");
        }
        Ok(n) => tracing::warn!(
            soft = ?n.soft,
            hard = ?n.hard,
            needed,
            "the hard RLIMIT_NOFILE is below what the listeners' connection limits allow: idle connections could run the agent out of descriptors; raise it (the container runtime's default, LimitNOFILE)"
        ),
        Err(e) => tracing::warn!(error = %e, needed, "file descriptor limit not raised"),
    }
}
