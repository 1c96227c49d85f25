//! Privileged tests of what an operator relies on: probes that tell the truth
//! about the kernel side, and a clean SIGTERM.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// The kernel's cgroup links for `cgroup_id`, from `bpftool -j link show`.
fn links_of(cgroup_id: u64) -> Vec<Value> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(out.status.success(), "{out:?}");
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter()
        .filter(|l| l["cgroup_id"].as_u64() == Some(cgroup_id))
        .collect()
}

#[test]
fn readyz_reports_a_program_detached_behind_the_agents_back() {
    let mut s = Scenario::new();
    s.start_agent(&[]);
    let ready = || {
        node_get_status(&s.node, &format!("http://{PROBE}/readyz"))
            .1
            .trim()
            .to_owned()
    };
    let first = wait_for("ready", Duration::from_secs(10), || {
        let r = ready();
        r.starts_with("ready").then_some(r)
    });
    assert_eq!(first, "ready");
    // Someone with CAP_BPF detaches the connect4 link of the node's cgroup.
    let cgroup_id = s.node.cgroup_root.id();
    let links = links_of(cgroup_id);
    let connect4 = links
        .iter()
        .find(|l| l["attach_type"] == "cgroup_inet4_connect")
        .unwrap_or_else(|| panic!("no connect4 link on cgroup {cgroup_id}: {links:?}"));
    let id = connect4["id"].as_u64().unwrap().to_string();
    let out = std::process::Command::new("bpftool")
        .args(["link", "detach", "id", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let why = wait_for("not ready", Duration::from_secs(5), || {
        let r = ready();
        r.starts_with("not ready").then_some(r)
    });
    assert_eq!(why, "not ready: programs not attached: pia_connect4");
    // Liveness does not follow: restarting would not reattach anything a pinned
    // agent would not, and a live agent keeps serving what it still can.
    assert_eq!(
        node_get(&s.node, &format!("http://{PROBE}/healthz")).trim(),
        "ok"
    );
}

#[test]
fn sigterm_stops_cleanly_and_says_so() {
    let mut s = Scenario::new();
    let agent = s.start_agent(&["--shutdown-timeout", "3s"]);
    let arn = s.arn(0, Sdk::Cli).unwrap();
    assert!(arn.contains(":assumed-role/role-a/"), "{arn}");
    let pid = s.node.pid(agent);
    let started = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for("the agent to exit", Duration::from_secs(10), || {
        (!s.node.is_running(agent)).then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let log = strip_ansi(&s.node.output_of(agent));
    assert!(log.contains("shutting down: draining"), "{log}");
    assert!(log.contains("shut down"), "{log}");
}

/// A DaemonSet rolling update with `maxSurge: 1` (deploy/): the new agent starts
/// on the node while the old one serves, takes over *every* listener (the pods'
/// endpoint on IPv4 and IPv6, the IMDS front on both, the probes and the
/// metrics: the ports are the node's, and the new agent could bind none of them
/// while the old one holds them), becomes ready, and the old one is deleted. The
/// pods see no refusal; the probe port answers `ready` throughout once the new
/// agent serves (the old one, handed over, must no longer answer it), and still
/// after the old one is gone.
#[test]
fn a_maxsurge_rollout_hands_every_listener_over() {
    let mut s = Scenario::new();
    let bpffs = testnode::BpfFs::mount();
    let pins = bpffs.path().join("pod-identity-agent");
    let pins = pins.to_str().unwrap().to_owned();
    let args = [
        "--bpffs-dir",
        &pins,
        "--max-rps-per-caller",
        "0",
        // The IMDS front listens too (nothing here asks it).
        "--imds",
        "block-credentials",
        "--imds-endpoint",
        "http://169.254.169.254:80",
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        "2705",
    ];
    let root = s.node.cgroup_root.path().to_path_buf();
    let agent_cgroup =
        |n: u32| testnode::Cgroup::create(root.join(format!("system.slice/agent-{n}.scope")));
    let spawn = |s: &mut Scenario, cg: &testnode::Cgroup| {
        let c = testnode::in_cgroup(cg.path(), &s.agent_command(&args));
        s.node
            .spawn_until(c, "pod-identity-agent ready", Duration::from_secs(20))
    };
    let (cg1, cg2) = (agent_cgroup(1), agent_cgroup(2));
    let old = spawn(&mut s, &cg1);
    let probe =
        |s: &Scenario, path: &str| node_get_status(&s.node, &format!("http://{PROBE}{path}"));
    assert_eq!(probe(&s, "/readyz").0, 200);

    // Steady load from a pod (a new connection per request, as SDKs do).
    let mut load = s.node.pod_command(0, "python3");
    load.arg(testnode::CLIENT_PY)
        .args([
            "--path",
            "/v1/credentials",
            "--count",
            "1500",
            "--timeout",
            "2",
        ])
        .stdout(std::process::Stdio::piped());
    let load = load.spawn().expect("spawn load");
    std::thread::sleep(scaled(Duration::from_millis(300)));

    let new = spawn(&mut s, &cg2);
    let log = strip_ansi(&s.node.output_of(new));
    assert!(
        log.contains("took the listening sockets over") && log.contains("listeners=6"),
        "the new agent did not take all six listeners over:\n{log}"
    );
    // The old agent keeps running, handed over and idle, until it is deleted.
    wait_for(
        "the old agent to hand over",
        Duration::from_secs(10),
        || {
            strip_ansi(&s.node.output_of(old))
                .contains("idle until terminated")
                .then_some(())
        },
    );
    assert!(
        s.node.is_running(old),
        "the old agent exited after handing over"
    );
    // Only the new agent answers the probe port now: never the old one's 503.
    for _ in 0..10 {
        let (status, body) = probe(&s, "/readyz");
        assert_eq!((status, body.trim()), (200, "ready"));
    }
    assert!(
        probe(&s, "/metrics").1.contains("pod_identity_build_info"),
        "no metrics on the probe port"
    );
    let metrics = node_get(&s.node, "http://127.0.0.1:2705/metrics");
    assert!(metrics.contains("pod_identity_build_info"), "{metrics}");

    // The DaemonSet controller deletes the old pod once the new one is ready.
    s.node.kill(old);
    assert_eq!(probe(&s, "/readyz").0, 200);
    assert_eq!(probe(&s, "/healthz").0, 200);

    let out = load.wait_with_output().unwrap();
    let mut total = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            rec["status"], 200,
            "a pod's request failed during the rollout: {rec}"
        );
        total += 1;
    }
    assert_eq!(total, 1500);
    drop(s);
    drop((cg1, cg2));
    drop(bpffs);
}

/// Taking the agent off a node: SIGTERM leaves the pins (the redirect stays, so
/// pods are refused rather than sent elsewhere); `pod-identity-agent uninstall`
/// then removes every pin, which detaches the programs: the node's cgroup has no
/// link of ours left and a pod's connect is no longer redirected.
#[test]
fn uninstall_removes_the_pins_and_the_redirect() {
    let mut s = Scenario::new();
    let bpffs = testnode::BpfFs::mount();
    let pins = bpffs.path().join("pod-identity-agent");
    let pins_s = pins.to_str().unwrap().to_owned();
    let agent = s.start_agent(&["--bpffs-dir", &pins_s, "--shutdown-timeout", "1s"]);
    let cgroup_id = s.node.cgroup_root.id();
    assert!(!links_of(cgroup_id).is_empty(), "no links while serving");
    let connect = |s: &Scenario| {
        client1(&s.node, 0, &["--no-http", "--timeout", "1"])
            .1
            .get("errno")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };

    let pid = s.node.pid(agent).to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("the agent to exit", Duration::from_secs(10), || {
        (!s.node.is_running(agent)).then_some(())
    });
    // Stopped, not uninstalled: the pinned redirect still sends the pod to the
    // agent's (closed) port.
    assert!(
        !links_of(cgroup_id).is_empty(),
        "the links went with the agent"
    );
    assert!(pins.read_dir().unwrap().next().is_some(), "no pins left");
    assert_eq!(connect(&s).as_deref(), Some("ECONNREFUSED"));

    let out = std::process::Command::new(AGENT)
        .args(["uninstall", &pins_s])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.starts_with("removed ") && said.contains(" pins from "),
        "{said}"
    );
    assert!(!pins.exists(), "{} still exists", pins.display());
    assert_eq!(links_of(cgroup_id), Vec::<Value>::new());
    // Not redirected any more: the pod's own (routeless) network answers.
    assert_ne!(connect(&s).as_deref(), Some("ECONNREFUSED"));
    drop(s);
    drop(bpffs);
}
