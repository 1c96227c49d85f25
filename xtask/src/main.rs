//! `cargo xtask <task>`: the project's own commands. Each one installs what it needs
//! first (idempotently), so a fresh machine needs only Rust, gcc and Python.
//!
//! * `setup`      apt packages, bpf-linker, nightly rust-src, PyPI tools
//! * `build-ebpf` the kernel object (nightly, bpfel-unknown-none, release)
//! * `build`      build-ebpf, then the agent
//! * `image`      the agent image `FROM scratch` (static musl agent), offline
//! * `test`       build, fmt/clippy, `cargo deny`, every test (privileged ones
//!   included), then each fuzz target for a few seconds
//! * `test-container` the image, then the DaemonSet's pod template played with it
//!   under podman/runc (agent/tests/container_run.rs); `.ci/run` runs it after `test`
//! * `fuzz`       the fuzz targets, longer: `fuzz [--target T]... [--secs N]`
//! * `supply-chain` only `cargo deny check` (licenses, bans, sources, advisories)
//! * `manifests`  only the checks of deploy/ (schemas, admission policies, checkov)
//! * `demo`       a simulated node with pods, the agent and the AWS CLI, in the
//!   EKS mode (EKS Auth stand-in); `demo --sts` with the agent's own associations
//! * `bench`      side-by-side benchmarks
//! * `test-kernels` the privileged test binaries on Debian's 6.1 and 6.12 kernels
//!   (QEMU TCG under virtme-ng) and on the host: a kernel × test table
#![forbid(unsafe_code)]

mod bench;
mod demo;
mod fuzz;
mod image;
mod kernels;
mod manifests;
mod setup;
mod supply_chain;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` at the root).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Run a command, echoing it; error text names the command.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd.status().map_err(|e| format!("{}: {e}", show(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {status}", show(cmd)))
    }
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root())
        .env("PATH", setup::path_with_python_scripts());
    c
}

pub fn build_ebpf() -> Result<(), String> {
    setup::toolchain()?;
    // rustup's `cargo` proxy picks the nightly toolchain; the environment of this
    // (stable) cargo must not leak into it.
    let mut c = Command::new("cargo");
    c.current_dir(root())
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([
            "+nightly",
            "build",
            "--package",
            "agent-ebpf",
            "--bin",
            "pod-identity-ebpf",
            // A test fixture (agent/tests/coexistence.rs), not part of the agent.
            "--bin",
            "vendor-socklb",
            "--features",
            "kernel",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]);
    run(&mut c)
}

fn build() -> Result<(), String> {
    build_ebpf()?;
    run(cargo().args(["build", "--workspace", "--all-targets"]))
}

fn test(extra: &[String]) -> Result<(), String> {
    setup::all()?;
    build()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Licenses, bans, sources, RustSec advisories of the dependency tree.
    supply_chain::check()?;
    // deploy/: schema validation and the security scan.
    manifests::validate()?;
    // Privileged tests run here, as root; they fail (never skip) otherwise.
    run(cargo().args(["test", "--workspace"]).args(extra))?;
    // A bounded fuzz run: every target for a few seconds, a crash fails the test.
    fuzz::run_targets(&fuzz::Options {
        targets: fuzz::TARGETS.iter().map(|t| t.to_string()).collect(),
        secs: fuzz::TEST_SECS,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    let r = match task {
        "setup" => setup::all(),
        "build-ebpf" => build_ebpf(),
        "build" => build(),
        "image" => image::build(),
        "test-container" => setup::all().and_then(|_| image::test_container()),
        "test" => test(rest),
        "manifests" => setup::python().and_then(|_| manifests::validate()),
        "demo" => demo::Mode::parse(rest).and_then(|mode| {
            setup::all()
                .and_then(|_| build())
                .and_then(|_| demo::run(mode))
        }),
        "test-kernels" => kernels::run_matrix(rest),
        "fuzz" => fuzz::Options::parse(rest).and_then(|o| fuzz::run_targets(&o)),
        "supply-chain" => supply_chain::check(),
        // The bench builds the release agent itself; the debug workspace (tests
        // included) is not needed.
        "bench" => setup::all()
            .and_then(|_| build_ebpf())
            .and_then(|_| bench::run()),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|build-ebpf|build|image|test|test-container|manifests|demo [--sts]|bench|test-kernels|fuzz|supply-chain>\n  \
                 demo        EKS mode: the agent passes each pod's own token to EKS Auth (a stand-in)\n  \
                 demo --sts  the agent assumes the roles of its own associations with STS\n  \
                 test-kernels [--kernel host|6.1|6.12|6.1-cloud|6.12-cloud]... [--test NAME]... [--filter TEST]...\n              \
                 [--time-scale N] [--jobs N]\n              \
                 the privileged tests on Debian's 6.1 and 6.12 kernels (QEMU TCG) and the host\n  \
                 fuzz [--target T]... [--secs N]\n              \
                 the fuzz targets, N seconds each (default 60)\n  \
                 supply-chain  cargo deny check (licenses, bans, sources, advisories)"
            );
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}
