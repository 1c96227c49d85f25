//! What the kernel said about the process that connected: its record, as a value.

use std::net::SocketAddr;

use agent_ebpf::Identity;

use crate::kernel::tuple::{canonical, ip_from_words};

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
    use crate::kernel::tuple::words;
    use agent_ebpf::AF_INET6;

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
