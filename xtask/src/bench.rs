//! `cargo xtask bench`: side-by-side benchmarks on one simulated node, with the real
//! agent (release build) and its eBPF programs, and a local STS (moto).
//!
//! These machines are noisy, so nothing here asserts a time: every comparison is
//! measured in the same run, interleaved round by round (the order rotates each
//! round), and printed as absolute numbers and as ratios (per round, then the
//! median and the range over rounds).
//!
//! 1. Credential requests through the kernel redirect: `wrk` in a pod (its netns
//!    and cgroup, so the eBPF programs attribute it) against
//!    `http://169.254.170.23/v1/credentials`, with keep-alive and with a new
//!    connection per request; the agent's `/v1/whoami` (same attribution, no
//!    credential work) as a baseline; and STS `AssumeRole` called directly on moto
//!    (what every request would cost without the cache).
//! 2. Memory: the agent's VmRSS at idle with 4 pods, and after 50 pods each
//!    fetched credentials once.
//!
//! Every load generator stops by itself (`wrk -d`, under `timeout`); all traffic
//! stays in the simulated node's namespaces; namespaces, cgroups and processes are
//! removed when the `Node` drops.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use testnode::{Node, NODE_ADDR4};

const STS_PORT: u16 = 5000;
const PROBE: &str = "127.0.0.1:2711";
const ACCOUNT: &str = "123456789012";
const CRED_URL: &str = "http://169.254.170.23/v1/credentials";
const WHOAMI_URL: &str = "http://169.254.170.23/v1/whoami";

/// Measured rounds; each runs every variant once for `SECS`.
const ROUNDS: usize = 5;
const SECS: u32 = 2;
/// Connections of the throughput variants (one wrk thread: the machine has 2 cores).
const CONNS: u32 = 8;
/// Direct STS calls the benchmark must have made per STS variant.
const MIN_STS_CALLS: u64 = 200;
/// Socket errors tolerated, as a fraction of requests.
const MAX_ERROR_RATE: f64 = 0.01;

/// Pods of the idle measurement, and all pods (testnode allows at most 50).
const IDLE_PODS: usize = 4;
const ALL_PODS: usize = 50;

/// Pods the load variants run in (one each, so their records never mix).
const POD_KEEPALIVE: usize = 0;
const POD_CLOSE: usize = 1;
const POD_WHOAMI: usize = 2;
const POD_STS: usize = 3;

/// `done()` prints one machine-readable line (latencies in microseconds).
const REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

/// The AssumeRole request the agent makes for a pod (session tags included),
/// unsigned: moto does not check signatures, but routes on the credential scope.
fn sts_lua() -> String {
    let role = format!("arn%3Aaws%3Aiam%3A%3A{ACCOUNT}%3Arole%2Fbench");
    let tags = [
        (
            "eks-cluster-arn",
            "arn%3Aaws%3Aeks%3Aus-east-1%3A123456789012%3Acluster%2Fbench",
        ),
        ("eks-cluster-name", "bench"),
        ("kubernetes-namespace", "default"),
        ("kubernetes-service-account", "bench"),
        ("kubernetes-pod-name", "bench-0"),
        ("kubernetes-pod-uid", "be4c0000-0000-4000-8000-000000000000"),
    ];
    let mut body = format!(
        "Action=AssumeRole&Version=2011-06-15&RoleArn={role}&RoleSessionName=eks-bench-bench-0-be4c0000&DurationSeconds=43200"
    );
    for (n, (k, v)) in tags.iter().enumerate() {
        let n = n + 1;
        body.push_str(&format!(
            "&Tags.member.{n}.Key={k}&Tags.member.{n}.Value={v}&TransitiveTagKeys.member.{n}={k}"
        ));
    }
    format!(
        r#"
wrk.method = "POST"
wrk.body = "{body}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
wrk.headers["X-Amz-Date"] = "20250101T000000Z"
wrk.headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=AKIAAGENTBENCH000001/20250101/us-east-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000"
{REPORT_LUA}"#
    )
}

fn pod_uid(i: usize) -> String {
    format!("be4c{i:04x}-0000-4000-8000-{i:012x}")
}

fn io_err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

pub fn run() -> Result<(), String> {
    if Command::new("wrk")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Err("wrk not found (cargo xtask setup installs it)".into());
    }
    // Benchmark the agent as shipped: release build (agent/build.rs embeds the eBPF
    // object built by build-ebpf, as for the debug build).
    crate::run(crate::cargo().args(["build", "--release", "-p", "pod-identity-agent"]))?;
    let agent = crate::target_dir().join("release/pod-identity-agent");
    let work = std::env::temp_dir().join(format!("pia-bench-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(io_err(format!("mkdir {}", work.display())))?;
    // Removed on drop, also when a testnode helper panics.
    let work = WorkDir(work);
    bench(&agent, &work.0)
}

struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// === the node ===

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("rename {}", path.display())))
}

fn write_pods_file(node: &Node, path: &Path) -> Result<(), String> {
    let pods: Vec<String> = node
        .pods
        .iter()
        .map(|p| {
            format!(
                r#"{{"uid":"{}","namespace":"default","name":"{}","serviceAccount":"bench","hostNetwork":false}}"#,
                p.uid, p.name
            )
        })
        .collect();
    write_atomic(path, &format!(r#"{{"pods":[{}]}}"#, pods.join(",")))
}

fn add_pods(node: &mut Node, upto: usize) {
    while node.pods.len() < upto {
        let i = node.pods.len();
        node.add_pod(&format!("bench-{i}"), &pod_uid(i), false);
    }
}

/// One credentials request from pod `i` through the redirect; retried while the
/// agent has not seen the pod yet (the pods file is polled every 2 s).
fn fetch_once(node: &Node, i: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = node.pod_command(i, "python3");
        c.arg(testnode::CLIENT_PY)
            .args(["--path", "/v1/credentials", "--timeout", "10"]);
        let out = c.output().map_err(io_err("python3 client"))?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if line.contains("\"status\": 200") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "pod {i}: no credentials: {line} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// The agent's Prometheus text, from its probe port in the node netns.
fn metrics(node: &Node) -> Result<String, String> {
    let mut c = node.node_command("python3");
    c.args([
        "-c",
        "import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
        &format!("http://{PROBE}/metrics"),
    ]);
    let out = c.output().map_err(io_err("python3 metrics"))?;
    if !out.status.success() {
        return Err(format!(
            "GET /metrics: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn metric(text: &str, name: &str) -> Result<u64, String> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|r| r.trim().parse().ok())
        })
        .ok_or_else(|| format!("metric {name} not in:\n{text}"))
}

/// Start a process owned by the node with its output in `log`, and wait until a
/// line of it contains `ready`.
fn spawn_logged(
    node: &mut Node,
    mut cmd: Command,
    log: &Path,
    ready: &str,
    timeout: Duration,
) -> Result<usize, String> {
    let out = fs::File::create(log).map_err(io_err(format!("create {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("dup {}", log.display())))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let handle = node.spawn(cmd);
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(ready) {
            return Ok(handle);
        }
        if !node.is_running(handle) || Instant::now() > deadline {
            return Err(format!(
                "{} did not print {ready:?} within {timeout:?}:\n{text}",
                log.display()
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// === memory ===

#[derive(Clone, Copy, Debug)]
struct Mem {
    rss_kib: u64,
    anon_kib: u64,
}

/// The agent's pid: the spawned child is `nsenter`, which execs the agent (it
/// forks only to enter a pid namespace); follow a child if it did fork.
fn agent_pid(node: &Node, handle: usize) -> Result<u32, String> {
    let pid = node.pid(handle);
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_err(io_err(format!("/proc/{pid}/comm")))?;
    if comm.trim() == "nsenter" {
        let kids =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        return kids
            .split_whitespace()
            .next()
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| format!("agent: nsenter {pid} has no child"));
    }
    Ok(pid)
}

fn status_kib(status: &str, key: &str) -> Result<u64, String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("{key} not in /proc/<pid>/status"))
}

/// Median of five samples 200 ms apart.
fn memory(pid: u32) -> Result<Mem, String> {
    let mut rss = Vec::new();
    let mut anon = Vec::new();
    for k in 0..5 {
        if k > 0 {
            thread::sleep(Duration::from_millis(200));
        }
        let s = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(io_err(format!("/proc/{pid}/status")))?;
        rss.push(status_kib(&s, "VmRSS:")?);
        anon.push(status_kib(&s, "RssAnon:")?);
    }
    rss.sort_unstable();
    anon.sort_unstable();
    Ok(Mem {
        rss_kib: rss[2],
        anon_kib: anon[2],
    })
}

// === load ===

struct Variant {
    name: &'static str,
    pod: usize,
    conns: u32,
    url: String,
    script: PathBuf,
    headers: &'static [&'static str],
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    socket_errors: u64,
    non2xx: u64,
}

fn field(line: &str, key: &str) -> Result<f64, String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{key} missing in wrk report {line:?}"))
}

fn wrk(node: &Node, v: &Variant, secs: u32) -> Result<Sample, String> {
    // `timeout` bounds it even if wrk misbehaved; -d bounds it normally.
    let mut c = node.pod_command(v.pod, "timeout");
    c.args(["-k", "5", &(secs + 20).to_string(), "wrk", "-t1"])
        .arg(format!("-c{}", v.conns))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "5s", "-s"])
        .arg(&v.script);
    for h in v.headers {
        c.args(["-H", h]);
    }
    c.arg(&v.url);
    let out = c.output().map_err(io_err(format!("wrk ({})", v.name)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("BENCH "))
        .ok_or_else(|| {
            format!(
                "wrk ({}) printed no report: {stdout} {}",
                v.name,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let requests = field(line, "requests")? as u64;
    let duration_s = field(line, "duration_us")? / 1e6;
    let socket_errors = ["connect", "read", "write", "timeout"]
        .iter()
        .map(|k| field(line, k).map(|x| x as u64))
        .sum::<Result<u64, String>>()?;
    Ok(Sample {
        requests,
        rps: requests as f64 / duration_s.max(1e-9),
        p50_us: field(line, "p50_us")?,
        p99_us: field(line, "p99_us")?,
        socket_errors,
        non2xx: field(line, "status")? as u64,
    })
}

fn check(v: &Variant, s: &Sample) -> Result<(), String> {
    if s.requests == 0 {
        return Err(format!("{}: no request completed", v.name));
    }
    if s.non2xx > 0 {
        return Err(format!(
            "{}: {} of {} responses were not 2xx",
            v.name, s.non2xx, s.requests
        ));
    }
    if s.socket_errors as f64 > MAX_ERROR_RATE * s.requests as f64 {
        return Err(format!(
            "{}: {} socket errors in {} requests",
            v.name, s.socket_errors, s.requests
        ));
    }
    Ok(())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn range(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// `median [min–max]` of per-round values.
fn summary(xs: &[f64], prec: usize) -> String {
    let (lo, hi) = range(xs);
    format!(
        "{:.prec$} [{:.prec$}–{:.prec$}]",
        median(xs.to_vec()),
        lo,
        hi
    )
}

/// Allow many short connections from one pod: reuse TIME_WAIT ports for new
/// connects and widen the ephemeral range (both per network namespace: the pod's).
fn tune_pod_for_short_connections(node: &Node, i: usize) -> Result<(), String> {
    let ns = node.pods[i]
        .netns
        .as_ref()
        .ok_or("pod without netns")?
        .name()
        .to_owned();
    for kv in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65000",
    ] {
        crate::run(Command::new("ip").args(["netns", "exec", &ns, "sysctl", "-q", "-w", kv]))?;
    }
    Ok(())
}

// === the benchmark ===

fn bench(agent: &Path, work: &Path) -> Result<(), String> {
    let t0 = Instant::now();
    let mut node = Node::new();
    add_pods(&mut node, IDLE_PODS);
    let pods_file = work.join("pods.json");
    let assoc_file = work.join("associations.json");
    write_pods_file(&node, &pods_file)?;
    write_atomic(
        &assoc_file,
        &format!(
            r#"{{"associations":[{{"namespace":"default","serviceAccount":"bench","roleArn":"arn:aws:iam::{ACCOUNT}:role/bench"}}]}}"#
        ),
    )?;

    // moto logs every request; to a file, not through our terminal.
    let mut sts = node.node_command("moto_server");
    sts.args(["-H", &NODE_ADDR4.to_string(), "-p", &STS_PORT.to_string()]);
    spawn_logged(
        &mut node,
        sts,
        &work.join("sts.log"),
        "Running on",
        Duration::from_secs(30),
    )?;

    let mut a = node.node_command(agent.to_str().ok_or("agent path is not UTF-8")?);
    a.arg("--cgroup")
        .arg(node.cgroup_root.path())
        .args(["--agent-addr4", &NODE_ADDR4.to_string()])
        .args(["--upstream", "sts"])
        .arg("--pods-file")
        .arg(&pods_file)
        .arg("--associations-file")
        .arg(&assoc_file)
        .args([
            "--sts-endpoint",
            &format!("http://{NODE_ADDR4}:{STS_PORT}"),
            "--region",
            "us-east-1",
        ])
        .args(["--cluster-name", "bench", "--probe-addr", PROBE])
        .arg("--audit-log")
        .arg(work.join("audit.log"))
        // Never pin under the machine's /sys/fs/bpf: detach on exit.
        .args(["--bpffs-dir", "none"])
        // The per-caller rate limit (200/s by default) would answer most of the
        // load with 429; the benchmark measures the serving path, so it is off.
        .args(["--max-rps-per-caller", "0"])
        .env("AWS_ACCESS_KEY_ID", "AKIAAGENTBENCH000001")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // Access logs (info, in the service module) would dominate the measurement;
        // keep the start-up lines, among them the readiness line.
        .env(
            "RUST_LOG",
            "warn,pod_identity_agent=info,pod_identity_agent::http::endpoint=warn",
        );
    let handle = node.spawn_until(a, "pod-identity-agent ready", Duration::from_secs(30));
    let pid = agent_pid(&node, handle)?;

    // --- Benchmark 2 first, on a fresh agent: memory before any load.
    eprintln!("bench: memory: {IDLE_PODS} pods, each fetching credentials once");
    for i in 0..IDLE_PODS {
        fetch_once(&node, i)?;
    }
    thread::sleep(Duration::from_secs(2));
    let idle = memory(pid)?;

    let t_pods = Instant::now();
    add_pods(&mut node, ALL_PODS);
    let pod_setup = t_pods.elapsed();
    write_pods_file(&node, &pods_file)?;
    eprintln!(
        "bench: memory: added {} pods in {:.1} s; each fetches credentials once",
        ALL_PODS - IDLE_PODS,
        pod_setup.as_secs_f64()
    );
    for i in IDLE_PODS..ALL_PODS {
        fetch_once(&node, i)?;
    }
    // Let the lifecycle rescan (1 s) and pods-file poll (2 s) settle.
    thread::sleep(Duration::from_secs(3));
    let full = memory(pid)?;
    let m = metrics(&node)?;
    let entries_full = metric(&m, "pod_identity_cache_entries")?;
    let sts_calls_before = metric(&m, "pod_identity_sts_calls_total")?;

    // --- Benchmark 1: interleaved load variants.
    let report = work.join("report.lua");
    let sts_script = work.join("sts.lua");
    fs::write(&report, REPORT_LUA).map_err(io_err("write report.lua"))?;
    fs::write(&sts_script, sts_lua()).map_err(io_err("write sts.lua"))?;
    tune_pod_for_short_connections(&node, POD_CLOSE)?;
    let sts_url = format!("http://{NODE_ADDR4}:{STS_PORT}/");
    let variants = [
        Variant {
            name: "agent /v1/credentials, keep-alive",
            pod: POD_KEEPALIVE,
            conns: CONNS,
            url: CRED_URL.into(),
            script: report.clone(),
            headers: &[],
        },
        Variant {
            name: "agent /v1/credentials, new conn/request",
            pod: POD_CLOSE,
            conns: CONNS,
            url: CRED_URL.into(),
            script: report.clone(),
            headers: &["Connection: close"],
        },
        Variant {
            name: "agent /v1/whoami, keep-alive",
            pod: POD_WHOAMI,
            conns: CONNS,
            url: WHOAMI_URL.into(),
            script: report.clone(),
            headers: &[],
        },
        Variant {
            name: "STS AssumeRole direct (moto)",
            pod: POD_STS,
            conns: CONNS,
            url: sts_url.clone(),
            script: sts_script.clone(),
            headers: &[],
        },
        Variant {
            name: "agent /v1/credentials, keep-alive",
            pod: POD_KEEPALIVE,
            conns: 1,
            url: CRED_URL.into(),
            script: report.clone(),
            headers: &[],
        },
        Variant {
            name: "STS AssumeRole direct (moto)",
            pod: POD_STS,
            conns: 1,
            url: sts_url,
            script: sts_script,
            headers: &[],
        },
    ];
    const KEEP8: usize = 0;
    const CLOSE8: usize = 1;
    const WHOAMI8: usize = 2;
    const STS8: usize = 3;
    const KEEP1: usize = 4;
    const STS1: usize = 5;

    eprintln!("bench: load: warm-up (1 s per variant, not counted)");
    for v in &variants {
        check(v, &wrk(&node, v, 1)?)?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        eprintln!(
            "bench: load: round {}/{ROUNDS} ({} variants × {SECS} s, order rotated)",
            round + 1,
            variants.len()
        );
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let s = wrk(&node, &variants[i], SECS)?;
            check(&variants[i], &s)?;
            samples[i].push(s);
        }
    }
    let m = metrics(&node)?;
    let sts_calls_during_load =
        metric(&m, "pod_identity_sts_calls_total")?.saturating_sub(sts_calls_before);
    let audit_dropped = metric(&m, "pod_identity_audit_dropped_total")?;
    let events_lost = metric(&m, "pod_identity_kernel_events_lost_total")?;
    let after_load = memory(pid)?;
    if sts_calls_during_load > 0 {
        return Err(format!("the agent called STS {sts_calls_during_load} times under load: not a cached-credentials benchmark"));
    }
    for i in [STS8, STS1] {
        let n: u64 = samples[i].iter().map(|s| s.requests).sum();
        if n < MIN_STS_CALLS {
            return Err(format!(
                "{} (c{}): only {n} calls, want ≥ {MIN_STS_CALLS}",
                variants[i].name, variants[i].conns
            ));
        }
    }
    if !node.is_running(handle) {
        return Err("the agent exited during the benchmark".into());
    }
    let total = t0.elapsed();
    drop(node);

    // --- Report.
    let per = |i: usize, f: fn(&Sample) -> f64| -> Vec<f64> { samples[i].iter().map(f).collect() };
    let ratio = |a: usize, b: usize, f: fn(&Sample) -> f64| -> Vec<f64> {
        samples[a]
            .iter()
            .zip(&samples[b])
            .map(|(x, y)| f(x) / f(y))
            .collect()
    };
    let rps = |s: &Sample| s.rps;
    let p50 = |s: &Sample| s.p50_us;
    let p99 = |s: &Sample| s.p99_us;

    println!();
    println!("== Benchmark 1: credential requests (wrk -t1 in a pod; {ROUNDS} rounds × {SECS} s per variant, interleaved)");
    println!("   values: median over rounds [min–max]; latency in µs");
    println!(
        "{:<42} {:>5} {:>26} {:>24} {:>26} {:>9} {:>6}",
        "variant", "conns", "req/s", "p50 µs", "p99 µs", "requests", "errors"
    );
    for (i, v) in variants.iter().enumerate() {
        let n: u64 = samples[i].iter().map(|s| s.requests).sum();
        let e: u64 = samples[i].iter().map(|s| s.socket_errors + s.non2xx).sum();
        println!(
            "{:<42} {:>5} {:>26} {:>24} {:>26} {:>9} {:>6}",
            v.name,
            v.conns,
            summary(&per(i, rps), 0),
            summary(&per(i, p50), 0),
            summary(&per(i, p99), 0),
            n,
            e
        );
    }
    // With CONNS connections the 2 cores are saturated, so 1/throughput is the
    // machine time per request; the difference is the cost of a new connection.
    let extra_us: Vec<f64> = samples[CLOSE8]
        .iter()
        .zip(&samples[KEEP8])
        .map(|(c, k)| 1e6 / c.rps - 1e6 / k.rps)
        .collect();
    let c = CONNS;
    let ratios: [(String, String); 6] = [
        (
            format!("credentials / whoami, throughput (keep-alive, c{c})"),
            summary(&ratio(KEEP8, WHOAMI8, rps), 2),
        ),
        (
            format!("credentials: new conn per request / keep-alive, throughput (c{c})"),
            summary(&ratio(CLOSE8, KEEP8, rps), 2),
        ),
        (
            "≈ machine time added per new connection, µs (1/rps_close − 1/rps_keep)".to_owned(),
            summary(&extra_us, 0),
        ),
        (
            format!("cached credentials / STS AssumeRole, throughput (c{c})"),
            summary(&ratio(KEEP8, STS8, rps), 1),
        ),
        (
            "STS AssumeRole / cached credentials, p50 latency (c1)".to_owned(),
            summary(&ratio(STS1, KEEP1, p50), 1),
        ),
        (
            "STS AssumeRole / cached credentials, p99 latency (c1)".to_owned(),
            summary(&ratio(STS1, KEEP1, p99), 1),
        ),
    ];
    println!();
    println!("   ratios (computed per round; median [min–max]):");
    for (label, value) in &ratios {
        println!("   {label:<72} {value}");
    }
    println!("   notes: wrk times a request from its write, so new-conn latency excludes the TCP handshake;");
    println!("          its req/s includes connect + redirect + attribution. c{c}: the 2 cores are saturated.");
    println!("   agent: release build, RUST_LOG=warn for access logs, audit log to a file, --max-rps-per-caller 0");
    println!(
        "   checks: agent STS calls during load = {sts_calls_during_load} (all served from cache); audit records dropped = {audit_dropped}; kernel events lost = {events_lost}"
    );

    let grown = ALL_PODS - IDLE_PODS;
    let per_pod = (full.rss_kib as f64 - idle.rss_kib as f64) / grown as f64;
    let per_pod_anon = (full.anon_kib as f64 - idle.anon_kib as f64) / grown as f64;
    println!();
    println!(
        "== Benchmark 2: agent memory (/proc/<pid>/status, median of 5 samples; release build)"
    );
    println!(
        "{:<52} {:>5} {:>12} {:>12} {:>14}",
        "state", "pods", "VmRSS KiB", "RssAnon KiB", "cache entries"
    );
    println!(
        "{:<52} {:>5} {:>12} {:>12} {:>14}",
        "idle, each pod fetched credentials once", IDLE_PODS, idle.rss_kib, idle.anon_kib, ""
    );
    println!(
        "{:<52} {:>5} {:>12} {:>12} {:>14}",
        "after every pod fetched credentials once",
        ALL_PODS,
        full.rss_kib,
        full.anon_kib,
        entries_full
    );
    println!(
        "{:<52} {:>5} {:>12} {:>12} {:>14}",
        "after benchmark 1's load (for reference)",
        ALL_PODS,
        after_load.rss_kib,
        after_load.anon_kib,
        ""
    );
    println!(
        "{:<52} {:>5} {:>12.1} {:>12.1}",
        "per-pod increment (KiB/pod)", grown, per_pod, per_pod_anon
    );
    println!(
        "{:<52} {:>5} {:>12.3}",
        "ratio: VmRSS 50 pods / 4 pods",
        "",
        full.rss_kib as f64 / idle.rss_kib.max(1) as f64
    );
    println!();
    println!(
        "bench: done in {:.0} s ({} pods set up in {:.1} s); node namespaces and cgroups removed",
        total.as_secs_f64(),
        grown,
        pod_setup.as_secs_f64()
    );
    Ok(())
}
