//! Shared set-up of the privileged tests: a simulated node running the real agent
//! binary with the real eBPF programs attached to the node's test cgroup subtree.
#![allow(dead_code)]

use std::{process::Command, time::Duration};

use serde_json::Value;
use testnode::{Node, NODE_ADDR4, NODE_ADDR6};

pub const AGENT: &str = env!("CARGO_BIN_EXE_pod-identity-agent");
pub const AGENT_PORT: u16 = 2710;

/// Pod UIDs used across tests (real UUID shapes).
pub const UIDS: [&str; 6] = [
    "2c48913c-b29f-11e7-9350-020968147796",
    "8a1f0e2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
    "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    "9b2d3c4e-1f2a-4b3c-9d4e-5f6a7b8c9d0e",
    "0e8d6a1c-7b2f-4c3d-8e9f-a0b1c2d3e4f5",
];

/// The agent command for `node`, attached to the node's cgroup subtree.
pub fn agent_command(node: &Node, extra: &[&str]) -> Command {
    let mut c = node.node_command(AGENT);
    c.arg("--cgroup")
        .arg(node.cgroup_root.path())
        .arg("--agent-addr4")
        .arg(NODE_ADDR4.to_string())
        .arg("--agent-addr6")
        .arg(NODE_ADDR6.to_string())
        .arg("--port")
        .arg(AGENT_PORT.to_string())
        .args(extra)
        .env("RUST_LOG", "info,pod_identity_agent=debug");
    c
}

pub fn start_agent(node: &mut Node, extra: &[&str]) -> usize {
    let cmd = agent_command(node, extra);
    node.spawn_until(cmd, "pod-identity-agent ready", Duration::from_secs(20))
}

/// Run the test client in pod `i`; returns (client pid, one JSON value per connection).
pub fn client(node: &Node, i: usize, args: &[&str]) -> (u32, Vec<Value>) {
    let mut c = node.pod_command(i, "python3");
    c.arg(testnode::CLIENT_PY).args(args);
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn client");
    let pid = child.id();
    let out = child.wait_with_output().expect("client output");
    assert!(
        out.status.success(),
        "client in pod {i} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad client line {l:?}: {e}")))
        .collect();
    (pid, recs)
}

/// The single record of a one-connection client run.
pub fn client1(node: &Node, i: usize, args: &[&str]) -> (u32, Value) {
    let (pid, mut recs) = client(node, i, args);
    assert_eq!(recs.len(), 1, "{recs:?}");
    (pid, recs.remove(0))
}

/// The agent's JSON body of a record.
pub fn body(rec: &Value) -> Value {
    let b = rec["body"].as_str().unwrap_or_else(|| panic!("no body in {rec}"));
    serde_json::from_str(b).unwrap_or_else(|e| panic!("body not JSON ({e}): {b}"))
}
