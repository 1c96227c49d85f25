//! P6: the agent replaced under load. Two agents pin into a bpffs the bench mounted
//! (so the redirect stays while they change); a pod asks with a new connection per
//! request (as SDKs do) while a second agent starts, takes the listening sockets
//! over, and the first is killed. Compared with the same load against one agent.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{
    agent_command, fetch_once, io_err, parse_output, Bench, Load, Place, Sample, Variant, CONNS,
    CRED_URL, POD_CLOSE,
};

/// Length of each load run; the new agent starts `LEAD` into the second.
const SECS: u32 = 8;
const LEAD: Duration = Duration::from_secs(2);

pub struct Restart {
    steady: Sample,
    during: Sample,
    /// From starting the new agent to its readiness line (it has the sockets).
    takeover_ms: f64,
}

pub fn run(
    b: &mut Bench,
    main_agent: usize,
    agent: &Path,
    files: (&Path, &Path),
    report_lua: &Path,
) -> Result<Restart, String> {
    eprintln!("bench: P6: agent replaced under load (pins in a bpffs mounted by the bench)");
    b.node.kill(main_agent);
    thread::sleep(Duration::from_millis(500));
    let bpffs = testnode::BpfFs::mount();
    let pins = bpffs.path().join("pod-identity-agent");
    let pins = pins.to_str().ok_or("bpffs path is not UTF-8")?.to_owned();
    let start = |b: &mut Bench, n: u32| -> Result<usize, String> {
        let cmd = agent_command(
            &b.node,
            agent,
            files,
            &b.work.join(format!("audit-p6-{n}.log")),
            &pins,
            // The probe listener is not handed over: one port per agent.
            &format!("127.0.0.1:{}", 2720 + n),
        )?;
        Ok(b.node
            .spawn_until(cmd, "pod-identity-agent ready", Duration::from_secs(30)))
    };
    let first = start(b, 1)?;
    fetch_once(&b.node, POD_CLOSE)?;
    let v = Variant {
        name: "agent /v1/credentials, new conn/request".into(),
        place: Place::Pod(POD_CLOSE),
        load: Load::Wrk {
            conns: CONNS,
            url: CRED_URL.into(),
            script: report_lua.to_path_buf(),
            headers: &["Connection: close"],
        },
        server: None,
    };
    let run = |b: &Bench| -> Result<std::process::Child, String> {
        let mut c = b.load_command(&v, SECS)?;
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().map_err(io_err("spawn wrk (P6)"))
    };
    let steady = parse_output(
        &v,
        &run(b)?
            .wait_with_output()
            .map_err(io_err("wait for wrk (P6)"))?,
    )?;
    let load = run(b)?;
    thread::sleep(LEAD);
    let t = Instant::now();
    let second = start(b, 2)?;
    let takeover_ms = t.elapsed().as_secs_f64() * 1e3;
    thread::sleep(Duration::from_millis(500));
    b.node.kill(first);
    let during = parse_output(
        &v,
        &load
            .wait_with_output()
            .map_err(io_err("wait for wrk (P6)"))?,
    )?;
    b.node.kill(second);
    drop(bpffs);
    Ok(Restart {
        steady,
        during,
        takeover_ms,
    })
}

pub fn print(r: &Restart) {
    println!();
    println!("== P6: agent replaced under load (wrk c{CONNS}, new conn/request, {SECS} s; second agent started {LEAD:?} in, first killed 0.5 s after it is ready)");
    println!(
        "{:<26} {:>9} {:>9} {:>8} {:>10} {:>10} {:>10}",
        "run", "requests", "refused", "non-2xx", "p50 µs", "p99 µs", "max µs"
    );
    for (label, s) in [("one agent", &r.steady), ("agent replaced", &r.during)] {
        println!(
            "{label:<26} {:>9} {:>9} {:>8} {:>10.0} {:>10.0} {:>10.0}",
            s.requests, s.socket_errors, s.non2xx, s.p50_us, s.p99_us, s.max_us
        );
    }
    println!(
        "   new agent ready (sockets taken over) {:.0} ms after its start; longest delay added ≈ {:.0} ms (max − max)",
        r.takeover_ms,
        (r.during.max_us - r.steady.max_us).max(0.0) / 1e3
    );
}

pub fn json(r: &Restart) -> Value {
    let s = |s: &Sample| {
        json!({"requests": s.requests, "refused": s.socket_errors, "non2xx": s.non2xx,
               "p50_us": s.p50_us, "p99_us": s.p99_us, "max_us": s.max_us})
    };
    json!({ "one_agent": s(&r.steady), "agent_replaced": s(&r.during), "takeover_ms": r.takeover_ms })
}
