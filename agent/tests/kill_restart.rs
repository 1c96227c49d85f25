//! Privileged test of an agent killed with SIGKILL under load: the real eBPF
//! programs pinned in a test-mounted bpffs, moto's STS in the node netns, and
//! three pods asking for credentials in a loop.
//!
//! While the agent is gone the pinned programs keep redirecting, so every connect
//! is refused (nothing else can answer on the agent port: the bind guard); every
//! failure is one the SDKs retry; the next agent re-adopts the pins and serves
//! again. The test prints the requests, the failures and the gap.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Pods under load: pod-a, pod-b, pod-chain.
const LOAD_PODS: [usize; 3] = [0, 1, 5];
/// The most each pod's loop runs; the test stops it once it has seen enough.
const LOAD_SECONDS: &str = "60";

/// How a request that did not get a 200 failed.
fn failure_kind(rec: &Value) -> Option<String> {
    if rec["status"] == 200 {
        return None;
    }
    for k in ["errno", "send_errno", "recv_errno"] {
        if let Some(e) = rec[k].as_str() {
            return Some(format!("{k}={e}"));
        }
    }
    Some(format!("status={}", rec["status"]))
}

/// Failures an SDK retries: the connection refused or reset (botocore retries
/// every connection error; aws-sdk-rust retries I/O errors of a connection).
fn retried_by_sdks(kind: &str) -> bool {
    [
        "errno=ECONNREFUSED",
        // The handshake completed into the agent's accept queue just before the
        // kill, which reset it before connect() (non-blocking, with a timeout)
        // read its result; urllib3 raises this as NewConnectionError, botocore as
        // EndpointConnectionError (retried), hyper as a connect I/O error (retried).
        // Seen under QEMU TCG on 6.1, where the client is slow to collect it.
        "errno=ECONNRESET",
        "send_errno=ECONNRESET",
        "send_errno=EPIPE",
        "recv_errno=ECONNRESET",
        // The connection closed without an answer (the agent died mid-request).
        "status=0",
    ]
    .contains(&kind)
}

#[test]
fn kill_9_under_load_refuses_until_the_next_agent_serves() {
    let mut s = Scenario::new();
    let bpffs = testnode::BpfFs::mount();
    let pins = bpffs.path().join("pod-identity-agent");
    let pins_s = pins.to_str().unwrap().to_owned();
    // No per-caller rate limit: the load is a steady loop per pod.
    let args = ["--bpffs-dir", pins_s.as_str(), "--max-rps-per-caller", "0"];
    let first = s.start_agent(&args);
    for &p in &LOAD_PODS {
        served(&s.creds(p));
    }

    // Steady load: a new connection per request, as SDKs do, 20 ms apart, until
    // the test says stop. Each pod's records are read as they come, so every step
    // below waits for what it needs to see instead of trusting a fixed sleep (a
    // loaded machine can start python3 late).
    let stop = tempfile::tempdir().unwrap();
    let stop_file = stop.path().join("stop");
    let stop_s = stop_file.to_str().unwrap().to_owned();
    let recs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let load: Vec<_> = LOAD_PODS
        .iter()
        .map(|&p| {
            let mut c = s.node.pod_command(p, "python3");
            c.arg(testnode::CLIENT_PY)
                .args(["--path", "/v1/credentials", "--seconds", LOAD_SECONDS])
                .args(["--until-file", stop_s.as_str()])
                .args(["--interval", "0.02", "--timeout", "2"])
                .stdout(std::process::Stdio::piped());
            let mut child = c.spawn().expect("spawn load");
            let out = child.stdout.take().unwrap();
            let recs = recs.clone();
            let reader = std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines() {
                    let rec: Value = serde_json::from_str(&line.unwrap()).unwrap();
                    recs.lock().unwrap().push(rec);
                }
            });
            (child, reader)
        })
        .collect();
    let count =
        |pred: &dyn Fn(&Value) -> bool| recs.lock().unwrap().iter().filter(|r| pred(r)).count();
    wait_for("every pod's loop served", || {
        LOAD_PODS.len() * 5 <= count(&|r| r["status"] == 200)
    });
    let pid = s.node.pid(first);
    let killed_at = unix_now();
    s.node.kill(first); // SIGKILL
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_err(),
        "the agent survived SIGKILL"
    );
    // The redirect stays: the pins outlive the process.
    for pin in [
        "link_pia_connect4",
        "link_pia_connect6",
        "map_TUPLES",
        "map_CONFIG",
    ] {
        assert!(pins.join(pin).exists(), "{pin} gone with the agent");
    }
    // Nothing answers meanwhile: a connect to the credentials address is refused.
    let (_, rec) = client1(&s.node, 2, &["--timeout", "2"]);
    assert_eq!(rec["errno"], "ECONNREFUSED", "{rec}");
    // The load sees the outage before the next agent starts.
    wait_for("the load saw the outage", || {
        count(&|r| r["status"] != 200 && r["t"].as_f64().unwrap() > killed_at) >= LOAD_PODS.len()
    });

    let restart_at = unix_now();
    let t = Instant::now();
    let second = s.start_agent(&args);
    let ready_at = unix_now();
    let startup = t.elapsed();
    wait_for("load served after the restart", || {
        count(&|r| r["status"] == 200 && r["t"].as_f64().unwrap() > ready_at) > 30
    });
    std::fs::write(&stop_file, b"").unwrap();
    for (mut child, reader) in load {
        assert!(child.wait().unwrap().success(), "a load loop failed");
        reader.join().unwrap();
    }
    let mut recs = std::mem::take(&mut *recs.lock().unwrap());
    recs.sort_by(|a, b| a["t"].as_f64().partial_cmp(&b["t"].as_f64()).unwrap());
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for r in &recs {
        if let Some(k) = failure_kind(r) {
            assert!(
                retried_by_sdks(&k),
                "a failure the SDKs would not retry: {r}"
            );
            *kinds.entry(k).or_default() += 1;
        } else {
            served(r);
        }
    }
    let t_of = |r: &Value| r["t"].as_f64().unwrap();
    let ends = |r: &Value| t_of(r) + r["ms"].as_f64().unwrap() / 1000.0;
    // Before the kill, everything was served; once the next agent is ready,
    // everything is served again.
    for r in &recs {
        if ends(r) < killed_at || t_of(r) > ready_at {
            assert_eq!(r["status"], 200, "outside the outage: {r}");
        }
    }
    let last_ok = recs
        .iter()
        .filter(|r| r["status"] == 200 && t_of(r) < killed_at)
        .map(ends)
        .fold(f64::MIN, f64::max);
    let first_ok = recs
        .iter()
        .filter(|r| r["status"] == 200 && t_of(r) > killed_at)
        .map(t_of)
        .fold(f64::MAX, f64::min);
    assert!(first_ok < f64::MAX, "nothing served after the restart");
    let after = recs.iter().filter(|r| t_of(r) > ready_at).count();
    assert!(after > 30, "too little load after the restart: {after}");
    let failures: usize = kinds.values().sum();
    assert!(
        failures > 0,
        "the kill went unnoticed: the test proves nothing ({} requests; started while no agent ran: {:?})",
        recs.len(),
        recs.iter()
            .filter(|r| t_of(r) > killed_at && t_of(r) < restart_at)
            .map(|r| format!("+{:.3}s {} {}ms", t_of(r) - killed_at, r["status"], r["ms"]))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "kill -9 under load: {} requests from {} pods, {failures} failed ({kinds:?}); \
         gap (last 200 before the kill to the first after) {:.0} ms; agent down \
         {:.0} ms before its successor was started, which was ready in {startup:?}",
        recs.len(),
        LOAD_PODS.len(),
        (first_ok - last_ok) * 1000.0,
        (restart_at - killed_at) * 1000.0,
    );
    // The successor re-adopted the pins and served the load.
    let log = strip_ansi(&s.node.output_of(second));
    assert!(
        log.lines()
            .any(|l| l.contains(" access ") && l.contains("status=200")),
        "the next agent served nothing:\n{log}"
    );
    drop(s);
    drop(bpffs);
}

fn served(rec: &Value) {
    assert_eq!(rec["status"], 200, "{rec}");
    let b = body(rec);
    assert!(
        b["AccessKeyId"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ASIA"),
        "not the agent's answer: {rec}"
    );
}

/// Polls `done` every 20 ms for up to 30 s (stretched by PIA_TEST_TIME_SCALE).
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
