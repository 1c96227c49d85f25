//! Where audit lines go: stdout, or a file rotated at a size bound.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::PathBuf,
};

use super::AuditError;

/// Where lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    /// A file rotated at `max_bytes`, keeping `keep` old files (`.1` newest).
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
}

/// Size-bounded writer with rotation.
pub(super) struct Writer {
    target: Target,
    out: Option<BufWriter<File>>,
    size: u64,
}

impl Writer {
    pub(super) fn open(target: Target) -> Result<Writer, AuditError> {
        let mut w = Writer {
            target,
            out: None,
            size: 0,
        };
        w.reopen()?;
        Ok(w)
    }

    fn reopen(&mut self) -> Result<(), AuditError> {
        if let Target::File { path, .. } = &self.target {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| AuditError::Io {
                    path: path.clone(),
                    source,
                })?;
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.out = Some(BufWriter::new(f));
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let Target::File { path, keep, .. } = self.target.clone() else {
            return Ok(());
        };
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
        let name = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        if keep > 0 {
            let _ = std::fs::rename(&path, name(1));
        } else {
            let _ = std::fs::remove_file(&path);
        }
        self.reopen()
    }

    pub(super) fn write_line(&mut self, line: &str) -> Result<(), AuditError> {
        match &self.target {
            Target::Stdout => {
                let mut so = std::io::stdout().lock();
                let _ = writeln!(so, "{line}");
                let _ = so.flush();
                Ok(())
            }
            Target::File {
                path, max_bytes, ..
            } => {
                let (path, max) = (path.clone(), *max_bytes);
                if self.size + line.len() as u64 + 1 > max && self.size > 0 {
                    self.rotate()?;
                }
                // A failed reopen (during rotation) is retried here, line by line,
                // rather than leaving the writer without a file for good.
                if self.out.is_none() {
                    self.reopen()?;
                }
                let Some(out) = self.out.as_mut() else {
                    return Err(AuditError::Io {
                        path,
                        source: std::io::Error::other("audit file not open"),
                    });
                };
                writeln!(out, "{line}")
                    .and_then(|_| out.flush())
                    .map_err(|source| AuditError::Io { path, source })?;
                self.size += line.len() as u64 + 1;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
