//! `cargo xtask bench`: the agent measured against the physical limit, on one
//! simulated node, with the real agent (release build) and its eBPF programs, a
//! local STS (moto), and baselines built from the same dependencies (`pia-bench`).
//!
//! These machines are noisy, so nothing here asserts a time: every comparison is
//! measured in the same run, interleaved round by round (the order rotates each
//! round), and printed as absolute numbers and as ratios (per round, then the
//! median and the range over rounds). Targets are printed next to the figures.
//!
//! * **P1** cached credentials vs the limit: `wrk` in a pod through the redirect
//!   against the agent, and the same pod's netns in a cgroup *outside* the attach
//!   subtree (no eBPF runs) against `pia-bench serve` on the node address, which
//!   answers the agent's own response bytes. Keep-alive and a new connection per
//!   request. Also the agent's `/v1/whoami` and STS `AssumeRole` on moto directly.
//! * **P2** the hook's tax on other traffic: `connect()` rate and a short request
//!   (new connection each) to an unrelated address on the node, from a pod and from
//!   a node process, each from a cgroup inside the attach subtree (programs run) and
//!   outside it (they do not).
//! * **P4** scale: agent RSS and lookup latency with 1,000 and 10,000 simulated pods
//!   (cgroups shaped like the kubelet's, a pods file, one cached credential each).
//! * Memory at idle and with 50 real pods, as before.
//!
//! Results: the tables on stdout, `target/bench/bench.json`, and SVG charts under
//! `target/bench/` (see `chart.rs`).
//!
//! Every load generator stops by itself (`wrk -d`, `pia-bench --secs`, under
//! `timeout`); all traffic stays in the simulated node's namespaces; namespaces,
//! cgroups and processes are removed when the `Node` drops.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use testnode::{Cgroup, Node, NODE_ADDR4};

mod burst;
mod chart;
mod report;
mod restart;
mod scale;
mod stats;
mod tax;
mod warm;

use stats::{ratios, summary, Sample};

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
/// P1's baseline (its netns; its cgroup is outside the subtree).
const POD_BASE: usize = 4;
const POD_BASE_CLOSE: usize = 5;
/// P2's pod.
const POD_TAX: usize = 6;
/// The baseline server's port on the node address (P1, P2's unrelated address).
const BASE_PORT: u16 = 8080;

/// `done()` prints one machine-readable line (latencies in microseconds).
const REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%.1f p99_us=%.1f max_us=%.1f connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
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
    // Benchmark the agent as shipped: the image's static (musl) release binary
    // (PIA_BENCH_GLIBC=1: the glibc release build, to compare).
    crate::run(crate::cargo().args(["build", "--release", "-p", "pod-identity-agent"]))?;
    let agent = match std::env::var("PIA_BENCH_GLIBC").as_deref() {
        Ok("1") => crate::target_dir().join("release/pod-identity-agent"),
        _ => crate::image::static_agent()?,
    };
    eprintln!("bench: the agent: {}", agent.display());
    let tool = crate::target_dir().join("release/pia-bench");
    let work = std::env::temp_dir().join(format!("pia-bench-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(io_err(format!("mkdir {}", work.display())))?;
    // Removed on drop, also when a testnode helper panics.
    let work = WorkDir(work);
    bench(&agent, &tool, &work.0)
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

/// The pods file: the node's pods and `sim` simulated ones (uid, name).
fn write_pods_file(node: &Node, sim: &[(String, String)], path: &Path) -> Result<(), String> {
    let pods: Vec<String> = node
        .pods
        .iter()
        .map(|p| (p.uid.as_str(), p.name.as_str()))
        .chain(sim.iter().map(|(u, n)| (u.as_str(), n.as_str())))
        .map(|(uid, name)| {
            format!(
                r#"{{"uid":"{uid}","namespace":"default","name":"{name}","serviceAccount":"bench","hostNetwork":false}}"#
            )
        })
        .collect();
    write_atomic(path, &format!(r#"{{"pods":[{}]}}"#, pods.join(",")))
}

/// A simulated pod: a kubelet-shaped cgroup under the attach subtree (systemd
/// driver, containerd; no process, no netns) and the (uid, name) of its record.
/// `tag` keeps each section's pods apart. Returns the container cgroup too.
fn sim_pod(node: &Node, tag: u8, i: usize) -> Result<(String, String, PathBuf), String> {
    let uid = format!("{tag:02x}{i:06x}-0000-4000-8000-{i:012x}");
    let dir = node.cgroup_root.path().join(format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{:056x}{tag:02x}{i:06x}.scope",
        uid.replace('-', "_"),
        0
    ));
    fs::create_dir_all(&dir).map_err(io_err(format!("mkdir {}", dir.display())))?;
    Ok((uid, format!("sim-{tag:02x}-{i}"), dir))
}

/// Remove simulated pods' cgroups (container and pod level; they hold no process).
fn remove_sim_pods(dirs: &[PathBuf]) {
    for d in dirs {
        if let Some(pod) = d.parent() {
            testnode::remove_cgroup_tree(pod);
        }
    }
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
    // Gauges may be printed as floats.
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|r| r.trim().parse::<f64>().ok())
        })
        .map(|x| x as u64)
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
    /// Mapped files (the binary's own pages, mostly).
    file_kib: u64,
    /// Shared memory (the audit ring buffer's pages the agent touched).
    shmem_kib: u64,
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

/// User + system CPU time of every thread of `pid` so far, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(io_err(format!("/proc/{pid}/stat")))?;
    // Fields after the command name (which may hold spaces): state is field 3,
    // utime and stime are fields 14 and 15, in clock ticks (USER_HZ = 100).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64, String> {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {i}"))
    };
    Ok((tick(14)? + tick(15)?) / 100.0)
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
    let keys = ["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"];
    let mut v: [Vec<u64>; 4] = Default::default();
    for k in 0..5 {
        if k > 0 {
            thread::sleep(Duration::from_millis(200));
        }
        let s = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(io_err(format!("/proc/{pid}/status")))?;
        for (key, xs) in keys.iter().zip(v.iter_mut()) {
            xs.push(status_kib(&s, key)?);
        }
    }
    let [rss_kib, anon_kib, file_kib, shmem_kib] = v.map(|mut xs| {
        xs.sort_unstable();
        xs[2]
    });
    Ok(Mem {
        rss_kib,
        anon_kib,
        file_kib,
        shmem_kib,
    })
}

// === load ===

/// Where a load generator runs: its network namespace, and a cgroup inside the
/// attach subtree (the eBPF programs run on its `connect()`) or outside it (none do).
#[derive(Clone, Copy, Debug)]
enum Place {
    /// Pod `i`'s netns and cgroup.
    Pod(usize),
    /// Pod `i`'s netns, a cgroup outside the subtree.
    PodDetached(usize),
    /// The node netns, a non-pod cgroup inside the subtree (a node daemon).
    NodeAttached,
    /// The node netns, a cgroup outside the subtree.
    NodeDetached,
}

impl Place {
    fn label(self) -> &'static str {
        match self {
            Place::Pod(_) => "pod, attached",
            Place::PodDetached(_) => "pod, detached",
            Place::NodeAttached => "node, attached",
            Place::NodeDetached => "node, detached",
        }
    }
}

/// What a variant runs.
#[derive(Clone, Debug)]
enum Load {
    /// `wrk -t1 -c<conns>` with a Lua script and extra headers.
    Wrk {
        conns: u32,
        url: String,
        script: PathBuf,
        headers: &'static [&'static str],
    },
    /// `pia-bench connect --to <addr>`: blocking `connect()`s, one after another.
    Connect { to: String },
}

#[derive(Clone, Debug)]
struct Variant {
    name: String,
    place: Place,
    load: Load,
    /// The server whose CPU time per request the run reports (agent, baseline).
    server: Option<u32>,
}

impl Variant {
    fn conns(&self) -> u32 {
        match &self.load {
            Load::Wrk { conns, .. } => *conns,
            Load::Connect { .. } => 1,
        }
    }
}

/// The node and what the load generators need.
struct Bench {
    node: Node,
    /// A cgroup outside the attach subtree (created by the bench, removed on drop).
    outside: Cgroup,
    /// A non-pod cgroup inside the subtree, for node processes.
    node_inside: PathBuf,
    tool: PathBuf,
    work: PathBuf,
}

impl Bench {
    fn netns_of(&self, place: Place) -> String {
        match place {
            Place::Pod(i) | Place::PodDetached(i) => self.node.pods[i]
                .netns
                .as_ref()
                .unwrap_or(&self.node.netns)
                .path(),
            Place::NodeAttached | Place::NodeDetached => self.node.netns.path(),
        }
    }

    fn command(&self, place: Place, program: &str) -> Command {
        let netns = self.netns_of(place);
        match place {
            Place::Pod(i) => self.node.pod_command(i, program),
            Place::PodDetached(_) | Place::NodeDetached => {
                testnode::in_cgroup_and_netns(self.outside.path(), &netns, program)
            }
            Place::NodeAttached => {
                testnode::in_cgroup_and_netns(&self.node_inside, &netns, program)
            }
        }
    }

    fn tool_str(&self) -> Result<&str, String> {
        self.tool
            .to_str()
            .ok_or_else(|| "pia-bench path is not UTF-8".into())
    }

    /// The command running `v` for `secs`. `timeout` bounds it even if the
    /// generator misbehaved; its own limit (wrk -d, pia-bench --secs) normally.
    fn load_command(&self, v: &Variant, secs: u32) -> Result<Command, String> {
        let mut c = self.command(v.place, "timeout");
        c.args(["-k", "5", &(secs + 20).to_string()]);
        match &v.load {
            Load::Wrk {
                conns,
                url,
                script,
                headers,
            } => {
                c.args(["wrk", "-t1"])
                    .arg(format!("-c{conns}"))
                    .arg(format!("-d{secs}s"))
                    .args(["--timeout", "5s", "-s"])
                    .arg(script);
                for h in *headers {
                    c.args(["-H", h]);
                }
                c.arg(url);
            }
            Load::Connect { to } => {
                c.args([self.tool_str()?, "connect", "--to", to, "--secs"])
                    .arg(secs.to_string());
            }
        }
        Ok(c)
    }

    /// One run of `v` for `secs`; its `BENCH` line parsed and checked.
    fn run(&self, v: &Variant, secs: u32) -> Result<Sample, String> {
        let mut c = self.load_command(v, secs)?;
        let cpu_before = v.server.map(cpu_seconds).transpose()?;
        let out = c
            .output()
            .map_err(io_err(format!("{} ({})", crate::show(&c), v.name)))?;
        let mut s = parse_output(v, &out)?;
        check(v, &s)?;
        if let (Some(pid), Some(before)) = (v.server, cpu_before) {
            s.server_cpu_us = (cpu_seconds(pid)? - before) * 1e6 / s.requests as f64;
        }
        Ok(s)
    }

    /// Every variant once for 1 s (not counted), then `rounds` rounds of every
    /// variant for `secs` each, the order rotated each round.
    fn interleave(
        &self,
        label: &str,
        variants: &[Variant],
        rounds: usize,
        secs: u32,
    ) -> Result<Vec<Vec<Sample>>, String> {
        eprintln!("bench: {label}: warm-up (1 s per variant, not counted)");
        for v in variants {
            self.run(v, 1)?;
        }
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            eprintln!(
                "bench: {label}: round {}/{rounds} ({} variants × {secs} s, order rotated)",
                round + 1,
                variants.len()
            );
            for k in 0..variants.len() {
                let i = (k + round) % variants.len();
                samples[i].push(self.run(&variants[i], secs)?);
            }
        }
        Ok(samples)
    }
}

/// The `BENCH` line of a generator's output.
fn parse_output(v: &Variant, out: &std::process::Output) -> Result<Sample, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("BENCH "))
        .ok_or_else(|| {
            format!(
                "{} printed no report: {stdout} {}",
                v.name,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    stats::parse_report(line)
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

fn rps(s: &Sample) -> f64 {
    s.rps
}
fn p50(s: &Sample) -> f64 {
    s.p50_us
}
fn p99(s: &Sample) -> f64 {
    s.p99_us
}

fn server_cpu(s: &Sample) -> f64 {
    s.server_cpu_us
}

fn per(samples: &[Sample], f: fn(&Sample) -> f64) -> Vec<f64> {
    samples.iter().map(f).collect()
}

/// Allow many short connections from a netns: reuse TIME_WAIT ports for new
/// connects and widen the ephemeral range (both per network namespace).
fn tune_for_short_connections(netns_path: &str) -> Result<(), String> {
    for kv in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65000",
    ] {
        crate::run(
            Command::new("nsenter")
                .arg(format!("--net={netns_path}"))
                .args(["--", "sysctl", "-q", "-w", kv]),
        )?;
    }
    Ok(())
}

/// The variants' table: median over rounds [min–max].
fn print_table(variants: &[Variant], samples: &[Vec<Sample>], unit: &str) {
    println!(
        "{:<48} {:>5} {:>26} {:>24} {:>26} {:>18} {:>9} {:>6}",
        "variant", "conns", unit, "p50 µs", "p99 µs", "server CPU µs/req", "requests", "errors"
    );
    for (v, s) in variants.iter().zip(samples) {
        let n: u64 = s.iter().map(|s| s.requests).sum();
        let e: u64 = s.iter().map(|s| s.socket_errors + s.non2xx).sum();
        let cpu = if v.server.is_some() {
            summary(&per(s, server_cpu), 1)
        } else {
            "-".to_owned()
        };
        println!(
            "{:<48} {:>5} {:>26} {:>24} {:>26} {:>18} {:>9} {:>6}",
            v.name,
            v.conns(),
            summary(&per(s, rps), 0),
            summary(&per(s, p50), 0),
            summary(&per(s, p99), 0),
            cpu,
            n,
            e
        );
    }
}

fn variants_json(variants: &[Variant], samples: &[Vec<Sample>]) -> Value {
    Value::Array(
        variants
            .iter()
            .zip(samples)
            .map(|(v, s)| {
                json!({
                    "name": v.name,
                    "place": v.place.label(),
                    "conns": v.conns(),
                    "rps": report::spread(&per(s, rps)),
                    "p50_us": report::spread(&per(s, p50)),
                    "p99_us": report::spread(&per(s, p99)),
                    "server_cpu_us_per_request": v.server.map(|_| report::spread(&per(s, server_cpu))),
                    "rounds": s.iter().map(|s| json!({
                        "requests": s.requests, "rps": s.rps, "p50_us": s.p50_us,
                        "p99_us": s.p99_us, "errors": s.socket_errors + s.non2xx,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The agent's credentials response, as a pod gets it (the baseline answers it).
fn capture_response(b: &Bench) -> Result<Vec<u8>, String> {
    let mut c = b.node.pod_command(POD_KEEPALIVE, "python3");
    c.args([
        "-c",
        "import sys,urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=10).read())",
        CRED_URL,
    ]);
    let out = c.output().map_err(io_err("python3 (capture response)"))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!(
            "GET {CRED_URL} from a pod: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// The agent as the bench runs it: STS upstream (moto), the pods and associations
/// files, release build.
fn agent_command(
    node: &Node,
    agent: &Path,
    files: (&Path, &Path),
    audit_log: &Path,
    bpffs_dir: &str,
    probe: &str,
) -> Result<Command, String> {
    let (pods_file, assoc_file) = files;
    let mut a = node.node_command(agent.to_str().ok_or("agent path is not UTF-8")?);
    a.arg("--cgroup")
        .arg(node.cgroup_root.path())
        .args(["--agent-addr4", &NODE_ADDR4.to_string()])
        .args(["--upstream", "sts"])
        .arg("--pods-file")
        .arg(pods_file)
        .arg("--associations-file")
        .arg(assoc_file)
        .args([
            "--sts-endpoint",
            &format!("http://{NODE_ADDR4}:{STS_PORT}"),
            "--region",
            "us-east-1",
        ])
        .args(["--cluster-name", "bench", "--probe-addr", probe])
        .arg("--audit-log")
        .arg(audit_log)
        // Never pin under the machine's /sys/fs/bpf: `none` (detach on exit) or a
        // bpffs the bench mounted.
        .args(["--bpffs-dir", bpffs_dir])
        // The per-caller rate limit (200/s by default) would answer most of the
        // load with 429; the benchmark measures the serving path, so it is off.
        .args(["--max-rps-per-caller", "0"])
        // P4 caches one credential per pod for 10,000 pods; the default bound
        // (2,000, the stock agent's) would make most of its lookups misses.
        .args(["--max-cache-size", "12000"])
        .env("AWS_ACCESS_KEY_ID", "AKIAAGENTBENCH000001")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // Logs as shipped (info): an access line per request, on the log thread.
        .env("RUST_LOG", "info");
    Ok(a)
}

/// Whether section `name` (p2…p6) runs: all of them, unless `PIA_BENCH_SECTIONS`
/// (e.g. `p1,p4`, for working on one target) leaves it out. P1 always runs.
fn selected(name: &str) -> Result<(), String> {
    match std::env::var("PIA_BENCH_SECTIONS") {
        Ok(list) if !list.split(',').any(|s| s.trim().eq_ignore_ascii_case(name)) => {
            Err(format!("skipped (PIA_BENCH_SECTIONS={list})"))
        }
        _ => Ok(()),
    }
}

/// `perf record -g` of the agent, written to `target/bench/perf.data`.
fn perf_record(pid: u32) -> Result<std::process::Child, String> {
    let dir = crate::target_dir().join("bench");
    fs::create_dir_all(&dir).map_err(io_err(format!("mkdir {}", dir.display())))?;
    let out = dir.join("perf.data");
    eprintln!(
        "bench: profiling the agent during P1 into {}",
        out.display()
    );
    Command::new("perf")
        .args(["record", "-F", "499", "-g", "-p", &pid.to_string(), "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io_err("perf record (apt install linux-perf)"))
}

/// Stop `perf record` (SIGINT makes it write its data) and wait for it.
fn perf_stop(mut perf: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
}

/// A section's JSON, or `{"error": …}` when it failed.
fn section<T>(r: &Result<T, String>, f: impl Fn(&T) -> Value) -> Value {
    match r {
        Ok(x) => f(x),
        Err(e) => json!({ "error": e }),
    }
}

// === the benchmark ===

fn bench(agent: &Path, tool: &Path, work: &Path) -> Result<(), String> {
    let t0 = Instant::now();
    let mut node = Node::new();
    add_pods(&mut node, IDLE_PODS);
    let pods_file = work.join("pods.json");
    let assoc_file = work.join("associations.json");
    write_pods_file(&node, &[], &pods_file)?;
    write_atomic(
        &assoc_file,
        &format!(
            r#"{{"associations":[{{"namespace":"default","serviceAccount":"bench","roleArn":"arn:aws:iam::{ACCOUNT}:role/bench"}}]}}"#
        ),
    )?;

    // moto logs every request; to a file, not through our terminal. The log is
    // also the upstream's own count of calls (one line per request).
    let mut sts = node.node_command("moto_server");
    sts.args(["-H", &NODE_ADDR4.to_string(), "-p", &STS_PORT.to_string()]);
    spawn_logged(
        &mut node,
        sts,
        &work.join("sts.log"),
        "Running on",
        Duration::from_secs(30),
    )?;

    let a = agent_command(
        &node,
        agent,
        (&pods_file, &assoc_file),
        &work.join("audit.log"),
        "none",
        PROBE,
    )?;
    let handle = node.spawn_until(a, "pod-identity-agent ready", Duration::from_secs(30));
    let pid = agent_pid(&node, handle)?;

    // --- Memory first, on a fresh agent: before any load.
    eprintln!("bench: memory: {IDLE_PODS} pods, each fetching credentials once");
    for i in 0..IDLE_PODS {
        fetch_once(&node, i)?;
    }
    thread::sleep(Duration::from_secs(2));
    let idle = memory(pid)?;

    let t_pods = Instant::now();
    add_pods(&mut node, ALL_PODS);
    let pod_setup = t_pods.elapsed();
    write_pods_file(&node, &[], &pods_file)?;
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

    // --- The baseline server and the load generators' cgroups.
    let outside = Cgroup::create(
        testnode::cgroup2_mount().join(format!("pia-test-{}-bench-outside", node.id)),
    );
    let node_inside = node
        .cgroup_root
        .path()
        .join("system.slice/bench-node-daemon.service");
    fs::create_dir_all(&node_inside).map_err(io_err(format!("mkdir {}", node_inside.display())))?;
    let body = work.join("credentials-response.json");
    let mut b = Bench {
        node,
        outside,
        node_inside,
        tool: tool.to_path_buf(),
        work: work.to_path_buf(),
    };
    fs::write(&body, capture_response(&b)?).map_err(io_err("write the captured response"))?;
    let mut serve = b.node.node_command(b.tool_str()?);
    serve
        .arg("serve")
        .args(["--listen", &format!("{NODE_ADDR4}:{BASE_PORT}"), "--body"])
        .arg(&body);
    let serve = b
        .node
        .spawn_until(serve, "pia-bench serving", Duration::from_secs(10));
    for i in [POD_CLOSE, POD_BASE_CLOSE, POD_TAX] {
        tune_for_short_connections(&b.netns_of(Place::Pod(i)))?;
    }
    tune_for_short_connections(&b.node.netns.path())?;

    // --- P1: interleaved load variants.
    let report_lua = work.join("report.lua");
    let sts_script = work.join("sts.lua");
    fs::write(&report_lua, REPORT_LUA).map_err(io_err("write report.lua"))?;
    fs::write(&sts_script, sts_lua()).map_err(io_err("write sts.lua"))?;
    let sts_url = format!("http://{NODE_ADDR4}:{STS_PORT}/");
    let base_url = format!("http://{NODE_ADDR4}:{BASE_PORT}/v1/credentials");
    let serve_pid = b.node.pid(serve);
    let wrk = |name: &str, place: Place, conns: u32, url: &str, script: &Path, headers| Variant {
        server: match place {
            Place::PodDetached(_) => Some(serve_pid),
            _ if url.starts_with(&sts_url) => None,
            _ => Some(pid),
        },
        name: name.to_owned(),
        place,
        load: Load::Wrk {
            conns,
            url: url.to_owned(),
            script: script.to_path_buf(),
            headers,
        },
    };
    const CLOSE: &[&str] = &["Connection: close"];
    let variants = [
        wrk(
            "agent /v1/credentials, keep-alive",
            Place::Pod(POD_KEEPALIVE),
            CONNS,
            CRED_URL,
            &report_lua,
            &[],
        ),
        wrk(
            "baseline (hyper, no eBPF), keep-alive",
            Place::PodDetached(POD_BASE),
            CONNS,
            &base_url,
            &report_lua,
            &[],
        ),
        wrk(
            "agent /v1/credentials, new conn/request",
            Place::Pod(POD_CLOSE),
            CONNS,
            CRED_URL,
            &report_lua,
            CLOSE,
        ),
        wrk(
            "baseline (hyper, no eBPF), new conn/request",
            Place::PodDetached(POD_BASE_CLOSE),
            CONNS,
            &base_url,
            &report_lua,
            CLOSE,
        ),
        wrk(
            "agent /v1/whoami, keep-alive",
            Place::Pod(POD_WHOAMI),
            CONNS,
            WHOAMI_URL,
            &report_lua,
            &[],
        ),
        wrk(
            "STS AssumeRole direct (moto)",
            Place::Pod(POD_STS),
            CONNS,
            &sts_url,
            &sts_script,
            &[],
        ),
        wrk(
            "agent /v1/credentials, keep-alive",
            Place::Pod(POD_KEEPALIVE),
            1,
            CRED_URL,
            &report_lua,
            &[],
        ),
        wrk(
            "STS AssumeRole direct (moto)",
            Place::Pod(POD_STS),
            1,
            &sts_url,
            &sts_script,
            &[],
        ),
    ];
    const KEEP8: usize = 0;
    const BASE8: usize = 1;
    const CLOSE8: usize = 2;
    const BASECLOSE8: usize = 3;
    const WHOAMI8: usize = 4;
    const STS8: usize = 5;
    const KEEP1: usize = 6;
    const STS1: usize = 7;
    // PIA_BENCH_PERF=1: a call-graph profile of the agent during P1 (perf.data).
    let profile = match std::env::var("PIA_BENCH_PERF").as_deref() {
        Ok("1") => Some(perf_record(pid)?),
        _ => None,
    };
    let samples = b.interleave("P1", &variants, ROUNDS, SECS);
    if let Some(p) = profile {
        perf_stop(p);
    }
    let samples = samples?;
    let m = metrics(&b.node)?;
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
                variants[i].name,
                variants[i].conns()
            ));
        }
    }

    // --- P2: the hook's tax on other traffic.
    let tax = selected("p2").and_then(|_| tax::run(&b, &report_lua));

    // --- P5 and P3 (before P4: they use a small pods file).
    let warm = selected("p5").and_then(|_| warm::run(&b, &pods_file));
    let burst = selected("p3").and_then(|_| burst::run(&b, &pods_file, &work.join("sts.log")));

    // --- P4: scale.
    let scale = selected("p4").and_then(|_| scale::run(&mut b, &pods_file, pid));

    if !b.node.is_running(handle) {
        return Err("the agent exited during the benchmark".into());
    }

    // --- P6: the agent replaced under load (ends the first agent).
    let restart = selected("p6").and_then(|_| {
        restart::run(
            &mut b,
            handle,
            agent,
            (&pods_file, &assoc_file),
            &report_lua,
        )
    });
    let total = t0.elapsed();
    drop(b);

    // --- Report.
    let s = |i: usize| &samples[i][..];
    let r = |a: usize, bb: usize, f: fn(&Sample) -> f64| ratios(&per(s(a), f), &per(s(bb), f));
    println!();
    println!("== P1: cached credentials vs the limit (wrk -t1 in a pod; {ROUNDS} rounds × {SECS} s per variant, interleaved)");
    println!("   values: median over rounds [min–max]; latency in µs. Baseline: pia-bench serve (hyper, same response bytes) on the node address, client cgroup outside the eBPF subtree");
    print_table(&variants, &samples, "req/s");
    let c = CONNS;
    let p1 = [
        (
            "keep-alive: agent / baseline, throughput",
            r(KEEP8, BASE8, rps),
            "≥ 0.90",
        ),
        (
            "keep-alive: agent / baseline, p50",
            r(KEEP8, BASE8, p50),
            "",
        ),
        (
            "keep-alive: agent / baseline, p99",
            r(KEEP8, BASE8, p99),
            "≤ 1.20",
        ),
        (
            "new conn/request: agent / baseline, throughput",
            r(CLOSE8, BASECLOSE8, rps),
            "≥ 0.90",
        ),
        (
            "new conn/request: agent / baseline, p50",
            r(CLOSE8, BASECLOSE8, p50),
            "",
        ),
        (
            "new conn/request: agent / baseline, p99",
            r(CLOSE8, BASECLOSE8, p99),
            "≤ 1.20",
        ),
        (
            "keep-alive: agent / baseline, server CPU per request",
            r(KEEP8, BASE8, server_cpu),
            "",
        ),
        (
            "new conn/request: agent / baseline, server CPU per request",
            r(CLOSE8, BASECLOSE8, server_cpu),
            "",
        ),
        (
            "credentials / whoami, throughput (keep-alive)",
            r(KEEP8, WHOAMI8, rps),
            "",
        ),
        (
            "cached credentials / STS AssumeRole, throughput",
            r(KEEP8, STS8, rps),
            "",
        ),
        (
            "STS AssumeRole / cached credentials, p50 (c1)",
            r(STS1, KEEP1, p50),
            "",
        ),
    ];
    println!();
    println!("   ratios (c{c} unless said; per round, median [min–max]):");
    for (label, xs, target) in &p1 {
        println!(
            "   {label:<60} {:<22} {}",
            summary(xs, 2),
            report::target_note(xs, target)
        );
    }
    println!("   notes: wrk times a request from its write, so new-conn latency excludes the TCP handshake;");
    println!("          its req/s includes connect + redirect + attribution. c{c}: the 2 cores are saturated.");
    println!(
        "   checks: agent STS calls during load = {sts_calls_during_load} (all served from cache); audit records dropped = {audit_dropped}; kernel events lost = {events_lost}"
    );

    // A section that failed is reported, the others still are; the bench fails.
    let mut failed = Vec::new();
    let mut show = |name: &str, r: Result<(), &String>| {
        if let Err(e) = r {
            println!();
            println!("== {name}: FAILED: {e}");
            failed.push(format!("{name}: {e}"));
        }
    };
    show("P2", tax.as_ref().map(tax::print));
    show("P3", burst.as_ref().map(burst::print));
    show("P4", scale.as_ref().map(|s| scale::print(s)));
    show("P5", warm.as_ref().map(warm::print));
    show("P6", restart.as_ref().map(restart::print));

    let grown = ALL_PODS - IDLE_PODS;
    let per_pod = (full.rss_kib as f64 - idle.rss_kib as f64) / grown as f64;
    println!();
    println!("== Memory with real pods (/proc/<pid>/status, median of 5 samples; release build)");
    println!(
        "{:<52} {:>5} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "state", "pods", "VmRSS KiB", "RssAnon KiB", "RssFile KiB", "RssShmem KiB", "cache entries"
    );
    for (label, pods, mem, entries) in [
        (
            "idle, each pod fetched credentials once",
            IDLE_PODS,
            idle,
            String::new(),
        ),
        (
            "after every pod fetched credentials once",
            ALL_PODS,
            full,
            entries_full.to_string(),
        ),
        (
            "after P1's load (for reference)",
            ALL_PODS,
            after_load,
            String::new(),
        ),
    ] {
        println!(
            "{label:<52} {pods:>5} {:>12} {:>12} {:>12} {:>12} {entries:>14}",
            mem.rss_kib, mem.anon_kib, mem.file_kib, mem.shmem_kib
        );
    }
    println!(
        "{:<52} {:>5} {per_pod:>12.1}",
        "per-pod increment (KiB/pod)", grown
    );

    let doc = json!({
        "machine": report::machine(),
        "total_seconds": total.as_secs_f64(),
        "rounds": ROUNDS,
        "seconds_per_variant": SECS,
        "p1": {
            "variants": variants_json(&variants, &samples),
            "ratios": p1.iter().map(|(label, xs, target)| json!({
                "name": label, "per_round": xs, "spread": report::spread(xs), "target": target,
            })).collect::<Vec<_>>(),
            "agent_sts_calls_during_load": sts_calls_during_load,
        },
        "p2": section(&tax, tax::json),
        "p3": section(&burst, burst::json),
        "p4": section(&scale, |s| scale::json(s)),
        "p5": section(&warm, warm::json),
        "p6": section(&restart, restart::json),
        "memory_real_pods": {
            "idle": {"pods": IDLE_PODS, "rss_kib": idle.rss_kib, "anon_kib": idle.anon_kib},
            "all": {"pods": ALL_PODS, "rss_kib": full.rss_kib, "anon_kib": full.anon_kib, "cache_entries": entries_full},
            "after_load": {"pods": ALL_PODS, "rss_kib": after_load.rss_kib, "anon_kib": after_load.anon_kib},
        },
    });
    let out = crate::target_dir().join("bench");
    fs::create_dir_all(&out).map_err(io_err(format!("mkdir {}", out.display())))?;
    report::write_json(&out.join("bench.json"), &doc)?;
    chart::write(
        &out.join("p1-latency.svg"),
        &chart::latency_svg(&[
            ("agent, keep-alive", s(KEEP8)),
            ("baseline, keep-alive", s(BASE8)),
            ("agent, new conn", s(CLOSE8)),
            ("baseline, new conn", s(BASECLOSE8)),
        ]),
    )?;
    if let Ok(scale) = &scale {
        chart::write(
            &out.join("p4-memory.svg"),
            &chart::memory_svg(&scale::memory_points(scale), &scale::TARGETS_MIB),
        )?;
    }
    println!();
    println!(
        "bench: done in {:.0} s ({} pods set up in {:.1} s); results in {}",
        total.as_secs_f64(),
        grown,
        pod_setup.as_secs_f64(),
        out.display()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "bench: {} section(s) failed: {}",
            failed.len(),
            failed.join("; ")
        ))
    }
}
