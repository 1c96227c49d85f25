//! Privileged end-to-end tests of the kernel path: real eBPF programs attached to a
//! test-made cgroup subtree, real sockets in test-made network namespaces, and the
//! real agent binary. Run as root by `cargo xtask test`; they fail, never skip,
//! without root.

mod support;

use support::*;
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
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        // Both connections from the same source port are open at once (two
        // kernel records alive together) before either sends its request.
        let go = dir.path().join(format!("go-{round}"));
        let clients: Vec<_> = [a, b]
            .iter()
            .map(|&pod| {
                let connected = dir.path().join(format!("connected-{round}-{pod}"));
                let mut c = node.pod_command(pod, "python3");
                c.arg(testnode::CLIENT_PY)
                    .args(["--bind-port", "40000", "--connected-file"])
                    .arg(&connected)
                    .arg("--send-after")
                    .arg(&go)
                    .stdout(std::process::Stdio::piped());
                (pod, connected, c.spawn().expect("spawn client"))
            })
            .collect();
        let deadline = std::time::Instant::now() + scaled(std::time::Duration::from_secs(10));
        while !clients.iter().all(|(_, c, _)| c.exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "clients did not connect"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::fs::write(&go, "").unwrap();
        for (pod, _, child) in clients {
            let pid = child.id();
            let out = child.wait_with_output().unwrap();
            let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(rec["sock"][1], 40000, "{rec}");
            assert_attributed(&node, pod, pid, &rec);
        }
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
            .args(["--bpffs-dir", "none", "--upstream", "sts"]);
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
        let (_, rec) = client1(&node, pod, &DIRECT_TO_AGENT);
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
    // Each agent runs in its own cgroup under the attach point, as a new container
    // would after a restart: the programs must recognise the new agent by its
    // cgroup id (exempt from the redirect, allowed to bind its port).
    let root = node_cgroup_root(&node);
    let agent_cgroup =
        |n: u32| testnode::Cgroup::create(root.join(format!("system.slice/agent-{n}.scope")));
    let cg1 = agent_cgroup(1);
    let cmd = testnode::in_cgroup(cg1.path(), &agent_command(&node, &["--bpffs-dir", &pins_s]));
    let agent = node.spawn_until(
        cmd,
        "pod-identity-agent ready",
        std::time::Duration::from_secs(20),
    );
    let (pid, rec) = client1(&node, a, &[]);
    assert_attributed(&node, a, pid, &rec);
    assert!(pins.join("link_pia_connect4").exists() && pins.join("map_TUPLES").exists());

    // Agent gone (crash, rolling update): connects are still redirected to the
    // agent port, so they are refused at once instead of going anywhere else.
    node.kill(agent);
    let (_, rec) = client1(&node, a, &["--timeout", "2"]);
    assert_eq!(rec["errno"], "ECONNREFUSED", "{rec}");
    // ...and nobody else can take the agent port meanwhile (a hostNetwork pod
    // listening there would receive every pod's requests and tokens), while
    // other addresses and ports stay free.

    assert_eq!(try_bind(&node, h, "169.254.199.1", 2710), "EPERM");
    assert_eq!(try_bind(&node, h, "0.0.0.0", 2710), "EPERM");
    // IPv6 sockets that would accept the redirected IPv4 connections too: the
    // IPv4-mapped wildcard (v6only off accepts IPv4 on every local address) and
    // the IPv6 wildcard, dual-stack or not.
    assert_eq!(try_bind6(&node, h, "::ffff:0.0.0.0", 2710, false), "EPERM");
    assert_eq!(try_bind6(&node, h, "::", 2710, false), "EPERM");
    assert_eq!(try_bind6(&node, h, "::", 2710, true), "EPERM");
    assert_eq!(
        try_bind6(&node, h, "::ffff:169.254.199.1", 2710, false),
        "EPERM"
    );
    assert_eq!(try_bind6(&node, h, "::1", 2710, true), "bound");
    assert_eq!(try_bind(&node, h, "127.0.0.1", 2710), "bound");
    assert_eq!(try_bind(&node, h, "169.254.199.1", 2711), "bound");
    // A pod in its own network namespace may use the port: redirected traffic can
    // only reach the agent's namespace.
    assert_eq!(try_bind(&node, a, "0.0.0.0", 2710), "bound");

    // A process outside the guarded subtree holds the port: the next agent cannot
    // bind, so it switches the pinned programs to fail closed (EPERM), never
    // leaving pods redirected to the squatter.
    let mut squatter = node.node_command("python3");
    squatter.args([
        "-c",
        &format!("import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('169.254.199.1', 2710))\ns.listen()\nprint('listening', flush=True)\ntime.sleep({})", scaled(std::time::Duration::from_secs(30)).as_secs()),
    ]);
    let sq = node.spawn_until(squatter, "listening", std::time::Duration::from_secs(10));
    let cg2 = agent_cgroup(2);
    let out = testnode::in_cgroup(cg2.path(), &agent_command(&node, &["--bpffs-dir", &pins_s]))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the agent must exit when its port is taken"
    );
    let (_, rec) = client1(&node, a, &["--timeout", "2"]);
    assert_eq!(
        rec["errno"], "EPERM",
        "fail closed, not redirected to the squatter: {rec}"
    );
    node.kill(sq);

    // The next agent re-adopts the pins and serves again; the old links are replaced,
    // not stacked: exactly one program per hook is attached to the cgroup.
    let cg3 = agent_cgroup(3);
    let cmd = testnode::in_cgroup(cg3.path(), &agent_command(&node, &["--bpffs-dir", &pins_s]));
    node.spawn_until(
        cmd,
        "pod-identity-agent ready",
        std::time::Duration::from_secs(20),
    );
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
    drop((cg1, cg2, cg3));
    drop(bpffs);
}

fn node_cgroup_root(node: &Node) -> std::path::PathBuf {
    node.cgroup_root.path().to_path_buf()
}

fn try_bind6(node: &Node, pod: usize, addr: &str, port: u16, v6only: bool) -> String {
    let mut c = node.pod_command(pod, "python3");
    let v6only = u8::from(v6only);
    c.args([
        "-c",
        &format!("import socket,errno\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, {v6only})\ntry:\n s.bind(('{addr}', {port})); print('bound')\nexcept OSError as e: print(errno.errorcode[e.errno])"),
    ]);
    String::from_utf8_lossy(&c.output().unwrap().stdout)
        .trim()
        .to_owned()
}

fn try_bind(node: &Node, pod: usize, addr: &str, port: u16) -> String {
    let mut c = node.pod_command(pod, "python3");
    c.args([
        "-c",
        &format!("import socket,errno\ns=socket.socket()\ntry:\n s.bind(('{addr}', {port})); print('bound')\nexcept OSError as e: print(errno.errorcode[e.errno])"),
    ]);
    String::from_utf8_lossy(&c.output().unwrap().stdout)
        .trim()
        .to_owned()
}

/// Pids whose requests an agent's access log shows it answered with `status`.
fn served_pids(log: &str, status: u16) -> std::collections::BTreeSet<u32> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains(" access ") && l.contains(&format!("status={status} ")))
        .filter_map(|l| {
            let rest = l.split(" pid=").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// A second agent started against the same pins (a rolling update with
/// `maxSurge`, a manual second run) takes the listening sockets over from the
/// serving one: pods' requests get 200 before, during and after, and once the
/// first agent is gone.
#[test]
fn a_second_agent_takes_over_without_refusing_a_pod() {
    let mut node = Node::new();
    let a = node.add_pod("pod-a", UIDS[0], false);
    let bpffs = testnode::BpfFs::mount();
    let pins = bpffs.path().join("pod-identity-agent");
    let pins_s = pins.to_str().unwrap().to_owned();
    let root = node_cgroup_root(&node);
    let agent_cgroup =
        |n: u32| testnode::Cgroup::create(root.join(format!("system.slice/agent-{n}.scope")));
    let ready = std::time::Duration::from_secs(20);
    // No per-caller rate limit: the load is one pod asking as fast as it can.
    let unlimited = ["--bpffs-dir", &pins_s, "--max-rps-per-caller", "0"];
    let cg1 = agent_cgroup(1);
    let agent1 = node.spawn_until(
        testnode::in_cgroup(cg1.path(), &agent_command(&node, &unlimited)),
        "pod-identity-agent ready",
        ready,
    );

    // Steady load from the pod: a new connection per request, as SDKs do.
    let load = |node: &Node, count: &str| {
        let mut c = node.pod_command(a, "python3");
        c.arg(testnode::CLIENT_PY)
            .args(["--count", count, "--timeout", "2"])
            .stdout(std::process::Stdio::piped());
        c.spawn().expect("spawn load")
    };
    let first = load(&node, "5000");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let cg2 = agent_cgroup(2);
    let agent2 = node.spawn_until(
        testnode::in_cgroup(cg2.path(), &agent_command(&node, &unlimited)),
        "pod-identity-agent ready",
        ready,
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = load(&node, "500");
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The old agent idles until it is terminated: it must not exit (the kubelet
    // would restart it and it would take the sockets back).
    assert!(
        node.is_running(agent1),
        "the old agent exited after handing over"
    );

    // And again: the agent that took over hands over in turn.
    let cg3 = agent_cgroup(3);
    let agent3 = node.spawn_until(
        testnode::in_cgroup(cg3.path(), &agent_command(&node, &unlimited)),
        "pod-identity-agent ready",
        ready,
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let third = load(&node, "500");
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The older agents go away (their pods are deleted once the next is ready).
    node.kill(agent1);
    node.kill(agent2);

    let mut total = 0;
    let (first_pid, second_pid, third_pid) = (first.id(), second.id(), third.id());
    for child in [first, second, third] {
        let out = child.wait_with_output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let rec: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                rec["status"], 200,
                "a request failed during the handover: {rec}"
            );
            total += 1;
        }
    }
    assert_eq!(total, 6000);
    let (log1, log2) = (node.output_of(agent1), node.output_of(agent2));
    assert!(
        log1.contains("handed to the next agent"),
        "agent 1 did not hand over:\n{log1}"
    );
    assert!(
        log2.contains("took the listening sockets over"),
        "agent 2 did not take over:\n{log2}"
    );
    // Each agent served while it held the sockets, and the old ones stopped.
    assert!(served_pids(&log1, 200).contains(&first_pid));
    assert!(served_pids(&log2, 200).contains(&second_pid));
    let log3 = node.output_of(agent3);
    assert!(
        log2.contains("handed to the next agent") && !log2.contains("no handover socket"),
        "agent 2 did not hand over:\n{log2}"
    );
    assert!(
        log3.contains("took the listening sockets over"),
        "agent 3 did not take over:\n{log3}"
    );
    assert!(served_pids(&log3, 200).contains(&third_pid));
    assert!(
        !served_pids(&log1, 200).contains(&second_pid),
        "the old agent kept accepting after the handover"
    );
    assert!(
        !served_pids(&log2, 200).contains(&third_pid),
        "the second agent kept accepting after handing over"
    );
    drop(node);
    drop((cg1, cg2, cg3));
    drop(bpffs);
}

/// A map pinned by another build with a different layout (here: CONFIG with a
/// smaller value) is not re-adopted: the agent replaces it and serves.
#[test]
fn an_incompatible_pinned_map_is_replaced() {
    let mut node = Node::new();
    let a = node.add_pod("pod-a", UIDS[0], false);
    let bpffs = testnode::BpfFs::mount();
    let pins = bpffs.path().join("pod-identity-agent");
    std::fs::create_dir_all(&pins).unwrap();
    let config = pins.join("map_CONFIG");
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&config)
        .args([
            "type", "array", "key", "4", "value", "8", "entries", "1", "name", "CONFIG",
        ])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value_size = |pin: &std::path::Path| -> u64 {
        let out = std::process::Command::new("bpftool")
            .args(["--json", "map", "show", "pinned"])
            .arg(pin)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["bytes_value"].as_u64().unwrap()
    };
    assert_eq!(value_size(&config), 8);

    let root = node_cgroup_root(&node);
    let cg = testnode::Cgroup::create(root.join("system.slice/agent.scope"));
    let pins_s = pins.to_str().unwrap().to_owned();
    let agent = node.spawn_until(
        testnode::in_cgroup(cg.path(), &agent_command(&node, &["--bpffs-dir", &pins_s])),
        "pod-identity-agent ready",
        std::time::Duration::from_secs(20),
    );
    assert!(node
        .output_of(agent)
        .contains("pinned map does not fit this build"));
    assert_eq!(
        value_size(&config) as usize,
        std::mem::size_of::<agent_ebpf::Config>()
    );
    let (pid, rec) = client1(&node, a, &[]);
    assert_attributed(&node, a, pid, &rec);
    drop(node);
    drop(cg);
    drop(bpffs);
}

/// Below the kernel floor the agent says what is missing in one line before it
/// loads anything (no verifier dump): here, pinning asked for in a directory that
/// is not on a bpffs mount.
#[test]
fn pinning_outside_bpffs_is_refused_in_one_line_before_loading() {
    let node = Node::new();
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("pins");
    let out = agent_command(&node, &["--bpffs-dir", pins.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    let named: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("is not on a bpffs mount"))
        .collect();
    assert_eq!(named.len(), 1, "{err}");
    assert!(
        named[0].contains(pins.to_str().unwrap()) && named[0].contains("--bpffs-dir none"),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("verifier"), "{err}");
    assert!(!pins.exists(), "nothing was created or pinned");
    // Nothing attached to the node's cgroup.
    let show = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(node.cgroup_root.path())
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(!text.contains("pia_"), "{text}");
}
