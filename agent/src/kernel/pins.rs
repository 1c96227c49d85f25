//! bpffs pins: links replaced on restart, maps re-adopted only when their layout
//! matches this build's records, and `uninstall`.

use std::path::Path;

use agent_ebpf::maps::Spec;
use aya::{
    maps::MapInfo,
    programs::links::{FdLink, LinkError, PinnedLink},
};

use super::KernelError;

pub(super) fn pin_err(path: &Path, reason: impl std::fmt::Display) -> KernelError {
    KernelError::Pin {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Pin a freshly attached link at `dir/link_<name>`, replacing (and so detaching)
/// the link a previous agent pinned there. Both are attached for a moment; that is
/// harmless, since the second program sees an already rewritten destination.
pub(super) fn pin_link(dir: &Path, name: &str, link: FdLink) -> Result<PinnedLink, KernelError> {
    let path = dir.join(format!("link_{name}"));
    match PinnedLink::from_pin(&path) {
        Ok(old) => {
            let old: FdLink = old.unpin().map_err(|e| pin_err(&path, e))?;
            drop(old);
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            // Not a link (a stale file): remove it so the new pin can take its place.
            tracing::warn!(path = %path.display(), error = %e, "replacing unreadable pin");
            let _ = std::fs::remove_file(&path);
        }
    }
    link.pin(&path).map_err(|e| pin_err(&path, e))
}

/// Remove every pin of `dir`: detaches the programs and frees the maps. For
/// uninstalling the agent from a node.
pub fn unpin_all(dir: &Path) -> Result<usize, KernelError> {
    let mut n = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(pin_err(dir, e)),
    };
    for e in entries.flatten() {
        std::fs::remove_file(e.path()).map_err(|err| pin_err(&e.path(), err))?;
        n += 1;
    }
    let _ = std::fs::remove_dir(dir);
    Ok(n)
}

/// A pinned map as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub kind: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Why a pinned map cannot be re-adopted by this build: `None` when it matches.
pub fn incompatibility(want: &Spec, found: &Found) -> Option<String> {
    let mut diffs = Vec::new();
    for (what, w, f) in [
        ("type", want.kind, found.kind),
        ("key size", want.key_size, found.key_size),
        ("value size", want.value_size, found.value_size),
        ("max entries", want.max_entries, found.max_entries),
    ] {
        if w != f {
            diffs.push(format!("{what} {f}, this build needs {w}"));
        }
    }
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

/// Remove pinned maps whose layout does not match `specs`, so the loader creates
/// fresh ones instead of re-adopting them (aya reuses any pinned map by name:
/// an upgrade that changed a record would otherwise read and write mismatched
/// bytes), and then the pinned links of the programs that used them. Returns the
/// names of the maps replaced.
pub(super) fn drop_incompatible_maps(dir: &Path, specs: &[Spec]) -> Vec<&'static str> {
    let mut replaced = Vec::new();
    for spec in specs {
        let path = dir.join(format!("map_{}", spec.name));
        if !path.exists() {
            continue;
        }
        let problem = match MapInfo::from_pin(&path) {
            Ok(info) => incompatibility(
                spec,
                &Found {
                    kind: info.map_type().map_or(u32::MAX, |t| t as u32),
                    key_size: info.key_size(),
                    value_size: info.value_size(),
                    max_entries: info.max_entries(),
                },
            ),
            Err(e) => Some(format!("unreadable: {e}")),
        };
        if let Some(problem) = problem {
            tracing::warn!(map = spec.name, path = %path.display(), %problem, "pinned map does not fit this build; replacing it");
            let _ = std::fs::remove_file(&path);
            replaced.push(spec.name);
        }
    }
    if !replaced.is_empty() {
        // The pinned programs use the old maps (their bind guard would still name
        // the previous agent, and refuse this one): detach them. Until this agent
        // attaches, credential connects are not redirected; a link a live agent
        // still holds stays attached until that agent exits.
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with("link_") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_ebpf::maps::{SPECS, TUPLES};

    #[test]
    fn a_pinned_map_must_match_every_field() {
        let want = SPECS.iter().find(|s| s.name == TUPLES).unwrap();
        let same = Found {
            kind: want.kind,
            key_size: want.key_size,
            value_size: want.value_size,
            max_entries: want.max_entries,
        };
        assert_eq!(incompatibility(want, &same), None);
        let older = Found {
            value_size: want.value_size - 8,
            ..same
        };
        assert_eq!(
            incompatibility(want, &older).unwrap(),
            format!(
                "value size {}, this build needs {}",
                want.value_size - 8,
                want.value_size
            )
        );
        let other_kind = Found {
            kind: 1,
            max_entries: 10,
            ..same
        };
        let why = incompatibility(want, &other_kind).unwrap();
        assert!(
            why.contains("type 1") && why.contains("max entries 10"),
            "{why}"
        );
    }
}
