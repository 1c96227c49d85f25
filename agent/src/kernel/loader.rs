//! Loading, configuring and attaching the kernel programs, and reading their maps.
//!
//! This is the one userspace module allowed `unsafe`: the `aya::Pod` impls that let
//! aya copy the shared `#[repr(C)]` records in and out of maps.
#![allow(unsafe_code)]

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use agent_ebpf::{flags, maps, programs, Config as KConfig, Identity, TupleKey};
use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        links::{CgroupAttachMode, FdLink, LinkError, PinnedLink},
        CgroupSockAddr, ProgramError, SockOps,
    },
    Ebpf, EbpfError, EbpfLoader,
};

use super::{
    floor,
    pins::{drop_incompatible_maps, pin_err, pin_link},
    settings::kernel_config,
    tuple::tuple_key,
};
use crate::{
    attribution::{cgroup, Caller},
    config::KernelConfig,
};

/// The object built by `cargo xtask build-ebpf`, embedded by `build.rs` (empty when
/// the agent was built without it).
static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod-identity-ebpf.o"));

/// `aya::Pod` wrappers: the records are plain `#[repr(C)]` integers and arrays with
/// no padding, so any byte pattern is a valid value.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct PodKConfig(KConfig);
// SAFETY: repr(C), integers only, no padding (size asserted in agent-ebpf tests).
unsafe impl aya::Pod for PodKConfig {}

#[derive(Clone, Copy)]
#[repr(transparent)]
struct PodTupleKey(TupleKey);
// SAFETY: as above.
unsafe impl aya::Pod for PodTupleKey {}

#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct PodIdentity(pub(crate) Identity);
// SAFETY: as above.
unsafe impl aya::Pod for PodIdentity {}

/// Failures of the kernel side, each naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel is below the floor or lacks cgroup2 or bpffs ([`floor`]).
    #[error(transparent)]
    Floor(#[from] floor::Missing),
    /// The agent binary carries no eBPF object.
    #[error("this agent was built without the eBPF object; build with `cargo xtask build` (or set POD_IDENTITY_EBPF_OBJECT)")]
    NoObject,
    /// `bpf(BPF_PROG_LOAD)`/map creation failed while loading the object.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    /// A program expected in the object is missing or of the wrong type.
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A program expected in the object is missing.
    #[error("eBPF program {0} not found in the object")]
    MissingProgram(&'static str),
    /// A map expected in the object is missing.
    #[error("eBPF map {0} not found in the object")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// The attach cgroup could not be opened.
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent's own cgroup (exempt from the redirect) could not be found.
    #[error("finding the agent's own cgroup: {0}")]
    OwnCgroup(cgroup::CgroupError),
    /// Pinning or re-adopting an object in bpffs failed.
    #[error("bpffs pin {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    /// `bpf(BPF_PROG_QUERY)` on the attach cgroup failed.
    #[error("bpf(BPF_PROG_QUERY) on {path}: {source}")]
    Query {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Each program and its `bpf_attach_type` (uapi `linux/bpf.h`), for
/// [`Kernel::missing_programs`].
const ATTACH_TYPES: [(&str, u32); 7] = [
    (programs::SOCK_OPS, 3),      // BPF_CGROUP_SOCK_OPS
    (programs::BIND4, 8),         // BPF_CGROUP_INET4_BIND
    (programs::BIND6, 9),         // BPF_CGROUP_INET6_BIND
    (programs::CONNECT4, 10),     // BPF_CGROUP_INET4_CONNECT
    (programs::CONNECT6, 11),     // BPF_CGROUP_INET6_CONNECT
    (programs::GETPEERNAME4, 29), // BPF_CGROUP_INET4_GETPEERNAME
    (programs::GETPEERNAME6, 30), // BPF_CGROUP_INET6_GETPEERNAME
];

/// `bpf(BPF_PROG_QUERY)`: ids of the programs attached to the cgroup `target` for
/// `attach_type` (not the inherited ones).
fn prog_query(target: std::os::fd::BorrowedFd<'_>, attach_type: u32) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    /// The `query` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    let mut capacity = 64usize;
    loop {
        let mut ids = vec![0u32; capacity];
        let mut attr = Query {
            target_fd: target.as_raw_fd() as u32,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: capacity as u32,
            ..Query::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr.query` of the size passed; the
        // kernel writes at most `prog_cnt` ids into `ids`, which outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut Query,
                std::mem::size_of::<Query>(),
            )
        };
        if r == 0 {
            ids.truncate((attr.prog_cnt as usize).min(capacity));
            return Ok(ids);
        }
        let err = std::io::Error::last_os_error();
        // More programs than room: the kernel says how many.
        if err.raw_os_error() == Some(libc::ENOSPC) && (attr.prog_cnt as usize) > capacity {
            capacity = attr.prog_cnt as usize;
            continue;
        }
        return Err(err);
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> KernelError {
    move |source| KernelError::Program { name, source }
}

/// Every map, all pinned when a pin directory is set (state and queued events
/// survive an agent restart).
const ALL_MAPS: [&str; 7] = [
    maps::AGENT_NETNS,
    maps::CONFIG,
    maps::SOCKETS,
    maps::TUPLES,
    maps::VERDICTS,
    maps::EVENTS,
    maps::EVENTS_LOST,
];

/// Load the object, re-adopting pinned maps from `pin_dir` when present. Maps
/// pinned by an incompatible build are replaced (their state is lost, nothing else).
fn load(pin_dir: Option<&Path>) -> Result<Ebpf, KernelError> {
    let Some(dir) = pin_dir else {
        return Ok(Ebpf::load(OBJECT)?);
    };
    std::fs::create_dir_all(dir).map_err(|e| pin_err(dir, e))?;
    drop_incompatible_maps(dir, &maps::SPECS);
    let paths: Vec<(&str, PathBuf)> = ALL_MAPS
        .iter()
        .map(|m| (*m, dir.join(format!("map_{m}"))))
        .collect();
    let try_load = || {
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader.load(OBJECT)
    };
    match try_load() {
        Ok(e) => Ok(e),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "pinned maps not reusable; replacing them");
            for (_, p) in &paths {
                let _ = std::fs::remove_file(p);
            }
            Ok(try_load()?)
        }
    }
}

/// The loaded and attached kernel side. Without a pin directory, dropping it
/// detaches the programs; with one, the pinned links keep redirecting (invariant 8)
/// and the next agent re-adopts maps and replaces the links.
pub struct Kernel {
    ebpf: Ebpf,
    tuples: Mutex<HashMap<MapData, PodTupleKey, PodIdentity>>,
    verdicts: Mutex<HashMap<MapData, u64, u32>>,
    config: Mutex<Array<MapData, PodKConfig>>,
    events_lost: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    attached_to: PathBuf,
    pin_dir: Option<PathBuf>,
    own_cgroup: u64,
    /// This agent's handover nonce (see [`agent_ebpf::Config::handover_nonce`]).
    nonce: u64,
    /// The nonce found in a re-adopted config map: the serving agent's, if any.
    serving_nonce: Option<u64>,
    _pinned: Vec<PinnedLink>,
}

impl Kernel {
    /// Load the programs and write their config (the agent's cgroup id included),
    /// without attaching. Programs a previous agent pinned keep running and, through
    /// the re-adopted config map, now recognise this agent: it may bind its port.
    /// Then bind, then [`Kernel::attach`].
    pub fn load(cfg: &KernelConfig) -> Result<Kernel, KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NoObject);
        }
        let pin_dir = cfg.pin_dir.as_deref();
        floor::check_host(&cfg.cgroup, pin_dir)?;
        let mut ebpf = load(pin_dir)?;

        let mut config: Array<MapData, PodKConfig> = Array::try_from(
            ebpf.take_map(maps::CONFIG)
                .ok_or(KernelError::MissingMap(maps::CONFIG))?,
        )
        .map_err(map_err(maps::CONFIG))?;
        let own_cgroup = cgroup::own_cgroup_id().map_err(KernelError::OwnCgroup)?;
        let nonce = uuid::Uuid::new_v4().as_u64_pair().0;
        let attach_root = std::fs::metadata(&cfg.cgroup)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .map_err(|source| KernelError::Cgroup {
                path: cfg.cgroup.clone(),
                source,
            })?;
        if own_cgroup == attach_root {
            // Exempting the attach root would exempt every process directly in it,
            // and says the agent's cgroup was not found (e.g. no cgroup namespace).
            return Err(KernelError::OwnCgroup(cgroup::CgroupError::NotFound {
                cgroup_id: own_cgroup,
            }));
        }
        // A re-adopted map holds the serving agent's nonce: the handover checks it.
        let serving_nonce = config
            .get(&0, 0)
            .ok()
            .map(|PodKConfig(k)| k.handover_nonce)
            .filter(|n| *n != 0);
        config
            .set(0, PodKConfig(kernel_config(cfg, own_cgroup, nonce)), 0)
            .map_err(map_err(maps::CONFIG))?;

        let tuples = HashMap::try_from(
            ebpf.take_map(maps::TUPLES)
                .ok_or(KernelError::MissingMap(maps::TUPLES))?,
        )
        .map_err(map_err(maps::TUPLES))?;
        let verdicts = HashMap::try_from(
            ebpf.take_map(maps::VERDICTS)
                .ok_or(KernelError::MissingMap(maps::VERDICTS))?,
        )
        .map_err(map_err(maps::VERDICTS))?;
        let events_lost = PerCpuArray::try_from(
            ebpf.take_map(maps::EVENTS_LOST)
                .ok_or(KernelError::MissingMap(maps::EVENTS_LOST))?,
        )
        .map_err(map_err(maps::EVENTS_LOST))?;
        let events = RingBuf::try_from(
            ebpf.take_map(maps::EVENTS)
                .ok_or(KernelError::MissingMap(maps::EVENTS))?,
        )
        .map_err(map_err(maps::EVENTS))?;

        Ok(Kernel {
            ebpf,
            tuples: Mutex::new(tuples),
            verdicts: Mutex::new(verdicts),
            config: Mutex::new(config),
            events_lost,
            events: Some(events),
            attached_to: cfg.cgroup.clone(),
            pin_dir: cfg.pin_dir.clone(),
            own_cgroup,
            nonce,
            serving_nonce,
            _pinned: Vec::new(),
        })
    }

    /// Attach (and pin) the programs to the configured cgroup: the bind guard first,
    /// so the redirect is never live without it.
    pub fn attach(&mut self) -> Result<(), KernelError> {
        let cgroup = File::open(&self.attached_to).map_err(|source| KernelError::Cgroup {
            path: self.attached_to.clone(),
            source,
        })?;
        let pin_dir = self.pin_dir.clone();
        let pin_dir = pin_dir.as_deref();
        for name in [
            programs::BIND4,
            programs::BIND6,
            programs::CONNECT4,
            programs::CONNECT6,
            programs::GETPEERNAME4,
            programs::GETPEERNAME6,
        ] {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(KernelError::MissingProgram(name))?
                .try_into()
                .map_err(prog_err(name))?;
            prog.load().map_err(prog_err(name))?;
            // Links (kernel >= 5.7) are multi-attach: we coexist with Cilium's own
            // programs. `Single` is the only mode the kernel accepts for links.
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
            if let Some(dir) = pin_dir {
                let link = prog.take_link(id).map_err(prog_err(name))?;
                let fd: FdLink = link.try_into().map_err(|e: LinkError| pin_err(dir, e))?;
                self._pinned.push(pin_link(dir, name, fd)?);
            }
        }
        let sock_ops: &mut SockOps = self
            .ebpf
            .program_mut(programs::SOCK_OPS)
            .ok_or(KernelError::MissingProgram(programs::SOCK_OPS))?
            .try_into()
            .map_err(prog_err(programs::SOCK_OPS))?;
        sock_ops.load().map_err(prog_err(programs::SOCK_OPS))?;
        let id = sock_ops
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(programs::SOCK_OPS))?;
        if let Some(dir) = pin_dir {
            let link = sock_ops
                .take_link(id)
                .map_err(prog_err(programs::SOCK_OPS))?;
            let fd: FdLink = link.try_into().map_err(|e: LinkError| pin_err(dir, e))?;
            self._pinned.push(pin_link(dir, programs::SOCK_OPS, fd)?);
        }
        Ok(())
    }

    /// Asks the kernel (`BPF_PROG_QUERY` on the attach cgroup, per attach type)
    /// whether each of this agent's programs is attached; returns the names of
    /// those that are not. A detached program is something `/readyz` must see,
    /// whatever the agent believes it attached.
    pub fn missing_programs(&self) -> Result<Vec<&'static str>, KernelError> {
        let cgroup = File::open(&self.attached_to).map_err(|source| KernelError::Cgroup {
            path: self.attached_to.clone(),
            source,
        })?;
        let mut missing = Vec::new();
        for (name, attach_type) in ATTACH_TYPES {
            let id = self
                .ebpf
                .program(name)
                .ok_or(KernelError::MissingProgram(name))?
                .info()
                .map_err(prog_err(name))?
                .id();
            let attached =
                prog_query(std::os::fd::AsFd::as_fd(&cgroup), attach_type).map_err(|source| {
                    KernelError::Query {
                        path: self.attached_to.clone(),
                        source,
                    }
                })?;
            if !attached.contains(&id) {
                missing.push(name);
            }
        }
        Ok(missing)
    }

    /// Whether the maps answer (a read of `CONFIG[0]`).
    pub fn maps_reachable(&self) -> Result<(), KernelError> {
        let c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&0, 0).map(|_| ()).map_err(map_err(maps::CONFIG))
    }

    /// Teach the bind guard which network namespace the agent listens in: a bind of
    /// the agent port by the agent itself is recorded by the hook (which runs before
    /// the kernel's address-in-use check, so this bind fails as expected). Programs
    /// attached after the agent bound its listeners have not seen that bind.
    pub fn teach_bind_guard(&self, addr: SocketAddr) {
        match std::net::TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => {
                tracing::warn!(%addr, error = %e, "bind guard: unexpected result teaching the agent's namespace")
            }
            Ok(_) => {
                tracing::warn!(%addr, "bind guard: agent port was free while teaching the agent's namespace")
            }
        }
    }

    /// The agent cannot serve (e.g. its port is taken): make programs a previous
    /// agent pinned refuse credential connects with EPERM, rather than redirect pods
    /// (and their tokens) to whoever holds the port.
    pub fn fail_closed(&self, cfg: &KernelConfig) -> Result<(), KernelError> {
        let mut k = kernel_config(cfg, self.own_cgroup, self.nonce);
        k.flags |= flags::FAIL_CLOSED;
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        c.set(0, PodKConfig(k), 0).map_err(map_err(maps::CONFIG))
    }

    /// The cgroup the programs are attached to.
    pub fn attached_to(&self) -> &Path {
        &self.attached_to
    }

    /// Who made the connection whose client end is `peer` and our end `local`.
    ///
    /// The record is removed as it is read: one connection, one attribution.
    /// `Ok(None)` means the kernel has no record (not redirected by us: refuse).
    pub fn take_caller(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<Caller>, KernelError> {
        let key = PodTupleKey(tuple_key(peer, local));
        let mut tuples = self.tuples.lock().unwrap_or_else(|e| e.into_inner());
        match tuples.get(&key, 0) {
            Ok(PodIdentity(id)) => {
                // Already consumed is fine: the LRU would drop it anyway.
                let _ = tuples.remove(&key);
                Ok(Some(Caller::from(&id)))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(KernelError::Map {
                name: maps::TUPLES,
                source,
            }),
        }
    }

    /// Set the kernel verdict for a cgroup (used in enforce mode).
    pub fn set_verdict(&self, cgroup_id: u64, verdict: Option<u32>) -> Result<(), KernelError> {
        let mut v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        match verdict {
            Some(verdict) => v.insert(cgroup_id, verdict, 0),
            None => match v.remove(&cgroup_id) {
                Err(MapError::KeyNotFound) => Ok(()),
                r => r,
            },
        }
        .map_err(map_err(maps::VERDICTS))
    }

    /// Rewrite the runtime config (e.g. to flip enforce mode).
    pub fn update_config(&self, cfg: &KernelConfig) -> Result<(), KernelError> {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        c.set(
            0,
            PodKConfig(kernel_config(cfg, self.own_cgroup, self.nonce)),
            0,
        )
        .map_err(map_err(maps::CONFIG))
    }

    /// The handover nonce in the (shared, pinned) config map now: the one of the
    /// agent that loaded last.
    pub fn current_handover_nonce(&self) -> Result<u64, KernelError> {
        let c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&0, 0)
            .map(|PodKConfig(k)| k.handover_nonce)
            .map_err(map_err(maps::CONFIG))
    }

    /// This agent's handover nonce.
    pub fn handover_nonce(&self) -> u64 {
        self.nonce
    }

    /// The nonce of the agent that loaded before this one, from the re-adopted
    /// config map (`None`: fresh pins, no agent to take over from).
    pub fn serving_handover_nonce(&self) -> Option<u64> {
        self.serving_nonce
    }

    /// Events lost because the ring buffer was full, summed over CPUs.
    pub fn events_lost(&self) -> Result<u64, KernelError> {
        let per_cpu = self
            .events_lost
            .get(&0, 0)
            .map_err(map_err(maps::EVENTS_LOST))?;
        Ok(per_cpu.iter().sum())
    }

    /// Hand the event ring buffer to its reader (once).
    pub fn take_events(&mut self) -> Option<EventReader> {
        self.events.take().map(|ring| EventReader { ring })
    }
}

/// Reader of the kernel's audit events.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.ring)
    }
}

impl EventReader {
    /// Register with the tokio reactor to await readability.
    pub fn into_async(self) -> std::io::Result<tokio::io::unix::AsyncFd<EventReader>> {
        // SAFETY: the fd belongs to `self.ring`, which the AsyncFd owns and drops
        // after deregistering; nothing else closes it.
        unsafe { tokio::io::unix::AsyncFd::register(self) }.map_err(|e| e.into_parts().1)
    }

    /// The next event, if any is ready.
    pub fn next_event(&mut self) -> Option<Identity> {
        let item = self.ring.next()?;
        if item.len() < std::mem::size_of::<Identity>() {
            return None;
        }
        // SAFETY: the kernel wrote exactly one `Identity` (repr(C), no padding, any
        // bit pattern valid); read_unaligned copes with the ring's 8-byte alignment.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Identity>()) })
    }
}
