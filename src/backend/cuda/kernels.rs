//! What the build embedded: the kernel fatbin, the ptxas resource report, and readers for both.
//!
//! Everything here works without a GPU, so the build checks (every kernel compiled for sm_90
//! with no spills, the fatbin holds sm_90 code) run on any machine that had nvcc at build time.
//! The block sizes below mirror the `#define …_BLOCK` of each kernel file (a test compares them),
//! because the kernels are compiled with `__launch_bounds__` for exactly those sizes.

include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));

use super::plan::{BYTES_PER_BF16, BYTES_PER_F32};
use crate::backend::cpu::attention::AttentionTiles;

/// Threads per block of the elementwise kernels (gelu.cu).
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Threads per block in encoder.cu.
pub const ENCODER_BLOCK: u32 = 256;
/// Threads per block in layernorm.cu (one warp per row in the row kernels).
pub const LAYERNORM_BLOCK: u32 = 256;
/// Threads per block in attention.cu (one warp per row).
pub const ATTENTION_BLOCK: u32 = 256;
/// Largest head size attention.cu handles (8 slots of 32 lanes).
pub const ATTENTION_MAX_HS: usize = 256;
/// Threads per block (one block per row) in loss.cu.
pub const LOSS_BLOCK: u32 = 512;
/// Threads per block in adamw.cu, each owning [`ADAMW_ELEMS`] elements.
pub const ADAMW_BLOCK: u32 = 256;
/// Threads of step_scalars' one block in adamw.cu.
pub const STEP_SCALARS_BLOCK: u32 = 32;
// step_scalars sums the losses one lane per thread, in `sum_losses`' order.
const _: () = assert!(STEP_SCALARS_BLOCK as usize == crate::backend::LOSS_SUM_LANES);
/// Consecutive elements per AdamW thread.
pub const ADAMW_ELEMS: usize = 4;
/// Threads per block in reduce.cu.
pub const REDUCE_BLOCK: u32 = 256;
/// Threads per block in matmul.cu.
pub const MATMUL_BLOCK: u32 = 256;

/// Threads per block of the tensor-core attention (flash_attention.cu): four warps.
pub const FLASH_BLOCK: u32 = 128;
/// Warps per block of flash_attention.cu.
pub const FLASH_WARPS: usize = 4;
/// Forward: query rows per block (32 per warp).
pub const FLASH_FWD_ROWS: usize = 128;
/// Forward: keys per streamed tile, at HS = 64 and HS = 128.
pub const FLASH_FWD_KEYS_HS64: usize = 64;
pub const FLASH_FWD_KEYS_HS128: usize = 32;
/// Backward dK/dV: keys per block (16 per warp).
pub const FLASH_DKV_KEYS: usize = 64;
/// Backward dK/dV: queries per streamed tile, at HS = 64 and HS = 128.
pub const FLASH_DKV_ROWS_HS64: usize = 64;
pub const FLASH_DKV_ROWS_HS128: usize = 32;
/// Backward dQ: query rows per block (16 per warp) and keys per streamed tile.
pub const FLASH_DQ_ROWS: usize = 64;
pub const FLASH_DQ_KEYS: usize = 64;
/// bf16 elements of padding after each shared-memory row (bank-conflict-free ldmatrix).
pub const FLASH_SMEM_PAD: usize = 8;
/// Head sizes the tensor-core attention is compiled for.
pub const FLASH_HEAD_SIZES: [usize; 2] = [64, 128];

/// Every kernel family, by the name its `_f32`/`_bf16` entry points share, with its source file.
pub const KERNELS: &[(&str, &str)] = &[
    ("encoder_forward", "encoder.cu"),
    ("encoder_backward_wpe", "encoder.cu"),
    ("encoder_backward_wte", "encoder.cu"),
    ("layernorm_forward", "layernorm.cu"),
    ("residual_layernorm_forward", "layernorm.cu"),
    ("layernorm_backward_dinp", "layernorm.cu"),
    ("layernorm_backward_partials", "layernorm.cu"),
    ("attention_forward", "attention.cu"),
    ("attention_backward_delta", "attention.cu"),
    ("attention_backward_dq", "attention.cu"),
    ("attention_backward_dkv", "attention.cu"),
    ("attention_cached", "attention.cu"),
    ("gelu_forward", "gelu.cu"),
    ("gelu_backward", "gelu.cu"),
    ("residual_forward", "gelu.cu"),
    ("cross_entropy", "loss.cu"),
    ("adamw", "adamw.cu"),
    ("step_scalars", "adamw.cu"),
    ("adamw_step", "adamw.cu"),
    ("sum_squares", "reduce.cu"),
    ("add_column_partials", "reduce.cu"),
    ("bias_add", "matmul.cu"),
    ("bias_grad_partials", "matmul.cu"),
];

/// Kernels that exist for bf16 storage only (one `_bf16` entry point each, declared with
/// `GPTK_BF16_ENTRY_POINT`), with their source file: the tensor-core attention, one entry point per
/// head size.
pub const BF16_KERNELS: &[(&str, &str)] = &[
    ("flash_forward_hs64", "flash_attention.cu"),
    ("flash_forward_hs128", "flash_attention.cu"),
    ("flash_backward_dkv_hs64", "flash_attention.cu"),
    ("flash_backward_dkv_hs128", "flash_attention.cu"),
    ("flash_backward_dq_hs64", "flash_attention.cu"),
    ("flash_backward_dq_hs128", "flash_attention.cu"),
    ("flash_backward_dkvq_hs64", "flash_attention.cu"),
    ("flash_backward_dkvq_hs128", "flash_attention.cu"),
    ("flash_dq_store", "flash_attention.cu"),
];

/// Kernels of Hopper's own instruction set (kernels/*_sm90a.cu, in the second fatbin
/// `FATBIN_SM90A`, bf16 only, loaded on compute capability 9.0): the wgmma attention, forward
/// (also as the warp-specialized TMA forward), deterministic backward and atomic-dQ backward, one
/// entry point per head size.
pub const SM90A_KERNELS: &[(&str, &str)] = &[
    ("flash_forward_sm90a_hs64", "flash_attention_sm90a.cu"),
    ("flash_forward_sm90a_hs128", "flash_attention_sm90a.cu"),
    ("flash_forward_tma_sm90a_hs64", "flash_attention_sm90a.cu"),
    ("flash_forward_tma_sm90a_hs128", "flash_attention_sm90a.cu"),
    ("flash_backward_dkv_sm90a_hs64", "flash_attention_sm90a.cu"),
    ("flash_backward_dkv_sm90a_hs128", "flash_attention_sm90a.cu"),
    ("flash_backward_dq_sm90a_hs64", "flash_attention_sm90a.cu"),
    ("flash_backward_dq_sm90a_hs128", "flash_attention_sm90a.cu"),
    ("flash_backward_dkvq_sm90a_hs64", "flash_attention_sm90a.cu"),
    ("flash_backward_dkvq_sm90a_hs128", "flash_attention_sm90a.cu"),
    ("wgmma_probe", "flash_attention_sm90a.cu"),
    ("tma_probe", "flash_attention_sm90a.cu"),
];
/// Threads per block of the wgmma attention: two warpgroups.
pub const FLASH90_BLOCK: u32 = 256;
/// Query rows per block of the wgmma forward and dQ kernels (64 per warpgroup).
pub const FLASH90_ROWS: usize = 128;
/// Keys per streamed tile of the wgmma forward, at HS = 64 and HS = 128.
pub const FLASH90_KEYS_HS64: usize = 128;
pub const FLASH90_KEYS_HS128: usize = 64;
/// Keys per streamed tile of the wgmma dQ kernel.
pub const FLASH90_DQ_KEYS: usize = 64;
/// Keys per block of the wgmma dK/dV kernel (64 per warpgroup), and queries per streamed tile at
/// HS = 64 and HS = 128.
pub const FLASH90_DKV_KEYS: usize = 128;
pub const FLASH90_DKV_ROWS_HS64: usize = 64;
pub const FLASH90_DKV_ROWS_HS128: usize = 32;
/// Threads per block of the warp-specialized TMA forward: one producer warpgroup, which issues
/// the tile copies, and two consumer warpgroups of 64 query rows each (FLASH90_ROWS per block,
/// FLASH90_KEYS_HS* keys per tile, as the wgmma forward).
pub const FLASH90_WS_BLOCK: u32 = 384;
/// Stages of key and value tiles the TMA forward's copies run ahead by.
pub const FLASH90_TMA_STAGES: usize = 4;
/// Bytes of the TMA forward's mbarriers, after its tiles.
pub const FLASH90_TMA_BARRIER_BYTES: usize = 128;
/// Rows of qkv one TMA box copy moves; its columns are one 128-byte swizzle row of bf16.
pub const FLASH90_TMA_BOX: usize = 64;
pub const FLASH90_TMA_BOX_COLS: usize = 128 / BYTES_PER_BF16;
/// Threads of the TMA probe's one block.
pub const TMA_PROBE_BLOCK: u32 = 128;
/// Alignment the swizzled tiles need (one 8-row atom); the kernels align their shared memory
/// themselves and are given this much more, which they may spend on the alignment.
pub const WGMMA_ATOM_BYTES: usize = 1024;
/// Dynamic shared memory of the wgmma layout probe: the alignment slack and two 64×128 bf16
/// tiles.
pub const WGMMA_PROBE_SHARED_BYTES: usize = WGMMA_ATOM_BYTES + 2 * 64 * 128 * BYTES_PER_BF16;
/// Bytes of one mbarrier in shared memory.
pub const BYTES_PER_MBARRIER: usize = 8;
/// Dynamic shared memory of the TMA probe: the alignment slack, one box and its mbarrier.
pub const TMA_PROBE_SHARED_BYTES: usize =
    WGMMA_ATOM_BYTES + FLASH90_TMA_BOX * FLASH90_TMA_BOX_COLS * BYTES_PER_BF16 + BYTES_PER_MBARRIER;

/// Bytes of dynamic shared memory of the wgmma kernels at head size `hs`, as they lay it out
/// (the alignment slack first; no padding, the tiles are swizzled): (forward, dK/dV, dQ, dK/dV
/// with atomic dQ).
pub fn flash90_shared_bytes(hs: usize) -> Option<(usize, usize, usize, usize)> {
    let (fwd_keys, dkv_rows) = match hs {
        64 => (FLASH90_KEYS_HS64, FLASH90_DKV_ROWS_HS64),
        128 => (FLASH90_KEYS_HS128, FLASH90_DKV_ROWS_HS128),
        _ => return None,
    };
    let row = hs * BYTES_PER_BF16;
    // Forward: the query tile, two stages of key tiles and three of value tiles.
    let forward = WGMMA_ATOM_BYTES + (FLASH90_ROWS + 5 * fwd_keys) * row;
    // dK/dV: the block's keys and values, three stages of query and dout tiles and of their LSE
    // and delta.
    let dkv = WGMMA_ATOM_BYTES + (2 * FLASH90_DKV_KEYS + 6 * dkv_rows) * row + 6 * dkv_rows * BYTES_PER_F32;
    // dQ: the block's queries and douts, two stages of value tiles and two of key tiles, three at
    // HS = 128 (where a round's tensor-core work overlaps the next tile's).
    let key_stages = if hs > 64 { 3 } else { 2 };
    let dq = WGMMA_ATOM_BYTES + (2 * FLASH90_ROWS + (key_stages + 2) * FLASH90_DQ_KEYS) * row;
    // dK/dV with atomic dQ: also the block's dSᵀ, in tiles of 32 queries × the block's keys, each
    // key a 128-byte row (half used).
    let dkvq = dkv + dkv_rows / 32 * FLASH90_DKV_KEYS * 128;
    Some((forward, dkv, dq, dkvq))
}

/// Bytes of dynamic shared memory of the TMA forward at head size `hs`, as it lays it out: the
/// alignment slack, the query tile, FLASH90_TMA_STAGES stages of key and value tiles, the
/// mbarriers.
pub fn flash90_tma_forward_shared_bytes(hs: usize) -> Option<usize> {
    let keys = match hs {
        64 => FLASH90_KEYS_HS64,
        128 => FLASH90_KEYS_HS128,
        _ => return None,
    };
    let row = hs * BYTES_PER_BF16;
    Some(WGMMA_ATOM_BYTES + (FLASH90_ROWS + 2 * FLASH90_TMA_STAGES * keys) * row + FLASH90_TMA_BARRIER_BYTES)
}

/// The tiling of flash_attention.cu for head size `hs`, `None` for head sizes it is not built
/// for. The CPU twin (`cpu::attention::attention_forward_tiled`) runs the same blocking.
pub fn flash_tiles(hs: usize) -> Option<AttentionTiles> {
    let (fwd_keys, dkv_rows) = match hs {
        64 => (FLASH_FWD_KEYS_HS64, FLASH_DKV_ROWS_HS64),
        128 => (FLASH_FWD_KEYS_HS128, FLASH_DKV_ROWS_HS128),
        _ => return None,
    };
    Some(AttentionTiles {
        fwd_rows: FLASH_FWD_ROWS,
        fwd_warp_rows: FLASH_FWD_ROWS / FLASH_WARPS,
        fwd_keys,
        dkv_keys: FLASH_DKV_KEYS,
        dkv_warp_keys: FLASH_DKV_KEYS / FLASH_WARPS,
        dkv_rows,
        dq_rows: FLASH_DQ_ROWS,
        dq_warp_rows: FLASH_DQ_ROWS / FLASH_WARPS,
        dq_keys: FLASH_DQ_KEYS,
    })
}

/// Bytes of dynamic shared memory each flash kernel takes at head size `hs`, as the kernels lay
/// it out: (forward, dK/dV, dQ).
pub fn flash_shared_bytes(hs: usize) -> Option<(usize, usize, usize)> {
    let t = flash_tiles(hs)?;
    let row = (hs + FLASH_SMEM_PAD) * BYTES_PER_BF16;
    // Forward: the query tile, and two stages of key and value tiles.
    let forward = (t.fwd_rows + 4 * t.fwd_keys) * row;
    // dK/dV: the block's keys and values, two stages of query and dout tiles and of their LSE and
    // delta.
    let dkv = (2 * t.dkv_keys + 4 * t.dkv_rows) * row + 4 * t.dkv_rows * BYTES_PER_F32;
    // dQ: the block's queries and douts, two stages of key and value tiles.
    let dq = (2 * t.dq_rows + 4 * t.dq_keys) * row;
    Some((forward, dkv, dq))
}

/// Bytes of dynamic shared memory the atomic-dQ dK/dV kernel takes beyond the dK/dV kernel's:
/// the block's dS tile, DKV_ROWS rows of FLASH_DKV_KEYS + pad bf16.
pub fn atomic_dq_shared_bytes(hs: usize) -> Option<usize> {
    let t = flash_tiles(hs)?;
    Some(t.dkv_rows * (t.dkv_keys + FLASH_SMEM_PAD) * BYTES_PER_BF16)
}

/// Bytes of dynamic shared memory of the atomic-dQ dK/dV kernel: the dK/dV kernel's and the dS
/// tile.
pub fn flash_dkvq_shared_bytes(hs: usize) -> Option<usize> {
    Some(flash_shared_bytes(hs)?.1 + atomic_dq_shared_bytes(hs)?)
}

/// The dtype suffixes of the entry points.
pub const DTYPE_SUFFIXES: [&str; 2] = ["f32", "bf16"];

/// Resources of one compiled entry point, from the ptxas report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// Entry point name, e.g. `layernorm_forward_bf16`.
    pub name: String,
    /// Target, e.g. `sm_90`.
    pub arch: String,
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    /// Static shared memory.
    pub shared_bytes: u32,
}

/// The number just before `unit` in `line` (`"40 registers"` → 40).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at].split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty()).and_then(|s| s.parse().ok())
}

/// Parses the text of `nvcc -Xptxas -v`: one record per (entry point, architecture).
pub fn parse_ptxas_report(text: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    // Properties lines belong to the entry being compiled only when they name it.
    let mut properties_of_current = false;
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            out.push(KernelResources { name, arch, ..Default::default() });
            properties_of_current = false;
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            properties_of_current = out.last().is_some_and(|k| k.name == rest.trim());
        } else if line.contains("bytes stack frame") && properties_of_current {
            let k = out.last_mut().expect("properties follow an entry");
            k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
            k.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ")
            && line.contains("registers")
            && let Some(k) = out.last_mut()
        {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// The resources of every entry point in the embedded build.
pub fn resources() -> Vec<KernelResources> {
    parse_ptxas_report(PTXAS_REPORT)
}

/// One code object of a fatbin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatbinEntry {
    /// `sm_NN` for machine code (SASS), `compute_NN` for PTX.
    pub target: String,
    pub bytes: usize,
}

/// Magic number of a fatbin image.
const FATBIN_MAGIC: u32 = 0xBA55_ED50;
/// Entry kinds inside a fatbin.
const FATBIN_KIND_PTX: u16 = 1;
const FATBIN_KIND_ELF: u16 = 2;
/// Offset of the architecture number inside an entry header.
const FATBIN_ENTRY_ARCH_OFFSET: usize = 28;

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Lists the code objects of a fatbin image: a 16-byte header (magic, version, header size,
/// payload size), then entries, each a header (kind, version, header size, payload size, …,
/// architecture at byte 28) and its payload. `None` when the bytes are not a fatbin.
pub fn fatbin_entries(image: &[u8]) -> Option<Vec<FatbinEntry>> {
    if read_u32(image, 0)? != FATBIN_MAGIC {
        return None;
    }
    let header = read_u16(image, 6)? as usize;
    let end = header.checked_add(usize::try_from(read_u64(image, 8)?).ok()?)?;
    if end > image.len() {
        return None;
    }
    let mut at = header;
    let mut entries = Vec::new();
    while at < end {
        let kind = read_u16(image, at)?;
        let entry_header = read_u32(image, at + 4)? as usize;
        let payload = usize::try_from(read_u64(image, at + 8)?).ok()?;
        let arch = read_u32(image, at + FATBIN_ENTRY_ARCH_OFFSET)?;
        let target = match kind {
            FATBIN_KIND_PTX => format!("compute_{arch}"),
            FATBIN_KIND_ELF => format!("sm_{arch}"),
            other => format!("kind{other}_{arch}"),
        };
        entries.push(FatbinEntry { target, bytes: payload });
        at = at.checked_add(entry_header)?.checked_add(payload)?;
        if entry_header == 0 {
            return None;
        }
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'gelu_forward_bf16' for 'sm_90'
ptxas info    : Function properties for gelu_forward_bf16
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers
ptxas info    : Compiling entry function 'cross_entropy_f32' for 'sm_80'
ptxas info    : Function properties for some_helper
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Function properties for cross_entropy_f32
    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 256 bytes smem, 364 bytes cmem[0]
";

    #[test]
    fn ptxas_report_is_parsed_per_entry_and_arch() {
        let r = parse_ptxas_report(SAMPLE);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                name: "gelu_forward_bf16".into(),
                arch: "sm_90".into(),
                registers: 32,
                ..Default::default()
            }
        );
        assert_eq!(r[1].arch, "sm_80");
        assert_eq!((r[1].registers, r[1].shared_bytes), (255, 256));
        assert_eq!((r[1].stack_bytes, r[1].spill_store_bytes, r[1].spill_load_bytes), (16, 12, 8));
    }

    #[test]
    fn flash_tiles_exist_for_the_built_head_sizes_only() {
        for hs in FLASH_HEAD_SIZES {
            let t = flash_tiles(hs).unwrap();
            assert_eq!(t.fwd_rows, t.fwd_warp_rows * FLASH_WARPS);
            assert_eq!(t.dkv_keys, 16 * FLASH_WARPS);
            assert_eq!(t.dq_rows, 16 * FLASH_WARPS);
        }
        assert_eq!(flash_tiles(32), None);
        assert_eq!(flash_tiles(96), None);
        // What the kernel headers state, and what fits a Hopper block (227 KiB).
        assert_eq!(flash_shared_bytes(64), Some((55_296, 56_320, 55_296)));
        assert_eq!(flash_shared_bytes(128), Some((69_632, 70_144, 104_448)));
        // The atomic-dQ variant's dS tile, as its kernel comment states.
        assert_eq!(atomic_dq_shared_bytes(64), Some(9_216));
        assert_eq!(atomic_dq_shared_bytes(128), Some(4_608));
        // The wgmma kernels, as flash_attention_sm90a.cu's header states.
        assert_eq!(flash90_shared_bytes(64), Some((99_328, 84_480, 66_560, 117_248)));
        assert_eq!(flash90_shared_bytes(128), Some((115_712, 116_480, 148_480, 132_864)));
        assert_eq!(flash90_shared_bytes(96), None);
        assert_eq!(flash90_tma_forward_shared_bytes(64), Some(148_608));
        assert_eq!(flash90_tma_forward_shared_bytes(128), Some(164_992));
        assert_eq!(flash90_tma_forward_shared_bytes(96), None);
        assert_eq!(WGMMA_PROBE_SHARED_BYTES, 33_792);
        assert_eq!(TMA_PROBE_SHARED_BYTES, 9_224);
    }

    #[test]
    fn fatbin_reader_rejects_other_bytes() {
        assert_eq!(fatbin_entries(b""), None);
        assert_eq!(fatbin_entries(&[0u8; 64]), None);
    }
}
