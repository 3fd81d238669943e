//! Who this process is in a data-parallel job, from the launcher's environment.
//!
//! gptk runs one process per GPU and reads its place the way the common launchers publish it:
//! torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`), Slurm's srun (`SLURM_PROCID`, `SLURM_NTASKS`,
//! `SLURM_LOCALID`) and Open MPI's mpirun (`OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`,
//! `OMPI_COMM_WORLD_LOCAL_RANK`), in that order of precedence. Where the ranks meet is
//! `MASTER_ADDR:MASTER_PORT` (rank 0's host), as for torchrun; `gptk launch` sets all of these.

use std::fmt;

/// Port torchrun uses when none is given.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// This process's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub rank: usize,
    pub world: usize,
    /// Rank among the processes of this host: the GPU it drives.
    pub local_rank: usize,
    /// Rank 0's host and port, for the rendezvous.
    pub master: Option<(String, u16)>,
    /// Which launcher's variables were read ("torchrun", "slurm", "openmpi"), or "none".
    pub launcher: &'static str,
}

impl Topology {
    /// A job of one process, started without a launcher.
    pub fn single() -> Self {
        Topology { rank: 0, world: 1, local_rank: 0, master: None, launcher: "none" }
    }

    /// True when a launcher started this process (even a world of one: the distributed path is
    /// then exercised end to end).
    pub fn launched(&self) -> bool {
        self.launcher != "none"
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} of {} (local rank {}, from {})", self.rank, self.world, self.local_rank, self.launcher)
    }
}

/// The environment does not describe a usable job.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("{var}={value:?} is not a non-negative integer")]
    NotANumber { var: &'static str, value: String },
    #[error("{rank_var}={rank} is not below {world_var}={world}")]
    RankOutOfRange { rank_var: &'static str, rank: usize, world_var: &'static str, world: usize },
    #[error("{0} is set but {1} is not: a launcher sets both")]
    Incomplete(&'static str, &'static str),
    #[error("{0}=0: a job has at least one process")]
    EmptyWorld(&'static str),
    #[error(
        "MASTER_ADDR is not set: the ranks meet at rank 0's host (with Slurm: export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1))"
    )]
    NoMaster,
}

/// (rank, world, local rank) variable names of each launcher.
const LAUNCHERS: [(&str, &str, &str, &str); 3] = [
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
];

/// Reads the topology from variables looked up with `get` (the process environment in
/// [`from_process_env`]; a map in tests).
pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Topology, EnvError> {
    let number = |var: &'static str| -> Result<Option<usize>, EnvError> {
        match get(var) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| EnvError::NotANumber { var, value: v }),
        }
    };
    for (launcher, rank_var, world_var, local_var) in LAUNCHERS {
        let (rank, world) = (number(rank_var)?, number(world_var)?);
        let (rank, world) = match (rank, world) {
            (None, None) => continue,
            (Some(_), None) => return Err(EnvError::Incomplete(rank_var, world_var)),
            (None, Some(_)) => return Err(EnvError::Incomplete(world_var, rank_var)),
            (Some(r), Some(w)) => (r, w),
        };
        if world == 0 {
            return Err(EnvError::EmptyWorld(world_var));
        }
        if rank >= world {
            return Err(EnvError::RankOutOfRange { rank_var, rank, world_var, world });
        }
        let local_rank = number(local_var)?.unwrap_or(rank);
        let port = match get("MASTER_PORT") {
            None => DEFAULT_MASTER_PORT,
            Some(p) => p.trim().parse().map_err(|_| EnvError::NotANumber { var: "MASTER_PORT", value: p })?,
        };
        let master = get("MASTER_ADDR").filter(|a| !a.trim().is_empty()).map(|a| (a.trim().to_string(), port));
        return Ok(Topology { rank, world, local_rank, master, launcher });
    }
    Ok(Topology::single())
}

/// [`from_env`] over this process's environment.
pub fn from_process_env() -> Result<Topology, EnvError> {
    from_env(|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn each_launcher_is_understood() {
        let t = from_env(env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap();
        assert_eq!(
            t,
            Topology { rank: 3, world: 8, local_rank: 1, master: Some(("node7".into(), 1234)), launcher: "torchrun" }
        );
        let t = from_env(env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "5"),
            ("MASTER_ADDR", "n0"),
        ]))
        .unwrap();
        assert_eq!((t.rank, t.world, t.local_rank, t.launcher), (5, 16, 5, "slurm"));
        assert_eq!(t.master, Some(("n0".into(), DEFAULT_MASTER_PORT)));
        let t = from_env(env(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")])).unwrap();
        assert_eq!((t.rank, t.world, t.local_rank, t.launcher, t.master), (1, 2, 1, "openmpi", None));
        // torchrun's variables win over Slurm's (torchrun inside an allocation).
        let t =
            from_env(env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "1"), ("SLURM_NTASKS", "4")])).unwrap();
        assert_eq!((t.rank, t.world), (0, 2));
        let t = from_env(env(&[])).unwrap();
        assert_eq!(t, Topology::single());
        assert!(!t.launched());
    }

    #[test]
    fn inconsistent_environments_are_named() {
        assert_eq!(
            from_env(env(&[("RANK", "2"), ("WORLD_SIZE", "2")])),
            Err(EnvError::RankOutOfRange { rank_var: "RANK", rank: 2, world_var: "WORLD_SIZE", world: 2 })
        );
        assert_eq!(from_env(env(&[("RANK", "0")])), Err(EnvError::Incomplete("RANK", "WORLD_SIZE")));
        assert_eq!(from_env(env(&[("WORLD_SIZE", "0"), ("RANK", "0")])), Err(EnvError::EmptyWorld("WORLD_SIZE")));
        assert!(matches!(
            from_env(env(&[("RANK", "x"), ("WORLD_SIZE", "2")])),
            Err(EnvError::NotANumber { var: "RANK", .. })
        ));
        assert!(matches!(
            from_env(env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "http")])),
            Err(EnvError::NotANumber { var: "MASTER_PORT", .. })
        ));
    }
}
