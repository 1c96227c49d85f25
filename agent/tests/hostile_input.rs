//! Privileged: hostile input on every listener of the real agent (issue #13, item
//! 3). Attacker pods of the simulated node send raw bytes (`testnode`'s
//! `hostile_client.py`) to the pods' endpoint through the redirect
//! (169.254.170.23:80), to the IMDS front (`--imds block-credentials`, with moto as
//! the "real IMDS" on 169.254.169.254 inside the node netns, as in `imds_guard.rs`)
//! and, from the hostNetwork pod, to the localhost probe and metrics listeners.
//!
//! * Every malformed case gets a clear refusal (a 4xx/5xx status, or the
//!   connection closed) within a bound, and the agent stays up.
//! * Floods (idle connections by the thousand, slowloris, a pipelining flood) run
//!   concurrently while another pod keeps being served its own credentials.
//! * The agent's VmRSS and open file descriptors (`/proc/<pid>/status`,
//!   `/proc/<pid>/fd`) are measured before, at the peak and after, and must stay
//!   under bounds derived from the listeners' connection limits, then come back.
//!
//! Nothing leaves the machine: every client runs in a test-made netns whose only
//! routes lead to the simulated node.

mod support;

use std::{
    io::Read,
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use pod_identity_agent::http::{
    conn_limit::ConnectionLimits,
    listener::HEADER_READ_TIMEOUT,
    probes::{MAX_PROBE_CONNECTIONS, PROBE_HEADER_TIMEOUT},
};
use serde_json::Value;
use support::*;
use testnode::Node;

const IMDS: &str = IMDS_ADDR;
const METRICS_PORT: u16 = 2712;
/// pod-a: served during the attack.
const VICTIM: usize = 0;
/// pod-b (its own association): the malformed cases and the idle flood.
const ATTACKER: usize = 1;
/// pod-c: slowloris.
const SLOW_ATTACKER: usize = 2;
/// The hostNetwork pod: the only pod that reaches the localhost probe port.
const HOST_NET: usize = 3;
/// pod-chain: the pipelining flood.
const PIPELINER: usize = 5;

// === the agent's resources ===

#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    rss_kib: u64,
    fds: usize,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("the agent (pid {pid}) is gone: {e}"));
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count();
    Usage { rss_kib, fds }
}

/// Samples the agent's usage every 100 ms until stopped; keeps the maxima.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<Mutex<Usage>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Mutex::new(usage(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let u = usage(pid);
                let mut m = p.lock().unwrap();
                m.rss_kib = m.rss_kib.max(u.rss_kib);
                m.fds = m.fds.max(u.fds);
                drop(m);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler { stop, peak, thread }
    }

    fn stop(self) -> Usage {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("sampler");
        self.peak.lock().map(|p| *p).unwrap()
    }
}

// === the hostile client ===

fn hostile_command(node: &Node, pod: usize, args: &[&str]) -> std::process::Command {
    let mut c = node.pod_command(pod, "python3");
    c.arg(testnode::HOSTILE_PY).args(args);
    c
}

/// Run the hostile client to the end: one JSON value per line.
fn hostile(node: &Node, pod: usize, args: &[&str]) -> Vec<Value> {
    let out = hostile_command(node, pod, args)
        .output()
        .expect("spawn hostile client");
    assert!(
        out.status.success(),
        "hostile client in pod {pod} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// A flood running in the background; [`Flood::finish`] collects its lines.
struct Flood {
    name: &'static str,
    child: Option<Child>,
}

impl Flood {
    fn start(node: &Node, pod: usize, name: &'static str, args: &[&str]) -> Flood {
        let child = hostile_command(node, pod, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flood");
        Flood {
            name,
            child: Some(child),
        }
    }

    /// Wait for the idle flood's `{"peak": …}` line (read a byte at a time: the
    /// rest of the output is [`Flood::finish`]'s).
    fn wait_peak(&mut self) -> Value {
        let out = self.child.as_mut().and_then(|c| c.stdout.as_mut());
        let mut line = Vec::new();
        let out = out.expect("stdout");
        let mut byte = [0u8; 1];
        loop {
            out.read_exact(&mut byte).expect("flood stdout");
            match byte[0] {
                b'\n' => break,
                b => line.push(b),
            }
        }
        let line = String::from_utf8_lossy(&line);
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: {line:?}: {e}", self.name))
    }

    fn finish(mut self) -> Value {
        let name = self.name;
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().expect("flood output");
        assert!(
            out.status.success(),
            "{name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text
            .lines()
            .last()
            .unwrap_or_else(|| panic!("{name}: no output"));
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{name}: {last:?}: {e}"))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// === the scenario ===

/// The credentials scenario with the IMDS front and a metrics listener; returns the
/// agent's pid.
fn start() -> (Scenario, u32) {
    let mut s = Scenario::new();
    with_real_imds(&mut s);
    let metrics_port = METRICS_PORT.to_string();
    let h = s.start_agent(&[
        "--imds",
        "block-credentials",
        "--imds-endpoint",
        "http://169.254.169.254:80",
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        &metrics_port,
    ]);
    let pid = s.node.pid(h);
    (s, pid)
}

/// One listener under attack: who attacks it, at which address, with which Host
/// header and path.
struct Target {
    name: &'static str,
    pod: usize,
    addr: &'static str,
    port: String,
    host: &'static str,
    path: &'static str,
}

fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "pods' endpoint",
            pod: ATTACKER,
            addr: "169.254.170.23",
            port: "80".into(),
            host: "169.254.170.23",
            path: "/v1/credentials",
        },
        Target {
            name: "IMDS front",
            pod: ATTACKER,
            addr: IMDS,
            port: "80".into(),
            host: IMDS,
            path: "/latest/meta-data/",
        },
        Target {
            name: "probe",
            pod: HOST_NET,
            addr: "127.0.0.1",
            port: PROBE.rsplit(':').next().unwrap().into(),
            host: "127.0.0.1",
            path: "/healthz",
        },
        Target {
            name: "metrics",
            pod: HOST_NET,
            addr: "127.0.0.1",
            port: METRICS_PORT.to_string(),
            host: "127.0.0.1",
            path: "/metrics",
        },
    ]
}

fn args_of<'a>(t: &'a Target, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--addr",
        t.addr,
        "--port",
        t.port.as_str(),
        "--host",
        t.host,
        "--path",
        t.path,
    ];
    a.extend_from_slice(extra);
    a
}

/// The header timeout of a listener, and what a refusal may take at most: the
/// timeout plus a margin for a loaded 2-core machine.
fn refusal_bound(t: &Target) -> Duration {
    let header = if t.pod == HOST_NET {
        PROBE_HEADER_TIMEOUT
    } else {
        HEADER_READ_TIMEOUT
    };
    scaled(header + Duration::from_secs(3))
}

/// What each malformed case may get. Whatever the HTTP parser cannot accept is
/// refused: a 4xx/5xx, or the connection closed. A few cases are well-formed
/// enough to be answered, and then as the listener answers anyone:
///
/// * the pods' endpoint on its own path, whatever `Authorization` or other header
///   bytes came with it: the attacker pod's own credentials (`attacker_key`, its
///   cached key id), since the identity is the kernel's, never the token's;
/// * `Transfer-Encoding` with `Content-Length`: hyper reads the chunked body,
///   answers and closes the connection (RFC 9112 §6.1), so nothing is smuggled
///   behind it;
/// * the IMDS front forwards metadata paths to the real IMDS with its own fixed
///   headers, whatever `Host` or `Authorization` the pod sent (IMDS ignores both):
///   the real IMDS's listing (`iam`, …);
/// * the localhost probe and metrics listeners ignore `Host` (kubelet and
///   Prometheus send whatever address they dialled).
fn acceptable(t: &Target, rec: &Value, attacker_key: &str) -> Result<(), String> {
    let case = rec["case"].as_str().unwrap();
    let status = rec["status"].as_u64();
    let closed = rec["closed"].as_bool() == Some(true);
    let body = rec["body"].as_str().unwrap_or("");
    let refused = matches!(status, Some(400..=599)) || (status.is_none() && closed);
    let served = status == Some(200);
    let host_cases = [
        "absolute_uri_other_host",
        "spoofed_host",
        "no_host",
        "two_hosts",
    ];
    let header_cases = [
        "large_authorization",
        "invalid_utf8_header",
        "invalid_utf8_authorization",
    ];
    let ok = match (t.name, case) {
        // Held without a byte: closed by the header timeout, nothing answered.
        (_, "empty_then_close") => closed && status.is_none(),
        ("pods' endpoint", c) if header_cases.contains(&c) => served && body.contains(attacker_key),
        ("pods' endpoint", "smuggling_cl_te") => {
            refused || (served && closed && body.contains(attacker_key))
        }
        (_, "smuggling_cl_te") => refused || (served && closed),
        ("IMDS front", c) if host_cases.contains(&c) || header_cases.contains(&c) => {
            served && body.contains("iam")
        }
        ("probe" | "metrics", c) if host_cases.contains(&c) || header_cases.contains(&c) => {
            served || refused
        }
        _ => refused,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{}: {case}: {rec}", t.name))
    }
}

#[test]
fn every_listener_refuses_hostile_input_and_stays_bounded() {
    let t0 = Instant::now();
    let (s, pid) = start();
    let node = &s.node;
    // Warm: the victim's credentials are cached, the agent's pools are in use.
    let rec = s.creds(VICTIM);
    assert_eq!(rec["status"], 200, "{rec}");
    let victim_key = body(&rec)["AccessKeyId"].as_str().unwrap().to_owned();
    let rec = s.creds(ATTACKER);
    let attacker_key = body(&rec)["AccessKeyId"].as_str().unwrap().to_owned();
    assert_ne!(victim_key, attacker_key);
    let before = usage(pid);
    eprintln!("agent pid {pid} before: {before:?}");

    // 1. Every malformed case on every listener, one connection each.
    let mut failures = Vec::new();
    let mut tried = 0;
    for t in targets() {
        let recs = hostile(node, t.pod, &args_of(&t, &["--mode", "cases"]));
        for rec in &recs {
            tried += 1;
            eprintln!("{:16} {rec}", t.name);
            let elapsed = Duration::from_secs_f64(rec["elapsed"].as_f64().unwrap());
            assert!(
                !rec.to_string().contains(&victim_key),
                "another pod's credentials reached the attacker: {rec}"
            );
            if let Err(e) = acceptable(&t, rec, &attacker_key) {
                failures.push(e);
            } else if elapsed > refusal_bound(&t) {
                failures.push(format!("{}: {} took {elapsed:?}", t.name, rec["case"]));
            }
        }
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "the agent died during the {} cases",
            t.name
        );
    }
    let after_cases = usage(pid);
    eprintln!("{tried} malformed cases; agent after them: {after_cases:?}");
    assert!(
        failures.is_empty(),
        "unclear refusals:\n{}",
        failures.join("\n")
    );

    // 2. Floods, all at once, while the victim keeps being served.
    let sampler = Sampler::start(pid);
    let all = targets();
    let (pods_ep, imds, probe) = (&all[0], &all[1], &all[2]);
    let mut idle_pods = Flood::start(
        node,
        ATTACKER,
        "idle flood (pods' endpoint)",
        &args_of(
            pods_ep,
            &["--mode", "idle", "--count", "2000", "--hold", "20"],
        ),
    );
    let mut idle_imds = Flood::start(
        node,
        ATTACKER,
        "idle flood (IMDS front)",
        &args_of(imds, &["--mode", "idle", "--count", "1000", "--hold", "20"]),
    );
    let mut idle_probe = Flood::start(
        node,
        HOST_NET,
        "idle flood (probe)",
        &args_of(probe, &["--mode", "idle", "--count", "500", "--hold", "20"]),
    );
    let slowloris = Flood::start(
        node,
        SLOW_ATTACKER,
        "slowloris",
        &args_of(
            pods_ep,
            &["--mode", "slowloris", "--count", "64", "--timeout", "20"],
        ),
    );
    let pipeline = Flood::start(
        node,
        PIPELINER,
        "pipelining flood",
        &args_of(
            pods_ep,
            &["--mode", "pipeline", "--count", "5000", "--timeout", "30"],
        ),
    );
    let peaks = [
        idle_pods.wait_peak(),
        idle_imds.wait_peak(),
        idle_probe.wait_peak(),
    ];
    let at_peak = usage(pid);
    eprintln!("idle floods open: {peaks:?}; agent: {at_peak:?}");
    // The victim, during the attack: every request served, its own role.
    let mut served = Vec::new();
    let attack_end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < attack_end {
        let t = Instant::now();
        let rec = s.creds(VICTIM);
        assert_eq!(
            rec["status"], 200,
            "victim refused during the attack: {rec}"
        );
        assert_eq!(body(&rec)["AccessKeyId"], victim_key.as_str(), "{rec}");
        served.push(t.elapsed());
    }
    let (idle_pods, idle_imds, idle_probe) =
        (idle_pods.finish(), idle_imds.finish(), idle_probe.finish());
    let (slowloris, pipeline) = (slowloris.finish(), pipeline.finish());
    let peak = sampler.stop();
    eprintln!("idle (pods' endpoint): {idle_pods}");
    eprintln!("idle (IMDS front): {idle_imds}");
    eprintln!("idle (probe): {idle_probe}");
    eprintln!("slowloris: {slowloris}");
    eprintln!("pipelining: {pipeline}");
    eprintln!(
        "victim served {} times during the attack, slowest {:?}",
        served.len(),
        served.iter().max()
    );

    // The floods were refused as the limits say.
    let per_caller = ConnectionLimits::default().per_caller as u64;
    for (flood, cap, header) in [
        (&idle_pods, per_caller, HEADER_READ_TIMEOUT),
        (&idle_imds, per_caller, HEADER_READ_TIMEOUT),
        (
            &idle_probe,
            MAX_PROBE_CONNECTIONS as u64,
            PROBE_HEADER_TIMEOUT,
        ),
    ] {
        let held = flood["held_after_1s"].as_u64().unwrap();
        assert!(
            held <= cap,
            "more than {cap} idle connections held: {flood}"
        );
        let closed_after = flood["all_closed_after_open"].as_f64();
        assert!(
            closed_after
                .is_some_and(|t| t <= scaled(header + Duration::from_secs(4)).as_secs_f64()),
            "idle connections not all closed by the header timeout ({header:?}): {flood}"
        );
    }
    assert_eq!(slowloris["closed"], slowloris["count"], "{slowloris}");
    assert!(
        slowloris["last_closed"].as_f64().unwrap()
            <= scaled(HEADER_READ_TIMEOUT + Duration::from_secs(4)).as_secs_f64(),
        "slowloris outlived the header timeout: {slowloris}"
    );
    assert_eq!(pipeline["answers"], pipeline["sent"], "{pipeline}");

    // Resources: bounded at the peak by the listeners' connection limits, and back.
    // fds: each connection held is one fd; the floods could hold at most one
    // caller's share on the pods' endpoint and on the IMDS front (the idle flood),
    // one more share on the pods' endpoint (slowloris), one pipelining connection,
    // and the probe's cap; 64 more for the victim, the refusing pool's few and
    // the agent's own sockets and files.
    let fd_bound = before.fds + 3 * per_caller as usize + MAX_PROBE_CONNECTIONS + 64;
    // Memory: a held connection costs at most its read buffer (64 KiB, hyper's
    // max_buf_size on the pods' listeners) plus its task; bounded by 64 KiB per
    // fd allowed above plus 32 MiB for the pipelining flood's write-side and the
    // allocator's slack.
    let rss_bound = before.rss_kib + 64 * (fd_bound - before.fds) as u64 + 32 * 1024;
    eprintln!(
        "fds before/peak/bound: {}/{}/{fd_bound}; VmRSS KiB before/peak/bound: {}/{}/{rss_bound}",
        before.fds, peak.fds, before.rss_kib, peak.rss_kib
    );
    assert!(
        peak.fds <= fd_bound,
        "fds peaked at {} (bound {fd_bound})",
        peak.fds
    );
    assert!(
        peak.rss_kib <= rss_bound,
        "VmRSS peaked at {} KiB (bound {rss_bound})",
        peak.rss_kib
    );
    // Back down: every flood connection closed; fds as before (give or take the
    // victim's keep-alive and the cache's upstream connection), memory within
    // 16 MiB of before (the allocator keeps some freed pages).
    let after = wait_for(
        "the agent's fds to come back",
        Duration::from_secs(15),
        || {
            let u = usage(pid);
            (u.fds <= before.fds + 4).then_some(u)
        },
    );
    eprintln!("agent after: {after:?}");
    assert!(
        after.rss_kib <= before.rss_kib + 16 * 1024,
        "VmRSS stayed at {} KiB (before {} KiB)",
        after.rss_kib,
        before.rss_kib
    );
    // Still serving after it all.
    let rec = s.creds(VICTIM);
    assert_eq!(rec["status"], 200, "{rec}");
    eprintln!("hostile_input took {:?}", t0.elapsed());
}

/// The agent's soft and hard `RLIMIT_NOFILE` (`/proc/<pid>/limits`).
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
}

/// Container runtimes commonly start the agent with a soft `RLIMIT_NOFILE` of
/// 1024 (containerd 2, systemd's default) under a much higher hard limit: below
/// the pods' endpoint's own bound of 4096 connections. Here the soft limit is 256
/// (the hard one the test's own) and three pods hold their share of idle
/// connections (3 × 128): the agent must not run out of descriptors, and the
/// victim is served at once.
#[test]
fn a_low_soft_fd_limit_does_not_let_idle_floods_starve_other_pods() {
    let mut s = Scenario::new();
    let agent = s.agent_command(&[]);
    // prlimit lowers its own soft limit (the hard one stays this process's) and
    // execs the agent (same pid).
    let (_, hard) = nofile(std::process::id());
    assert!(
        hard == "unlimited" || hard.parse::<u64>().is_ok_and(|h| h >= 1024),
        "the test needs a hard RLIMIT_NOFILE of at least 1024, not {hard}"
    );
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=256:")
        .arg(agent.get_program())
        .args(agent.get_args());
    for (k, v) in agent.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let h = s
        .node
        .spawn_until(cmd, "pod-identity-agent ready", Duration::from_secs(20));
    let pid = s.node.pid(h);
    eprintln!("agent RLIMIT_NOFILE (soft, hard): {:?}", nofile(pid));
    let rec = s.creds(VICTIM);
    assert_eq!(rec["status"], 200, "{rec}");
    let all = targets();
    let pods_ep = &all[0];
    let mut floods: Vec<Flood> = [ATTACKER, SLOW_ATTACKER, 4]
        .into_iter()
        .map(|pod| {
            Flood::start(
                &s.node,
                pod,
                "idle flood",
                &args_of(
                    pods_ep,
                    &["--mode", "idle", "--count", "300", "--hold", "12"],
                ),
            )
        })
        .collect();
    // While the floods connect and hold: the victim is served at once.
    let end = Instant::now() + Duration::from_secs(5);
    let mut slowest = Duration::ZERO;
    while Instant::now() < end {
        let t = Instant::now();
        let rec = s.creds(VICTIM);
        assert_eq!(rec["status"], 200, "victim during the flood: {rec}");
        slowest = slowest.max(t.elapsed());
    }
    let peaks: Vec<Value> = floods.iter_mut().map(Flood::wait_peak).collect();
    eprintln!("idle floods open: {peaks:?}; agent: {:?}", usage(pid));
    for f in floods {
        eprintln!("{}", f.finish());
    }
    eprintln!("victim's slowest request during the flood: {slowest:?}");
    let log = s.node.output_of(h);
    assert!(
        !log.contains("accept failed"),
        "the agent ran out of descriptors: {}",
        log.lines().find(|l| l.contains("accept failed")).unwrap()
    );
    assert!(
        slowest < Duration::from_secs(3),
        "victim waited {slowest:?} during the flood"
    );
    let (soft, hard) = nofile(pid);
    assert_eq!(
        soft, hard,
        "the agent keeps a soft fd limit under its hard one"
    );
}
