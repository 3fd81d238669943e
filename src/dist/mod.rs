//! Data-parallel training across processes: who each process is ([`env`]), how the processes
//! meet and exchange what the CPU backend needs ([`group`]), and how GPUs share NCCL's id through
//! a file when TCP is not an option ([`file_init`]). The collectives themselves are backend
//! operations (`Backend::reduce_scatter_grads` and friends): host messages on the CPU, NCCL on
//! GPUs.

pub mod env;
pub mod file_init;
pub mod group;
