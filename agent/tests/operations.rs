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
