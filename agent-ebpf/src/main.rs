//! Kernel programs of pod-identity-agent.
//!
//! * `cgroup/connect4|6`: a TCP connect to the credentials address is rewritten to
//!   the agent's address; who connected is recorded under the socket cookie.
//! * `sock_ops` at `TCP_CONNECT_CB`: once the local port is bound, the full client
//!   4-tuple is stored with that record, which the agent looks up after `accept`.
//! * `cgroup/getpeername4|6`: the client keeps seeing the credentials address.
//!
//! Nothing here trusts anything the client sends: the cgroup, pid and comm come from
//! the kernel at the moment of `connect()`.
#![no_std]
#![no_main]

use agent_ebpf::{
    action, bind6_is_guarded, flags, is_v4_mapped, v4_mapped, verdict, Config, Identity, TupleKey,
    AF_INET, AF_INET6,
};
use aya_ebpf::{
    bindings::{
        bpf_sock_addr, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_ns,
        },
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext,
};
use core::ptr::{read_volatile, write_volatile};

const SOCK_STREAM: u32 = 1;
/// Allow the syscall to proceed (cgroup/sock_addr programs).
const PROCEED: i32 = 1;
/// Refuse the syscall with `EPERM` (cgroup/sock_addr programs).
const REFUSE: i32 = 0;

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "SOCKETS")]
static SOCKETS: LruHashMap<u64, Identity> =
    LruHashMap::with_max_entries(agent_ebpf::maps::TABLE_ENTRIES, 0);

#[map(name = "TUPLES")]
static TUPLES: LruHashMap<TupleKey, Identity> =
    LruHashMap::with_max_entries(agent_ebpf::maps::TABLE_ENTRIES, 0);

#[map(name = "VERDICTS")]
static VERDICTS: HashMap<u64, u32> = HashMap::with_max_entries(agent_ebpf::maps::TABLE_ENTRIES, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(agent_ebpf::maps::EVENTS_BYTES, 0);

#[map(name = "AGENT_NETNS")]
static AGENT_NETNS: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "EVENTS_LOST")]
static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// === connect ===

#[cgroup_sock_addr(connect4)]
pub fn pia_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(cfg) = enabled_config() else {
        return PROCEED;
    };
    // SAFETY: `sa` is the context pointer the kernel passed; reads are 4-byte loads
    // of fields the verifier allows for this hook.
    let (typ, dst, port) = unsafe {
        (
            read_volatile(&(*sa).type_),
            read_volatile(&(*sa).user_ip4),
            read_volatile(&(*sa).user_port),
        )
    };
    let port = u16::from_be(port as u16);
    if typ != SOCK_STREAM {
        return PROCEED;
    }
    if dst == cfg.imds_addr4 && port == cfg.imds_port && cfg.flags & flags::IMDS_GUARD != 0 {
        return imds4(&ctx, cfg, dst);
    }
    if dst != cfg.cred_addr4 || port != cfg.cred_port {
        return PROCEED;
    }
    if cfg.flags & flags::FAIL_CLOSED != 0 {
        return REFUSE;
    }
    let Some(mut id) = caller(&ctx, cfg, [dst, 0, 0, 0], cfg.cred_port, AF_INET) else {
        return PROCEED;
    };
    if refused(cfg, &mut id) {
        return REFUSE;
    }
    // SAFETY: as above; user_ip4 and user_port are writable in connect4.
    unsafe {
        write_volatile(&mut (*sa).user_ip4, cfg.agent_addr4);
        write_volatile(&mut (*sa).user_port, u32::from(cfg.agent_port.to_be()));
    }
    redirected(id);
    PROCEED
}

/// A pod's connect to IMDS over IPv4: to the agent's IMDS front, or refused
/// (`--imds deny` in enforce mode). Node processes (verdict `NODE`) and the agent
/// itself are left alone; a cgroup the agent has not classified yet goes to the
/// front, which decides (fail closed).
#[inline(always)]
fn imds4(ctx: &SockAddrContext, cfg: &Config, dst: u32) -> i32 {
    let Some((mut id, known_pod)) = imds_caller(ctx, cfg, [dst, 0, 0, 0], AF_INET) else {
        return PROCEED;
    };
    if refuse_imds(cfg, known_pod) {
        id.action = action::DENIED;
        emit(&id);
        return REFUSE;
    }
    let sa = ctx.sock_addr;
    // SAFETY: user_ip4 and user_port are writable in connect4.
    unsafe {
        write_volatile(&mut (*sa).user_ip4, cfg.agent_addr4);
        write_volatile(&mut (*sa).user_port, u32::from(cfg.imds_front_port.to_be()));
    }
    redirected(id);
    PROCEED
}

/// A pod's connect to IMDS over IPv6 (or IPv4-mapped): as [`imds4`].
#[inline(always)]
fn imds6(ctx: &SockAddrContext, cfg: &Config, dst: [u32; 4], target: [u32; 4]) -> i32 {
    let Some((mut id, known_pod)) = imds_caller(ctx, cfg, dst, AF_INET6) else {
        return PROCEED;
    };
    if refuse_imds(cfg, known_pod) {
        id.action = action::DENIED;
        emit(&id);
        return REFUSE;
    }
    let sa = ctx.sock_addr;
    // SAFETY: user_ip6 words and user_port are writable in connect6.
    unsafe {
        write_volatile(&mut (*sa).user_ip6[0], target[0]);
        write_volatile(&mut (*sa).user_ip6[1], target[1]);
        write_volatile(&mut (*sa).user_ip6[2], target[2]);
        write_volatile(&mut (*sa).user_ip6[3], target[3]);
        write_volatile(&mut (*sa).user_port, u32::from(cfg.imds_front_port.to_be()));
    }
    redirected(id);
    PROCEED
}

/// The caller of an IMDS connect, unless it is the agent or a node process, and
/// whether the agent knows it is a pod (verdict `ALLOW` or `DENY`).
#[inline(always)]
fn imds_caller(
    ctx: &SockAddrContext,
    cfg: &Config,
    orig: [u32; 4],
    family: u16,
) -> Option<(Identity, bool)> {
    let id = caller(ctx, cfg, orig, cfg.imds_port, family)?;
    // SAFETY: the value is a plain u32 copied out immediately.
    let v = unsafe { VERDICTS.get(&id.cgroup_id).copied() };
    if v == Some(verdict::NODE) {
        return None;
    }
    Some((id, v.is_some()))
}

/// Refused at `connect()`: a known pod under `--imds deny` in enforce mode, or any
/// caller while the agent cannot serve. A cgroup the agent has not classified yet
/// goes to the front, which refuses pods and forwards node processes.
#[inline(always)]
fn refuse_imds(cfg: &Config, known_pod: bool) -> bool {
    cfg.flags & flags::FAIL_CLOSED != 0 || (known_pod && cfg.flags & flags::IMDS_DENY != 0)
}

#[cgroup_sock_addr(connect6)]
pub fn pia_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(cfg) = enabled_config() else {
        return PROCEED;
    };
    // SAFETY: see pia_connect4; user_ip6 is read one 4-byte word at a time, as the
    // verifier requires.
    let (typ, dst, port) = unsafe {
        (
            read_volatile(&(*sa).type_),
            [
                read_volatile(&(*sa).user_ip6[0]),
                read_volatile(&(*sa).user_ip6[1]),
                read_volatile(&(*sa).user_ip6[2]),
                read_volatile(&(*sa).user_ip6[3]),
            ],
            read_volatile(&(*sa).user_port),
        )
    };
    let port = u16::from_be(port as u16);
    if typ != SOCK_STREAM {
        return PROCEED;
    }
    if port == cfg.imds_port && cfg.flags & flags::IMDS_GUARD != 0 {
        if is_v4_mapped(&dst) && dst[3] == cfg.imds_addr4 {
            return imds6(&ctx, cfg, dst, v4_mapped(cfg.agent_addr4));
        }
        if dst == cfg.imds_addr6 {
            let target = if cfg.flags & flags::AGENT_V6 != 0 {
                cfg.agent_addr6
            } else {
                v4_mapped(cfg.agent_addr4)
            };
            return imds6(&ctx, cfg, dst, target);
        }
    }
    if port != cfg.cred_port {
        return PROCEED;
    }
    // An AF_INET6 socket may reach 169.254.170.23 as ::ffff:169.254.170.23; the
    // kernel sends that through tcp_v4_connect, so it gets the IPv4 agent address.
    let target = if is_v4_mapped(&dst) {
        if dst[3] != cfg.cred_addr4 {
            return PROCEED;
        }
        v4_mapped(cfg.agent_addr4)
    } else if dst == cfg.cred_addr6 {
        if cfg.flags & flags::AGENT_V6 != 0 {
            cfg.agent_addr6
        } else {
            // IPv4-only node: the agent has no IPv6 address; a dual-stack socket
            // still reaches it through the mapped address.
            v4_mapped(cfg.agent_addr4)
        }
    } else {
        return PROCEED;
    };
    if cfg.flags & flags::FAIL_CLOSED != 0 {
        return REFUSE;
    }
    let Some(mut id) = caller(&ctx, cfg, dst, cfg.cred_port, AF_INET6) else {
        return PROCEED;
    };
    if refused(cfg, &mut id) {
        return REFUSE;
    }
    // SAFETY: user_ip6 words and user_port are writable in connect6.
    unsafe {
        write_volatile(&mut (*sa).user_ip6[0], target[0]);
        write_volatile(&mut (*sa).user_ip6[1], target[1]);
        write_volatile(&mut (*sa).user_ip6[2], target[2]);
        write_volatile(&mut (*sa).user_ip6[3], target[3]);
        write_volatile(&mut (*sa).user_port, u32::from(cfg.agent_port.to_be()));
    }
    redirected(id);
    PROCEED
}

#[inline(always)]
fn enabled_config() -> Option<&'static Config> {
    let cfg = CONFIG.get(0)?;
    if cfg.flags & flags::ENABLED == 0 {
        return None;
    }
    Some(cfg)
}

/// Who is connecting, from the kernel. `None` for the agent itself (invariant 3).
#[inline(always)]
fn caller(
    ctx: &SockAddrContext,
    cfg: &Config,
    orig: [u32; 4],
    orig_port: u16,
    family: u16,
) -> Option<Identity> {
    // SAFETY: plain helper call.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if cgroup_id == cfg.agent_cgroup_id {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: plain helper calls with the program's own context pointer.
    let (netns_cookie, socket_cookie, ktime_ns) = unsafe {
        (
            bpf_get_netns_cookie(ctx.as_ptr()),
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_ktime_get_ns(),
        )
    };
    Some(Identity {
        cgroup_id,
        netns_cookie,
        socket_cookie,
        ktime_ns,
        pid,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        orig_addr: orig,
        orig_port,
        family,
        action: action::REDIRECTED,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    })
}

/// Enforce mode: a cgroup the agent marked `DENY` (not a pod, or a pod without an
/// association) is refused here and now. Cgroups without a verdict (a pod newer
/// than the agent's last rescan) go on to the agent, which decides and fails closed.
#[inline(always)]
fn refused(cfg: &Config, id: &mut Identity) -> bool {
    if cfg.flags & flags::ENFORCE == 0 {
        return false;
    }
    // SAFETY: the value is a plain u32 copied out immediately.
    let v = unsafe { VERDICTS.get(&id.cgroup_id).copied() };
    if v != Some(verdict::DENY) && v != Some(verdict::NODE) {
        return false;
    }
    id.action = action::DENIED;
    emit(id);
    true
}

#[inline(always)]
fn redirected(id: Identity) {
    // A full map evicts the least recently used socket; that client then gets a
    // 403 "unattributed" from the agent, never someone else's identity.
    let _ = SOCKETS.insert(&id.socket_cookie, &id, 0);
    emit(&id);
}

/// Audit event; a full ring buffer is counted, never silently dropped.
#[inline(always)]
fn emit(id: &Identity) {
    if EVENTS.output::<Identity>(id, 0).is_err() {
        if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *lost += 1 };
        }
    }
}

// === bind ===

/// Only the agent may bind the agent port. The redirect outlives the agent (pinned
/// links): while it restarts, another process listening on the port would receive
/// every pod's requests and tokens.
#[inline(always)]
fn bind_allowed(ctx: &SockAddrContext, cfg: &Config) -> i32 {
    // SAFETY: 4-byte loads of fields readable in bind hooks.
    let (typ, port) = unsafe {
        (
            read_volatile(&(*ctx.sock_addr).type_),
            read_volatile(&(*ctx.sock_addr).user_port),
        )
    };
    let port = u16::from_be(port as u16);
    let guarded_port = port == cfg.agent_port
        || (port == cfg.imds_front_port && cfg.flags & flags::IMDS_GUARD != 0);
    if typ != SOCK_STREAM || !guarded_port {
        return PROCEED;
    }
    // SAFETY: plain helper calls with the program's own context pointer.
    let (cgroup_id, netns) = unsafe {
        (
            bpf_get_current_cgroup_id(),
            bpf_get_netns_cookie(ctx.as_ptr()),
        )
    };
    if cgroup_id == cfg.agent_cgroup_id {
        // Learn where the agent listens: only that namespace can receive the
        // redirected connections, so only there is the port guarded.
        let _ = AGENT_NETNS.set(0, netns, 0);
        return PROCEED;
    }
    match AGENT_NETNS.get(0).copied() {
        // Another namespace (a pod's own): its port 2710 is none of our business.
        Some(known) if known != 0 && known != netns => PROCEED,
        // The agent's namespace, or not learned yet: refuse.
        _ => REFUSE,
    }
}

/// Only binds that could receive redirected traffic are guarded: the agent address
/// or a wildcard (other addresses of the node, and other ports, are untouched).
#[cgroup_sock_addr(bind4)]
pub fn pia_bind4(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = enabled_config() else {
        return PROCEED;
    };
    // SAFETY: 4-byte load of a field readable in bind4.
    let addr = unsafe { read_volatile(&(*ctx.sock_addr).user_ip4) };
    if addr != 0 && addr != cfg.agent_addr4 {
        return PROCEED;
    }
    bind_allowed(&ctx, cfg)
}

#[cgroup_sock_addr(bind6)]
pub fn pia_bind6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = enabled_config() else {
        return PROCEED;
    };
    // SAFETY: user_ip6 read one 4-byte word at a time, as the verifier requires.
    let addr = unsafe {
        [
            read_volatile(&(*ctx.sock_addr).user_ip6[0]),
            read_volatile(&(*ctx.sock_addr).user_ip6[1]),
            read_volatile(&(*ctx.sock_addr).user_ip6[2]),
            read_volatile(&(*ctx.sock_addr).user_ip6[3]),
        ]
    };
    let agent6 = (cfg.flags & flags::AGENT_V6 != 0).then_some(&cfg.agent_addr6);
    if !bind6_is_guarded(&addr, cfg.agent_addr4, agent6) {
        return PROCEED;
    }
    bind_allowed(&ctx, cfg)
}

// === sock_ops ===

#[sock_ops]
pub fn pia_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_tcp_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_tcp_close(&ctx),
        _ => {}
    }
    1
}

#[inline(always)]
fn socket_cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: helper call with the program's own context pointer.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

fn on_tcp_connect(ctx: &SockOpsContext) {
    let cookie = socket_cookie(ctx);
    // SAFETY: the record is copied out before any other map operation.
    let Some(id) = (unsafe { SOCKETS.get(&cookie).copied() }) else {
        return;
    };
    let Some(key) = tuple(ctx) else {
        return;
    };
    // Only a connection that really goes to the agent: a socket whose redirected
    // connect() failed early and was then connected elsewhere must not carry the
    // old record (nor report the credentials address from getpeername).
    let to_agent = enabled_config().is_some_and(|cfg| {
        (key.dst_port == cfg.agent_port
            || (key.dst_port == cfg.imds_front_port && cfg.flags & flags::IMDS_GUARD != 0))
            && ((key.family == AF_INET && key.dst_addr[0] == cfg.agent_addr4)
                || (key.family == AF_INET6 && key.dst_addr == cfg.agent_addr6))
    });
    if !to_agent {
        let _ = SOCKETS.remove(&cookie);
        return;
    }
    let _ = TUPLES.insert(&key, &id, 0);
    // Hear about the close, to drop what the agent did not consume.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

fn on_tcp_close(ctx: &SockOpsContext) {
    let cookie = socket_cookie(ctx);
    let _ = SOCKETS.remove(&cookie);
    if let Some(key) = tuple(ctx) {
        let _ = TUPLES.remove(&key);
    }
}

/// The client-side 4-tuple: local = client, remote = agent. IPv4-mapped IPv6 is
/// normalised to IPv4, as the agent's IPv4 listener sees it.
#[inline(always)]
fn tuple(ctx: &SockOpsContext) -> Option<TupleKey> {
    let ops = ctx.ops;
    // `local_port` is host order; `remote_port` keeps the network-order port in
    // the upper 16 bits on little-endian machines.
    // SAFETY: 4-byte loads of sock_ops context fields readable at these callbacks.
    let (family, lport, rport) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_port),
            read_volatile(&(*ops).remote_port),
        )
    };
    let src_port = lport as u16;
    let dst_port = if cfg!(target_endian = "little") {
        u16::from_be((rport >> 16) as u16)
    } else {
        rport as u16
    };
    let mut key = TupleKey {
        src_port,
        dst_port,
        ..TupleKey::default()
    };
    if family == AF_INET as u32 {
        key.family = AF_INET;
        // SAFETY: as above.
        unsafe {
            key.src_addr[0] = read_volatile(&(*ops).local_ip4);
            key.dst_addr[0] = read_volatile(&(*ops).remote_ip4);
        }
        return Some(key);
    }
    if family != AF_INET6 as u32 {
        return None;
    }
    // SAFETY: as above, one word at a time.
    let remote = unsafe {
        [
            read_volatile(&(*ops).remote_ip6[0]),
            read_volatile(&(*ops).remote_ip6[1]),
            read_volatile(&(*ops).remote_ip6[2]),
            read_volatile(&(*ops).remote_ip6[3]),
        ]
    };
    if is_v4_mapped(&remote) {
        // tcp_v6_connect hands mapped destinations to tcp_v4_connect, which has
        // set the IPv4 source by now (the mapped IPv6 source is filled in later).
        key.family = AF_INET;
        // SAFETY: as above.
        unsafe {
            key.src_addr[0] = read_volatile(&(*ops).local_ip4);
        }
        key.dst_addr[0] = remote[3];
        return Some(key);
    }
    key.family = AF_INET6;
    key.dst_addr = remote;
    // SAFETY: as above.
    unsafe {
        key.src_addr = [
            read_volatile(&(*ops).local_ip6[0]),
            read_volatile(&(*ops).local_ip6[1]),
            read_volatile(&(*ops).local_ip6[2]),
            read_volatile(&(*ops).local_ip6[3]),
        ];
    }
    Some(key)
}

// === getpeername ===

#[cgroup_sock_addr(getpeername4)]
pub fn pia_getpeername4(ctx: SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: helper call with the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the record is copied out at once.
    if let Some(id) = unsafe { SOCKETS.get(&cookie).copied() } {
        if id.family == AF_INET {
            // SAFETY: user_ip4/user_port are writable in getpeername4.
            unsafe {
                write_volatile(&mut (*sa).user_ip4, id.orig_addr[0]);
                write_volatile(&mut (*sa).user_port, u32::from(id.orig_port.to_be()));
            }
        }
    }
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn pia_getpeername6(ctx: SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: helper call with the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the record is copied out at once.
    if let Some(id) = unsafe { SOCKETS.get(&cookie).copied() } {
        if id.family == AF_INET6 {
            // SAFETY: user_ip6 words and user_port are writable in getpeername6.
            unsafe {
                write_volatile(&mut (*sa).user_ip6[0], id.orig_addr[0]);
                write_volatile(&mut (*sa).user_ip6[1], id.orig_addr[1]);
                write_volatile(&mut (*sa).user_ip6[2], id.orig_addr[2]);
                write_volatile(&mut (*sa).user_ip6[3], id.orig_addr[3]);
                write_volatile(&mut (*sa).user_port, u32::from(id.orig_port.to_be()));
            }
        }
    }
    PROCEED
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
