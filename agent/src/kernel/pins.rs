//! bpffs pins: links replaced on restart, and `uninstall`.

use std::path::Path;

use aya::programs::links::{FdLink, LinkError, PinnedLink};

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
