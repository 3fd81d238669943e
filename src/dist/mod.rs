//! Data-parallel training across processes: who each process is ([`env`]) and how the processes
//! meet and exchange what the CPU backend needs ([`group`]).

pub mod env;
pub mod group;
