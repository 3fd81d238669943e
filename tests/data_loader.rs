//! The shard loader: llm.c's header and names, windows, shuffling, rank split, exact resume and
//! the errors that name the file.

use gptk::data::loader::{DataError, Loader, LoaderState, Split};
use gptk::data::shard::{Shard, write_shard};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptk-data-loader-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Bytes of a shard laid out exactly as llm.c's `write_datafile` does: 256 little-endian i32
/// (magic, version, count, zeros), then the tokens as little-endian u16.
fn llm_c_bytes(magic: i32, version: i32, count: i32, tokens: &[u16]) -> Vec<u8> {
    let mut header = [0i32; 256];
    header[0] = magic;
    header[1] = version;
    header[2] = count;
    let mut bytes: Vec<u8> = header.iter().flat_map(|x| x.to_le_bytes()).collect();
    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    bytes
}

/// Shards whose token at global position p is p (mod 2^16), so a window names itself.
fn numbered_shards(dir: &Path, split: &str, sizes: &[usize]) {
    let mut next = 0u16;
    for (i, &n) in sizes.iter().enumerate() {
        let tokens: Vec<u16> = (0..n)
            .map(|_| {
                next = next.wrapping_add(1);
                next
            })
            .collect();
        write_shard(&dir.join(format!("d_{split}_{i:06}.bin")), &tokens).unwrap();
    }
}

/// First input token of each of the next `n` batches, checking targets shift by one.
fn firsts(l: &mut Loader, bt: usize, n: usize) -> Vec<i32> {
    let (mut x, mut y) = (vec![0; bt], vec![0; bt]);
    (0..n)
        .map(|_| {
            assert!(l.next_batch(&mut x, &mut y));
            assert!(x[1..] == y[..bt - 1], "targets are inputs shifted by one");
            x[0]
        })
        .collect()
}

#[test]
fn shards_written_like_llm_c_load_and_bad_headers_name_the_file() {
    let dir = temp_dir("header");
    let tokens: Vec<u16> = (0..1000).map(|i| (i * 37 % 50257) as u16).collect();
    std::fs::write(dir.join("tiny_shakespeare_train.bin"), llm_c_bytes(20240520, 1, 1000, &tokens)).unwrap();
    std::fs::write(dir.join("tiny_shakespeare_val.bin"), llm_c_bytes(20240520, 1, 300, &tokens[..300])).unwrap();
    let s = Shard::open(&dir.join("tiny_shakespeare_train.bin")).unwrap();
    assert_eq!((s.len(), s.token(999)), (1000, tokens[999]));
    // A directory of llm.c data (no manifest) is GPT-2 data, found by llm.c's names.
    let mut train = Loader::open(&dir, Split::Train, 2, 8, 0, 0, 1).unwrap();
    assert_eq!((train.vocab_size(), train.tokenizer()), (50257, "gpt2"));
    assert_eq!(train.windows_per_epoch(), 999 / 16);
    let val = Loader::open(&dir, Split::Val, 2, 8, 0, 0, 1).unwrap();
    assert_eq!(val.batches_per_epoch(), 299 / 16);
    let (mut x, mut y) = (vec![0; 16], vec![0; 16]);
    assert!(train.next_batch(&mut x, &mut y));

    let cases: [(Vec<u8>, &str); 5] = [
        (llm_c_bytes(20240522, 1, 10, &[0; 10]), "bad magic 20240522"),
        (llm_c_bytes(20240520, 2, 10, &[0; 20]), "version 2"),
        (llm_c_bytes(20240520, 1, 10, &[0; 9]), "header says 10 tokens"),
        (llm_c_bytes(20240520, 1, -5, &[]), "negative token count"),
        (vec![0; 100], "shorter than the 1024-byte llm.c shard header"),
    ];
    for (bytes, needle) in cases {
        let bad = temp_dir("header-bad");
        std::fs::write(bad.join("x_train_000000.bin"), bytes).unwrap();
        let e = Loader::open(&bad, Split::Train, 1, 4, 0, 0, 1).err().unwrap().to_string();
        assert!(e.contains("x_train_000000.bin") && e.contains(needle), "{e}");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
    }
}

#[test]
fn an_epoch_covers_every_window_once_and_reshuffles() {
    let dir = temp_dir("epoch");
    numbered_shards(&dir, "train", &[41, 61, 25]);
    let (b, t) = (2, 5);
    let mut l = Loader::open(&dir, Split::Train, b, t, 7, 0, 1).unwrap();
    // ⌊(N − 1) / B·T⌋ windows per shard.
    assert_eq!(l.windows_per_epoch(), 4 + 6 + 2);
    assert_eq!((l.batches_per_epoch(), l.tokens_per_epoch()), (12, 120));
    let first = firsts(&mut l, 10, 12);
    // Window k of a shard starting at global token s begins at s + 10k (tokens count from 1).
    let expected: BTreeSet<i32> =
        [(1, 4), (42, 6), (103, 2)].iter().flat_map(|&(s, n)| (0..n).map(move |k| s + 10 * k)).collect();
    assert_eq!(first.iter().copied().collect::<BTreeSet<_>>(), expected, "each window exactly once");
    assert_eq!(first.len(), 12);
    assert_eq!(l.epoch(), 0);
    let second = firsts(&mut l, 10, 12);
    assert_eq!(l.epoch(), 1);
    assert_ne!(first, second, "a new epoch has a new order");
    assert_eq!(second.iter().copied().collect::<BTreeSet<_>>(), expected);
    let mut same = Loader::open(&dir, Split::Train, b, t, 7, 0, 1).unwrap();
    assert_eq!(firsts(&mut same, 10, 24), [first.clone(), second].concat(), "same seed, same order");
    let mut other = Loader::open(&dir, Split::Train, b, t, 8, 0, 1).unwrap();
    assert_ne!(firsts(&mut other, 10, 12), first, "another seed, another order");
}

#[test]
fn ranks_split_an_epoch_disjointly_and_completely() {
    let dir = temp_dir("ranks");
    numbered_shards(&dir, "train", &[41, 61, 25, 33]);
    let total = 4 + 6 + 2 + 3;
    for world in [1, 2, 3, 4] {
        let mut seen = Vec::new();
        let mut per_rank = Vec::new();
        for rank in 0..world {
            let mut l = Loader::open(&dir, Split::Train, 2, 5, 9, rank, world).unwrap();
            per_rank.push(l.batches_per_epoch());
            let n = l.batches_per_epoch();
            seen.extend(firsts(&mut l, 10, n));
        }
        assert!(per_rank.iter().all(|&n| n == total / world), "world {world}: equal shares {per_rank:?}");
        let distinct: BTreeSet<i32> = seen.iter().copied().collect();
        assert_eq!(distinct.len(), seen.len(), "world {world}: no window twice");
        assert_eq!(seen.len(), total - total % world, "world {world}: all but the last windows mod world");
    }
    // The ranks' batches are the single-rank order dealt out round-robin.
    let mut one = Loader::open(&dir, Split::Train, 2, 5, 9, 0, 1).unwrap();
    let order = firsts(&mut one, 10, total);
    let mut r1 = Loader::open(&dir, Split::Train, 2, 5, 9, 1, 3).unwrap();
    assert_eq!(firsts(&mut r1, 10, 5), vec![order[1], order[4], order[7], order[10], order[13]]);
}

#[test]
fn n_steps_equal_half_then_restore_then_half() {
    let dir = temp_dir("resume");
    numbered_shards(&dir, "train", &[41, 61, 25]);
    for (rank, world) in [(0, 1), (1, 2)] {
        // 30 steps cross several epoch boundaries (12 or 6 windows per epoch).
        let mut straight = Loader::open(&dir, Split::Train, 2, 5, 3, rank, world).unwrap();
        let full = firsts(&mut straight, 10, 30);
        for split_at in [0, 1, 6, 12, 13, 15] {
            let mut a = Loader::open(&dir, Split::Train, 2, 5, 3, rank, world).unwrap();
            let head = firsts(&mut a, 10, split_at);
            let saved = serde_json::to_string(&a.state()).unwrap();
            let state: LoaderState = serde_json::from_str(&saved).unwrap();
            let mut b = Loader::open(&dir, Split::Train, 2, 5, 3, rank, world).unwrap();
            b.restore(&state).unwrap();
            assert_eq!(b.epoch(), a.epoch());
            let tail = firsts(&mut b, 10, 30 - split_at);
            assert_eq!([head, tail].concat(), full, "rank {rank}/{world}, restored after {split_at}");
        }
    }
}

#[test]
fn restore_refuses_a_position_that_means_something_else() {
    let dir = temp_dir("refuse");
    numbered_shards(&dir, "train", &[41, 61]);
    let mut a = Loader::open(&dir, Split::Train, 2, 5, 3, 0, 1).unwrap();
    firsts(&mut a, 10, 4);
    let state = a.state();
    let check = |mut l: Loader, needle: &str| {
        let e = l.restore(&state).unwrap_err();
        assert!(matches!(e, DataError::Resume(_)) && e.to_string().contains(needle), "{e}");
    };
    check(Loader::open(&dir, Split::Train, 2, 5, 4, 0, 1).unwrap(), "seed 3");
    check(Loader::open(&dir, Split::Train, 2, 5, 3, 0, 2).unwrap(), "rank 0 of 1");
    check(Loader::open(&dir, Split::Train, 2, 4, 3, 0, 1).unwrap(), "B*T = 10");
    check(Loader::open(&dir, Split::Train, 1, 5, 3, 0, 1).unwrap(), "B*T = 10");
    let mut past = state.clone();
    past.index = 1000;
    let mut l = Loader::open(&dir, Split::Train, 2, 5, 3, 0, 1).unwrap();
    let before = firsts(&mut Loader::open(&dir, Split::Train, 2, 5, 3, 0, 1).unwrap(), 10, 2);
    assert!(l.restore(&past).unwrap_err().to_string().contains("past the epoch"));
    assert_eq!(firsts(&mut l, 10, 2), before, "a refused restore leaves the loader as it was");
}

#[test]
fn validation_reads_in_order_and_resets() {
    let dir = temp_dir("val");
    numbered_shards(&dir, "val", &[41, 21]);
    let mut v = Loader::open(&dir, Split::Val, 2, 5, 0, 0, 1).unwrap();
    let (mut x, mut y) = (vec![0; 10], vec![0; 10]);
    let mut starts = Vec::new();
    while v.next_batch(&mut x, &mut y) {
        starts.push(x[0]);
    }
    assert_eq!(starts, vec![1, 11, 21, 31, 42, 52]);
    v.reset();
    assert!(v.next_batch(&mut x, &mut y) && x[0] == 1);
    let mut r1 = Loader::open(&dir, Split::Val, 2, 5, 0, 1, 2).unwrap();
    assert_eq!(firsts(&mut r1, 10, 3), vec![11, 31, 52]);
}

#[test]
fn unusable_data_is_named_in_one_line() {
    let dir = temp_dir("errors");
    numbered_shards(&dir, "train", &[41, 5]);
    let e = Loader::open(&dir, Split::Train, 2, 5, 0, 0, 1).err().unwrap().to_string();
    assert!(e.contains("d_train_000001.bin") && e.contains("shorter than one batch of B*T+1 = 11"), "{e}");
    let e = Loader::open(&dir, Split::Val, 1, 1, 0, 0, 1).err().unwrap().to_string();
    assert!(e.contains("no *_val_*.bin or *_val.bin shards"), "{e}");
    let missing = dir.join("nope");
    let e = Loader::open(&missing, Split::Train, 1, 1, 0, 0, 1).err().unwrap().to_string();
    assert!(e.contains("nope") && e.contains("no such data directory"), "{e}");
    assert!(Loader::open(&dir, Split::Train, 0, 5, 0, 0, 1).is_err());
    assert!(Loader::open(&dir, Split::Train, 1, 1, 0, 2, 2).is_err());
    // A prepared directory whose manifest is broken, or lists a shard that is gone.
    let prepared = temp_dir("errors-manifest");
    std::fs::write(prepared.join("manifest.json"), "{\"tokenizer\": 3}").unwrap();
    let e = Loader::open(&prepared, Split::Train, 1, 1, 0, 0, 1).err().unwrap().to_string();
    assert!(e.starts_with(&format!("{}: not a gptk manifest", prepared.join("manifest.json").display())), "{e}");
    let manifest = serde_json::json!({
        "tokenizer": "bytes", "vocab_size": 257, "gptk_version": "0",
        "train": {"documents": 1, "tokens": 9, "shards": ["p_train_000000.bin"]},
        "val": {"documents": 0, "tokens": 0, "shards": []},
    });
    std::fs::write(prepared.join("manifest.json"), manifest.to_string()).unwrap();
    let e = Loader::open(&prepared, Split::Train, 1, 1, 0, 0, 1).err().unwrap().to_string();
    assert!(e.contains("p_train_000000.bin: listed in") && e.contains("but missing"), "{e}");
    let e = Loader::open(&prepared, Split::Val, 1, 1, 0, 0, 1).err().unwrap().to_string();
    assert!(e.ends_with("manifest.json lists no val shards"), "{e}");
    write_shard(&prepared.join("p_train_000000.bin"), &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    let l = Loader::open(&prepared, Split::Train, 2, 4, 0, 0, 1).unwrap();
    assert_eq!((l.vocab_size(), l.tokenizer(), l.batches_per_epoch()), (257, "bytes", 1));
    let big = temp_dir("errors-world");
    numbered_shards(&big, "train", &[21]);
    let e = Loader::open(&big, Split::Train, 2, 5, 0, 0, 3).err().unwrap().to_string();
    assert!(e.contains("2 train windows") && e.contains("3 ranks"), "{e}");
    assert_eq!(e.lines().count(), 1);
}
