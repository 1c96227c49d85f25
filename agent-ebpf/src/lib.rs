//! Records shared by the eBPF programs and the userspace agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and has no implicit padding, so the
//! kernel and userspace agree byte for byte. Addresses are kept exactly as the
//! kernel hands them out: 32-bit words in network byte order (an IPv4 address in
//! word 0, the rest zero). Ports are in host byte order.
#![no_std]
#![forbid(unsafe_code)]

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Map names, as in the object file.
pub mod maps {
    /// `Array<Config>` with one entry: the runtime settings of the programs.
    pub const CONFIG: &str = "CONFIG";
    /// `LruHashMap<u64 socket cookie, Identity>`: redirected client sockets.
    pub const SOCKETS: &str = "SOCKETS";
    /// `LruHashMap<TupleKey, Identity>`: client-side 4-tuple of a redirected
    /// connection, as the agent will see it from `accept`, to the caller.
    pub const TUPLES: &str = "TUPLES";
    /// `HashMap<u64 cgroup id, u32 verdict>`: kernel enforcement (see [`super::verdict`]).
    pub const VERDICTS: &str = "VERDICTS";
    /// `RingBuf` of [`super::Identity`] events, one per connect to a credentials address.
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<u64>` with one entry: events lost because `EVENTS` was full.
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    /// `Array<u64>` with one entry: the network namespace cookie the agent binds its
    /// port in, learned by the bind hook from the agent's own bind.
    pub const AGENT_NETNS: &str = "AGENT_NETNS";

    /// Entries of the socket, tuple and verdict maps.
    pub const TABLE_ENTRIES: u32 = 65_536;
    /// Bytes of the `EVENTS` ring buffer.
    pub const EVENTS_BYTES: u32 = 1 << 20;

    /// `bpf_map_type` values of the maps used here.
    pub mod kind {
        pub const HASH: u32 = 1;
        pub const ARRAY: u32 = 2;
        pub const PERCPU_ARRAY: u32 = 6;
        pub const LRU_HASH: u32 = 9;
        pub const RINGBUF: u32 = 27;
    }

    /// What a map must look like for this build's records: a map pinned by another
    /// build is re-adopted only if the kernel reports exactly this.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Spec {
        pub name: &'static str,
        pub kind: u32,
        pub key_size: u32,
        pub value_size: u32,
        pub max_entries: u32,
    }

    const fn spec(name: &'static str, kind: u32, key: usize, value: usize, max: u32) -> Spec {
        Spec {
            name,
            kind,
            key_size: key as u32,
            value_size: value as u32,
            max_entries: max,
        }
    }

    use core::mem::size_of;

    /// Every map of the object, with its layout.
    pub const SPECS: [Spec; 7] = [
        spec(AGENT_NETNS, kind::ARRAY, 4, 8, 1),
        spec(CONFIG, kind::ARRAY, 4, size_of::<super::Config>(), 1),
        spec(
            SOCKETS,
            kind::LRU_HASH,
            8,
            size_of::<super::Identity>(),
            TABLE_ENTRIES,
        ),
        spec(
            TUPLES,
            kind::LRU_HASH,
            size_of::<super::TupleKey>(),
            size_of::<super::Identity>(),
            TABLE_ENTRIES,
        ),
        spec(VERDICTS, kind::HASH, 8, 4, TABLE_ENTRIES),
        spec(EVENTS, kind::RINGBUF, 0, 0, EVENTS_BYTES),
        spec(EVENTS_LOST, kind::PERCPU_ARRAY, 4, 8, 1),
    ];
}

/// Program names, as in the object file.
pub mod programs {
    pub const CONNECT4: &str = "pia_connect4";
    pub const CONNECT6: &str = "pia_connect6";
    pub const GETPEERNAME4: &str = "pia_getpeername4";
    pub const GETPEERNAME6: &str = "pia_getpeername6";
    pub const SOCK_OPS: &str = "pia_sock_ops";
    pub const BIND4: &str = "pia_bind4";
    pub const BIND6: &str = "pia_bind6";
}

/// Bits of [`Config::flags`].
pub mod flags {
    /// The programs act only once the agent has written a config with this bit.
    pub const ENABLED: u32 = 1;
    /// `agent_addr6` is usable; otherwise IPv6 clients go to the IPv4-mapped agent address.
    pub const AGENT_V6: u32 = 1 << 1;
    /// Kernel enforcement: cgroups with a `DENY` verdict get `EPERM` from `connect()`.
    pub const ENFORCE: u32 = 1 << 2;
    /// The agent cannot serve: every connect to the credentials address gets `EPERM`
    /// (never redirected to whoever might hold the agent port).
    pub const FAIL_CLOSED: u32 = 1 << 3;
    /// Node-role guard: connects to the IMDS address from cgroups not marked
    /// [`super::verdict::NODE`] go to the agent's IMDS front.
    pub const IMDS_GUARD: u32 = 1 << 4;
    /// With [`IMDS_GUARD`]: refuse them with `EPERM` instead (`--imds deny` in
    /// enforce mode).
    pub const IMDS_DENY: u32 = 1 << 5;
}

/// Values of the `VERDICTS` map.
pub mod verdict {
    /// The cgroup belongs to a pod with an association.
    pub const ALLOW: u32 = 1;
    /// The cgroup is known and must be refused (enforce mode).
    pub const DENY: u32 = 2;
    /// The cgroup is not a pod (a node process): refused like [`DENY`] for
    /// credentials in enforce mode, and left alone by the IMDS guard.
    pub const NODE: u32 = 3;
}

/// Values of [`Identity::action`].
pub mod action {
    /// The connection was rewritten toward the agent.
    pub const REDIRECTED: u32 = 1;
    /// `connect()` was refused in the kernel with `EPERM` (enforce mode).
    pub const DENIED: u32 = 2;
}

/// Runtime settings, written by the agent into `CONFIG[0]`.
///
/// A map rather than load-time globals so that a restarted agent can re-adopt pinned
/// programs and still update its own cgroup id and addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Credentials IPv4 address (169.254.170.23), network order.
    pub cred_addr4: u32,
    /// Agent IPv4 address, network order.
    pub agent_addr4: u32,
    /// Credentials IPv6 address (fd00:ec2::23), network order words.
    pub cred_addr6: [u32; 4],
    /// Agent IPv6 address, network order words (valid with [`flags::AGENT_V6`]).
    pub agent_addr6: [u32; 4],
    /// Credentials port (80), host order.
    pub cred_port: u16,
    /// Agent port, host order.
    pub agent_port: u16,
    /// [`flags`] bits.
    pub flags: u32,
    /// The agent's own cgroup id: its sockets are never redirected (invariant 3),
    /// and only it may bind the agent port. A cgroup id, not a pid: the agent runs
    /// in its own pid namespace, where its pid means nothing to the kernel helpers.
    pub agent_cgroup_id: u64,
    /// Written by the agent that loaded last (random, never read by the programs).
    /// An agent hands its listening sockets over only to a peer that knows this
    /// value, i.e. one that can read the pinned maps (see `http/handover.rs`).
    pub handover_nonce: u64,
    /// Instance metadata IPv4 address (169.254.169.254), network order.
    pub imds_addr4: u32,
    /// Instance metadata IPv6 address (fd00:ec2::254), network order words.
    pub imds_addr6: [u32; 4],
    /// Instance metadata port (80), host order.
    pub imds_port: u16,
    /// The agent's IMDS front port on the agent addresses, host order.
    pub imds_front_port: u16,
}

/// Full 4-tuple of a TCP connection as seen from the client: `src` is the client,
/// `dst` is the agent. IPv4 (also IPv4-mapped IPv6) uses `AF_INET` and word 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u16,
    pub _pad: u16,
}

/// What the kernel knows about the process that connected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// cgroup v2 id of the caller (== inode of its cgroup directory).
    pub cgroup_id: u64,
    /// Network namespace cookie of the socket.
    pub netns_cookie: u64,
    /// Socket cookie of the client socket.
    pub socket_cookie: u64,
    /// `bpf_ktime_get_ns()` at connect (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The destination the client asked for, network order words (see [`TupleKey`]).
    pub orig_addr: [u32; 4],
    /// The destination port the client asked for, host order.
    pub orig_port: u16,
    /// Family of the hook that saw the connect (`AF_INET` for connect4).
    pub family: u16,
    /// [`action`] value.
    pub action: u32,
    /// `comm` of the calling thread, NUL padded.
    pub comm: [u8; 16],
}

/// True if `words` (network order) is an IPv4-mapped IPv6 address `::ffff:a.b.c.d`.
#[inline(always)]
pub fn is_v4_mapped(words: &[u32; 4]) -> bool {
    words[0] == 0 && words[1] == 0 && u32::from_be(words[2]) == 0x0000_ffff
}

/// The IPv4-mapped IPv6 address of an IPv4 address, both network order.
#[inline(always)]
pub fn v4_mapped(addr4: u32) -> [u32; 4] {
    [0, 0, 0x0000_ffffu32.to_be(), addr4]
}

/// Whether an IPv6 bind of the agent port to `addr` (network order words) could
/// receive redirected connections, so that only the agent may make it: the IPv6
/// wildcard `::` (dual-stack unless v6only), the agent's IPv6 address, the agent's
/// IPv4-mapped address, and the IPv4-mapped wildcard `::ffff:0.0.0.0`, which accepts
/// IPv4 connections to every local address.
#[inline(always)]
pub fn bind6_is_guarded(addr: &[u32; 4], agent_addr4: u32, agent_addr6: Option<&[u32; 4]>) -> bool {
    *addr == [0, 0, 0, 0]
        || *addr == v4_mapped(0)
        || *addr == v4_mapped(agent_addr4)
        || agent_addr6 == Some(addr)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layouts_have_no_padding_surprises() {
        assert_eq!(core::mem::size_of::<Config>(), 88);
        assert_eq!(core::mem::size_of::<TupleKey>(), 40);
        assert_eq!(core::mem::size_of::<Identity>(), 88);
    }

    #[test]
    fn mapped_roundtrip() {
        let a = u32::from_ne_bytes([169, 254, 170, 23]);
        let m = v4_mapped(a);
        assert!(is_v4_mapped(&m));
        let bytes: std::vec::Vec<u8> = m.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes.as_slice()).unwrap()),
            "::ffff:169.254.170.23"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
        );
        assert!(!is_v4_mapped(&[0, 0, 0, 1u32.to_be()]));
    }

    #[test]
    fn bind6_guard_covers_every_address_that_reaches_the_agent_port() {
        let agent4 = u32::from_ne_bytes([169, 254, 199, 1]);
        let words = |s: &str| -> [u32; 4] {
            let o = s.parse::<std::net::Ipv6Addr>().unwrap().octets();
            core::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        };
        let agent6 = words("fd00:199::1");
        for guarded in [
            "::",
            "::ffff:0.0.0.0",
            "::ffff:169.254.199.1",
            "fd00:199::1",
        ] {
            assert!(
                bind6_is_guarded(&words(guarded), agent4, Some(&agent6)),
                "{guarded}"
            );
        }
        assert!(!bind6_is_guarded(&words("fd00:199::1"), agent4, None));
        for free in [
            "::1",
            "::ffff:127.0.0.1",
            "fd00:200::1",
            "::ffff:169.254.199.2",
        ] {
            assert!(
                !bind6_is_guarded(&words(free), agent4, Some(&agent6)),
                "{free}"
            );
        }
    }
}
