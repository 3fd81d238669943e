//! Sharing rank 0's NCCL id through a file on a filesystem every rank sees, for clusters where
//! the ranks cannot reach each other over TCP before NCCL is up (`--nccl-init file:PATH`).
//!
//! Rank 0 writes the file (atomically, and only if it does not exist: a file left by an earlier
//! job would hand the others a stale id); the others wait for it, then check that it was written
//! for a job of their world size and their run settings.

use crate::checkpoint::atomic;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A failure to share the id.
#[derive(Debug, thiserror::Error)]
pub enum FileInitError {
    #[error("{}: already exists; the rendezvous file must be new for each job (remove it, or name another)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: rank 0 did not write it within {secs} s", path.display())]
    Timeout { path: PathBuf, secs: u64 },
    #[error("{}: {msg}", path.display())]
    Mismatch { path: PathBuf, msg: String },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// Rank 0: publishes `id` for a job of `world` ranks running `fingerprint`.
pub fn publish(path: &Path, id: &[u8], world: usize, fingerprint: &str) -> Result<(), FileInitError> {
    if path.exists() {
        return Err(FileInitError::Exists(path.to_path_buf()));
    }
    let text = format!("gptk-rendezvous 1\nworld {world}\nfingerprint {fingerprint}\nid {}\n", hex(id));
    atomic::write_bytes(path, text.as_bytes()).map_err(|source| FileInitError::Io { path: path.to_path_buf(), source })
}

/// Other ranks: waits up to `timeout` for rank 0's file and returns the id.
pub fn fetch(path: &Path, world: usize, fingerprint: &str, timeout: Duration) -> Result<Vec<u8>, FileInitError> {
    let deadline = Instant::now() + timeout;
    let text = loop {
        match std::fs::read_to_string(path) {
            Ok(t) => break t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if Instant::now() >= deadline {
                    return Err(FileInitError::Timeout { path: path.to_path_buf(), secs: timeout.as_secs() });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => return Err(FileInitError::Io { path: path.to_path_buf(), source }),
        }
    };
    let bad = |msg: String| FileInitError::Mismatch { path: path.to_path_buf(), msg };
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' '))).map(str::to_string)
    };
    if !text.starts_with("gptk-rendezvous 1\n") {
        return Err(bad("not a gptk rendezvous file".into()));
    }
    let their_world: usize = field("world").and_then(|w| w.parse().ok()).ok_or_else(|| bad("no world size".into()))?;
    if their_world != world {
        return Err(bad(format!("rank 0 started a job of {their_world} ranks, this rank expects {world}")));
    }
    if field("fingerprint").as_deref() != Some(fingerprint) {
        return Err(bad(format!("rank 0 runs a different job: {}", field("fingerprint").unwrap_or_default())));
    }
    field("id").and_then(|h| unhex(&h)).ok_or_else(|| bad("no readable id".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_zero_publishes_and_the_others_fetch_and_check() {
        let dir = std::env::temp_dir().join(format!("gptk-file-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rdv");
        let _ = std::fs::remove_file(&path);
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || fetch(&path, 4, "job", Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(150));
        let id: Vec<u8> = (0..128).map(|i| i as u8).collect();
        publish(&path, &id, 4, "job").unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), id);
        assert!(publish(&path, &id, 4, "job").unwrap_err().to_string().contains("already exists"));
        assert!(fetch(&path, 2, "job", Duration::from_secs(1)).unwrap_err().to_string().contains("job of 4 ranks"));
        assert!(fetch(&path, 4, "other", Duration::from_secs(1)).unwrap_err().to_string().contains("different job"));
        let missing = dir.join("never");
        assert!(
            fetch(&missing, 4, "job", Duration::from_millis(300)).unwrap_err().to_string().contains("did not write it")
        );
    }
}
