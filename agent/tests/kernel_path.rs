//! Privileged end-to-end tests of the kernel path: real eBPF programs attached to a
//! test-made cgroup subtree, real sockets in test-made network namespaces, and the
//! real agent binary. Run as root by `cargo xtask test`; they fail, never skip,
//! without root.

mod common;

use common::*;
use testnode::Node;

/// Assert `rec` was answered 200 by the agent with the kernel's view of `pid` in `pod`.
fn assert_attributed(node: &Node, pod: usize, pid: u32, rec: &serde_json::Value) {
    assert_eq!(rec["status"], 200, "{rec}");
    let b = body(rec);
    assert_eq!(b["pid"], pid, "pid: {b}");
    assert_eq!(b["comm"], "python3", "comm: {b}");
    assert_eq!(
        b["cgroupId"],
        node.pods[pod].cgroup.id(),
        "cgroup id must be the inode of pod {pod}'s cgroup: {b}"
    );
}

#[test]
fn each_pod_is_attributed_to_its_own_cgroup_pid_and_comm() {
    let mut node = Node::new();
    let a = node.add_pod("pod-a", UIDS[0], false);
    let b = node.add_pod("pod-b", UIDS[1], false);
    let h = node.add_pod("host-net", UIDS[2], true);
    start_agent(&mut node, &[]);
    for pod in [a, b, h] {
        let (pid, rec) = client1(&node, pod, &[]);
        assert_attributed(&node, pod, pid, &rec);
        // getpeername shows the credentials address, not the agent.
        assert_eq!(
            rec["peer"],
            serde_json::json!(["169.254.170.23", 80]),
            "{rec}"
        );
        assert_eq!(body(&rec)["originalDestination"], "169.254.170.23:80");
    }
    assert_ne!(node.pods[a].cgroup.id(), node.pods[b].cgroup.id());
}

#[test]
fn same_source_port_in_two_pods_does_not_collide() {
    let mut node = Node::new();
    let a = node.add_pod("pod-a", UIDS[0], false);
    let b = node.add_pod("pod-b", UIDS[1], false);
    start_agent(&mut node, &[]);
    for _ in 0..3 {
        let (pa, ra) = client1(&node, a, &["--bind-port", "40000"]);
        let (pb, rb) = client1(&node, b, &["--bind-port", "40000"]);
        assert_eq!(ra["sock"][1], 40000);
        assert_eq!(rb["sock"][1], 40000);
        assert_attributed(&node, a, pa, &ra);
        assert_attributed(&node, b, pb, &rb);
    }
}

#[test]
fn ipv6_and_ipv4_mapped_ipv6_are_redirected_and_attributed() {
    let mut node = Node::new();
    let a = node.add_pod("pod-a", UIDS[0], false);
    start_agent(&mut node, &[]);

    let (pid, rec) = client1(&node, a, &["--family", "6", "--addr", "fd00:ec2::23"]);
    assert_attributed(&node, a, pid, &rec);
    assert_eq!(
        rec["peer"],
        serde_json::json!(["fd00:ec2::23", 80]),
        "{rec}"
    );

    let (pid, rec) = client1(
        &node,
        a,
        &["--family", "mapped", "--addr", "::ffff:169.254.170.23"],
    );
    assert_attributed(&node, a, pid, &rec);
    assert_eq!(
        rec["peer"],
        serde_json::json!(["::ffff:169.254.170.23", 80]),
        "{rec}"
    );
}

#[test]
fn ipv6_client_reaches_an_ipv4_only_agent_through_the_mapped_address() {
    let mut node = Node::new();
    let a = node.add_pod("pod-a", UIDS[0], false);
    // No --agent-addr6: an IPv4-only node (stock agent issue #16 crash-looped here).
    let cmd = {
        let mut c = node.node_command(AGENT);
        c.arg("--cgroup")
            .arg(node.cgroup_root.path())
            .arg("--agent-addr4")
            .arg(testnode::NODE_ADDR4.to_string())
            .arg("--port")
            .arg(AGENT_PORT.to_string())
            .args(["--bpffs-dir", "none"]);
        c
    };
    node.spawn_until(
        cmd,
        "pod-identity-agent ready",
        std::time::Duration::from_secs(20),
    );
    let (pid, rec) = client1(&node, a, &["--family", "mapped", "--addr", "fd00:ec2::23"]);
    assert_attributed(&node, a, pid, &rec);
    assert_eq!(
        rec["peer"],
        serde_json::json!(["fd00:ec2::23", 80]),
        "{rec}"
    );
}

#[test]
fn direct_connection_to_the_agent_port_is_refused() {
    let mut node = Node::new();
    let a = node.add_pod("pod-a", UIDS[0], false);
    let h = node.add_pod("host-net", UIDS[1], true);
    start_agent(&mut node, &[]);
    for pod in [a, h] {
        let (_, rec) = client1(
            &node,
            pod,
            &[
                "--addr",
                "169.254.199.1",
                "--port",
                "2710",
                "--host",
                "169.254.170.23",
            ],
        );
        assert_eq!(rec["status"], 403, "{rec}");
        assert!(
            rec["body"]
                .as_str()
                .unwrap()
                .contains("no record of this connection"),
            "{rec}"
        );
    }
}

#[test]
fn other_addresses_and_ports_are_untouched() {
    let mut node = Node::new();
    let a = node.add_pod("pod-a", UIDS[0], false);
    start_agent(&mut node, &[]);
    // Not redirected, so they hit the pod's routing table, which has no route:
    // the connect fails closed inside the test namespace.
    for (addr, port) in [
        ("169.254.170.23", "81"),
        ("169.254.170.24", "80"),
        ("169.254.170.2", "80"),
    ] {
        let (_, rec) = client1(
            &node,
            a,
            &["--addr", addr, "--port", port, "--timeout", "2"],
        );
        assert_eq!(rec["errno"], "ENETUNREACH", "{addr}:{port} {rec}");
    }
    let (_, rec) = client1(
        &node,
        a,
        &["--family", "6", "--addr", "fd00:ec2::24", "--timeout", "2"],
    );
    assert_eq!(rec["errno"], "ENETUNREACH", "{rec}");
}

#[test]
fn a_thousand_connections_from_four_pods_are_all_attributed() {
    let mut node = Node::new();
    let pods: Vec<usize> = (0..4)
        .map(|i| node.add_pod(&format!("pod-{i}"), UIDS[i], false))
        .collect();
    start_agent(&mut node, &[]);
    let node = std::sync::Arc::new(node);
    let handles: Vec<_> = pods
        .iter()
        .map(|&p| {
            let node = node.clone();
            std::thread::spawn(move || {
                let (pid, recs) = client(&node, p, &["--count", "250"]);
                (p, pid, recs)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        let (p, pid, recs) = h.join().expect("client thread");
        assert_eq!(recs.len(), 250);
        for rec in &recs {
            assert_attributed(&node, p, pid, rec);
        }
        total += recs.len();
    }
    assert_eq!(total, 1000);
}

#[test]
fn the_redirect_survives_an_agent_restart() {
    let mut node = Node::new();
    let a = node.add_pod("pod-a", UIDS[0], false);
    let h = node.add_pod("host-net", UIDS[1], true);
    let bpffs = testnode::BpfFs::mount();
    let pins = bpffs.path().join("pod-identity-agent");
    let pins_s = pins.to_str().unwrap().to_owned();
    let agent = start_agent(&mut node, &["--bpffs-dir", &pins_s]);
    let (pid, rec) = client1(&node, a, &[]);
    assert_attributed(&node, a, pid, &rec);
    assert!(pins.join("link_pia_connect4").exists() && pins.join("map_TUPLES").exists());

    // Agent gone (crash, rolling update): connects are still redirected to the
    // agent port, so they are refused at once instead of going anywhere else.
    node.kill(agent);
    let (_, rec) = client1(&node, a, &["--timeout", "2"]);
    assert_eq!(rec["errno"], "ECONNREFUSED", "{rec}");
    // ...and nobody else can take the agent port meanwhile (a hostNetwork pod
    // listening there would receive every pod's requests and tokens).
    let mut squat = node.pod_command(h, "python3");
    squat.args([
        "-c",
        "import socket,errno\ns=socket.socket()\ntry:\n s.bind(('169.254.199.1', 2710)); print('bound')\nexcept OSError as e: print(errno.errorcode[e.errno])",
    ]);
    let out = squat.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EPERM");

    // The next agent re-adopts the pins and serves again; the old links are replaced,
    // not stacked: exactly one program per hook is attached to the cgroup.
    start_agent(&mut node, &["--bpffs-dir", &pins_s]);
    let (pid, rec) = client1(&node, a, &[]);
    assert_attributed(&node, a, pid, &rec);
    let links = std::fs::read_dir(&pins)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("link_")
        })
        .count();
    assert_eq!(links, 7);
    let out = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(node.cgroup_root.path())
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("pia_connect4").count(), 1, "{text}");
    assert_eq!(text.matches("pia_sock_ops").count(), 1, "{text}");
    drop(node);
    drop(bpffs);
}
