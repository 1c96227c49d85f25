//! `cargo deny check` (run by `cargo xtask test`, alone by `cargo xtask
//! supply-chain`): licenses, bans (incl. duplicate versions), sources (crates.io
//! only) and RustSec advisories of the workspace's dependency tree, configured in
//! `deny.toml`.
//!
//! The advisory database is fetched from RustSec when this machine can reach it
//! (`cargo deny fetch db`); when it cannot, the snapshot committed in
//! `supply-chain/advisory-db.bundle` (a one-commit git bundle; see
//! `supply-chain/README.md`) is checked out in its place, and the run says so and
//! how old the snapshot is. Either way the databases live under
//! `$CARGO_TARGET_DIR/advisory-dbs` (`deny.toml`'s `db-path`).

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{root, run, setup, show, target_dir};

/// cargo-deny, installed from crates.io when missing (about five minutes to
/// build on 2 cores; crates.io ships no prebuilt binary).
const CARGO_DENY_VERSION: &str = "0.20.2";

/// The advisory database's directory as cargo-deny names it for its default URL
/// (`<last path segment>-<xxhash64 of the URL>`, src/advisories/helpers/db.rs).
const DB_DIR: &str = "advisory-db-3157b0e258782691";
const RUSTSEC_URL: &str = "https://github.com/rustsec/advisory-db";

fn install() -> Result<(), String> {
    let have = setup::output(Command::new("cargo").args(["deny", "--version"]));
    if have.contains(CARGO_DENY_VERSION) {
        eprintln!("xtask: cargo-deny {CARGO_DENY_VERSION} present");
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deny {CARGO_DENY_VERSION} (about five minutes)");
    run(Command::new("cargo").args([
        "install",
        "cargo-deny",
        "--locked",
        "--version",
        CARGO_DENY_VERSION,
    ]))
}

fn cargo_deny() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root())
        // deny.toml's db-path: `${CARGO_TARGET_DIR:-target}/advisory-dbs`.
        .env("CARGO_TARGET_DIR", target_dir())
        // Give up on a stalled connection rather than hang the test command.
        .env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
        .env("GIT_HTTP_LOW_SPEED_TIME", "30")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args(["deny", "--all-features"]);
    c
}

fn git(dir: &std::path::Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir);
    c
}

/// The committed snapshot, checked out where cargo-deny looks for the database
/// (anew each time, so cargo-deny's 90-day staleness check measures the checkout,
/// and the note below the snapshot's real age). Its `origin` is RustSec's, so a
/// later fetch that works replaces it with the live database.
fn use_snapshot(why: &str) -> Result<(), String> {
    let bundle = root().join("supply-chain/advisory-db.bundle");
    let dir = target_dir().join("advisory-dbs").join(DB_DIR);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut clone = Command::new("git");
    clone
        .args(["clone", "--quiet", "--branch", "main"])
        .arg(&bundle)
        .arg(&dir);
    run(&mut clone)?;
    run(git(&dir).args(["remote", "set-url", "origin", RUSTSEC_URL]))?;
    let stamp = setup::output(git(&dir).args(["log", "-1", "--format=%ct %cs %s"]));
    let mut words = stamp.trim().splitn(3, ' ');
    let secs: u64 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let date = words.next().unwrap_or("?");
    let subject = words.next().unwrap_or("");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let days = now.saturating_sub(secs) / 86_400;
    eprintln!(
        "xtask: NOTE: the RustSec advisory database could not be fetched ({why}).\n\
         xtask: NOTE: advisories are checked against the committed snapshot of {date} \
         ({days} days old: advisories published since are not known): {subject}.\n\
         xtask: NOTE: refresh it where RustSec can be reached: see supply-chain/README.md."
    );
    if days > 90 {
        eprintln!("xtask: WARNING: the advisory snapshot is more than 90 days old");
    }
    Ok(())
}

/// `cargo deny check`: every check, with the live advisory database or the
/// committed snapshot.
pub fn check() -> Result<(), String> {
    install()?;
    let mut fetch = cargo_deny();
    fetch.args(["fetch", "db"]);
    eprintln!("xtask: $ {}", show(&fetch));
    let fetched = fetch
        .output()
        .map_err(|e| format!("{}: {e}", show(&fetch)))?;
    if fetched.status.success() {
        eprintln!("xtask: RustSec advisory database fetched");
    } else {
        let err = String::from_utf8_lossy(&fetched.stderr);
        let why = err
            .lines()
            .find(|l| l.contains("fatal:") || l.contains("rror"))
            .unwrap_or("fetch failed")
            .trim()
            .to_owned();
        use_snapshot(&why)?;
    }
    // `--offline`: the database as it is now (fetched above, or the snapshot).
    run(cargo_deny().args(["--offline", "check"]))?;
    audit_summary();
    Ok(())
}

/// One line in `cargo audit`'s terms (its JSON report, which cargo deny writes
/// with `--audit-compatible-output`): dependencies scanned, vulnerabilities and
/// warnings found. Informational: `check` above has already decided.
fn audit_summary() {
    let mut c = cargo_deny();
    c.args([
        "--offline",
        "--format",
        "json",
        "check",
        "--audit-compatible-output",
        "advisories",
    ]);
    let out = setup::output(&mut c);
    for report in out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let Some(vulns) = report["vulnerabilities"].as_array() else {
            continue;
        };
        let ids: Vec<&str> = vulns
            .iter()
            .filter_map(|v| v["advisory"]["id"].as_str())
            .collect();
        let warnings: usize = report["warnings"]
            .as_object()
            .map(|w| w.values().filter_map(|v| v.as_array()).map(Vec::len).sum())
            .unwrap_or(0);
        eprintln!(
            "xtask: cargo audit (equivalent): {} dependencies, vulnerabilities: {}, warnings: {warnings}",
            report["lockfile"]["dependency-count"],
            if ids.is_empty() { "none".to_owned() } else { ids.join(", ") },
        );
    }
}
