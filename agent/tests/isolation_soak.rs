//! The isolation soak (privileged, simulated node, STS mode with moto's STS): 20
//! pods in 6 service accounts (5 roles, one service account without an
//! association), three load processes at a time per pod sending thousands of
//! requests in random order (the test client with a new connection per request and
//! with keep-alive, `curl` with and without connection reuse), a few AWS CLI and
//! boto3 calls, while pods are deleted and recreated with the same name and
//! address but a new UID (sometimes a new service account), token files are
//! swapped between pods and a role moves from one service account to another.
//!
//! Every response is checked against the pod that made it, by what the
//! credentials are, not by what the agent says: each `AccessKeyId` served is
//! resolved with `GetCallerIdentity` against moto (boto3, in the node netns) to its
//! assumed-role ARN, which names the role and the session, `eks-demo-<pod>-<uuid>`.
//!
//! * **mismatch** (another pod's identity): a session naming another pod, a key
//!   also served to another pod, a role (or a `404` naming a service account) the
//!   pod never had;
//! * **stale**: the pod's state before a change (its previous role, its previous
//!   incarnation's credentials, a `404` it had before) in a response to a request
//!   that started after the change was visible (the agent answered a probe from
//!   that pod per the new state).
//!
//! A response may match any state the pod had during the request: from the moment
//! a change is made until it is visible both states are right. Both counts must
//! be zero; the counts are printed.

mod support;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, RwLock,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use pod_identity_agent::testing::fake_pod_token;
use serde_json::{json, Value};
use support::*;
use testnode::Node;

const PODS: usize = 20;
/// Load processes running at the same time in each pod.
const WORKERS_PER_POD: usize = 3;
/// The load runs at least this long (and until the churn is done), at most `MAX_LOAD`.
const LOAD: Duration = Duration::from_secs(50);
const MAX_LOAD: Duration = Duration::from_secs(110);
/// Bound by count too: batches per worker (each at most 20 requests).
const MAX_BATCHES: usize = 300;
/// How long a change may take to be visible (the pods file is polled every 2 s).
const VISIBLE_WITHIN: Duration = Duration::from_secs(20);
/// AWS CLI and boto3 calls (about 1 s each).
const SDK_CALLS: usize = 16;

/// Service accounts and their roles at the start (the last has no association).
const SAS: [(&str, Option<&str>); 6] = [
    ("sa-a", Some("role-a")),
    ("sa-b", Some("role-b")),
    ("sa-c", Some("role-c")),
    ("sa-d", Some("role-d")),
    ("sa-e", Some("role-e")),
    ("sa-none", None),
];

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn pod_name(i: usize) -> String {
    format!("pod-{i:02}")
}

/// A UUID-shaped pod UID for incarnation `gen` of pod `i`.
fn pod_uid(i: usize, gen: usize) -> String {
    format!(
        "5c0a{i:04x}-{gen:04x}-4000-8000-{:012x}",
        std::process::id()
    )
}

/// xorshift64*: the load's random order (seed printed, `PIA_SOAK_SEED` replays it).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    /// The test client, a new connection per request.
    Client,
    /// The test client, requests on one persistent connection.
    ClientKeepAlive,
    /// curl, `Connection: close` on each of several URLs.
    Curl,
    /// curl, several URLs on one reused connection.
    CurlKeepAlive,
    AwsCli,
    Boto3,
}

/// One response, with when its request was made (Unix seconds; for curl the whole
/// invocation).
#[derive(Debug)]
struct Resp {
    pod: usize,
    kind: Kind,
    start: f64,
    end: f64,
    status: u16,
    body: String,
    /// The caller ARN an SDK printed.
    arn: Option<String>,
}

impl Resp {
    fn access_key_id(&self) -> Option<String> {
        if self.status != 200 || self.arn.is_some() {
            return None;
        }
        let v: Value = serde_json::from_str(&self.body).ok()?;
        v["AccessKeyId"].as_str().map(str::to_owned)
    }
}

/// What a pod is between two changes: `made` is when the change was made, `visible`
/// when the agent answered that pod per it.
#[derive(Clone, Debug)]
struct Epoch {
    made: f64,
    visible: f64,
    uid: String,
    sa: String,
    role: Option<String>,
}

/// The epochs a request in `[start, end]` may see: those not yet replaced (visibly)
/// when it started and already made when it ended.
fn allowed(epochs: &[Epoch], start: f64, end: f64) -> Vec<&Epoch> {
    epochs
        .iter()
        .enumerate()
        .filter(|(k, e)| {
            let replaced = epochs.get(k + 1).map_or(f64::INFINITY, |n| n.visible);
            e.made <= end && start < replaced
        })
        .map(|(_, e)| e)
        .collect()
}

/// GetCallerIdentity with served credentials: boto3 in the node netns, against
/// moto, one process for the whole test (killed on drop).
struct Resolver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    arns: HashMap<String, String>,
}

const RESOLVE_PY: &str = r#"
import json, sys, boto3
for line in sys.stdin:
    c = json.loads(line)
    try:
        arn = boto3.client("sts", endpoint_url=sys.argv[1], region_name="us-east-1",
                           aws_access_key_id=c["AccessKeyId"],
                           aws_secret_access_key=c["SecretAccessKey"],
                           aws_session_token=c["Token"]).get_caller_identity()["Arn"]
        print(json.dumps({"arn": arn}), flush=True)
    except Exception as e:
        print(json.dumps({"error": type(e).__name__}), flush=True)
"#;

impl Resolver {
    fn start(node: &Node) -> Resolver {
        let mut c = node.node_command("python3");
        c.args(["-c", RESOLVE_PY, &sts_url()])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = c.spawn().expect("spawn the GetCallerIdentity resolver");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Resolver {
            child,
            stdin,
            stdout,
            arns: HashMap::new(),
        }
    }

    /// The assumed-role ARN of the credentials in a 200 body (cached by key).
    fn arn(&mut self, body: &str) -> String {
        let v: Value = serde_json::from_str(body).expect("a 200 body is JSON");
        let akid = v["AccessKeyId"].as_str().expect("AccessKeyId").to_owned();
        if let Some(a) = self.arns.get(&akid) {
            return a.clone();
        }
        writeln!(self.stdin, "{v}").expect("write to the resolver");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the resolver");
        let r: Value = serde_json::from_str(&line).expect("resolver line");
        let arn = r["arn"]
            .as_str()
            .unwrap_or_else(|| panic!("GetCallerIdentity with {akid} failed: {r}"))
            .to_owned();
        self.arns.insert(akid, arn.clone());
        arn
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (role, pod name) of `arn:aws:sts::<account>:assumed-role/<role>/eks-demo-<pod>-<uuid>`.
fn role_and_pod(arn: &str) -> (String, String) {
    let rest = arn
        .split_once(":assumed-role/")
        .unwrap_or_else(|| panic!("not an assumed-role ARN: {arn}"))
        .1;
    let (role, session) = rest.split_once('/').unwrap();
    let pod = session
        .strip_prefix("eks-demo-")
        .filter(|s| s.len() > 37)
        .map(|s| &s[..s.len() - 37])
        .unwrap_or_else(|| panic!("not an EKS session name: {arn}"));
    (role.to_owned(), pod.to_owned())
}

/// Replace `path` atomically (clients read token files at any moment).
fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_file_name(format!(
        "{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn token_exp() -> u64 {
    now() as u64 + 86400
}

/// Write pod `i`'s token file and curl's header file for it.
fn write_token(dir: &Path, i: usize, token: &str) {
    write_atomic(&token_path(dir, i), token);
    write_atomic(&header_path(dir, i), &format!("Authorization: {token}\n"));
}

fn token_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("token-{i:02}"))
}

fn header_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("auth-{i:02}.hdr"))
}

/// What the load threads share.
struct Shared {
    node: RwLock<Node>,
    /// Held (read) while a load process runs in the pod, (write) while it is recreated.
    gates: Vec<RwLock<()>>,
    /// Set while a recreation waits for the gate: new load processes wait.
    pausing: Vec<AtomicBool>,
    dir: PathBuf,
    responses: Mutex<Vec<Resp>>,
    stop: AtomicBool,
    client_errors: Mutex<Vec<String>>,
    /// Connections opened by curl (`num_connects`) and the keep-alive test client.
    connects: Mutex<HashMap<Kind, u64>>,
}

/// Sets `stop` when dropped: the load stops also when the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

const URL: &str = "http://169.254.170.23/v1/credentials";

/// One load process in pod `i`: its responses.
fn run_batch(sh: &Shared, i: usize, kind: Kind, n: usize) -> Vec<Resp> {
    let token = token_path(&sh.dir, i);
    let mut cmd = {
        let node = sh.node.read().unwrap();
        match kind {
            Kind::Client | Kind::ClientKeepAlive => {
                let mut c = node.pod_command(i, "python3");
                c.arg(testnode::CLIENT_PY)
                    .args(["--path", "/v1/credentials", "--count", &n.to_string()])
                    .arg("--token-file")
                    .arg(&token);
                if kind == Kind::ClientKeepAlive {
                    c.arg("--keep-alive");
                }
                c
            }
            Kind::Curl | Kind::CurlKeepAlive => {
                let mut c = node.pod_command(i, "curl");
                c.args(["-sS", "--max-time", "10", "-H"])
                    .arg(format!("@{}", header_path(&sh.dir, i).display()))
                    .args(["-w", "\n@@PIA %{http_code} %{num_connects}\n"]);
                if kind == Kind::Curl {
                    c.args(["-H", "Connection: close"]);
                }
                for _ in 0..n {
                    c.arg(URL);
                }
                c
            }
            Kind::AwsCli | Kind::Boto3 => unreachable!("run_sdk"),
        }
    };
    if kind == Kind::ClientKeepAlive {
        *sh.connects.lock().unwrap().entry(kind).or_default() += 1;
    }
    let start = now();
    let out = cmd.output().expect("run a load process");
    let end = now();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut resps = Vec::new();
    match kind {
        Kind::Client | Kind::ClientKeepAlive => {
            for l in stdout.lines() {
                let Ok(r) = serde_json::from_str::<Value>(l) else {
                    continue;
                };
                let t = r["t"].as_f64().unwrap_or(start);
                resps.push(Resp {
                    pod: i,
                    kind,
                    start: t,
                    end: t + r["ms"].as_f64().unwrap_or(0.0) / 1000.0,
                    status: r["status"].as_u64().unwrap_or(0) as u16,
                    body: r["body"].as_str().unwrap_or_default().to_owned(),
                    arn: None,
                });
            }
        }
        _ => {
            let mut rest: &str = &stdout;
            while let Some(at) = rest.find("\n@@PIA ") {
                let body = &rest[..at];
                let after = &rest[at + 7..];
                let (line, next) = after.split_once('\n').unwrap_or((after, ""));
                let mut f = line.split_whitespace();
                let status = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let connects: u64 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                resps.push(Resp {
                    pod: i,
                    kind,
                    start,
                    end,
                    status,
                    body: body.to_owned(),
                    arn: None,
                });
                *sh.connects.lock().unwrap().entry(kind).or_default() += connects;
                rest = next;
            }
        }
    }
    if resps.len() != n {
        sh.client_errors.lock().unwrap().push(format!(
            "{kind:?} in pod {i}: {} of {n} responses, {}",
            resps.len(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    resps
}

/// An AWS CLI or boto3 `sts get-caller-identity` in pod `i`.
fn run_sdk(sh: &Shared, i: usize, kind: Kind) -> Resp {
    let sdk = if kind == Kind::AwsCli {
        Sdk::Cli
    } else {
        Sdk::Boto3
    };
    let mut cmd = {
        let node = sh.node.read().unwrap();
        sdk_command(&node, i, sdk, &token_path(&sh.dir, i), &sh.dir)
    };
    let start = now();
    let out = cmd.output().expect("run an SDK client");
    let end = now();
    let (status, arn, body) = match sdk_result(out) {
        Ok(arn) => (200, Some(arn), String::new()),
        Err(e) => (0, None, e),
    };
    Resp {
        pod: i,
        kind,
        start,
        end,
        status,
        body,
        arn,
    }
}

fn load_worker(sh: &Shared, i: usize, seed: u64, deadline: Instant) {
    let mut rng = Rng(seed | 1);
    let mut batches = 0;
    while !sh.stop.load(Ordering::SeqCst) && Instant::now() < deadline && batches < MAX_BATCHES {
        batches += 1;
        let (kind, n) = match rng.below(10) {
            0..=3 => (Kind::Client, 1 + rng.below(8)),
            4..=5 => (Kind::ClientKeepAlive, 2 + rng.below(19)),
            6..=7 => (Kind::Curl, 1 + rng.below(8)),
            _ => (Kind::CurlKeepAlive, 2 + rng.below(19)),
        };
        while sh.pausing[i].load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let resps = {
            let _gate = sh.gates[i].read().unwrap();
            run_batch(sh, i, kind, n as usize)
        };
        sh.responses.lock().unwrap().extend(resps);
        std::thread::sleep(Duration::from_millis(200 + rng.below(600)));
    }
}

/// The test's view of the node: per pod its epochs, the associations.
struct World {
    epochs: Vec<Vec<Epoch>>,
    assoc: BTreeMap<String, String>,
    pods_json: Vec<Value>,
    gens: Vec<usize>,
}

impl World {
    fn role_of(&self, sa: &str) -> Option<String> {
        self.assoc.get(sa).cloned()
    }
    fn current(&self, i: usize) -> &Epoch {
        self.epochs[i].last().unwrap()
    }
    fn write_pods(&self, dir: &Path) {
        write_json(&dir.join("pods.json"), &json!({"pods": self.pods_json}));
    }
    fn write_assoc(&self, dir: &Path) {
        let list: Vec<Value> = self
            .assoc
            .iter()
            .map(
                |(sa, r)| json!({"namespace": "default", "serviceAccount": sa, "roleArn": role(r)}),
            )
            .collect();
        write_json(
            &dir.join("associations.json"),
            &json!({ "associations": list }),
        );
    }
}

/// Poll pod `i` until the agent answers per its newest epoch (credentials of the
/// epoch's role not served to it before the change, or the 404 naming its service
/// account); set the epoch's `visible`. Returns how long that took.
fn wait_visible(sh: &Shared, world: &mut World, res: &Mutex<Resolver>, i: usize) -> f64 {
    let e = world.current(i).clone();
    let t = Instant::now();
    world.epochs[i].last_mut().unwrap().visible = probe_until(sh, res, i, &e);
    t.elapsed().as_secs_f64()
}

/// Probe pod `i` until the agent answers per `e`; when it did (Unix seconds).
fn probe_until(sh: &Shared, res: &Mutex<Resolver>, i: usize, e: &Epoch) -> f64 {
    let before: HashSet<String> = sh
        .responses
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.pod == i && r.end < e.made)
        .filter_map(Resp::access_key_id)
        .collect();
    let end = Instant::now() + VISIBLE_WITHIN;
    let mut last = String::new();
    wait_for(
        &format!("pod {i} to be answered per its new state {e:?}"),
        VISIBLE_WITHIN + Duration::from_secs(5),
        || {
            assert!(
                Instant::now() < end,
                "pod {i} not answered per its new state {e:?} within {VISIBLE_WITHIN:?}; last answer: {last}"
            );
            let mut r = run_batch(sh, i, Kind::Client, 1).pop()?;
            last = match r.access_key_id() {
                Some(k) => format!("200 {k} {}", res.lock().unwrap().arn(&r.body)),
                None => format!("{} {}", r.status, r.body),
            };
            let ok = match &e.role {
                Some(role) => {
                    r.status == 200
                        && !before.contains(&r.access_key_id()?)
                        && role_and_pod(&res.lock().unwrap().arn(&r.body)).0 == *role
                }
                None => {
                    r.status == 404
                        && r.body.contains(&format!(
                            "No Pod Identity association for service account default/{}",
                            e.sa
                        ))
                }
            };
            // The probe's own response is checked like every other one.
            r.kind = Kind::Client;
            let end = r.end;
            sh.responses.lock().unwrap().push(r);
            ok.then_some(end)
        },
    )
}

/// Delete pod `i` and create it again (same name, netns, address) with a new UID
/// and service account `sa`, a new token for it, and the pods file updated.
fn recreate(sh: &Shared, world: &mut World, i: usize, sa: &str) {
    // New load processes wait; running ones finish.
    sh.pausing[i].store(true, Ordering::SeqCst);
    let _gate = sh.gates[i].write().unwrap();
    sh.pausing[i].store(false, Ordering::SeqCst);
    let made = now();
    world.gens[i] += 1;
    let uid = pod_uid(i, world.gens[i]);
    sh.node.write().unwrap().recreate_pod(i, &uid);
    let node = sh.node.read().unwrap();
    world.pods_json[i] = pod_json(&node, i, "default", sa, json!({}));
    drop(node);
    write_token(
        &sh.dir,
        i,
        &fake_pod_token("default", sa, &pod_name(i), &uid, token_exp()),
    );
    world.write_pods(&sh.dir);
    let role = world.role_of(sa);
    world.epochs[i].push(Epoch {
        made,
        visible: f64::INFINITY,
        uid,
        sa: sa.to_owned(),
        role,
    });
}

/// Swap the token (and curl header) files of pods `a` and `b`.
fn swap_tokens(dir: &Path, a: usize, b: usize) {
    let ta = std::fs::read_to_string(token_path(dir, a)).unwrap();
    let tb = std::fs::read_to_string(token_path(dir, b)).unwrap();
    write_token(dir, a, &tb);
    write_token(dir, b, &ta);
}

#[derive(Default, Debug)]
struct Verdicts {
    ok: u64,
    mismatch: Vec<String>,
    stale: Vec<String>,
    other: BTreeMap<u16, u64>,
}

#[test]
fn no_pod_ever_gets_another_pods_identity_or_a_stale_one() {
    let t0 = Instant::now();
    let seed = std::env::var("PIA_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now().to_bits());
    eprintln!("soak seed {seed} (PIA_SOAK_SEED={seed} replays the order)");

    // The node: 20 pods, their tokens, the pods and associations files, moto, the agent.
    let mut node = Node::new();
    let dir = tempfile::tempdir().unwrap();
    let mut world = World {
        epochs: Vec::new(),
        assoc: SAS
            .iter()
            .filter_map(|(sa, r)| r.map(|r| (sa.to_string(), r.to_string())))
            .collect(),
        pods_json: Vec::new(),
        gens: vec![0; PODS],
    };
    for i in 0..PODS {
        let (sa, _) = SAS[i % SAS.len()];
        let uid = pod_uid(i, 0);
        node.add_pod(&pod_name(i), &uid, false);
        world
            .pods_json
            .push(pod_json(&node, i, "default", sa, json!({})));
        write_token(
            dir.path(),
            i,
            &fake_pod_token("default", sa, &pod_name(i), &uid, token_exp()),
        );
        let role = world.role_of(sa);
        world.epochs.push(vec![Epoch {
            made: f64::NEG_INFINITY,
            visible: f64::NEG_INFINITY,
            uid,
            sa: sa.to_owned(),
            role,
        }]);
    }
    world.write_pods(dir.path());
    world.write_assoc(dir.path());
    let sts = start_sts(&mut node);
    let mut s = Scenario {
        node,
        dir,
        pods: Vec::new(),
        tokens: Vec::new(),
        sts,
        sts_endpoint: None,
    };
    s.start_agent(&[]);
    let Scenario { node, dir, .. } = s;
    let resolver = Mutex::new(Resolver::start(&node));
    let sh = Shared {
        node: RwLock::new(node),
        gates: (0..PODS).map(|_| RwLock::new(())).collect(),
        pausing: (0..PODS).map(|_| AtomicBool::new(false)).collect(),
        dir: dir.path().to_owned(),
        responses: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        client_errors: Mutex::new(Vec::new()),
        connects: Mutex::new(HashMap::new()),
    };
    // Every pod answered per its state once before the load (moto's first calls are
    // slow on a busy machine): the soak measures isolation, not a cold start.
    std::thread::scope(|probes| {
        for i in 0..PODS {
            let (sh, resolver, e) = (&sh, &resolver, world.current(i).clone());
            probes.spawn(move || probe_until(sh, resolver, i, &e));
        }
    });
    let setup = t0.elapsed();

    // Load and churn.
    let load_start = Instant::now();
    let load_t0 = now();
    let hard_deadline = load_start + MAX_LOAD;
    let mut churn_log: Vec<String> = Vec::new();
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&sh.stop);
        let sh = &sh;
        let mut workers = Vec::new();
        for i in 0..PODS {
            for w in 0..WORKERS_PER_POD {
                let seed = seed
                    ^ ((i * WORKERS_PER_POD + w + 1) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                workers.push(scope.spawn(move || load_worker(sh, i, seed, hard_deadline)));
            }
        }
        // A few AWS CLI and boto3 calls through the run, on pods of every role.
        let sdk: Vec<_> = [Kind::AwsCli, Kind::Boto3]
            .into_iter()
            .map(|kind| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for c in 0..SDK_CALLS / 2 {
                        if sh.stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let pod = [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 18]
                            [(2 * c + (kind == Kind::Boto3) as usize) % 16];
                        while sh.pausing[pod].load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        // Not killed by a recreation half-way.
                        let _gate = sh.gates[pod].read().unwrap();
                        out.push(run_sdk(sh, pod, kind));
                    }
                    out
                })
            })
            .collect();

        // Changes 3 s apart (after the previous one was visible), from 4 s in.
        let gap = || std::thread::sleep(Duration::from_secs(3));
        let mut log = |what: String| {
            eprintln!("churn @{:.1}s: {what}", load_start.elapsed().as_secs_f64());
            churn_log.push(what);
        };
        std::thread::sleep(Duration::from_secs(4));
        swap_tokens(&sh.dir, 0, 1);
        log("token files of pod-00 and pod-01 swapped".into());
        gap();
        recreate(sh, &mut world, 2, "sa-c");
        let v = wait_visible(sh, &mut world, &resolver, 2);
        log(format!(
            "pod-02 recreated (new UID, same sa-c): visible in {v:.1}s"
        ));
        gap();
        recreate(sh, &mut world, 3, "sa-a");
        let v = wait_visible(sh, &mut world, &resolver, 3);
        log(format!(
            "pod-03 recreated (new UID, sa-d → sa-a): visible in {v:.1}s"
        ));
        gap();
        // role-c moves from sa-c to sa-none.
        let made = now();
        world.assoc.remove("sa-c");
        world.assoc.insert("sa-none".into(), "role-c".into());
        world.write_assoc(&sh.dir);
        let affected: Vec<usize> = (0..PODS)
            .filter(|&i| ["sa-c", "sa-none"].contains(&world.current(i).sa.as_str()))
            .collect();
        for &i in &affected {
            let mut e = world.current(i).clone();
            e.made = made;
            e.visible = f64::INFINITY;
            e.role = world.role_of(&e.sa);
            world.epochs[i].push(e);
        }
        // All affected pods probed at once.
        let t = Instant::now();
        let seen: Vec<f64> = std::thread::scope(|probes| {
            let hs: Vec<_> = affected
                .iter()
                .map(|&i| {
                    let e = world.current(i).clone();
                    let resolver = &resolver;
                    probes.spawn(move || probe_until(sh, resolver, i, &e))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("a probe panicked"))
                .collect()
        });
        for (&i, seen) in affected.iter().zip(seen) {
            world.epochs[i].last_mut().unwrap().visible = seen;
        }
        let worst = t.elapsed().as_secs_f64();
        log(format!(
            "role-c moved from sa-c to sa-none ({} pods): visible in {worst:.1}s",
            affected.len()
        ));
        gap();
        recreate(sh, &mut world, 4, "sa-c");
        let v = wait_visible(sh, &mut world, &resolver, 4);
        log(format!(
            "pod-04 recreated (new UID, sa-e → sa-c, now without association): visible in {v:.1}s"
        ));
        gap();
        recreate(sh, &mut world, 5, "sa-b");
        let v = wait_visible(sh, &mut world, &resolver, 5);
        log(format!(
            "pod-05 recreated (new UID, sa-none → sa-b): visible in {v:.1}s"
        ));
        swap_tokens(&sh.dir, 7, 9);
        log("token files of pod-07 and pod-09 swapped".into());
        gap();
        recreate(sh, &mut world, 0, "sa-a");
        let v = wait_visible(sh, &mut world, &resolver, 0);
        log(format!(
            "pod-00 recreated (new UID, same sa-a, had pod-01's token): visible in {v:.1}s"
        ));
        // Load after the last change too, at least `LOAD` in all.
        std::thread::sleep(Duration::from_secs(4));
        std::thread::sleep((load_start + LOAD).saturating_duration_since(Instant::now()));
        sh.stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().expect("a load worker panicked");
        }
        for t in sdk {
            let calls = t.join().expect("an SDK thread panicked");
            sh.responses.lock().unwrap().extend(calls);
        }
    });
    let load = load_start.elapsed();

    // Judge every response.
    let resps = std::mem::take(&mut *sh.responses.lock().unwrap());
    let mut res = resolver.into_inner().unwrap();
    let mut v = Verdicts::default();
    // Which pod and which incarnations (when only one was possible) each key went to.
    let mut key_pods: HashMap<String, HashSet<usize>> = HashMap::new();
    let mut key_uids: HashMap<String, Vec<(f64, String)>> = HashMap::new();
    for r in &resps {
        let epochs = &world.epochs[r.pod];
        let ok_now = allowed(epochs, r.start, r.end);
        let name = pod_name(r.pod);
        let what = format!("{:?} in {name} at +{:.2}s", r.kind, r.start - load_t0);
        let arn = match (&r.arn, r.status) {
            (Some(a), _) => Some(a.clone()),
            (None, 200) => Some(res.arn(&r.body)),
            _ => None,
        };
        if let Some(arn) = arn {
            let (role, pod) = role_and_pod(&arn);
            if let Some(akid) = r.access_key_id() {
                key_pods.entry(akid.clone()).or_default().insert(r.pod);
                if let [only] = ok_now[..] {
                    key_uids
                        .entry(akid)
                        .or_default()
                        .push((r.start, only.uid.clone()));
                }
            }
            if pod != name {
                v.mismatch.push(format!("{what}: session of {pod}: {arn}"));
            } else if ok_now.iter().any(|e| e.role.as_deref() == Some(&role)) {
                v.ok += 1;
            } else if epochs.iter().any(|e| e.role.as_deref() == Some(&role)) {
                v.stale.push(format!("{what}: earlier role {role} ({arn})"));
            } else {
                v.mismatch
                    .push(format!("{what}: role {role} never its own ({arn})"));
            }
        } else if r.status == 404 && r.body.contains("No Pod Identity association") {
            // "… for service account default/<sa> (pod default/<pod>)"
            let sa = r
                .body
                .split_once("service account default/")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or_default()
                .to_owned();
            let matches = |e: &&Epoch| e.role.is_none() && e.sa == sa;
            if ok_now.iter().any(matches) {
                v.ok += 1;
            } else if epochs.iter().any(|e| matches(&e)) {
                v.stale.push(format!("{what}: earlier 404 for {sa}"));
            } else {
                v.mismatch.push(format!(
                    "{what}: 404 naming {sa:?}, not its state: {}",
                    r.body
                ));
            }
        } else {
            *v.other.entry(r.status).or_default() += 1;
        }
    }
    for (akid, pods) in &key_pods {
        if pods.len() > 1 {
            v.mismatch
                .push(format!("{akid} served to several pods: {pods:?}"));
        }
    }
    // A key seen for sure under one incarnation and then for sure under another:
    // the deleted pod's credentials handed to its successor.
    for (akid, uids) in &key_uids {
        let first = &uids[0].1;
        let later = uids.iter().filter(|(_, u)| u != first).count();
        if later > 0 {
            v.stale.push(format!(
                "{akid}: served to incarnation {first} and {later} times to a later one"
            ));
        }
    }

    // The figures.
    let mut per_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_pod = [0u64; PODS];
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for r in &resps {
        *per_kind.entry(format!("{:?}", r.kind)).or_default() += 1;
        per_pod[r.pod] += 1;
        *statuses.entry(r.status).or_default() += 1;
    }
    let connects = sh.connects.lock().unwrap().clone();
    let conns = |k: Kind| connects.get(&k).copied().unwrap_or(0);
    let sdk: Vec<&Resp> = resps
        .iter()
        .filter(|r| matches!(r.kind, Kind::AwsCli | Kind::Boto3))
        .collect();
    let sdk_ok = sdk.iter().filter(|r| r.arn.is_some()).count();
    let sdk_roles: HashSet<String> = sdk
        .iter()
        .filter_map(|r| r.arn.as_deref().map(|a| role_and_pod(a).0))
        .collect();
    let client_errors = sh.client_errors.lock().unwrap().clone();
    eprintln!("=== isolation soak (seed {seed}) ===");
    eprintln!(
        "set-up {:.1}s, load {:.1}s, {} pods x {WORKERS_PER_POD} load processes at a time",
        setup.as_secs_f64(),
        load.as_secs_f64(),
        PODS
    );
    eprintln!("requests: {} in all; per client: {per_kind:?}", resps.len());
    eprintln!("per pod: {per_pod:?}");
    eprintln!("statuses: {statuses:?}");
    eprintln!(
        "connections: curl {} for {} requests, curl keep-alive {} for {}, test client keep-alive {} for {}",
        conns(Kind::Curl),
        per_kind.get("Curl").unwrap_or(&0),
        conns(Kind::CurlKeepAlive),
        per_kind.get("CurlKeepAlive").unwrap_or(&0),
        conns(Kind::ClientKeepAlive),
        per_kind.get("ClientKeepAlive").unwrap_or(&0)
    );
    eprintln!(
        "AWS CLI / boto3: {} calls, {sdk_ok} answered, roles {sdk_roles:?}",
        sdk.len()
    );
    for r in sdk.iter().filter(|r| r.arn.is_none()) {
        let last = r.body.trim().lines().last().unwrap_or_default();
        eprintln!("  {:?} in {} failed: {last}", r.kind, pod_name(r.pod));
    }
    eprintln!(
        "distinct AccessKeyIds resolved with GetCallerIdentity: {}",
        res.arns.len()
    );
    eprintln!("churn: {churn_log:#?}");
    eprintln!(
        "checked: {} correct, {} mismatches (another pod's identity), {} stale, other statuses {:?}",
        v.ok,
        v.mismatch.len(),
        v.stale.len(),
        v.other
    );
    eprintln!(
        "client processes short of their responses: {}",
        client_errors.len()
    );
    for e in client_errors.iter().take(5) {
        eprintln!("  {e}");
    }
    eprintln!("whole test: {:.1}s", t0.elapsed().as_secs_f64());

    assert!(
        v.mismatch.is_empty(),
        "{} responses with another pod's identity: {:#?}",
        v.mismatch.len(),
        &v.mismatch[..v.mismatch.len().min(20)]
    );
    assert!(
        v.stale.is_empty(),
        "{} stale responses after the change was visible: {:#?}",
        v.stale.len(),
        &v.stale[..v.stale.len().min(20)]
    );
    assert!(resps.len() >= 2000, "a soak of thousands: {}", resps.len());
    for k in [
        "Client",
        "ClientKeepAlive",
        "Curl",
        "CurlKeepAlive",
        "AwsCli",
        "Boto3",
    ] {
        assert!(per_kind.get(k).copied().unwrap_or(0) > 0, "no {k} requests");
    }
    assert!(
        v.ok as f64 >= 0.8 * resps.len() as f64,
        "most responses are credentials or the 404 the pod should get: {} of {}",
        v.ok,
        resps.len()
    );
    // Connections were really reused (and really not).
    assert!(
        conns(Kind::CurlKeepAlive) < *per_kind.get("CurlKeepAlive").unwrap_or(&0) / 2,
        "curl reused its connections: {connects:?}"
    );
    let curl_answered = resps
        .iter()
        .filter(|r| r.kind == Kind::Curl && r.status != 0)
        .count() as u64;
    assert!(
        conns(Kind::Curl) >= curl_answered,
        "curl with Connection: close opened one connection per request: {connects:?}"
    );
    // Slow on a busy machine: at least a few, most answered (a pod without a role
    // at that moment, or a 503 while a pod is recreated, fails them).
    assert!(
        sdk.len() >= 4 && sdk_ok * 3 >= sdk.len() * 2,
        "AWS CLI / boto3 answered: {sdk_ok} of {}",
        sdk.len()
    );
}
