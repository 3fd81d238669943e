//! The ranks of a job meeting over TCP, and host-side collectives between them.
//!
//! Rank 0 listens on `MASTER_PORT`; every other rank connects to `MASTER_ADDR:MASTER_PORT`
//! (retrying until rank 0 is up), says who it is, and waits for everyone to arrive. Each hello
//! carries the rank, the world size and a fingerprint of the run (its data, model and batch
//! settings), so that mismatched commands stop at the start with a message instead of training
//! something wrong. A rank that never arrives is named when the timeout expires; a port already
//! in use is reported as such.
//!
//! After the meeting the connections form a star around rank 0, which carries the collectives
//! the CPU backend needs (sum, gather, broadcast, barrier) and the NCCL unique id for the GPU
//! one. Sums are added in rank order on rank 0 and sent back, so every rank gets the same bits.
//! This is meant for correctness and for small jobs, not for bandwidth: GPUs reduce through
//! NCCL.

use super::env::Topology;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"GPTKDP01";
/// How often a joining rank retries while rank 0 is not listening yet.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// A failure to form or use the group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("rank 0 cannot listen on port {port}: {source}{}", if source.kind() == io::ErrorKind::AddrInUse { " (another job holds it: choose another MASTER_PORT)" } else { "" })]
    Bind { port: u16, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(
        "ranks {missing:?} of {world} did not join within {secs} s (are all processes started, with the same MASTER_ADDR:MASTER_PORT?)"
    )]
    Missing { missing: Vec<usize>, world: usize, secs: u64 },
    #[error("rank 0 at {addr} did not answer within {secs} s: {last}")]
    Unreachable { addr: String, secs: u64, last: String },
    #[error("{0}")]
    Mismatch(String),
    #[error("the group needs MASTER_ADDR (rank 0's host)")]
    NoMaster,
}

fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> GroupError {
    let what = what.into();
    move |source| GroupError::Io { what, source }
}

/// A formed group.
pub struct Group {
    rank: usize,
    world: usize,
    /// Rank 0: the stream of rank r at index r − 1. Others: the stream to rank 0.
    links: Vec<TcpStream>,
}

fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    s.write_all(&(bytes.len() as u64).to_le_bytes())?;
    s.write_all(bytes)
}

/// Reads one frame of at most `limit` bytes (a peer cannot make us allocate more).
fn read_frame(s: &mut TcpStream, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > limit as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes, expected at most {limit}"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// Longest hello (magic, rank, world, fingerprint) a peer may send.
const HELLO_LIMIT: usize = 1 << 16;

fn hello(rank: usize, world: usize, fingerprint: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend((rank as u64).to_le_bytes());
    h.extend((world as u64).to_le_bytes());
    h.extend(fingerprint.as_bytes());
    h
}

fn parse_hello(h: &[u8]) -> Option<(usize, usize, String)> {
    if h.len() < 24 || &h[..8] != MAGIC {
        return None;
    }
    let rank = u64::from_le_bytes(h[8..16].try_into().ok()?) as usize;
    let world = u64::from_le_bytes(h[16..24].try_into().ok()?) as usize;
    Some((rank, world, String::from_utf8_lossy(&h[24..]).into_owned()))
}

impl Group {
    /// Forms the group of `topo` (a group of one needs no network). `fingerprint` must be equal
    /// on every rank; `timeout` bounds the wait for the others, and each later collective.
    pub fn connect(topo: &Topology, fingerprint: &str, timeout: Duration) -> Result<Group, GroupError> {
        if topo.world == 1 {
            return Ok(Group { rank: 0, world: 1, links: Vec::new() });
        }
        let (host, port) = topo.master.clone().ok_or(GroupError::NoMaster)?;
        if topo.rank == 0 {
            Self::serve(topo.world, port, fingerprint, timeout)
        } else {
            Self::join(topo, &host, port, fingerprint, timeout)
        }
    }

    fn serve(world: usize, port: u16, fingerprint: &str, timeout: Duration) -> Result<Group, GroupError> {
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|source| GroupError::Bind { port, source })?;
        listener.set_nonblocking(true).map_err(io("rendezvous listener"))?;
        let deadline = Instant::now() + timeout;
        let mut links: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        while links.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).map_err(io("rendezvous socket"))?;
                    s.set_read_timeout(Some(timeout)).map_err(io("rendezvous socket"))?;
                    let h = read_frame(&mut s, HELLO_LIMIT).map_err(io(format!("hello from {peer}")))?;
                    let Some((rank, their_world, their_fp)) = parse_hello(&h) else {
                        // Not one of ours (a port scanner, another program): ignore it.
                        continue;
                    };
                    let problem = if their_world != world {
                        Some(format!(
                            "rank {rank} (at {peer}) was started with a world of {their_world}, rank 0 with {world}"
                        ))
                    } else if rank == 0 || rank >= world {
                        Some(format!("a process at {peer} claims rank {rank}, outside 1..{world}"))
                    } else if links[rank - 1].is_some() {
                        Some(format!("two processes claim rank {rank} (the second at {peer})"))
                    } else if their_fp != fingerprint {
                        Some(format!(
                            "rank {rank} (at {peer}) runs a different job: {their_fp} (rank 0: {fingerprint})"
                        ))
                    } else {
                        None
                    };
                    if let Some(msg) = problem {
                        let _ = write_frame(&mut s, format!("error: {msg}").as_bytes());
                        for link in links.iter_mut().flatten() {
                            let _ = write_frame(link, format!("error: {msg}").as_bytes());
                        }
                        return Err(GroupError::Mismatch(msg));
                    }
                    links[rank - 1] = Some(s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<usize> =
                            links.iter().enumerate().filter(|(_, l)| l.is_none()).map(|(i, _)| i + 1).collect();
                        return Err(GroupError::Missing { missing, world, secs: timeout.as_secs() });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io("accepting a rank")(e)),
            }
        }
        let mut links: Vec<TcpStream> = links.into_iter().map(|l| l.expect("all joined")).collect();
        for (i, link) in links.iter_mut().enumerate() {
            write_frame(link, b"ok").map_err(io(format!("greeting rank {}", i + 1)))?;
            link.set_nodelay(true).map_err(io("socket options"))?;
        }
        Ok(Group { rank: 0, world, links })
    }

    fn join(topo: &Topology, host: &str, port: u16, fingerprint: &str, timeout: Duration) -> Result<Group, GroupError> {
        let deadline = Instant::now() + timeout;
        let addr = format!("{host}:{port}");
        let mut last;
        let mut stream = loop {
            let attempt = addr.to_socket_addrs().and_then(|mut a| {
                let a = a.next().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
                TcpStream::connect_timeout(&a, RETRY_EVERY.max(Duration::from_millis(500)))
            });
            match attempt {
                Ok(s) => break s,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(GroupError::Unreachable { addr, secs: timeout.as_secs(), last });
            }
            std::thread::sleep(RETRY_EVERY);
        };
        stream.set_read_timeout(Some(timeout)).map_err(io("rendezvous socket"))?;
        stream.set_nodelay(true).map_err(io("socket options"))?;
        write_frame(&mut stream, &hello(topo.rank, topo.world, fingerprint)).map_err(io(format!("hello to {addr}")))?;
        let reply = read_frame(&mut stream, HELLO_LIMIT).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut {
                GroupError::Missing { missing: vec![], world: topo.world, secs: timeout.as_secs() }
            } else {
                io(format!("waiting for the other ranks at {addr}"))(e)
            }
        })?;
        if reply != b"ok" {
            return Err(GroupError::Mismatch(
                String::from_utf8_lossy(&reply).trim_start_matches("error: ").to_string(),
            ));
        }
        Ok(Group { rank: topo.rank, world: topo.world, links: vec![stream] })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn peer(&self, i: usize) -> usize {
        if self.rank == 0 { i + 1 } else { 0 }
    }

    fn send(&mut self, i: usize, bytes: &[u8]) -> Result<(), GroupError> {
        let peer = self.peer(i);
        write_frame(&mut self.links[i], bytes).map_err(io(format!("sending to rank {peer}")))
    }

    fn recv(&mut self, i: usize, limit: usize) -> Result<Vec<u8>, GroupError> {
        let peer = self.peer(i);
        read_frame(&mut self.links[i], limit).map_err(io(format!("receiving from rank {peer} (did it stop?)")))
    }

    /// Rank 0's bytes on every rank.
    pub fn broadcast(&mut self, bytes: &mut Vec<u8>, limit: usize) -> Result<(), GroupError> {
        if self.rank == 0 {
            for i in 0..self.links.len() {
                self.send(i, bytes)?;
            }
        } else if self.world > 1 {
            *bytes = self.recv(0, limit)?;
        }
        Ok(())
    }

    /// Element-wise sum over ranks, added in rank order on rank 0; every rank gets the result.
    pub fn all_reduce_sum<T: Summable>(&mut self, data: &mut [T]) -> Result<(), GroupError> {
        if self.world == 1 {
            return Ok(());
        }
        let bytes = data.len() * T::BYTES;
        if self.rank == 0 {
            for i in 0..self.links.len() {
                let theirs = self.recv(i, bytes)?;
                if theirs.len() != bytes {
                    return Err(GroupError::Mismatch(format!(
                        "rank {} sent {} bytes to a sum of {bytes}",
                        i + 1,
                        theirs.len()
                    )));
                }
                for (x, b) in data.iter_mut().zip(theirs.chunks_exact(T::BYTES)) {
                    *x = x.add(T::from_le(b));
                }
            }
            let out: Vec<u8> = data.iter().flat_map(|x| x.to_le()).collect();
            for i in 0..self.links.len() {
                self.send(i, &out)?;
            }
        } else {
            let mine: Vec<u8> = data.iter().flat_map(|x| x.to_le()).collect();
            self.send(0, &mine)?;
            let sum = self.recv(0, bytes)?;
            for (x, b) in data.iter_mut().zip(sum.chunks_exact(T::BYTES)) {
                *x = T::from_le(b);
            }
        }
        Ok(())
    }

    /// Every rank's `mine` (all the same length), concatenated in rank order into `out`.
    pub fn all_gather<T: Summable>(&mut self, mine: &[T], out: &mut [T]) -> Result<(), GroupError> {
        assert_eq!(out.len(), mine.len() * self.world, "all_gather output size");
        let n = mine.len();
        out[self.rank * n..(self.rank + 1) * n].copy_from_slice(mine);
        if self.world == 1 {
            return Ok(());
        }
        let bytes = n * T::BYTES;
        if self.rank == 0 {
            for i in 0..self.links.len() {
                let theirs = self.recv(i, bytes)?;
                for (x, b) in out[(i + 1) * n..(i + 2) * n].iter_mut().zip(theirs.chunks_exact(T::BYTES)) {
                    *x = T::from_le(b);
                }
            }
            let all: Vec<u8> = out.iter().flat_map(|x| x.to_le()).collect();
            for i in 0..self.links.len() {
                self.send(i, &all)?;
            }
        } else {
            let mine_bytes: Vec<u8> = mine.iter().flat_map(|x| x.to_le()).collect();
            self.send(0, &mine_bytes)?;
            let all = self.recv(0, bytes * self.world)?;
            for (x, b) in out.iter_mut().zip(all.chunks_exact(T::BYTES)) {
                *x = T::from_le(b);
            }
        }
        Ok(())
    }

    /// Returns when every rank has called it.
    pub fn barrier(&mut self) -> Result<(), GroupError> {
        self.all_reduce_sum::<f64>(&mut [])
    }
}

/// Numbers the host collectives move: f32 and f64, little-endian on the wire.
pub trait Summable: Copy {
    const BYTES: usize;
    fn add(self, other: Self) -> Self;
    fn to_le(self) -> Vec<u8>;
    fn from_le(b: &[u8]) -> Self;
}

impl Summable for f32 {
    const BYTES: usize = 4;
    fn add(self, other: Self) -> Self {
        self + other
    }
    fn to_le(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn from_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Summable for f64 {
    const BYTES: usize = 8;
    fn add(self, other: Self) -> Self {
        self + other
    }
    fn to_le(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn from_le(b: &[u8]) -> Self {
        f64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A free port on loopback (bound and released; good enough for tests).
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn topo(rank: usize, world: usize, port: u16) -> Topology {
        Topology { rank, world, local_rank: rank, master: Some(("127.0.0.1".into(), port)), launcher: "torchrun" }
    }

    fn spawn_ranks<T: Send + 'static>(
        world: usize,
        port: u16,
        f: impl Fn(Group) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let handles: Vec<_> = (0..world)
            .map(|r| {
                std::thread::spawn(move || {
                    let g = Group::connect(&topo(r, world, port), "job", Duration::from_secs(10)).unwrap();
                    f(g)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn collectives_agree_on_every_rank() {
        let port = free_port();
        let results = spawn_ranks(3, port, |mut g| {
            let r = g.rank() as f32;
            let mut sum = vec![r, 10.0 * r, 0.5];
            g.all_reduce_sum(&mut sum).unwrap();
            let mut all = vec![0f32; 6];
            g.all_gather(&[r, r + 0.25], &mut all).unwrap();
            let mut id = if g.rank() == 0 { b"nccl-id".to_vec() } else { Vec::new() };
            g.broadcast(&mut id, 128).unwrap();
            g.barrier().unwrap();
            (sum, all, id)
        });
        for (sum, all, id) in results {
            assert_eq!(sum, vec![3.0, 30.0, 1.5]);
            assert_eq!(all, vec![0.0, 0.25, 1.0, 1.25, 2.0, 2.25]);
            assert_eq!(id, b"nccl-id");
        }
    }

    #[test]
    fn a_missing_rank_is_named_after_the_timeout() {
        let port = free_port();
        let leader =
            std::thread::spawn(move || Group::connect(&topo(0, 3, port), "job", Duration::from_secs(2)).err().unwrap());
        std::thread::sleep(Duration::from_millis(200));
        let one = std::thread::spawn(move || Group::connect(&topo(1, 3, port), "job", Duration::from_secs(4)));
        let e = leader.join().unwrap().to_string();
        assert!(e.contains("ranks [2] of 3 did not join within 2 s"), "{e}");
        assert!(one.join().unwrap().is_err());
    }

    #[test]
    fn mismatched_jobs_stop_at_the_start() {
        let port = free_port();
        let a = std::thread::spawn(move || {
            Group::connect(&topo(0, 2, port), "job A", Duration::from_secs(5)).err().unwrap().to_string()
        });
        let b = std::thread::spawn(move || {
            Group::connect(&topo(1, 2, port), "job B", Duration::from_secs(5)).err().unwrap().to_string()
        });
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a.contains("runs a different job") && b.contains("runs a different job"), "{a} / {b}");
        let port = free_port();
        let a = std::thread::spawn(move || {
            Group::connect(&topo(0, 2, port), "j", Duration::from_secs(5)).err().unwrap().to_string()
        });
        let b = std::thread::spawn(move || {
            Group::connect(&topo(1, 3, port), "j", Duration::from_secs(5)).err().unwrap().to_string()
        });
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a.contains("world of 3, rank 0 with 2") && b.contains("world of 3"), "{a} / {b}");
    }

    #[test]
    fn a_busy_port_and_an_absent_leader_are_reported() {
        let holder = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let e = Group::connect(&topo(0, 2, port), "j", Duration::from_secs(1)).err().unwrap().to_string();
        assert!(e.contains(&format!("cannot listen on port {port}")) && e.contains("another job holds it"), "{e}");
        drop(holder);
        let port = free_port();
        let e = Group::connect(&topo(1, 2, port), "j", Duration::from_secs(1)).err().unwrap().to_string();
        assert!(e.contains("did not answer within 1 s"), "{e}");
    }
}
