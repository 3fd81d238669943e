//! The tensor-core (flash) attention on a GPU (ignored without one; scripts/gpu-check.sh runs it):
//! at GPT-2 sizes, beyond the small shapes of `gptk check`, it matches the CPU reference under
//! the checker's tolerances, and two runs on the same inputs give the same bits (the backward
//! sums in a fixed order, without atomics); the opt-in atomic-dQ backward matches the CPU too, and
//! so do Hopper's wgmma kernels (both backwards) and their warp-specialized TMA forward on a
//! compute capability 9.0 device.

use gptk::backend::cpu::attention::{attention_backward, attention_forward};
use gptk::backend::cuda::{ArenaSizes, CudaBackend, ScratchSizes};
use gptk::backend::{AttentionKernels, Backend, Precision};
use gptk::check::{BF16_EPS, F32_EPS, K_ATTENTION_BF16_BACKWARD, K_ATTENTION_BF16_FORWARD, K_F32, compare};
use gptk::model::layout::{Arena, TENSOR_ALIGN, Tensor};
use gptk::rng::Rng;
use half::bf16;

fn round_bf16(x: f64) -> f32 {
    bf16::from_f64(x).to_f32()
}

/// An aligned span after `*next`.
fn take(next: &mut usize, arena: Arena, len: usize) -> Tensor {
    let t = Tensor { arena, offset: *next, len };
    *next = t.end().div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
    t
}

/// How much further than `gptk check` the largest element error may go here. The checker's
/// factors bound the largest error of 10³–10⁵ elements; these shapes have 10⁶–10⁷, whose largest
/// lies further into the tail (as √(2 ln N), about 1.3 times further). The emulation of the
/// kernels measured up to 105% (forward) and 121% (backward) of the checker's own factors at
/// B=2, T=1023/1024.
const LARGE_SHAPES: f64 = 1.5;

/// Every element within LARGE_SHAPES · k of the checker's tolerance, and the error's relative L2
/// norm, which does not grow with the count, within `l2` (so that a wider bound on the extremes
/// lets no error of the bulk through).
fn assert_within(what: &str, gpu: &[f32], cpu: &[f32], eps: f64, k: f64, l2: f64) {
    let (max_abs, rel_l2, share, non_finite) = compare(gpu, cpu, eps, LARGE_SHAPES * k);
    println!("{what}: max abs {max_abs:.3e}, rel L2 {rel_l2:.3e}, tol used {:.1}%", 100.0 * share);
    assert!(non_finite == 0 && share <= 1.0, "{what}: {non_finite} non-finite, tol used {:.1}%", 100.0 * share);
    assert!(rel_l2 <= l2, "{what}: relative L2 error {rel_l2:.3e} over {l2:.3e}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn flash_attention_matches_the_cpu_at_gpt2_sizes_and_repeats_bit_for_bit() {
    let mut rng = Rng::new(2024);
    for &(b, t, nh, hs, causal) in
        &[(2, 1024, 12, 64, true), (1, 1000, 4, 64, false), (1, 2048, 6, 128, false), (2, 1023, 6, 128, true)]
    {
        let what = format!("B={b} T={t} NH={nh} HS={hs} causal={causal}");
        let c = nh * hs;
        let (mut acts, mut grads, mut stats) = (0, 0, 0);
        let qkv = take(&mut acts, Arena::Acts, b * t * 3 * c);
        let out = take(&mut acts, Arena::Acts, b * t * c);
        let dout = take(&mut grads, Arena::ActGrads, b * t * c);
        let dqkv = take(&mut grads, Arena::ActGrads, b * t * 3 * c);
        let lse = take(&mut stats, Arena::Stats, b * nh * t);
        let sizes = ArenaSizes { params: TENSOR_ALIGN, acts, act_grads: grads, stats, inputs: TENSOR_ALIGN };
        let scratch = ScratchSizes { attention_rows: b * nh * t, ..Default::default() };
        let mut gpu = CudaBackend::with_sizes(sizes, scratch, Precision::Bf16, 0, None).expect("a GPU backend");
        assert!(gpu.uses_flash_attention(hs), "HS={hs} should take the tensor-core kernels");

        let x: Vec<f32> = (0..b * t * 3 * c).map(|_| round_bf16(rng.normal())).collect();
        let dy: Vec<f32> = (0..b * t * c).map(|_| round_bf16(rng.normal())).collect();
        gpu.upload(qkv, &x).unwrap();
        gpu.upload(dout, &dy).unwrap();

        // The CPU's forward, and its backward from that output (rounded, as stored) and LSE.
        let (mut o_cpu, mut l_cpu) = (vec![0f32; out.len], vec![0f32; lse.len]);
        attention_forward(&mut o_cpu, &mut l_cpu, &x, b, t, nh, hs, causal);
        let o_stored: Vec<f32> = o_cpu.iter().map(|&v| round_bf16(v as f64)).collect();
        let mut d_cpu = vec![0f32; dqkv.len];
        attention_backward(&mut d_cpu, &dy, &x, &o_stored, &l_cpu, b, t, nh, hs, causal);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let kv = |d: &[f32]| -> Vec<u32> {
            d.chunks(3 * c).flat_map(|row| row[c..].iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect()
        };

        // The mma.sync kernels, then, on a compute capability 9.0 device (where they must load),
        // Hopper's wgmma kernels and their TMA forward: the same tolerances against the CPU, the
        // same bits twice.
        let hopper = gpu.device_info().compute_capability == (9, 0);
        let all = [AttentionKernels::Mma, AttentionKernels::Wgmma, AttentionKernels::WgmmaTma];
        for kernels in all.into_iter().filter(|&k| k == AttentionKernels::Mma || hopper) {
            let what = format!("{what}, {}", kernels.name());
            gpu.set_attention_kernels(kernels).expect("the sm_90a kernels load on compute capability 9.0");
            assert_eq!(gpu.attention_kernels(hs), kernels, "HS={hs} should take the {} kernels", kernels.name());
            // Forward, twice: the same bits; against the CPU.
            let mut fwd = Vec::new();
            for _ in 0..2 {
                gpu.upload(out, &vec![f32::NAN; out.len]).unwrap();
                gpu.upload(lse, &vec![f32::NAN; lse.len]).unwrap();
                gpu.attention_forward(out, lse, qkv, b, t, nh, hs, causal).unwrap();
                fwd.push((gpu.download(out).unwrap(), gpu.download(lse).unwrap()));
            }
            assert!(bits(&fwd[0].0) == bits(&fwd[1].0), "{what}: forward output differs between runs");
            assert!(bits(&fwd[0].1) == bits(&fwd[1].1), "{what}: LSE differs between runs");
            assert_within(&format!("out {what}"), &fwd[0].0, &o_cpu, BF16_EPS, K_ATTENTION_BF16_FORWARD, BF16_EPS);
            assert_within(&format!("lse {what}"), &fwd[0].1, &l_cpu, F32_EPS, K_F32, 16.0 * F32_EPS);
            if kernels == AttentionKernels::WgmmaTma {
                // Its backward is the wgmma kernels', checked in the round before.
                continue;
            }

            // Backward from the CPU's output and LSE, twice; against the CPU.
            gpu.upload(out, &o_stored).unwrap();
            gpu.upload(lse, &l_cpu).unwrap();
            let mut runs = Vec::new();
            for _ in 0..2 {
                gpu.upload(dqkv, &vec![f32::NAN; dqkv.len]).unwrap();
                gpu.attention_backward(dqkv, dout, qkv, out, lse, b, t, nh, hs, causal).unwrap();
                runs.push(gpu.download(dqkv).unwrap());
            }
            assert!(bits(&runs[0]) == bits(&runs[1]), "{what}: dqkv differs between runs");
            assert_within(&format!("dqkv {what}"), &runs[0], &d_cpu, BF16_EPS, K_ATTENTION_BF16_BACKWARD, BF16_EPS);

            // The opt-in backward with dQ summed by atomics: the same tolerance against the CPU;
            // dK and dV (summed without atomics) keep the deterministic backward's bits.
            gpu.set_atomic_attention_dq(Some(b * t * c)).unwrap();
            gpu.upload(dqkv, &vec![f32::NAN; dqkv.len]).unwrap();
            gpu.attention_backward(dqkv, dout, qkv, out, lse, b, t, nh, hs, causal).unwrap();
            let atomic = gpu.download(dqkv).unwrap();
            let name = format!("dqkv (atomic dQ) {what}");
            assert_within(&name, &atomic, &d_cpu, BF16_EPS, K_ATTENTION_BF16_BACKWARD, BF16_EPS);
            assert!(kv(&atomic) == kv(&runs[0]), "{what}: dK/dV differ between the two backwards");
            gpu.set_atomic_attention_dq(None).unwrap();
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_wgmma_kernels_are_refused_with_their_reason_off_hopper() {
    let sizes = ArenaSizes {
        params: TENSOR_ALIGN,
        acts: TENSOR_ALIGN,
        act_grads: TENSOR_ALIGN,
        stats: TENSOR_ALIGN,
        inputs: TENSOR_ALIGN,
    };
    let mut f32_gpu =
        CudaBackend::with_sizes(sizes, ScratchSizes::default(), Precision::F32, 0, None).expect("a GPU backend");
    let mut gpu =
        CudaBackend::with_sizes(sizes, ScratchSizes::default(), Precision::Bf16, 0, None).expect("a GPU backend");
    for kernels in [AttentionKernels::Wgmma, AttentionKernels::WgmmaTma] {
        let err = f32_gpu.set_attention_kernels(kernels).unwrap_err().to_string();
        assert!(err.contains("bf16") && err.contains(kernels.name()), "f32 storage: {err}");
        match gpu.device_info().compute_capability {
            (9, 0) => gpu.set_attention_kernels(kernels).expect("compute capability 9.0 has the wgmma kernels"),
            cc => {
                let err = gpu.set_attention_kernels(kernels).unwrap_err().to_string();
                assert!(err.contains("compute capability 9.0"), "{cc:?}: {err}");
            }
        }
    }
}
