//! Batches from a directory of llm.c shards.
//!
//! **Shards.** A directory prepared by `gptk prepare` lists its shards in `manifest.json`, which
//! also names the tokenizer and the vocabulary size. A directory without a manifest is llm.c
//! data: its shards are found by name (`*_train_*.bin` or `*_train.bin`, `*_val_*.bin` or
//! `*_val.bin`, sorted), and its tokens are GPT-2's. Either way each shard is memory-mapped and
//! its header checked ([`Shard::open`]).
//!
//! **Windows.** With batches of B×T tokens, a shard of N tokens holds ⌊(N − 1) / (B·T)⌋ windows;
//! window k is tokens `[k·B·T, k·B·T + B·T + 1)`: inputs the first B·T, targets the same shifted
//! by one (llm.c's layout). The last `(N − 1) mod (B·T)` tokens of a shard are never inputs. A
//! shard shorter than one window is an error naming it.
//!
//! **Order.** Training visits every window of every shard once per epoch. Each epoch has its own
//! order, drawn from the seed and the epoch number: the shards are shuffled, then the windows
//! inside each shard (as llm.c's loader does with shuffling on). Validation reads its shards in
//! order, windows in order, and ends; [`Loader::reset`] starts it over.
//!
//! **Ranks.** Rank r of a world of w takes windows r, r + w, r + 2w, … of the epoch's order, so
//! data-parallel ranks see disjoint data and together all of it, except the last
//! `windows mod w` windows of each epoch, which are dropped so that every rank takes the same
//! number of steps.
//!
//! **Resume.** The order is a pure function of (seed, epoch, shards, B·T), so the position is
//! two numbers: the epoch and how many windows this rank has taken in it. [`LoaderState`] holds
//! them with what must not change for them to mean the same thing (seed, rank layout, window
//! count and size); `restore` checks those and continues exactly where the saved loader was.

use super::prepare::{MANIFEST_FILE, Manifest};
use super::shard::{Shard, ShardError};
use crate::model::config::GPT2_VOCAB_SIZE;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which shards to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    /// The split's word in shard names.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// The split a shard file name belongs to under llm.c's naming: `<name>_train_<k>.bin` or
/// `<name>_train.bin` (and `val` alike); `None` for other names.
pub fn split_of_shard_name(file_name: &str) -> Option<Split> {
    let stem = file_name.strip_suffix(".bin")?;
    let at = |split: Split| {
        let tag = format!("_{}", split.name());
        let inner = stem.rfind(&format!("{tag}_"));
        let last = stem.ends_with(&tag).then(|| stem.len() - tag.len());
        inner.max(last)
    };
    match (at(Split::Train), at(Split::Val)) {
        (None, None) => None,
        (t, v) => Some(if t > v { Split::Train } else { Split::Val }),
    }
}

/// A data directory that cannot be used, naming the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{}: {msg}", path.display())]
    Dir { path: PathBuf, msg: String },
    /// An unreadable `manifest.json` (the message names it).
    #[error("{0}")]
    Manifest(String),
    /// Batch shape or rank layout that cannot work.
    #[error("{0}")]
    Config(String),
    /// A saved position that does not fit this loader.
    #[error("{0}")]
    Resume(String),
}

fn dir_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Dir { path: path.to_path_buf(), msg: msg.into() }
}

/// Where a loader is, for checkpoints (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    /// Windows this rank has taken in the current epoch.
    pub index: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    /// Windows of one epoch, all ranks together.
    pub windows_per_epoch: usize,
    /// B·T of the batches (0 in states saved before it was recorded: not checked).
    #[serde(default)]
    pub batch_tokens: usize,
}

/// The shards of one split of `dir` and the vocabulary they use.
pub struct Dataset {
    pub paths: Vec<PathBuf>,
    /// V from the manifest; GPT-2's for llm.c data.
    pub vocab_size: usize,
    /// Tokenizer name from the manifest; "gpt2" for llm.c data.
    pub tokenizer: String,
}

/// Finds the shards of `split` in `dir`: the manifest's list when there is one, else llm.c's
/// names.
pub fn find_shards(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(dir_err(dir, "no such data directory"));
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.is_file() {
        let m = Manifest::read(dir).map_err(|e| DataError::Manifest(e.to_string()))?;
        let stats = match split {
            Split::Train => &m.train,
            Split::Val => &m.val,
        };
        let paths: Vec<PathBuf> = stats.shards.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(dir_err(missing, format!("listed in {} but missing", manifest_path.display())));
        }
        if paths.is_empty() {
            return Err(dir_err(dir, format!("{MANIFEST_FILE} lists no {} shards", split.name())));
        }
        return Ok(Dataset { paths, vocab_size: m.vocab_size, tokenizer: m.tokenizer });
    }
    let entries = std::fs::read_dir(dir).map_err(|e| dir_err(dir, e.to_string()))?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(split_of_shard_name) == Some(split))
        .collect();
    paths.sort();
    if paths.is_empty() {
        let s = split.name();
        return Err(dir_err(dir, format!("no *_{s}_*.bin or *_{s}.bin shards (and no {MANIFEST_FILE})")));
    }
    Ok(Dataset { paths, vocab_size: GPT2_VOCAB_SIZE, tokenizer: "gpt2".into() })
}

/// Shards of one split, read in windows of B·T + 1 tokens.
pub struct Loader {
    shards: Vec<Shard>,
    split: Split,
    bt: usize,
    seed: u64,
    rank: usize,
    world: usize,
    vocab_size: usize,
    tokenizer: String,
    epoch: u64,
    index: usize,
    /// This rank's windows for the current epoch: (shard, window).
    order: Vec<(usize, usize)>,
}

impl Loader {
    /// Opens the shards of `split` in `dir` for batches of `b` × `t` tokens. `rank` of `world`
    /// selects this process's share (0 of 1 without data parallelism); `seed` fixes the
    /// training order.
    pub fn open(
        dir: &Path,
        split: Split,
        b: usize,
        t: usize,
        seed: u64,
        rank: usize,
        world: usize,
    ) -> Result<Loader, DataError> {
        if b == 0 || t == 0 {
            return Err(DataError::Config(format!("batch size {b} and sequence length {t} must be at least 1")));
        }
        if world == 0 || rank >= world {
            return Err(DataError::Config(format!("rank {rank} of a world of {world}: expected 0 ≤ rank < world")));
        }
        let bt = b.checked_mul(t).ok_or_else(|| DataError::Config(format!("B·T = {b}·{t} overflows")))?;
        let data = find_shards(dir, split)?;
        let mut shards = Vec::with_capacity(data.paths.len());
        for p in &data.paths {
            let s = Shard::open(p)?;
            if s.len() < bt + 1 {
                return Err(dir_err(
                    p,
                    format!(
                        "{} tokens is shorter than one batch of B*T+1 = {} tokens (use a smaller batch or larger shards)",
                        s.len(),
                        bt + 1
                    ),
                ));
            }
            shards.push(s);
        }
        let mut loader = Loader {
            shards,
            split,
            bt,
            seed,
            rank,
            world,
            vocab_size: data.vocab_size,
            tokenizer: data.tokenizer,
            epoch: 0,
            index: 0,
            order: Vec::new(),
        };
        loader.plan_epoch();
        if loader.order.is_empty() {
            return Err(dir_err(
                dir,
                format!(
                    "{} {} windows of {} tokens cannot be shared by {world} ranks",
                    loader.windows_per_epoch(),
                    split.name(),
                    bt + 1
                ),
            ));
        }
        Ok(loader)
    }

    /// Windows of all shards, all ranks together.
    pub fn windows_per_epoch(&self) -> usize {
        self.shards.iter().map(|s| (s.len() - 1) / self.bt).sum()
    }

    /// Batches one epoch gives this rank.
    pub fn batches_per_epoch(&self) -> usize {
        self.order.len()
    }

    /// Tokens one epoch feeds this rank (as inputs).
    pub fn tokens_per_epoch(&self) -> usize {
        self.order.len() * self.bt
    }

    /// The epoch the next batch comes from (0 first).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// V of the data: every token id is below it if the shards are sound (the trainer checks).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Name of the data's tokenizer.
    pub fn tokenizer(&self) -> &str {
        &self.tokenizer
    }

    /// The shard files, in name order.
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(Shard::path).collect()
    }

    /// Computes this rank's window order for `self.epoch`.
    fn plan_epoch(&mut self) {
        let mut all: Vec<(usize, usize)> = Vec::with_capacity(self.windows_per_epoch());
        let mut shard_order: Vec<usize> = (0..self.shards.len()).collect();
        let mut rng = Rng::derive(self.seed, 0xE90C ^ self.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if self.split == Split::Train {
            rng.shuffle(&mut shard_order);
        }
        for s in shard_order {
            let n = (self.shards[s].len() - 1) / self.bt;
            let mut windows: Vec<usize> = (0..n).collect();
            if self.split == Split::Train {
                rng.shuffle(&mut windows);
            }
            all.extend(windows.into_iter().map(|w| (s, w)));
        }
        let per_rank = all.len() / self.world;
        self.order = all.into_iter().skip(self.rank).step_by(self.world).take(per_rank).collect();
    }

    /// Fills the next (inputs, targets) of B·T ids each. Training wraps into a new epoch (with a
    /// new order) and always returns true; validation returns false once its windows are used.
    ///
    /// Panics if a buffer is not B·T long (a caller's bug, not the data's).
    pub fn next_batch(&mut self, inputs: &mut [i32], targets: &mut [i32]) -> bool {
        assert!(
            inputs.len() == self.bt && targets.len() == self.bt,
            "batch buffers of {} and {} ids, expected B*T = {}",
            inputs.len(),
            targets.len(),
            self.bt
        );
        if self.index == self.order.len() {
            if self.split == Split::Val {
                return false;
            }
            self.epoch += 1;
            self.index = 0;
            self.plan_epoch();
        }
        let (s, w) = self.order[self.index];
        self.index += 1;
        let shard = &self.shards[s];
        shard.read(w * self.bt, inputs);
        shard.read(w * self.bt + 1, targets);
        true
    }

    /// The shard and window of the batch last returned, for error messages.
    pub fn position(&self) -> String {
        match self.index.checked_sub(1).map(|i| self.order[i]) {
            Some((s, w)) => format!("{} window {w}", self.shards[s].path().display()),
            None => "start".into(),
        }
    }

    /// Starts the current epoch over from its first window (validation reads the same batches
    /// every time).
    pub fn reset(&mut self) {
        self.index = 0;
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            epoch: self.epoch,
            index: self.index,
            seed: self.seed,
            rank: self.rank,
            world: self.world,
            windows_per_epoch: self.windows_per_epoch(),
            batch_tokens: self.bt,
        }
    }

    /// Continues from a saved position; the data, batch shape, seed and rank layout must be the
    /// ones it was saved with.
    pub fn restore(&mut self, state: &LoaderState) -> Result<(), DataError> {
        if state.seed != self.seed || state.rank != self.rank || state.world != self.world {
            return Err(DataError::Resume(format!(
                "the data position was saved with seed {} rank {} of {}, this run has seed {} rank {} of {}",
                state.seed, state.rank, state.world, self.seed, self.rank, self.world
            )));
        }
        if state.batch_tokens != 0 && state.batch_tokens != self.bt {
            return Err(DataError::Resume(format!(
                "the data position was saved for batches of B*T = {} tokens, this run has {}",
                state.batch_tokens, self.bt
            )));
        }
        if state.windows_per_epoch != self.windows_per_epoch() {
            return Err(DataError::Resume(format!(
                "the data changed since the position was saved: {} windows per epoch then, {} now",
                state.windows_per_epoch,
                self.windows_per_epoch()
            )));
        }
        let (epoch, index) = (self.epoch, self.index);
        self.epoch = state.epoch;
        self.plan_epoch();
        if state.index > self.order.len() {
            let n = self.order.len();
            self.epoch = epoch;
            self.plan_epoch();
            self.index = index;
            return Err(DataError::Resume(format!(
                "the saved data position {} is past the epoch's {n} windows",
                state.index
            )));
        }
        self.index = state.index;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_c_names_are_recognised() {
        let cases = [
            ("fineweb_train_000001.bin", Some(Split::Train)),
            ("fineweb_val_000000.bin", Some(Split::Val)),
            ("edu_fineweb_train_000099.bin", Some(Split::Train)),
            ("tiny_shakespeare_train.bin", Some(Split::Train)),
            ("tiny_shakespeare_val.bin", Some(Split::Val)),
            ("TinyStories_val.bin", Some(Split::Val)),
            ("brown_val_000000.bin", Some(Split::Val)),
            ("interval_000000.bin", None),
            ("trainer.bin", None),
            ("x_train_000000.bin.tmp123", None),
            ("notes_train.txt", None),
            ("val_train_000000.bin", Some(Split::Train)),
            ("a_train_b_val_000000.bin", Some(Split::Val)),
        ];
        for (name, split) in cases {
            assert_eq!(split_of_shard_name(name), split, "{name}");
        }
    }
}
