//! From an accepted TCP connection to what the kernel said about its client.
//!
//! Pure conversions between socket addresses and the kernel's records, so they can
//! be tested without root. The lookup itself lives in [`crate::ebpf`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_ebpf::{Identity, TupleKey, AF_INET, AF_INET6};

/// The 4-tuple key the kernel stored at `TCP_CONNECT_CB` for the client side of this
/// connection. `peer` is the client (from `accept`), `local` is our end.
///
/// IPv4-mapped IPv6 addresses (a dual-stack listener) are normalised to IPv4, as the
/// kernel side does, so both ends agree whatever socket family the agent uses.
pub fn tuple_key(peer: SocketAddr, local: SocketAddr) -> TupleKey {
    let (src, src_family) = words(peer.ip());
    let (dst, _) = words(local.ip());
    TupleKey {
        src_addr: src,
        dst_addr: dst,
        src_port: peer.port(),
        dst_port: local.port(),
        family: src_family,
        _pad: 0,
    }
}

/// An address as network-order words (IPv4 in word 0) and its family.
fn words(ip: IpAddr) -> ([u32; 4], u16) {
    match canonical(ip) {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], AF_INET6)
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Network-order words back to an address.
fn ip_from_words(words: [u32; 4], family: u16) -> IpAddr {
    if family == AF_INET {
        return IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()));
    }
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(o))
}

/// What the kernel reported about the process that connected.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Caller {
    /// cgroup v2 id (inode of the caller's cgroup directory).
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    /// The address the client asked for (the credentials address).
    pub original_destination: SocketAddr,
    /// CLOCK_MONOTONIC nanoseconds at `connect()`.
    pub connect_ktime_ns: u64,
}

impl From<&Identity> for Caller {
    fn from(id: &Identity) -> Self {
        let end = id
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(id.comm.len());
        Caller {
            cgroup_id: id.cgroup_id,
            pid: id.pid,
            tid: id.tid,
            uid: id.uid,
            gid: id.gid,
            comm: String::from_utf8_lossy(&id.comm[..end]).into_owned(),
            netns_cookie: id.netns_cookie,
            socket_cookie: id.socket_cookie,
            original_destination: SocketAddr::new(
                canonical(ip_from_words(id.orig_addr, id.family)),
                id.orig_port,
            ),
            connect_ktime_ns: id.ktime_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_key_is_network_order_word0() {
        let k = tuple_key(
            "169.254.200.2:40000".parse().unwrap(),
            "169.254.200.1:2710".parse().unwrap(),
        );
        assert_eq!(k.family, AF_INET);
        assert_eq!(k.src_addr[0].to_ne_bytes(), [169, 254, 200, 2]);
        assert_eq!(k.dst_addr[0].to_ne_bytes(), [169, 254, 200, 1]);
        assert_eq!(&k.src_addr[1..], &[0, 0, 0]);
        assert_eq!((k.src_port, k.dst_port), (40000, 2710));
    }

    #[test]
    fn mapped_peer_on_dual_stack_listener_is_ipv4() {
        let mapped = tuple_key(
            "[::ffff:169.254.200.2]:40000".parse().unwrap(),
            "[::ffff:169.254.200.1]:2710".parse().unwrap(),
        );
        let plain = tuple_key(
            "169.254.200.2:40000".parse().unwrap(),
            "169.254.200.1:2710".parse().unwrap(),
        );
        assert_eq!(mapped, plain);
    }

    #[test]
    fn v6_key_keeps_all_words() {
        let k = tuple_key(
            "[fd00:200::2]:40000".parse().unwrap(),
            "[fd00:200::1]:2710".parse().unwrap(),
        );
        assert_eq!(k.family, AF_INET6);
        assert_eq!(k.src_addr[0].to_ne_bytes(), [0xfd, 0, 0x02, 0]);
        assert_eq!(k.src_addr[3].to_ne_bytes(), [0, 0, 0, 2]);
    }

    #[test]
    fn different_source_addresses_same_port_differ() {
        let a = tuple_key(
            "169.254.200.2:40000".parse().unwrap(),
            "169.254.200.1:2710".parse().unwrap(),
        );
        let b = tuple_key(
            "169.254.201.2:40000".parse().unwrap(),
            "169.254.201.1:2710".parse().unwrap(),
        );
        assert_ne!(a, b);
    }

    #[test]
    fn caller_from_identity() {
        let mut id = Identity {
            cgroup_id: 42,
            pid: 7,
            orig_port: 80,
            family: AF_INET6,
            ..Identity::default()
        };
        id.comm[..7].copy_from_slice(b"python3");
        let (w, _) = words("fd00:ec2::23".parse().unwrap());
        id.orig_addr = w;
        let c = Caller::from(&id);
        assert_eq!(c.comm, "python3");
        assert_eq!(c.original_destination, "[fd00:ec2::23]:80".parse().unwrap());
        id.orig_addr = agent_ebpf::v4_mapped(u32::from_ne_bytes([169, 254, 170, 23]));
        assert_eq!(
            Caller::from(&id).original_destination,
            "169.254.170.23:80".parse().unwrap()
        );
    }
}
