//! Batches from a directory of llm.c shards.
//!
//! A shard of N tokens holds ⌊(N − 1) / (B·T)⌋ windows; window k is tokens
//! `[k·B·T, k·B·T + B·T + 1)`: inputs the first B·T, targets the same shifted by one (llm.c's
//! layout). Training visits every window of every shard once per epoch, in an order shuffled per
//! epoch from the seed (shard order, then the windows inside each shard), and rank r of a world
//! of w takes windows r, r + w, r + 2w, … of that order, so data-parallel ranks see disjoint
//! data. Validation reads its shards in order, from the start, each time it is reset.
//!
//! The loader's position is a small [`LoaderState`] (epoch and index); the order is recomputed
//! from the seed, so restoring a state continues exactly where the saved run was.

use super::shard::{Shard, ShardError};
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
    fn tag(self) -> &'static str {
        match self {
            Split::Train => "_train_",
            Split::Val => "_val_",
        }
    }
}

/// A data directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{}: {msg}", path.display())]
    Dir { path: PathBuf, msg: String },
}

/// Where a training loader is, for checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    /// Windows this rank has taken in the current epoch.
    pub index: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    pub windows_per_epoch: usize,
}

/// Shards of one split, windows of B·T + 1 tokens.
pub struct Loader {
    shards: Vec<Shard>,
    split: Split,
    bt: usize,
    seed: u64,
    rank: usize,
    world: usize,
    epoch: u64,
    index: usize,
    /// This rank's windows for the current epoch: (shard, window).
    order: Vec<(usize, usize)>,
}

/// `*_train_*.bin` or `*_val_*.bin` files of `dir`, sorted by name.
pub fn shard_paths(dir: &Path, split: Split) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::Dir { path: dir.to_path_buf(), msg: e.to_string() })?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.ends_with(".bin") && name.contains(split.tag())
        })
        .collect();
    paths.sort();
    Ok(paths)
}

impl Loader {
    /// Opens the shards of `split` in `dir` for batches of `b` × `t` tokens. `rank` of `world`
    /// selects this process's share (0 of 1 without data parallelism).
    pub fn open(
        dir: &Path,
        split: Split,
        b: usize,
        t: usize,
        seed: u64,
        rank: usize,
        world: usize,
    ) -> Result<Loader, DataError> {
        assert!(b > 0 && t > 0 && world > 0 && rank < world);
        let paths = shard_paths(dir, split)?;
        if paths.is_empty() {
            return Err(DataError::Dir { path: dir.to_path_buf(), msg: format!("no *{}*.bin shards", split.tag()) });
        }
        let bt = b * t;
        let mut shards = Vec::with_capacity(paths.len());
        for p in &paths {
            let s = Shard::open(p)?;
            if s.len() < bt + 1 {
                return Err(DataError::Dir {
                    path: p.clone(),
                    msg: format!("{} tokens is shorter than one batch of B*T+1 = {} tokens", s.len(), bt + 1),
                });
            }
            shards.push(s);
        }
        let mut loader = Loader { shards, split, bt, seed, rank, world, epoch: 0, index: 0, order: Vec::new() };
        loader.plan_epoch();
        if loader.order.is_empty() {
            return Err(DataError::Dir {
                path: dir.to_path_buf(),
                msg: format!(
                    "{} windows of {} tokens cannot be shared by {world} ranks",
                    loader.windows_per_epoch(),
                    bt + 1
                ),
            });
        }
        Ok(loader)
    }

    /// Windows of all shards, all ranks together.
    pub fn windows_per_epoch(&self) -> usize {
        self.shards.iter().map(|s| (s.len() - 1) / self.bt).sum()
    }

    /// Tokens one epoch feeds this rank.
    pub fn tokens_per_epoch(&self) -> usize {
        self.order.len() * self.bt
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Computes this rank's window order for `self.epoch`.
    fn plan_epoch(&mut self) {
        let mut all: Vec<(usize, usize)> = Vec::with_capacity(self.windows_per_epoch());
        let mut shard_order: Vec<usize> = (0..self.shards.len()).collect();
        let mut rng = Rng::derive(self.seed, 0xE90C ^ self.epoch.wrapping_mul(0x9E37));
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
        // Every rank gets the same number of windows; the remainder is dropped this epoch.
        let per_rank = all.len() / self.world;
        self.order = all.into_iter().skip(self.rank).step_by(self.world).take(per_rank).collect();
    }

    /// Fills the next (inputs, targets) of B·T ids each. Training wraps into a new epoch (with a
    /// new order) and always succeeds; validation returns false once its shards are exhausted.
    pub fn next_batch(&mut self, inputs: &mut [i32], targets: &mut [i32]) -> bool {
        assert!(inputs.len() == self.bt && targets.len() == self.bt);
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

    /// Starts over from the first window of the epoch (validation).
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
        }
    }

    /// Continues from a saved position; the data, seed and rank layout must be the same.
    pub fn restore(&mut self, state: &LoaderState) -> Result<(), String> {
        if state.seed != self.seed || state.rank != self.rank || state.world != self.world {
            return Err(format!(
                "the checkpoint's data position was saved with seed {} rank {} of {}, this run has seed {} rank {} of {}",
                state.seed, state.rank, state.world, self.seed, self.rank, self.world
            ));
        }
        if state.windows_per_epoch != self.windows_per_epoch() {
            return Err(format!(
                "the data changed since the checkpoint: {} windows per epoch then, {} now",
                state.windows_per_epoch,
                self.windows_per_epoch()
            ));
        }
        self.epoch = state.epoch;
        self.plan_epoch();
        if state.index > self.order.len() {
            return Err(format!(
                "the checkpoint's data position {} is past the epoch's {} windows",
                state.index,
                self.order.len()
            ));
        }
        self.index = state.index;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::write_shard;

    fn dir_with_shards(tag: &str, sizes: &[usize]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gptk-loader-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut next = 0u16;
        for (i, &n) in sizes.iter().enumerate() {
            let tokens: Vec<u16> = (0..n)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            write_shard(&dir.join(format!("d_train_{i:06}.bin")), &tokens).unwrap();
        }
        write_shard(&dir.join("d_val_000000.bin"), &(0..50).collect::<Vec<u16>>()).unwrap();
        dir
    }

    fn epoch_windows(l: &mut Loader) -> Vec<i32> {
        let (mut x, mut y) = (vec![0; l.bt], vec![0; l.bt]);
        (0..l.order.len())
            .map(|_| {
                assert!(l.next_batch(&mut x, &mut y));
                assert!(
                    x.iter().zip(&y).all(|(a, b)| *b == (*a as u16).wrapping_add(1) as i32),
                    "targets shift by one"
                );
                x[0]
            })
            .collect()
    }

    #[test]
    fn an_epoch_visits_every_window_once_and_reshuffles() {
        let dir = dir_with_shards("epoch", &[41, 61, 25]);
        let mut l = Loader::open(&dir, Split::Train, 2, 5, 7, 0, 1).unwrap();
        assert_eq!(l.windows_per_epoch(), 4 + 6 + 2);
        let first = epoch_windows(&mut l);
        let mut sorted = first.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 12, "each window once");
        let second = epoch_windows(&mut l);
        assert_eq!(l.epoch(), 1);
        assert_ne!(first, second, "a new epoch has a new order");
        let mut other_seed = Loader::open(&dir, Split::Train, 2, 5, 8, 0, 1).unwrap();
        assert_ne!(epoch_windows(&mut other_seed), first);
        let mut same_seed = Loader::open(&dir, Split::Train, 2, 5, 7, 0, 1).unwrap();
        assert_eq!(epoch_windows(&mut same_seed), first);
    }

    #[test]
    fn ranks_split_the_epoch_disjointly() {
        let dir = dir_with_shards("ranks", &[41, 61, 25]);
        let mut seen = Vec::new();
        for rank in 0..3 {
            let mut l = Loader::open(&dir, Split::Train, 2, 5, 7, rank, 3).unwrap();
            assert_eq!(l.order.len(), 4);
            seen.extend(epoch_windows(&mut l));
        }
        let n = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!((n, seen.len()), (12, 12), "3 ranks × 4 windows, no overlap");
    }

    #[test]
    fn restore_continues_identically() {
        let dir = dir_with_shards("restore", &[41, 61]);
        let mut a = Loader::open(&dir, Split::Train, 2, 5, 3, 0, 1).unwrap();
        let (mut x, mut y) = (vec![0; 10], vec![0; 10]);
        for _ in 0..13 {
            a.next_batch(&mut x, &mut y);
        }
        let state = a.state();
        let mut b = Loader::open(&dir, Split::Train, 2, 5, 3, 0, 1).unwrap();
        b.restore(&state).unwrap();
        for _ in 0..20 {
            let (mut xa, mut xb) = (vec![0; 10], vec![0; 10]);
            a.next_batch(&mut xa, &mut y);
            b.next_batch(&mut xb, &mut y);
            assert_eq!(xa, xb);
        }
        let mut c = Loader::open(&dir, Split::Train, 2, 5, 4, 0, 1).unwrap();
        assert!(c.restore(&state).is_err(), "another seed is refused");
    }

    #[test]
    fn validation_is_sequential_and_ends() {
        let dir = dir_with_shards("val", &[41]);
        let mut v = Loader::open(&dir, Split::Val, 2, 5, 0, 0, 1).unwrap();
        let (mut x, mut y) = (vec![0; 10], vec![0; 10]);
        let mut starts = Vec::new();
        while v.next_batch(&mut x, &mut y) {
            starts.push(x[0]);
        }
        assert_eq!(starts, vec![0, 10, 20, 30]);
        v.reset();
        assert!(v.next_batch(&mut x, &mut y) && x[0] == 0);
    }

    #[test]
    fn unusable_directories_are_named() {
        let dir = dir_with_shards("bad", &[5]);
        let e = Loader::open(&dir, Split::Train, 2, 5, 0, 0, 1).err().unwrap().to_string();
        assert!(e.contains("d_train_000000.bin") && e.contains("shorter than one batch"), "{e}");
        let empty = std::env::temp_dir().join(format!("gptk-loader-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(
            Loader::open(&empty, Split::Train, 1, 1, 0, 0, 1)
                .err()
                .unwrap()
                .to_string()
                .contains("no *_train_*.bin shards")
        );
    }
}
