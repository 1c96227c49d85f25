//! Test fixture, not part of the agent: another vendor's socket load balancer, in
//! the manner of Cilium's kube-proxy replacement, for `agent/tests/coexistence.rs`.
//!
//! * `cgroup/connect4`: a TCP connect to the Service VIP 10.96.0.10:80 is rewritten
//!   to its one backend, 169.254.199.1:8080 (the simulated node's address); the
//!   socket is remembered for the reverse translation.
//! * `cgroup/getpeername4`: such a socket reports the VIP, not the backend.
//! * `sock_ops`: counts the active connections established to the backend and to
//!   the agent's port, so the test sees that this program keeps running beside
//!   the agent's.
//!
//! `STATS`: 0 = VIP connects rewritten, 1 = getpeername translated, 2 = backend
//! connections established, 3 = agent-port connections established.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, LruHashMap},
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext,
};
use core::ptr::{read_volatile, write_volatile};

const PROCEED: i32 = 1;
const SOCK_STREAM: u32 = 1;
/// 10.96.0.10, as `user_ip4` holds it (network order in a native word).
const VIP: u32 = u32::from_ne_bytes([10, 96, 0, 10]);
const VIP_PORT: u16 = 80;
/// 169.254.199.1, the simulated node's address.
const BACKEND: u32 = u32::from_ne_bytes([169, 254, 199, 1]);
const BACKEND_PORT: u16 = 8080;
/// The agent's port in the tests.
const AGENT_PORT: u16 = 2710;

#[map(name = "STATS")]
static STATS: Array<u64> = Array::with_max_entries(4, 0);

/// Socket cookies of rewritten connects (the reverse translation).
#[map(name = "REV_NAT")]
static REV_NAT: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn count(i: u32) {
    if let Some(p) = STATS.get_ptr_mut(i) {
        // SAFETY: a slot of our own array map; a lost increment only undercounts.
        unsafe { *p += 1 };
    }
}

#[cgroup_sock_addr(connect4)]
pub fn vendor_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte loads of fields readable in connect4.
    let (typ, addr, port) = unsafe {
        (
            read_volatile(&(*sa).type_),
            read_volatile(&(*sa).user_ip4),
            read_volatile(&(*sa).user_port),
        )
    };
    if typ != SOCK_STREAM || addr != VIP || u16::from_be(port as u16) != VIP_PORT {
        return PROCEED;
    }
    // SAFETY: user_ip4 and user_port are writable in connect4.
    unsafe {
        write_volatile(&mut (*sa).user_ip4, BACKEND);
        write_volatile(&mut (*sa).user_port, u32::from(BACKEND_PORT.to_be()));
    }
    // SAFETY: helper call with the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = REV_NAT.insert(&cookie, &VIP, 0);
    count(0);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn vendor_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: helper call with the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    if let Some(vip) = unsafe { REV_NAT.get(&cookie).copied() } {
        // SAFETY: user_ip4 and user_port are writable in getpeername4.
        unsafe {
            write_volatile(&mut (*ctx.sock_addr).user_ip4, vip);
            write_volatile(&mut (*ctx.sock_addr).user_port, u32::from(VIP_PORT.to_be()));
        }
        count(1);
    }
    PROCEED
}

#[sock_ops]
pub fn vendor_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // `remote_port` keeps the network-order port in the upper 16 bits on
    // little-endian machines.
    // SAFETY: a 4-byte load of a field readable at this callback.
    let rport = unsafe { read_volatile(&(*ctx.ops).remote_port) };
    let port = if cfg!(target_endian = "little") {
        u16::from_be((rport >> 16) as u16)
    } else {
        rport as u16
    };
    match port {
        BACKEND_PORT => count(2),
        AGENT_PORT => count(3),
        _ => {}
    }
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
