//! Where audit lines go: stdout, or a file rotated at a size bound. Lines are
//! buffered; the writer thread flushes once its queue is empty (or every
//! [`MAX_BATCH`] lines), so a burst costs a few `write`s rather than one per line.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::PathBuf,
};

use super::AuditError;

/// Lines written between two flushes, at most.
pub(super) const MAX_BATCH: usize = 256;

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
    stdout: BufWriter<std::io::Stdout>,
    size: u64,
}

impl Writer {
    pub(super) fn open(target: Target) -> Result<Writer, AuditError> {
        let mut w = Writer {
            target,
            out: None,
            stdout: BufWriter::new(std::io::stdout()),
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

    /// Buffer one line (rotating first if it would overflow the file); it is on
    /// disk after the next [`flush`](Self::flush).
    pub(super) fn write_line(&mut self, line: &str) -> Result<(), AuditError> {
        match &self.target {
            Target::Stdout => {
                // Nobody to tell if stdout is gone; the line is lost either way.
                let _ = writeln!(self.stdout, "{line}");
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
                writeln!(out, "{line}").map_err(|source| AuditError::Io { path, source })?;
                self.size += line.len() as u64 + 1;
                Ok(())
            }
        }
    }

    /// Write out what [`write_line`](Self::write_line) buffered.
    pub(super) fn flush(&mut self) -> Result<(), AuditError> {
        match &self.target {
            Target::Stdout => {
                let _ = self.stdout.flush();
                Ok(())
            }
            Target::File { path, .. } => match self.out.as_mut() {
                Some(out) => out.flush().map_err(|source| AuditError::Io {
                    path: path.clone(),
                    source,
                }),
                None => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests;
