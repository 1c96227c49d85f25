//! `cargo xtask test-kernels`: the privileged test binaries on other kernels.
//!
//! Debian bookworm's 6.1 and 6.12 kernels, generic and cloud flavours, are fetched
//! with `apt-get download` and unpacked with `dpkg-deb -x` under `<target>/kernels/`
//! (never installed). Each boots under virtme-ng (`vng --run … --disable-kvm`, QEMU
//! TCG: this machine has no usable KVM). vng shares the host's root read-only, over
//! 9p, or over virtio-fs for the cloud kernels, which lack 9p (with a virtiofsd
//! built from crates.io). It mounts pure cgroup v2, so the guests cover the
//! cgroup2-only layout while the host column (run directly, here) covers the host's
//! own (hybrid on the development machines). The test binaries are built once on the host and run in
//! each guest with `--test-threads=1`; the guest writes each binary's output, exit
//! code and wall time to a read-write directory, because vng on a serial console
//! always exits 255.
//!
//! Everything is slower under emulation (moto's start-up and first calls ~50×, the
//! AWS CLI's start-up ~40 s): the guests run with `PIA_TEST_TIME_SCALE`, which
//! multiplies the tests' waits and the agent's upstream timeouts, never what a test
//! asserts.
//!
//! Options: `--kernel host|6.1|6.12|6.1-cloud|6.12-cloud` (repeatable; default
//! all), `--test NAME` (repeatable; default every binary of [`TESTS`]), `--filter NAME` (repeatable: only
//! the tests whose names contain one of them), `--time-scale N` (the guests';
//! default [`GUEST_TIME_SCALE`]), `--jobs N` (guests booted at once; default 1:
//! each TCG guest keeps about one host core busy, so `--jobs 2` on this 2-core
//! machine runs two kernels in about the time of one).

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use crate::{cargo, root, run, setup, show, target_dir};

/// The privileged test binaries (agent/tests/), fastest first.
pub const TESTS: &[&str] = &[
    "kernel_path",
    "coexistence",
    "kill_restart",
    "operations",
    "audit_enforce",
    "credentials_e2e",
    "eks_auth_e2e",
    "imds_guard",
];

/// Debian metapackages whose one dependency is the kernel image to run, and the
/// shape that dependency must have: bookworm's 6.1 and its 6.12, generic and cloud.
/// The cloud flavour (the configuration Debian builds for cloud VMs) has no 9p:
/// its guests get the host's root over virtio-fs instead.
const KERNELS: &[(&str, &str)] = &[
    ("linux-image-amd64", "linux-image-6.1.0-"),
    ("linux-image-6.12-amd64", "linux-image-6.12."),
    ("linux-image-cloud-amd64", "linux-image-6.1.0-"),
    ("linux-image-6.12-cloud-amd64", "linux-image-6.12."),
];

/// virtio-fs's daemon for the cloud kernels' guests (vng refuses QEMU 7.2's C
/// one), built from crates.io into `~/.cache/pia-agent/virtiofsd-<version>/`
/// ([`virtiofsd_root`]).
const VIRTIOFSD: &str = "1.14.0";
/// What building it needs.
const VIRTIOFSD_APT: &[&str] = &["libseccomp-dev", "libcap-ng-dev"];

/// QEMU; `depmod` (vng regenerates the unpacked kernels' modules.dep); busybox for
/// the initramfs vng builds (Debian's kernels have 9p and virtio as modules).
const APT: &[&str] = &["qemu-system-x86", "kmod", "busybox-static"];
const VIRTME_NG: &str = "1.42";

/// How much longer the tests may wait in a TCG guest than on the host.
pub const GUEST_TIME_SCALE: &str = "20";
/// Where the guest sees a second, cached view of the host's root (an existing,
/// unused directory of the read-only root).
const CACHED_VIEW: &str = "/mnt";
/// Per test binary, in the guest (a hung binary must not hang the matrix).
const GUEST_BINARY_LIMIT_SECS: u32 = 3 * 3600;

struct Options {
    kernels: Vec<String>,
    tests: Vec<String>,
    /// Test-name filters passed to every binary (libtest: any of them matches).
    filters: Vec<String>,
    time_scale: String,
    jobs: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            kernels: Vec::new(),
            tests: Vec::new(),
            filters: Vec::new(),
            time_scale: GUEST_TIME_SCALE.to_owned(),
            jobs: 1,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value"))
            };
            match a.as_str() {
                "--kernel" => o.kernels.push(value()?),
                "--test" => {
                    let t = value()?;
                    if !TESTS.contains(&t.as_str()) {
                        return Err(format!("--test {t}: not one of {}", TESTS.join(", ")));
                    }
                    o.tests.push(t);
                }
                "--filter" => {
                    let f = value()?;
                    // Spliced into the guest's shell script between quotes.
                    if f.is_empty()
                        || !f
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    {
                        return Err(format!(
                            "--filter {f}: a test name (letters, digits, _ and ::)"
                        ));
                    }
                    o.filters.push(f);
                }
                "--time-scale" => {
                    let v = value()?;
                    v.parse::<f64>()
                        .ok()
                        .filter(|s| *s >= 1.0)
                        .ok_or_else(|| format!("--time-scale {v}: a number ≥ 1"))?;
                    o.time_scale = v;
                }
                "--jobs" => {
                    let v = value()?;
                    o.jobs = v
                        .parse::<usize>()
                        .ok()
                        .filter(|j| (1..=4).contains(j))
                        .ok_or_else(|| format!("--jobs {v}: 1 to 4 guests at once"))?;
                }
                _ => return Err(format!("unknown argument {a}")),
            }
        }
        if o.tests.is_empty() {
            o.tests = TESTS.iter().map(|s| s.to_string()).collect();
        }
        Ok(o)
    }

    /// `--kernel 6.1` selects 6.1.0-57-amd64, not 6.12.x nor the cloud flavour;
    /// `--kernel 6.1-cloud` selects 6.1.0-57-cloud-amd64.
    fn wants(&self, version: &str) -> bool {
        self.kernels.is_empty()
            || self.kernels.iter().any(|k| {
                let (base, cloud) = match k.strip_suffix("-cloud") {
                    Some(b) => (b, true),
                    None => (k.as_str(), false),
                };
                version == k
                    || (is_cloud(version) == cloud
                        && version
                            .strip_prefix(base)
                            .is_some_and(|r| r.starts_with(['.', '-', '+', ' '])))
            })
    }
}

/// A kernel unpacked under the target directory.
struct Kernel {
    version: String,
    vmlinuz: PathBuf,
}

/// Debian's cloud flavour: `6.1.0-57-cloud-amd64`.
fn is_cloud(version: &str) -> bool {
    version.contains("-cloud-")
}

/// One test binary's outcome on one kernel.
#[derive(Default, Clone)]
struct Outcome {
    passed: u32,
    failed: u32,
    /// The failed tests' names.
    failures: Vec<String>,
    secs: f64,
    /// The binary ran to its summary line and exited 0.
    ok: bool,
    /// Why there is no summary (crash, limit, no result).
    note: Option<String>,
}

impl Outcome {
    fn cell(&self) -> String {
        match &self.note {
            Some(n) => format!("**{n}**, {:.0} s", self.secs),
            None if self.failed == 0 && self.ok => {
                format!("{} passed, {:.0} s", self.passed, self.secs)
            }
            None => format!(
                "{} passed, **{} failed**, {:.0} s",
                self.passed, self.failed, self.secs
            ),
        }
    }
}

/// A column of the table.
struct Column {
    title: String,
    results: BTreeMap<String, Outcome>,
    /// Wall time of the whole column (boot and shutdown included for guests).
    total_secs: f64,
}

pub fn run_matrix(args: &[String]) -> Result<(), String> {
    let opts = Options::parse(args)?;
    let started = Instant::now();
    setup::all()?;
    tools()?;
    let dir = target_dir().join("kernels");
    let kernels = fetch_kernels(&dir)?;
    let bins = build(&opts.tests)?;

    let mut columns = Vec::new();
    if opts.wants("host") {
        columns.push(host_column(
            &bins,
            &dir.join("results/host"),
            &opts.filters,
        )?);
    }
    let guests: Vec<&Kernel> = kernels.iter().filter(|k| opts.wants(&k.version)).collect();
    let virtiofsd = if guests.iter().any(|k| is_cloud(&k.version)) {
        Some(virtiofsd()?)
    } else {
        None
    };
    // Up to `--jobs` guests at once; the columns keep the kernels' order.
    for batch in guests.chunks(opts.jobs) {
        let results = &dir.join("results");
        let batch_columns: Vec<Column> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|k| s.spawn(|| guest_column(k, &bins, results, &opts, virtiofsd.as_deref())))
                .collect();
            handles
                .into_iter()
                .zip(batch)
                .map(|(h, k)| {
                    h.join()
                        .unwrap_or_else(|_| {
                            Err(format!("{}: the guest's thread panicked", k.version))
                        })
                        // A guest that did not boot is a column of failures, not the
                        // end of the matrix.
                        .unwrap_or_else(|e| {
                            eprintln!("xtask: {e}");
                            not_run_column(k, &bins)
                        })
                })
                .collect()
        });
        columns.extend(batch_columns);
    }
    if columns.is_empty() {
        return Err(format!(
            "--kernel {}: no such kernel (host, {})",
            opts.kernels.join(", "),
            kernels
                .iter()
                .map(|k| k.version.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let table = table(&opts.tests, &columns, started.elapsed().as_secs_f64());
    println!("{table}");
    fs::write(dir.join("results/matrix.md"), &table).map_err(|e| e.to_string())?;
    let bad: Vec<String> = columns
        .iter()
        .flat_map(|c| {
            opts.tests.iter().filter_map(|t| match c.results.get(t) {
                Some(o) if o.ok && o.failed == 0 && o.note.is_none() => None,
                Some(o) if !o.failures.is_empty() => {
                    Some(format!("{t} on {} ({})", c.title, o.failures.join(", ")))
                }
                _ => Some(format!("{t} on {}", c.title)),
            })
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "failed: {} (logs under {})",
            bad.join("; "),
            dir.join("results").display()
        ))
    }
}

fn not_run_column(k: &Kernel, bins: &[(String, PathBuf)]) -> Column {
    Column {
        title: k.version.clone(),
        results: bins
            .iter()
            .map(|(name, _)| {
                let note = Some("guest did not run".to_owned());
                (
                    name.clone(),
                    Outcome {
                        note,
                        ..Outcome::default()
                    },
                )
            })
            .collect(),
        total_secs: 0.0,
    }
}

// === set-up ===

fn tools() -> Result<(), String> {
    setup::apt_install(APT)?;
    let path = setup::path_with_python_scripts();
    let have = setup::output(Command::new("vng").arg("--version").env("PATH", &path));
    if have.trim() == format!("virtme-ng {VIRTME_NG}") {
        eprintln!("xtask: virtme-ng {VIRTME_NG} present");
        return Ok(());
    }
    eprintln!("xtask: installing virtme-ng {VIRTME_NG}");
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("virtme-ng=={VIRTME_NG}"),
    ]))?;
    if Command::new("pyenv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        run(Command::new("pyenv").arg("rehash"))?;
    }
    Ok(())
}

/// Where the pinned virtiofsd is built: the user's cache (`$XDG_CACHE_HOME`, else
/// `~/.cache`), outside any checkout, so a clean clone on the same machine does not
/// spend its ~4 minutes again; under the target directory when there is no home.
fn virtiofsd_root() -> PathBuf {
    cache_dir(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
        .map(|c| c.join(format!("pia-agent/virtiofsd-{VIRTIOFSD}")))
        .unwrap_or_else(|| target_dir().join("tools/virtiofsd"))
}

/// The XDG cache directory from `$XDG_CACHE_HOME` and `$HOME` (empty means unset).
fn cache_dir(xdg: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(xdg).or_else(|| set(home).map(|h| h.join(".cache")))
}

/// The Rust virtiofsd (pinned), built once per machine; the directory holding it.
fn virtiofsd() -> Result<PathBuf, String> {
    let root = virtiofsd_root();
    let bin = root.join("bin");
    let have = setup::output(Command::new(bin.join("virtiofsd")).arg("--version"));
    if have.contains(VIRTIOFSD) {
        eprintln!("xtask: virtiofsd {VIRTIOFSD} present");
        return Ok(bin);
    }
    setup::apt_install(VIRTIOFSD_APT)?;
    eprintln!("xtask: building virtiofsd {VIRTIOFSD} for the cloud kernels' guests");
    run(Command::new("cargo")
        .args([
            "install",
            "virtiofsd",
            "--locked",
            "--version",
            VIRTIOFSD,
            "--root",
        ])
        .arg(&root))?;
    Ok(bin)
}

/// The package a metapackage depends on (`apt-cache depends`), of the expected shape.
fn resolve(meta: &str, prefix: &str) -> Option<String> {
    let out = setup::output(Command::new("apt-cache").args(["depends", meta]));
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with(prefix) && p.ends_with("-amd64"))
        .map(str::to_owned)
}

/// Download and unpack each kernel package once (`dpkg-deb -x`, never installed).
fn fetch_kernels(dir: &Path) -> Result<Vec<Kernel>, String> {
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).map_err(|e| format!("mkdir {}: {e}", debs.display()))?;
    let mut updated = false;
    let mut out = Vec::new();
    for (meta, prefix) in KERNELS {
        let pkg = match resolve(meta, prefix) {
            Some(p) => p,
            None if !updated => {
                // A fresh machine has no package lists yet.
                run(Command::new("apt-get").arg("update"))?;
                updated = true;
                resolve(meta, prefix)
                    .ok_or_else(|| format!("apt-cache depends {meta}: no {prefix}* package"))?
            }
            None => return Err(format!("apt-cache depends {meta}: no {prefix}* package")),
        };
        let tree = dir.join(&pkg);
        if find_vmlinuz(&tree).is_none() {
            eprintln!(
                "xtask: fetching {pkg} (unpacked under {}, not installed)",
                tree.display()
            );
            let deb_of = |d: &Path| -> Option<PathBuf> {
                fs::read_dir(d).ok()?.flatten().map(|e| e.path()).find(|p| {
                    p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb")
                    })
                })
            };
            if deb_of(&debs).is_none() {
                run(Command::new("apt-get")
                    .args(["download", &pkg])
                    .current_dir(&debs))?;
            }
            let deb = deb_of(&debs).ok_or_else(|| format!("apt-get download {pkg}: no .deb"))?;
            let partial = dir.join(format!("{pkg}.partial"));
            let _ = fs::remove_dir_all(&partial);
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
            fs::rename(&partial, &tree).map_err(|e| format!("rename {}: {e}", tree.display()))?;
        }
        let vmlinuz = find_vmlinuz(&tree)
            .ok_or_else(|| format!("no boot/vmlinuz-* in {}", tree.display()))?;
        let version = vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or_default()
            .to_owned();
        out.push(Kernel { version, vmlinuz });
    }
    Ok(out)
}

fn find_vmlinuz(tree: &Path) -> Option<PathBuf> {
    fs::read_dir(tree.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// Build the eBPF object, the test binaries (paths from cargo's JSON messages) and
/// the examples the tests run (the SDK client, the EKS Auth stand-in).
fn build(tests: &[String]) -> Result<Vec<(String, PathBuf)>, String> {
    crate::build_ebpf()?;
    let mut c = cargo();
    c.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "--package",
        "pod-identity-agent",
    ]);
    for t in tests {
        c.args(["--test", t]);
    }
    eprintln!("xtask: $ {}", show(&c));
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", show(&c)))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", show(&c), out.status));
    }
    let mut found = test_executables(&String::from_utf8_lossy(&out.stdout));
    let bins = tests
        .iter()
        .map(|t| {
            found
                .remove(t)
                .map(|p| (t.clone(), p))
                .ok_or_else(|| format!("cargo reported no executable for test {t}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    run(cargo().args(["build", "--package", "pod-identity-agent", "--examples"]))?;
    Ok(bins)
}

/// Test target name → executable, from `cargo --message-format=json` output.
fn test_executables(json_lines: &str) -> BTreeMap<String, PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .filter_map(|m| {
            Some((
                m["target"]["name"].as_str()?.to_owned(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect()
}

// === running ===

/// libtest's summary lines (`test result: ok. 8 passed; 0 failed; …`), added up.
fn summary(log: &str) -> Option<(u32, u32)> {
    let mut found = None;
    for line in log.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        let count = |what: &str| -> u32 {
            rest.split(';')
                .find_map(|p| {
                    p.trim()
                        .strip_suffix(what)?
                        .split_whitespace()
                        .last()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        let (p, f) = found.unwrap_or((0, 0));
        found = Some((p + count(" passed"), f + count(" failed")));
    }
    found
}

/// The failed tests' names: libtest's last `failures:` list, before its summary.
fn failed_tests(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let Some(start) = lines.iter().rposition(|l| *l == "failures:") else {
        return Vec::new();
    };
    lines[start + 1..]
        .iter()
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.trim().to_owned())
        .collect()
}

fn outcome(log: &str, exit_ok: bool, secs: f64, why: Option<String>) -> Outcome {
    match summary(log) {
        Some((passed, failed)) => Outcome {
            passed,
            failed,
            failures: failed_tests(log),
            secs,
            ok: exit_ok,
            note: if passed + failed == 0 {
                // A filter that names no test of this binary: nothing was proven.
                Some(why.unwrap_or_else(|| "no test matched the filters".into()))
            } else {
                (!exit_ok && failed == 0).then(|| why.unwrap_or_else(|| "exit non-zero".into()))
            },
        },
        None => Outcome {
            secs,
            note: Some(why.unwrap_or_else(|| "no test summary".into())),
            ..Outcome::default()
        },
    }
}

/// cgroup layout from mountinfo text: `cgroup2`, `hybrid` or `v1`.
fn cgroup_layout(mountinfo: &str) -> &'static str {
    let fstypes: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_once(" - ")?.1.split_whitespace().next())
        .collect();
    match (fstypes.contains(&"cgroup2"), fstypes.contains(&"cgroup")) {
        (true, false) => "cgroup2",
        (true, true) => "hybrid",
        (false, true) => "cgroup v1",
        (false, false) => "no cgroup",
    }
}

/// The same binaries directly on this machine's kernel (no time scale).
fn host_column(
    bins: &[(String, PathBuf)],
    results: &Path,
    filters: &[String],
) -> Result<Column, String> {
    let _ = fs::remove_dir_all(results);
    fs::create_dir_all(results).map_err(|e| e.to_string())?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let layout = cgroup_layout(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let started = Instant::now();
    let mut col = Column {
        title: format!("host {} ({layout})", release.trim()),
        results: BTreeMap::new(),
        total_secs: 0.0,
    };
    for (name, bin) in bins {
        let log_path = results.join(format!("{name}.log"));
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        eprintln!("xtask: host: {name}");
        let t = Instant::now();
        let status = Command::new(bin)
            .arg("--test-threads=1")
            .args(filters)
            .current_dir(root().join("agent"))
            .env("PATH", setup::path_with_python_scripts())
            .env_remove("PIA_TEST_TIME_SCALE")
            .stdout(log)
            .stderr(err)
            .status()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let secs = t.elapsed().as_secs_f64();
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let o = outcome(&text, status.success(), secs, None);
        eprintln!("xtask: host: {name}: {}", o.cell());
        col.results.insert(name.clone(), o);
    }
    col.total_secs = started.elapsed().as_secs_f64();
    Ok(col)
}

/// The guest's script: mount what vng does not, then each binary, timed.
fn guest_script(
    bins: &[(String, PathBuf)],
    out: &Path,
    time_scale: &str,
    filters: &[String],
    cached_view: bool,
) -> String {
    let filters: String = filters.iter().map(|f| format!(" '{f}'")).collect();
    let python_bin = setup::output(Command::new("python3").args([
        "-c",
        "import os, sys; print(os.path.dirname(os.path.realpath(sys.executable)))",
    ]));
    let python_prefix = setup::output(Command::new("python3").args([
        "-c",
        "import os, sys; print(os.path.realpath(sys.base_prefix))",
    ]));
    // vng's root is 9p without caching: every read of Python's thousands of files
    // and of the debug binaries goes to the host (measured: `import boto3` 72 s
    // uncached, 26 s cached). A second read-only view of the host's root
    // (`--rodir=/mnt=/`), remounted with cache=loose, is bound over the paths the
    // tests read, so the guest's page cache serves them.
    // (Not /usr: vng puts the kernel's modules under it, and modprobe needs them.)
    // Over virtio-fs (the cloud kernels) the guest caches the root itself.
    let cached: Vec<String> = [
        PathBuf::from(python_prefix.trim()),
        target_dir().join("debug"),
    ]
    .iter()
    .filter(|p| p.is_absolute() && p.as_os_str().len() > 1)
    .map(|p| format!("'{}'", p.display()))
    .collect();
    // pyenv's shims misbehave in the guest: the real interpreter's directory first.
    let path = format!(
        "{}:{}",
        python_bin.trim(),
        setup::path_with_python_scripts()
    );
    let o = out.display();
    let mut s = format!(
        "#!/bin/sh\n\
         # Written by `cargo xtask test-kernels`; runs inside the guest.\n\
         exec >{o}/guest.log 2>&1\n\
         set -x\n\
         export PATH='{path}'\n\
         export HOME=/tmp/pia-home RUST_BACKTRACE=1 PIA_TEST_TIME_SCALE='{time_scale}'\n\
         unset PYENV_VERSION PYENV_ROOT\n\
         mkdir -p \"$HOME\"\n\
         uname -r >{o}/uname\n\
         cat /proc/self/mountinfo >{o}/mountinfo\n\
         modprobe veth\n",
    );
    if cached_view {
        let _ = write!(
            s,
            "src=$(awk '$2 == \"{CACHED_VIEW}\" {{ print $1 }}' /proc/mounts)\n\
             if [ -n \"$src\" ] && umount {CACHED_VIEW} && mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000 \"$src\" {CACHED_VIEW}; then\n\
             \x20 for d in {cached}; do mount --bind \"{CACHED_VIEW}$d\" \"$d\"; done\n\
             fi\n",
            cached = cached.join(" "),
        );
    }
    let _ = write!(
        s,
        "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
         cd '{agent}'\n",
        agent = root().join("agent").display(),
    );
    for (name, bin) in bins {
        let _ = write!(
            s,
            "t0=$(date +%s.%N)\n\
             head -1 /proc/stat >{o}/{name}.cpu\n\
             timeout -k 30 {GUEST_BINARY_LIMIT_SECS} '{bin}' --test-threads=1{filters} >{o}/{name}.log 2>&1\n\
             echo $? >{o}/{name}.rc\n\
             head -1 /proc/stat >>{o}/{name}.cpu\n\
             echo \"$(date +%s.%N) $t0\" | awk '{{ print $1 - $2 }}' >{o}/{name}.secs\n",
            bin = bin.display()
        );
    }
    let _ = writeln!(s, "echo done >{o}/done\nsync");
    s
}

/// Boot `k` under vng and run the binaries there.
fn guest_column(
    k: &Kernel,
    bins: &[(String, PathBuf)],
    results: &Path,
    opts: &Options,
    virtiofsd: Option<&Path>,
) -> Result<Column, String> {
    // Generic kernels: 9p (forced, so a virtiofsd elsewhere on the machine changes
    // nothing), with the cached view. Cloud kernels: virtio-fs.
    let cloud = is_cloud(&k.version);
    let out = results.join(&k.version);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let script = out.join("run.sh");
    fs::write(
        &script,
        guest_script(bins, &out, &opts.time_scale, &opts.filters, !cloud),
    )
    .map_err(|e| e.to_string())?;
    let console = out.join("console.log");
    let log = fs::File::create(&console).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let mut c = Command::new("vng");
    c.arg("--run")
        .arg(&k.vmlinuz)
        .args([
            "--disable-kvm",
            "--cpus",
            "2",
            "--memory",
            "4G",
            "--verbose",
        ])
        .arg(format!("--rwdir={}", out.display()));
    let mut path = setup::path_with_python_scripts();
    match (cloud, virtiofsd) {
        (false, _) => {
            c.arg("--force-9p").arg(format!("--rodir={CACHED_VIEW}=/"));
        }
        (true, Some(dir)) => path = format!("{}:{path}", dir.display()),
        (true, None) => return Err(format!("{}: no virtiofsd", k.version)),
    }
    c.arg("--exec")
        .arg(format!("sh {}", script.display()))
        .current_dir(root())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    eprintln!(
        "xtask: booting {} under QEMU TCG ({} test binaries; console: {})",
        k.version,
        bins.len(),
        console.display()
    );
    eprintln!("xtask: $ {}", show(&c));
    let started = Instant::now();
    // vng on a serial console exits 255 whatever happened: the results say.
    let status = c.status().map_err(|e| format!("{}: {e}", show(&c)))?;
    let total_secs = started.elapsed().as_secs_f64();
    let finished = out.join("done").exists();
    let uname = fs::read_to_string(out.join("uname")).unwrap_or_default();
    if uname.is_empty() {
        return Err(format!(
            "{}: the guest ran nothing (vng {status}); see {}",
            k.version,
            console.display()
        ));
    }
    let layout = cgroup_layout(&fs::read_to_string(out.join("mountinfo")).unwrap_or_default());
    let mut col = Column {
        title: format!("{} ({layout})", uname.trim()),
        results: BTreeMap::new(),
        total_secs,
    };
    for (name, _) in bins {
        let text = fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
        let rc = fs::read_to_string(out.join(format!("{name}.rc"))).ok();
        let secs = fs::read_to_string(out.join(format!("{name}.secs")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0.0);
        let rc = rc.as_deref().map(str::trim);
        let why = match rc {
            None if finished => Some("no exit code".to_owned()),
            None => Some("guest stopped".to_owned()),
            Some("124") | Some("137") => Some(format!("over {GUEST_BINARY_LIMIT_SECS} s")),
            Some(_) => None,
        };
        let o = outcome(&text, rc == Some("0"), secs, why);
        eprintln!("xtask: {}: {name}: {}", k.version, o.cell());
        col.results.insert(name.clone(), o);
    }
    Ok(col)
}

fn table(tests: &[String], columns: &[Column], total_secs: f64) -> String {
    let mut s = String::from("| test binary |");
    for c in columns {
        let _ = write!(s, " {} |", c.title);
    }
    s.push_str("\n|---|");
    for _ in columns {
        s.push_str("---|");
    }
    for t in tests {
        let _ = write!(s, "\n| {t} |");
        for c in columns {
            let cell = c
                .results
                .get(t)
                .map(Outcome::cell)
                .unwrap_or_else(|| "not run".into());
            let _ = write!(s, " {cell} |");
        }
    }
    s.push_str("\n| whole column (guests: with boot and shutdown) |");
    for c in columns {
        let _ = write!(s, " {:.0} s |", c.total_secs);
    }
    let _ = write!(
        s,
        "\n\n`cargo xtask test-kernels`: {:.0} min in all (set-up and build included); \
         `--test-threads=1` everywhere.",
        total_secs / 60.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_adds_up_libtest_result_lines() {
        let log = "running 8 tests\n\
                   test a ... ok\n\
                   test result: FAILED. 3 passed; 4 failed; 0 ignored; 0 measured; 0 filtered out; finished in 701.2s\n\
                   test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(summary(log), Some((5, 4)));
        let log = "failures:\n\n---- b_c stdout ----\npanicked\n\nfailures:\n    b_c\n    d\n\ntest result: FAILED. 1 passed; 2 failed;\n";
        assert_eq!(failed_tests(log), ["b_c", "d"]);
        assert_eq!(summary("thread 'main' panicked\n"), None);
    }

    #[test]
    fn a_binary_that_exits_non_zero_without_failures_is_not_a_pass() {
        let log = "test result: ok. 8 passed; 0 failed; 0 ignored\n";
        let o = outcome(log, false, 1.0, None);
        assert!(o.note.is_some());
        let o = outcome(log, true, 1.0, None);
        assert!(o.ok && o.note.is_none() && o.failed == 0);
        assert_eq!(o.cell(), "8 passed, 1 s");
        let o = outcome("", false, 9.0, Some("guest stopped".into()));
        assert_eq!(o.cell(), "**guest stopped**, 9 s");
    }

    #[test]
    fn virtiofsd_is_cached_outside_the_checkout() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(cache_dir(os("/x"), os("/root")), Some("/x".into()));
        assert_eq!(cache_dir(os(""), os("/root")), Some("/root/.cache".into()));
        assert_eq!(cache_dir(None, os("/root")), Some("/root/.cache".into()));
        assert_eq!(cache_dir(None, os("")), None);
    }

    #[test]
    fn a_binary_whose_tests_were_all_filtered_out_is_not_a_pass() {
        let log = "running 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 7 filtered out; finished in 0.00s\n";
        let o = outcome(log, true, 2.0, None);
        assert_eq!(o.cell(), "**no test matched the filters**, 2 s");
    }

    #[test]
    fn test_executables_come_from_cargos_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"kernel_path"},"profile":{"test":true},"executable":"/t/debug/deps/kernel_path-abc"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"testnode"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"pod-identity-agent"},"profile":{"test":false},"executable":"/t/debug/pod-identity-agent"}
{"reason":"build-finished","success":true}"#;
        let m = test_executables(json);
        assert_eq!(m.len(), 1);
        assert_eq!(
            m["kernel_path"],
            PathBuf::from("/t/debug/deps/kernel_path-abc")
        );
    }

    #[test]
    fn kernel_selection_does_not_confuse_6_1_with_6_12() {
        let o = Options::parse(&["--kernel".into(), "6.1".into()]).unwrap();
        assert!(o.wants("6.1.0-57-amd64"));
        assert!(!o.wants("6.12.117+deb12-amd64"));
        assert!(!o.wants("host"));
        assert!(
            !o.wants("6.1.0-57-cloud-amd64"),
            "6.1 is the generic flavour"
        );
        let o = Options::parse(&["--kernel".into(), "6.12-cloud".into()]).unwrap();
        assert!(o.wants("6.12.117+deb12-cloud-amd64"));
        assert!(!o.wants("6.12.117+deb12-amd64") && !o.wants("6.1.0-57-cloud-amd64"));
        let o = Options::parse(&[]).unwrap();
        assert!(o.wants("host") && o.wants("6.12.117+deb12-amd64"));
        assert!(o.wants("6.1.0-57-cloud-amd64"));
        assert_eq!(o.tests.len(), TESTS.len());
        assert!(Options::parse(&["--test".into(), "nope".into()]).is_err());
        assert_eq!(o.jobs, 1);
        assert_eq!(
            Options::parse(&["--jobs".into(), "2".into()]).unwrap().jobs,
            2
        );
        assert!(Options::parse(&["--jobs".into(), "0".into()]).is_err());
        assert!(Options::parse(&["--filter".into(), "a'; reboot".into()]).is_err());
        assert_eq!(
            Options::parse(&["--filter".into(), "each_pod".into()])
                .unwrap()
                .filters,
            ["each_pod"]
        );
    }

    #[test]
    fn the_guest_script_mounts_what_vng_does_not_and_times_each_binary() {
        let s = guest_script(
            &[("kernel_path".into(), PathBuf::from("/t/kp"))],
            Path::new("/r"),
            "20",
            &["redirect_survives".into()],
            true,
        );
        eprintln!("{s}");
        for want in [
            "mount -t bpf bpf /sys/fs/bpf",
            "modprobe veth\nsrc=",
            "PIA_TEST_TIME_SCALE='20'",
            "'/t/kp' --test-threads=1 'redirect_survives' >/r/kernel_path.log 2>&1",
            "echo $? >/r/kernel_path.rc",
            "cache=loose",
            "echo done >/r/done",
        ] {
            assert!(s.contains(want), "{want:?} not in:\n{s}");
        }
    }

    #[test]
    fn the_cloud_kernels_script_does_not_remount_9p() {
        let s = guest_script(
            &[("kernel_path".into(), PathBuf::from("/t/kp"))],
            Path::new("/r"),
            "20",
            &[],
            false,
        );
        assert!(!s.contains("9p"), "{s}");
        assert!(
            s.contains("modprobe veth\nmountpoint -q /sys/fs/bpf"),
            "{s}"
        );
        assert!(
            s.contains("'/t/kp' --test-threads=1 >/r/kernel_path.log"),
            "{s}"
        );
    }

    #[test]
    fn cgroup_layouts() {
        let v2 = "35 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let v1 = "36 1 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup_layout(v2), "cgroup2");
        assert_eq!(cgroup_layout(&format!("{v1}{v2}")), "hybrid");
        assert_eq!(cgroup_layout(v1), "cgroup v1");
    }
}
