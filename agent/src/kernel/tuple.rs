//! Socket addresses ↔ the kernel's 4-tuple keys.
//!
//! Pure conversions, testable without root: `sock_ops` stores the client side of each
//! redirected connection under its full 4-tuple; the agent rebuilds the same key from
//! what `accept` returned.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_ebpf::{TupleKey, AF_INET, AF_INET6};

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
pub(crate) fn words(ip: IpAddr) -> ([u32; 4], u16) {
    match canonical(ip) {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], AF_INET6)
        }
    }
}

pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Network-order words back to an address.
pub(crate) fn ip_from_words(words: [u32; 4], family: u16) -> IpAddr {
    if family == AF_INET {
        return IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()));
    }
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(o))
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
}
