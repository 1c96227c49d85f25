//! The runtime settings record the programs read from `CONFIG[0]`.

use agent_ebpf::{flags, Config as KConfig};

use crate::config::{EnforceMode, KernelConfig};

/// The record the programs read from `CONFIG[0]`.
pub fn kernel_config(cfg: &KernelConfig, agent_cgroup_id: u64, handover_nonce: u64) -> KConfig {
    let words6 = |a: std::net::Ipv6Addr| {
        let o = a.octets();
        let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
        [w(0), w(4), w(8), w(12)]
    };
    let mut f = flags::ENABLED;
    if cfg.agent_addr6.is_some() {
        f |= flags::AGENT_V6;
    }
    if cfg.enforce == EnforceMode::Enforce {
        f |= flags::ENFORCE;
    }
    let imds = cfg.imds.unwrap_or(crate::config::KernelImds {
        addr4: crate::imds::settings::IMDS_ADDR4,
        addr6: crate::imds::settings::IMDS_ADDR6,
        port: crate::imds::settings::IMDS_PORT,
        front_port: 0,
        deny: false,
    });
    if cfg.imds.is_some() {
        f |= flags::IMDS_GUARD;
        if imds.deny {
            f |= flags::IMDS_DENY;
        }
    }
    KConfig {
        cred_addr4: u32::from_ne_bytes(cfg.cred_addr4.octets()),
        agent_addr4: u32::from_ne_bytes(cfg.agent_addr4.octets()),
        cred_addr6: words6(cfg.cred_addr6),
        agent_addr6: cfg.agent_addr6.map(words6).unwrap_or_default(),
        cred_port: cfg.cred_port,
        agent_port: cfg.agent_port,
        flags: f,
        agent_cgroup_id,
        handover_nonce,
        imds_addr4: u32::from_ne_bytes(imds.addr4.octets()),
        imds_addr6: words6(imds.addr6),
        imds_port: imds.port,
        imds_front_port: imds.front_port,
    }
}
