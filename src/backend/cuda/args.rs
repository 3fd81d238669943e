//! Every kernel's parameter list as the host passes it: one struct per list, its fields named
//! and ordered as the kernel's parameters, typed as the C types are passed (pointers as device
//! addresses). A launch takes one of these and the entry point's name, so the compiler checks
//! that every argument is given, once, with its type; `tests/cuda_build.rs` checks each struct
//! against the kernel sources (names, order, pointer or not) and against the PTX nvcc made of
//! them (each parameter's width and class), so that a kernel and its launch cannot drift apart
//! unseen. A launch whose struct does not list the entry point fails before anything is queued.

use cudarc::driver::{DeviceRepr, LaunchArgs, PushKernelArg, sys};

/// How a C parameter is passed: a device address, or a value of one of the C types used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// Any pointer (`T*`, `const float*`, `StepScalars*`), as a 64-bit device address.
    Ptr,
    /// `int`.
    I32,
    /// `long long`.
    I64,
    /// `unsigned long long`.
    U64,
    /// `float`.
    F32,
    /// `const __grid_constant__ CUtensorMap`: a TMA descriptor, 128 bytes by value.
    TensorMap,
}

/// A TMA tensor map (`CUtensorMap`, encoded by `cuTensorMapEncodeTiled`), passed to a kernel by
/// value: 128 bytes, aligned as the CUDA version's header aligns it (64 bytes in CUDA 12, 128 in
/// CUDA 13), which the kernel parameter's PTX declaration follows.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TensorMap(pub sys::CUtensorMap);

const _: () = assert!(std::mem::size_of::<TensorMap>() == 128 && std::mem::align_of::<TensorMap>() >= 64);

// SAFETY: a plain 128-byte value that the kernel receives as the bytes of its CUtensorMap
// parameter, which it only reads.
unsafe impl DeviceRepr for TensorMap {}

/// A kernel's arguments, in its parameter order.
pub trait KernelArgs {
    /// The entry points taking this parameter list, as the backend names them: the family name
    /// of an `_f32`/`_bf16` pair, the name before `_bf16` of a bf16-only kernel.
    const KERNELS: &'static [&'static str];
    /// The parameters: C name (lower case) and how each is passed.
    const PARAMS: &'static [(&'static str, Param)];
    /// Pushes the arguments onto a launch, in order.
    fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>);
}

macro_rules! param_type {
    (Ptr) => {
        u64
    };
    (I32) => {
        i32
    };
    (I64) => {
        i64
    };
    (U64) => {
        u64
    };
    (F32) => {
        f32
    };
    (TensorMap) => {
        TensorMap
    };
}

macro_rules! kernel_args {
    ($($(#[$doc:meta])* $name:ident for [$($kernel:literal),+ $(,)?] { $($field:ident: $kind:ident),+ $(,)? })+) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, Debug)]
            pub struct $name {
                $(pub $field: param_type!($kind),)+
            }

            impl KernelArgs for $name {
                const KERNELS: &'static [&'static str] = &[$($kernel),+];
                const PARAMS: &'static [(&'static str, Param)] = &[$((stringify!($field), Param::$kind)),+];
                fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>) {
                    $(launch.arg(&self.$field);)+
                }
            }
        )+

        /// (entry points, parameters) of every parameter list above.
        pub const SIGNATURES: &[(&[&str], &[(&str, Param)])] = &[$(($name::KERNELS, $name::PARAMS)),+];
    };
}

kernel_args! {
    /// encoder.cu: out (B·T·C) = wte[tokens] + wpe.
    EncoderForward for ["encoder_forward"] {
        out: Ptr, tokens: Ptr, wte: Ptr, wpe: Ptr, seq: I32, c: I32, total: I64, vec: I32,
    }
    /// encoder.cu: dwpe += Σ_b dout.
    EncoderBackwardWpe for ["encoder_backward_wpe"] { dwpe: Ptr, dout: Ptr, b: I32, seq: I32, c: I32 }
    /// encoder.cu: dwte rows += dout rows, by the token buckets.
    EncoderBackwardWte for ["encoder_backward_wte"] { dwte: Ptr, dout: Ptr, buckets: Ptr, cap: I32, c: I32 }

    /// layernorm.cu: out = layernorm(inp), mean and rstd saved.
    LayernormForward for ["layernorm_forward"] {
        out: Ptr, mean: Ptr, rstd: Ptr, inp: Ptr, w: Ptr, b: Ptr, n: I32, c: I32, eps: F32, vec: I32,
    }
    /// layernorm.cu: res = x + y, out = layernorm(res).
    ResidualLayernormForward for ["residual_layernorm_forward"] {
        res: Ptr, out: Ptr, mean: Ptr, rstd: Ptr, x: Ptr, y: Ptr, w: Ptr, b: Ptr, n: I32, c: I32, eps: F32, vec: I32,
    }
    /// layernorm.cu: dinp += the layernorm's input gradient.
    LayernormBackwardDinp for ["layernorm_backward_dinp"] {
        dinp: Ptr, dout: Ptr, inp: Ptr, w: Ptr, mean: Ptr, rstd: Ptr, n: I32, c: I32, vec: I32,
    }
    /// layernorm.cu: per-chunk sums of dw and db.
    LayernormBackwardPartials for ["layernorm_backward_partials"] {
        partials: Ptr, dout: Ptr, inp: Ptr, mean: Ptr, rstd: Ptr, n: I32, c: I32, rows_per_chunk: I32,
    }

    /// attention.cu: the warp-per-row attention forward.
    AttentionForward for ["attention_forward"] {
        out: Ptr, lse: Ptr, qkv: Ptr, b: I32, seq: I32, nh: I32, hs: I32, causal: I32, scale: F32,
    }
    /// attention.cu: delta = rowsum(dout ∘ out).
    AttentionBackwardDelta for ["attention_backward_delta"] {
        delta: Ptr, dout: Ptr, out: Ptr, b: I32, seq: I32, nh: I32, hs: I32,
    }
    /// attention.cu: the warp-per-row backward, dQ and dK/dV passes.
    AttentionBackward for ["attention_backward_dq", "attention_backward_dkv"] {
        dqkv: Ptr, dout: Ptr, qkv: Ptr, lse: Ptr, delta: Ptr, b: I32, seq: I32, nh: I32, hs: I32, causal: I32,
        scale: F32,
    }
    /// attention.cu: one new position against the key/value cache.
    AttentionCached for ["attention_cached"] {
        out: Ptr, qkv: Ptr, kv: Ptr, b: I32, t_max: I32, pos: I32, nh: I32, hs: I32, scale: F32,
    }

    /// flash_attention.cu and flash_attention_sm90a.cu: the tensor-core forward, per head size.
    FlashForward for [
        "flash_forward_hs64", "flash_forward_hs128", "flash_forward_sm90a_hs64", "flash_forward_sm90a_hs128",
    ] {
        out: Ptr, lse: Ptr, qkv: Ptr, b: I32, seq: I32, nh: I32, causal: I32, scale: F32,
    }
    /// flash_attention_sm90a.cu: the warp-specialized forward, its producer loading qkv's tiles
    /// through `qkv_map` (qkv viewed as (B, T, 3C)), per head size.
    FlashForwardTma for ["flash_forward_tma_sm90a_hs64", "flash_forward_tma_sm90a_hs128"] {
        qkv_map: TensorMap, out: Ptr, lse: Ptr, qkv: Ptr, b: I32, seq: I32, nh: I32, causal: I32, scale: F32,
    }
    /// flash_attention.cu and flash_attention_sm90a.cu: the deterministic backward's dK/dV and dQ
    /// passes, per head size.
    FlashBackward for [
        "flash_backward_dkv_hs64", "flash_backward_dkv_hs128", "flash_backward_dq_hs64", "flash_backward_dq_hs128",
        "flash_backward_dkv_sm90a_hs64", "flash_backward_dkv_sm90a_hs128", "flash_backward_dq_sm90a_hs64",
        "flash_backward_dq_sm90a_hs128",
    ] {
        dqkv: Ptr, dout: Ptr, qkv: Ptr, lse: Ptr, delta: Ptr, b: I32, seq: I32, nh: I32, causal: I32, scale: F32,
    }
    /// flash_attention.cu and flash_attention_sm90a.cu: dK/dV with dQ added into an f32
    /// accumulator, per head size.
    FlashBackwardDkvq for [
        "flash_backward_dkvq_hs64", "flash_backward_dkvq_hs128", "flash_backward_dkvq_sm90a_hs64",
        "flash_backward_dkvq_sm90a_hs128",
    ] {
        dqkv: Ptr, dq_acc: Ptr, dout: Ptr, qkv: Ptr, lse: Ptr, delta: Ptr, b: I32, seq: I32, nh: I32, causal: I32,
        scale: F32,
    }
    /// flash_attention.cu: dqkv's query third = bf16(dq_acc).
    FlashDqStore for ["flash_dq_store"] { dqkv: Ptr, dq_acc: Ptr, c: I32, total: I64 }
    /// flash_attention_sm90a.cu: one wgmma product per operand form.
    WgmmaProbe for ["wgmma_probe"] { d: Ptr, a: Ptr, b: Ptr, mode: I32 }
    /// flash_attention_sm90a.cu: one TMA box copy of `map` at (c0, c1, c2), its shared tile
    /// copied out byte for byte.
    TmaProbe for ["tma_probe"] { map: TensorMap, out: Ptr, c0: I32, c1: I32, c2: I32 }

    /// gelu.cu: out = gelu(inp).
    GeluForward for ["gelu_forward"] { out: Ptr, inp: Ptr, n: I64, vec: I32 }
    /// gelu.cu: d *= gelu′(inp).
    GeluBackward for ["gelu_backward"] { d: Ptr, inp: Ptr, n: I64, vec: I32 }
    /// gelu.cu: out = a + b.
    ResidualForward for ["residual_forward"] { out: Ptr, a: Ptr, b: Ptr, n: I64, vec: I32 }

    /// loss.cu: per-row cross-entropy, dlogits written over the logits.
    CrossEntropy for ["cross_entropy"] {
        losses: Ptr, logits: Ptr, targets: Ptr, v: I32, vp: I32, dloss: F32, has_dloss: I32, vec: I32,
    }

    /// adamw.cu: AdamW over a range of the arena, the step's values passed in.
    Adamw for ["adamw"] {
        params: Ptr, master: Ptr, grads: Ptr, m: Ptr, v: Ptr, start: I64, end: I64, decay_end: I64, lr: F32,
        beta1: F32, beta2: F32, eps: F32, wd: F32, bc1: F32, bc2: F32, grad_scale: F32, seed: U64,
    }
    /// adamw.cu: the step's loss sum, gradient norm and guard, on the device.
    StepScalars for ["step_scalars"] { s: Ptr, partials: Ptr, blocks: I32, losses: Ptr, n: I64, count: I32 }
    /// adamw.cu: AdamW with the step's values read from the device.
    AdamwStep for ["adamw_step"] {
        params: Ptr, master: Ptr, grads: Ptr, m: Ptr, v: Ptr, start: I64, end: I64, decay_end: I64, beta1: F32,
        beta2: F32, eps: F32, wd: F32, s: Ptr,
    }

    /// reduce.cu: per-block f64 sums of squares.
    SumSquares for ["sum_squares"] { partials: Ptr, x: Ptr, n: I64, vec: I32 }
    /// reduce.cu: dst += Σ of column partials.
    AddColumnPartials for ["add_column_partials"] {
        dst: Ptr, partials: Ptr, count: I32, width: I32, stride: I64, offset: I64,
    }

    /// matmul.cu: out += bias, per row.
    BiasAdd for ["bias_add"] { out: Ptr, bias: Ptr, oc: I32, total: I64, vec: I32 }
    /// matmul.cu: per-chunk column sums of dout.
    BiasGradPartials for ["bias_grad_partials"] { partials: Ptr, dout: Ptr, n: I32, oc: I32, rows_per_chunk: I32 }
}

impl FlashForward {
    /// The same arguments for the TMA forward, which reads qkv's tiles through `qkv_map` too.
    pub fn with_tensor_map(self, qkv_map: TensorMap) -> FlashForwardTma {
        let FlashForward { out, lse, qkv, b, seq, nh, causal, scale } = self;
        FlashForwardTma { qkv_map, out, lse, qkv, b, seq, nh, causal, scale }
    }
}

/// The parameter list `kernel` takes, if any struct above lists it.
pub fn params_of(kernel: &str) -> Option<&'static [(&'static str, Param)]> {
    SIGNATURES.iter().find(|(kernels, _)| kernels.contains(&kernel)).map(|(_, params)| *params)
}
