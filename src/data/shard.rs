//! llm.c token shards: a 256 × i32 header (magic 20240520, version 1, token count, then zeros)
//! followed by the tokens as little-endian u16. Files made by llm.c's data scripts load as they
//! are, and the files gptk writes load in llm.c.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// First header word of every shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// Header version for u16 tokens (llm.c's version 2 holds u32 LLaMA-3 tokens).
pub const SHARD_VERSION: i32 = 1;
/// Header length in i32 words.
pub const HEADER_INTS: usize = 256;
/// Header length in bytes.
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

/// A shard that cannot be used, with the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
}

/// A memory-mapped, validated shard.
pub struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    num_tokens: usize,
}

impl Shard {
    /// Maps and validates a shard: magic, version, and a size that matches the token count.
    pub fn open(path: &Path) -> Result<Shard, ShardError> {
        let io_err = |source| ShardError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len < HEADER_BYTES as u64 {
            return Err(ShardError::Format {
                path: path.to_path_buf(),
                msg: format!("{len} bytes is shorter than the {HEADER_BYTES}-byte llm.c shard header"),
            });
        }
        // SAFETY: read-only map; a shard changed underneath a running job is outside what we defend.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        let num_tokens = parse_header(path, &map[..HEADER_BYTES], map.len() as u64)?;
        Ok(Shard { path: path.to_path_buf(), map, num_tokens })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.num_tokens
    }

    pub fn is_empty(&self) -> bool {
        self.num_tokens == 0
    }

    /// Token `i`.
    pub fn token(&self, i: usize) -> u16 {
        let at = HEADER_BYTES + 2 * i;
        u16::from_le_bytes([self.map[at], self.map[at + 1]])
    }

    /// Tokens `[start, start + out.len())` as i32.
    pub fn read(&self, start: usize, out: &mut [i32]) {
        let bytes = &self.map[HEADER_BYTES + 2 * start..HEADER_BYTES + 2 * (start + out.len())];
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = u16::from_le_bytes([b[0], b[1]]) as i32;
        }
    }
}

/// Checks the header of a shard file of `file_len` bytes (`header` is at least its first
/// [`HEADER_BYTES`]) and returns the token count: magic, version, and a count that matches the
/// length exactly.
pub fn parse_header(path: &Path, header: &[u8], file_len: u64) -> Result<usize, ShardError> {
    let bad = |msg: String| ShardError::Format { path: path.to_path_buf(), msg };
    if header.len() < HEADER_BYTES || file_len < HEADER_BYTES as u64 {
        let len = file_len.min(header.len() as u64);
        return Err(bad(format!("{len} bytes is shorter than the {HEADER_BYTES}-byte llm.c shard header")));
    }
    let word = |i: usize| i32::from_le_bytes([header[4 * i], header[4 * i + 1], header[4 * i + 2], header[4 * i + 3]]);
    if word(0) != SHARD_MAGIC {
        return Err(bad(format!("bad magic {} (an llm.c token shard starts with {SHARD_MAGIC})", word(0))));
    }
    match word(1) {
        SHARD_VERSION => {}
        2 => {
            return Err(bad(
                "version 2 (u32 tokens, LLaMA 3) is not supported; gptk reads version 1 (u16 GPT-2 tokens)".into(),
            ));
        }
        v => return Err(bad(format!("unsupported version {v} (expected {SHARD_VERSION})"))),
    }
    let count = word(2);
    if count < 0 {
        return Err(bad(format!("negative token count {count}")));
    }
    // At most 2^31 tokens: no overflow in u64.
    let expected = HEADER_BYTES as u64 + 2 * count as u64;
    if file_len != expected {
        return Err(bad(format!("header says {count} tokens ({expected} bytes) but the file has {file_len} bytes")));
    }
    Ok(count as usize)
}

/// Writes `tokens` as an llm.c shard (atomically: temporary file, fsync, rename).
pub fn write_shard(path: &Path, tokens: &[u16]) -> io::Result<()> {
    let count = i32::try_from(tokens.len()).map_err(|_| io::Error::other("more than 2^31 tokens in one shard"))?;
    crate::checkpoint::atomic::write_with(path, |tmp| {
        let mut w = BufWriter::new(File::create(tmp)?);
        let mut header = [0i32; HEADER_INTS];
        header[0] = SHARD_MAGIC;
        header[1] = SHARD_VERSION;
        header[2] = count;
        for x in header {
            w.write_all(&x.to_le_bytes())?;
        }
        for t in tokens {
            w.write_all(&t.to_le_bytes())?;
        }
        w.flush()
    })
}

/// llm.c's sequential batches: batch k is tokens `[k·B·T, k·B·T + B·T + 1)`, inputs the first
/// B·T, targets the same shifted by one.
pub struct SequentialBatches<'a> {
    shard: &'a Shard,
    bt: usize,
    next: usize,
}

impl<'a> SequentialBatches<'a> {
    /// Fails when the shard holds fewer than B·T + 1 tokens.
    pub fn new(shard: &'a Shard, b: usize, t: usize) -> Result<Self, ShardError> {
        let bt = b * t;
        if shard.len() < bt + 1 {
            return Err(ShardError::Format {
                path: shard.path.clone(),
                msg: format!("{} tokens is shorter than one batch of B*T+1 = {} tokens", shard.len(), bt + 1),
            });
        }
        Ok(SequentialBatches { shard, bt, next: 0 })
    }

    /// Number of whole batches in the shard.
    pub fn count(&self) -> usize {
        (self.shard.len() - 1) / self.bt
    }

    /// Fills the next (inputs, targets) pair; false once the shard is exhausted.
    pub fn next_into(&mut self, inputs: &mut [i32], targets: &mut [i32]) -> bool {
        if self.next + self.bt + 1 > self.shard.len() {
            return false;
        }
        self.shard.read(self.next, inputs);
        self.shard.read(self.next + 1, targets);
        self.next += self.bt;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_open_round_trips_and_batches_shift_by_one() {
        let dir = tempdir();
        let path = dir.join("t.bin");
        let tokens: Vec<u16> = (0..101).map(|i| (i * 7 % 300) as u16).collect();
        write_shard(&path, &tokens).unwrap();
        let s = Shard::open(&path).unwrap();
        assert_eq!(s.len(), 101);
        let mut batches = SequentialBatches::new(&s, 2, 5).unwrap();
        assert_eq!(batches.count(), 10);
        let (mut x, mut y) = (vec![0; 10], vec![0; 10]);
        assert!(batches.next_into(&mut x, &mut y));
        assert!(batches.next_into(&mut x, &mut y));
        assert_eq!(x[0], tokens[10] as i32);
        assert_eq!(y[9], tokens[20] as i32);
        let mut n = 2;
        while batches.next_into(&mut x, &mut y) {
            n += 1;
        }
        assert_eq!(n, 10);
    }

    #[test]
    fn bad_headers_are_rejected_with_the_reason() {
        let dir = tempdir();
        let path = dir.join("bad.bin");
        write_shard(&path, &[1, 2, 3]).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        let e = Shard::open(&path).err().unwrap().to_string();
        assert!(e.contains("header says 3 tokens"), "{e}");
        bytes[0] = 0;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Shard::open(&path).err().unwrap().to_string().contains("bad magic"));
        std::fs::write(&path, [0u8; 10]).unwrap();
        assert!(Shard::open(&path).err().unwrap().to_string().contains("shorter than"));
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "gptk-shard-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
