//! Checks of `deploy/`: every manifest validates against the Kubernetes API schema,
//! custom resources validate against our CRD, kustomizations name files that
//! exist, and `checkov` finds nothing beyond the documented exceptions.
//!
//! * Built-in kinds: PyPI `kubernetes-validate` (in `setup::PIP`), `--strict`
//!   (unknown fields are errors, as `kubectl apply` does by default), against
//!   Kubernetes [`KUBERNETES_VERSION`], the oldest version the agent's
//!   k8s-openapi bindings (and EKS standard support) cover.
//! * Custom resources (`deploy/examples/`): `kubernetes-validate` has no schema for
//!   them and only warns, so [`CUSTOM_RESOURCES`] checks them against the
//!   `openAPIV3Schema` of the CRD in `deploy/` (made strict: unknown fields are
//!   errors), with the `jsonschema` package `kubernetes-validate` brings along. The
//!   CRD's CEL rules (`x-kubernetes-validations`) are not evaluated here.
//! * `kustomization.yaml` files are kustomize's configuration, not API objects:
//!   only the paths they reference are checked. Components (`deploy/components/`)
//!   are applied to each flavour's DaemonSet (their inline JSON 6902 patches) and
//!   the results validated like the manifests.
//! * Security scan: PyPI `checkov` ([`CHECKOV_VERSION`]), frameworks kubernetes and
//!   dockerfile. It pins an old `boto3` that conflicts with the one the STS tests
//!   use, so it lives in its own virtualenv under the target directory, installed
//!   here on first use. Findings must be listed, each with a reason, in
//!   `deploy/checkov-skips.txt`; a listed check that no longer fires is an error
//!   too, so the list cannot rot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{root, run, show, target_dir};

/// Kubernetes version the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.33.0";

/// checkov release used for the scan (own virtualenv, see the module docs).
pub const CHECKOV_VERSION: &str = "3.3.30";

/// The documented checkov exceptions, relative to the repository root.
const SKIPS: &str = "deploy/checkov-skips.txt";

/// Validate and scan everything in `deploy/`.
pub fn validate() -> Result<(), String> {
    let deploy = root().join("deploy");
    let files = yaml_files(&deploy)?;
    if files.is_empty() {
        return Err(format!("no manifests in {}", deploy.display()));
    }
    let crd_kinds = custom_resources(&files)?;
    schemas(&files, &crd_kinds)?;
    components(&deploy)?;
    admission_policies(&files)?;
    checkov(&deploy)?;
    Ok(())
}

/// `*.yaml` / `*.yml` under `dir`, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", d.display()))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

/// Run `cmd` (shown as `label`, or the command line), capturing its output.
fn output(cmd: &mut Command, label: Option<&str>) -> Result<(bool, String), String> {
    match label {
        Some(label) => eprintln!("xtask: {label}"),
        None => eprintln!("xtask: $ {}", show(cmd)),
    }
    let out = cmd.output().map_err(|e| format!("{}: {e}", show(cmd)))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Built-in kinds against the Kubernetes schema. `crd_kinds` are the
/// (apiVersion, kind) pairs our CRDs define: the only kinds allowed to lack a
/// schema there.
fn schemas(files: &[PathBuf], crd_kinds: &BTreeSet<(String, String)>) -> Result<(), String> {
    let manifests: Vec<&PathBuf> = files.iter().filter(|f| !is_kustomization(f)).collect();
    // `python3 -m`: no dependence on pip's scripts directory being on PATH.
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate"])
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict"])
        .args(&manifests)
        .current_dir(root());
    let (ok, text) = output(&mut cmd, None).map_err(|e| {
        format!(
            "{e} (kubernetes-validate comes with `cargo xtask setup`, PyPI kubernetes-validate)"
        )
    })?;
    let mut unknown = Vec::new();
    for line in text.lines() {
        // WARN <file> Couldn't find schema for kind <K> with api version <AV> for kubernetes version <V>
        if let Some(rest) = line.split("Couldn't find schema for kind ").nth(1) {
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap_or_default().to_owned();
            let api_version = rest
                .split(" with api version ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_default()
                .to_owned();
            if !crd_kinds.contains(&(api_version.clone(), kind.clone())) {
                unknown.push(format!("{kind} ({api_version}) in {line}"));
            }
        }
    }
    if !ok {
        eprint!("{text}");
        return Err(format!(
            "kubernetes-validate: manifests in deploy/ do not validate against Kubernetes {KUBERNETES_VERSION}"
        ));
    }
    if !unknown.is_empty() {
        return Err(format!(
            "kinds with neither a Kubernetes schema nor a CRD in deploy/: {}",
            unknown.join("; ")
        ));
    }
    eprintln!(
        "xtask: {} manifest files valid for Kubernetes {KUBERNETES_VERSION}",
        manifests.len()
    );
    Ok(())
}

/// Checks custom resources against the CRDs found in the files, and
/// kustomizations' references. Prints `CRD <apiVersion> <kind>`, `OK …`,
/// `FAIL …`, `MISSING …` lines.
const CUSTOM_RESOURCES: &str = r#"
import copy, os, sys
import jsonschema, yaml

files = sys.argv[1:]
docs = []
for f in files:
    with open(f) as fh:
        for d in yaml.safe_load_all(fh):
            if isinstance(d, dict):
                docs.append((f, d))

crds = {}
for f, d in docs:
    if d.get("apiVersion") == "apiextensions.k8s.io/v1" and d.get("kind") == "CustomResourceDefinition":
        s = d["spec"]
        for v in s["versions"]:
            key = (s["group"] + "/" + v["name"], s["names"]["kind"])
            crds[key] = (s["scope"], v["schema"]["openAPIV3Schema"])
            print("CRD", key[0], key[1])

def strict(schema):
    # kubectl's default field validation is Strict: unknown fields are errors.
    schema = copy.deepcopy(schema)
    def walk(s):
        if not isinstance(s, dict):
            return
        if (s.get("type") == "object" and "properties" in s
                and "additionalProperties" not in s
                and not s.get("x-kubernetes-preserve-unknown-fields")):
            s["additionalProperties"] = False
        for p in s.get("properties", {}).values():
            walk(p)
        for k in ("items", "additionalProperties"):
            if isinstance(s.get(k), dict):
                walk(s[k])
    walk(schema)
    return schema

for f, d in docs:
    key = (d.get("apiVersion"), d.get("kind"))
    if key[0] and key[0].startswith("kustomize.config.k8s.io/"):
        base = os.path.dirname(f)
        for entry in (d.get("resources") or []) + (d.get("components") or []):
            if "://" not in entry and not os.path.exists(os.path.join(base, entry)):
                print("MISSING", f, entry)
        continue
    if key not in crds:
        continue
    scope, schema = crds[key]
    meta = d.get("metadata") or {}
    errors = []
    if not meta.get("name"):
        errors.append("metadata.name is missing")
    if scope == "Namespaced" and not meta.get("namespace"):
        errors.append("metadata.namespace is missing (namespaced kind)")
    body = {k: v for k, v in d.items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft4Validator(strict(schema))
    for e in sorted(validator.iter_errors(body), key=str):
        errors.append("/".join(str(p) for p in e.absolute_path) + ": " + e.message)
    what = "%s %s/%s" % (key[1], meta.get("namespace", ""), meta.get("name", "?"))
    print(("FAIL " if errors else "OK ") + f + " " + what + ("" if not errors else ": " + "; ".join(errors)))
"#;

fn custom_resources(files: &[PathBuf]) -> Result<BTreeSet<(String, String)>, String> {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(CUSTOM_RESOURCES).args(files);
    let (ok, text) = output(
        &mut cmd,
        Some("checking custom resources against deploy/'s CRDs, and kustomization references"),
    )?;
    if !ok {
        eprint!("{text}");
        return Err("checking custom resources against the CRDs failed to run (PyYAML and jsonschema come with kubernetes-validate: `cargo xtask setup`)".into());
    }
    let mut kinds = BTreeSet::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("CRD"), Some(api_version), Some(kind)) => {
                kinds.insert((api_version.to_owned(), kind.to_owned()));
            }
            (Some("OK"), _, _) => checked += 1,
            (Some("FAIL" | "MISSING"), _, _) => failures.push(line.to_owned()),
            _ => {}
        }
    }
    if !failures.is_empty() {
        return Err(format!("deploy/: {}", failures.join("\n  ")));
    }
    eprintln!(
        "xtask: {checked} custom resources valid against {} CRD version(s); kustomization references exist",
        kinds.len()
    );
    Ok(kinds)
}

// === components ===

/// Every component in `deploy/components/` applied to each flavour's DaemonSet (as
/// kustomize applies its inline JSON 6902 patches), and the results validated
/// against the Kubernetes schema like the plain manifests: a patch whose path no
/// longer exists, or that produces an invalid pod template, fails here.
fn components(deploy: &Path) -> Result<(), String> {
    let out = target_dir().join("tmp/deploy-components");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(include_str!("components.py"))
        .arg(deploy)
        .arg(&out);
    let (ok, text) = output(
        &mut cmd,
        Some("rendering deploy/components/ onto each flavour's DaemonSet"),
    )?;
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    if !ok || !failures.is_empty() {
        eprint!("{text}");
        return Err(format!("deploy/components: {}", failures.join("\n  ")));
    }
    let rendered: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.strip_prefix("RENDERED "))
        .filter_map(|l| l.rsplit(' ').next())
        .map(PathBuf::from)
        .collect();
    if rendered.is_empty() {
        return Err("deploy/components: nothing rendered".into());
    }
    schemas(&rendered, &BTreeSet::new())?;
    eprintln!(
        "xtask: {} component renderings valid ({} component checks)",
        rendered.len(),
        text.lines().filter(|l| l.starts_with("CHECK")).count()
    );
    Ok(())
}

// === admission policies ===

/// Evaluates every `ValidatingAdmissionPolicy` in deploy/ with a real CEL
/// implementation against `xtask/admission-cases.yaml`: refused and admitted cases.
fn admission_policies(files: &[PathBuf]) -> Result<(), String> {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(include_str!("admission.py"))
        .arg(root().join("xtask/admission-cases.yaml"))
        .args(files);
    let (ok, text) = output(
        &mut cmd,
        Some("evaluating deploy/'s admission policies (CEL) against their cases"),
    )?;
    let failures: Vec<&str> = text.lines().filter(|l| !l.starts_with("OK ")).collect();
    if !ok || !failures.is_empty() {
        return Err(format!("admission policies: {}", failures.join("\n  ")));
    }
    eprintln!(
        "xtask: {} admission policy cases as expected",
        text.lines().count()
    );
    Ok(())
}

// === checkov ===

/// checkov's own virtualenv (its boto3 pin conflicts with the tests' boto3).
fn checkov_bin() -> Result<PathBuf, String> {
    let venv = target_dir().join("checkov-venv");
    let bin = venv.join("bin/checkov");
    let have = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if have == CHECKOV_VERSION {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing checkov {CHECKOV_VERSION} into {}",
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("checkov=={CHECKOV_VERSION}")))?;
    Ok(bin)
}

/// Runs checkov (argv[1]) on argv[2] and prints `FAILED <check> <resource> <file>`
/// and `PARSE_ERROR <file>` lines.
const CHECKOV_REPORT: &str = r#"
import json, subprocess, sys
out = subprocess.run(
    [sys.argv[1], "--directory", sys.argv[2], "--framework", "kubernetes", "dockerfile",
     "--output", "json", "--compact", "--quiet"],
    capture_output=True, text=True)
try:
    reports = json.loads(out.stdout)
except ValueError:
    sys.stderr.write(out.stdout + out.stderr)
    sys.exit(2)
if isinstance(reports, dict):
    reports = [reports]
for r in reports:
    results = r.get("results") or {}
    for c in results.get("failed_checks") or []:
        print("FAILED", c["check_id"], c.get("resource", "?"), c.get("file_path", "?"))
    for p in results.get("parsing_errors") or []:
        print("PARSE_ERROR", p)
    s = r.get("summary") or {}
    print("SUMMARY", r.get("check_type", "?"), s.get("passed", 0), s.get("failed", 0))
"#;

/// `deploy/checkov-skips.txt`: check id → reason. Every entry needs a reason.
fn skips() -> Result<BTreeMap<String, String>, String> {
    let path = root().join(SKIPS);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut map = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        if reason.trim().len() < 10 {
            return Err(format!("{SKIPS}:{}: {id} needs a reason", n + 1));
        }
        if map
            .insert(id.to_owned(), reason.trim().to_owned())
            .is_some()
        {
            return Err(format!("{SKIPS}:{}: {id} listed twice", n + 1));
        }
    }
    Ok(map)
}

fn checkov(deploy: &Path) -> Result<(), String> {
    let skips = skips()?;
    let bin = checkov_bin()?;
    let python = bin.with_file_name("python");
    let mut cmd = Command::new(python);
    cmd.arg("-c")
        .arg(CHECKOV_REPORT)
        .arg(&bin)
        .arg(deploy)
        .current_dir(root())
        // No Bridgecrew platform: the guideline mapping would be fetched from it.
        .env("BC_SKIP_MAPPING", "TRUE");
    let (ok, text) = output(
        &mut cmd,
        Some(&format!(
            "$ {} --directory {} --framework kubernetes dockerfile --output json",
            bin.display(),
            deploy.display()
        )),
    )?;
    if !ok {
        eprint!("{text}");
        return Err("checkov did not produce a report".into());
    }
    let mut fired: BTreeSet<String> = BTreeSet::new();
    let mut unexpected = Vec::new();
    let mut summary = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("FAILED") => {
                let id = words.next().unwrap_or_default().to_owned();
                if !skips.contains_key(&id) {
                    unexpected.push(line.trim_start_matches("FAILED ").to_owned());
                }
                fired.insert(id);
            }
            Some("PARSE_ERROR") => unexpected.push(line.to_owned()),
            Some("SUMMARY") => summary.push(words.collect::<Vec<_>>().join(" ")),
            _ => {}
        }
    }
    let stale: Vec<&String> = skips.keys().filter(|id| !fired.contains(*id)).collect();
    if !unexpected.is_empty() || !stale.is_empty() {
        let mut msg = String::from("checkov on deploy/:");
        for u in &unexpected {
            msg.push_str(&format!("\n  finding not in {SKIPS}: {u}"));
        }
        for s in &stale {
            msg.push_str(&format!(
                "\n  {SKIPS} lists {s}, which no longer fires: remove it"
            ));
        }
        return Err(msg);
    }
    eprintln!(
        "xtask: checkov {CHECKOV_VERSION}: no findings beyond the {} documented exceptions ({})",
        skips.len(),
        summary.join(", ")
    );
    Ok(())
}
