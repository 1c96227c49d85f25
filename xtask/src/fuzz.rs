//! `cargo xtask fuzz [--target T]... [--secs N]`: the libFuzzer targets of `fuzz/`
//! (cgroup paths, pod tokens, request bytes, the pods and associations files, the
//! config file), each run for N seconds (default 60); `cargo xtask test` runs each
//! for [`TEST_SECS`]. A crash fails the task; libFuzzer saves the input under
//! `fuzz/artifacts/<target>/` and prints how to replay it (every crash found
//! becomes a unit test in the agent, beside the code it broke).
//!
//! Settings, chosen for build cost and what can go wrong in this code:
//!
//! * `--sanitizer none`: the agent is `forbid(unsafe_code)` outside the eBPF
//!   loader, which no target reaches, so AddressSanitizer would look for memory
//!   errors that safe Rust cannot make, at about twice the run time and a second
//!   full build of the AWS SDK's dependency tree. What is left to find is panics
//!   (and hangs, and memory growth), which libFuzzer's coverage guidance and the
//!   targets' own asserts find without it.
//! * `--debug-assertions`: integer overflow panics instead of wrapping, so
//!   arithmetic on attacker-chosen numbers (token `exp`, durations) is checked.
//! * Release (`cargo fuzz`'s default), line tables only (fuzz/Cargo.toml).
//! * Target dir `$CARGO_TARGET_DIR/fuzz`: beside everything else the workspace
//!   builds. Its first build compiles the whole dependency tree again with
//!   nightly and coverage instrumentation (minutes); later ones only the agent.
//! * New inputs go to `$CARGO_TARGET_DIR/fuzz/corpus/<target>` (kept between
//!   runs); the committed seeds in `fuzz/corpus/<target>` are only read, so a test
//!   run leaves the work tree as it was.

use std::{path::PathBuf, process::Command, time::Instant};

use crate::{root, run, setup, target_dir};

/// cargo-fuzz, installed from crates.io when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds per target inside `cargo xtask test`.
pub const TEST_SECS: u32 = 10;

/// Longest input, in bytes: bigger than any seed (a pods file with a few pods),
/// small enough that one run stays fast.
const MAX_LEN: u32 = 16 * 1024;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "cgroup_path",
    "pod_token",
    "request",
    "pods_file",
    "associations_file",
    "config_file",
];

/// What `cargo xtask fuzz` was asked for.
pub struct Options {
    pub targets: Vec<String>,
    pub secs: u32,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options {
            targets: Vec::new(),
            secs: 60,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--target" => {
                    let t = it.next().ok_or("--target needs a target name")?;
                    if !TARGETS.contains(&t.as_str()) {
                        return Err(format!(
                            "unknown fuzz target {t:?}: one of {}",
                            TARGETS.join(", ")
                        ));
                    }
                    opts.targets.push(t.clone());
                }
                "--secs" => {
                    let s = it.next().ok_or("--secs needs a number of seconds")?;
                    opts.secs = s
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("--secs {s:?}: a positive whole number"))?;
                }
                other => return Err(format!("fuzz: unknown argument {other:?}")),
            }
        }
        if opts.targets.is_empty() {
            opts.targets = TARGETS.iter().map(|t| t.to_string()).collect();
        }
        Ok(opts)
    }
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// `cargo +nightly fuzz <sub>` with the shared settings; the environment of this
/// (stable) cargo must not leak into the nightly one.
fn cargo_fuzz(sub: &str) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root())
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .args(["+nightly", "fuzz", sub, "--fuzz-dir"])
        .arg(fuzz_dir())
        .args(["--sanitizer", "none", "--debug-assertions", "--target-dir"])
        .arg(target_dir().join("fuzz"));
    c
}

/// cargo-fuzz (pinned) on the nightly toolchain, installed when missing.
pub fn install() -> Result<(), String> {
    setup::toolchain()?;
    let have = setup::output(Command::new("cargo").args(["+nightly", "fuzz", "--version"]));
    if have.contains(CARGO_FUZZ_VERSION) {
        eprintln!("xtask: cargo-fuzz {CARGO_FUZZ_VERSION} present");
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about three minutes)");
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// Build every target, then run each of `opts.targets` for `opts.secs` seconds.
pub fn run_targets(opts: &Options) -> Result<(), String> {
    install()?;
    let start = Instant::now();
    run(&mut cargo_fuzz("build"))?;
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let mut failed = Vec::new();
    for t in &opts.targets {
        let work = target_dir().join("fuzz").join("corpus").join(t);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let seeds = fuzz_dir().join("corpus").join(t);
        let r = run(cargo_fuzz("run")
            .arg(t)
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={}", opts.secs))
            .arg(format!("-max_len={MAX_LEN}"))
            // A single input slower than this is a hang, reported as a crash.
            .arg("-timeout=20")
            .arg("-print_final_stats=1"));
        if let Err(e) = r {
            failed.push(format!("{t}: {e}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzz targets failed (inputs under {}/artifacts/):\n  {}",
            fuzz_dir().display(),
            failed.join("\n  ")
        ))
    }
}
