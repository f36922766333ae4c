//! Proof-of-work workers: OS threads that split the nonce space of one header
//! (worker `i` of `n` tries `i, i + n, i + 2n, …` with the core's midstate
//! solver) and stop as soon as one of them finds a solution. They never touch
//! the ingress: frames keep being received, journaled and ACKed while a block
//! is being solved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::pow::PowSolver;
use gridpow_proto::wire::BlockHeaderRepr;

use crate::RelayError;

/// Nonces a worker tries between looks at the stop flag.
const CHUNK: u64 = 8192;

/// What a worker reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowReport {
    /// A nonce meeting the difficulty.
    Solved {
        /// Job id.
        job: u64,
        /// The solution.
        nonce: u64,
        /// Nonces this worker tried for the job.
        tries: u64,
    },
    /// The worker stopped without a solution (another worker found one, or shutdown).
    Stopped {
        /// Job id.
        job: u64,
        /// Nonces this worker tried for the job.
        tries: u64,
    },
}

struct Job {
    id: u64,
    header: BlockHeaderRepr,
    stop: Arc<AtomicBool>,
}

/// A pool of PoW worker threads.
pub struct PowPool {
    senders: Vec<Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
    reports: Receiver<PowReport>,
    current: Option<(u64, Arc<AtomicBool>)>,
    next_id: u64,
}

impl PowPool {
    /// Starts `threads` workers (at least one).
    pub fn new(threads: usize) -> Result<PowPool, RelayError> {
        let n = threads.max(1);
        let (report_tx, reports) = crossbeam_channel::unbounded();
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = crossbeam_channel::unbounded::<Job>();
            let report = report_tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("gridpow-pow-{i}"))
                .spawn(move || worker(i as u64, n as u64, &rx, &report))
                .map_err(|source| RelayError::Spawn {
                    name: "pow worker",
                    source,
                })?;
            senders.push(tx);
            handles.push(h);
        }
        Ok(PowPool {
            senders,
            handles,
            reports,
            current: None,
            next_id: 1,
        })
    }

    /// Worker count.
    pub fn threads(&self) -> usize {
        self.senders.len()
    }

    /// Reports from the workers (select on it).
    pub fn reports(&self) -> &Receiver<PowReport> {
        &self.reports
    }

    /// Starts solving `header` (stopping any job still running); returns the job id.
    pub fn start(&mut self, header: BlockHeaderRepr) -> u64 {
        self.stop();
        let id = self.next_id;
        self.next_id += 1;
        let stop = Arc::new(AtomicBool::new(false));
        for tx in &self.senders {
            // A worker that died cannot take the job; the others still cover
            // their share, and a missing share only makes solving slower.
            let _ = tx.send(Job {
                id,
                header,
                stop: stop.clone(),
            });
        }
        self.current = Some((id, stop));
        id
    }

    /// Stops the running job, if any.
    pub fn stop(&mut self) {
        if let Some((_, stop)) = self.current.take() {
            stop.store(true, Ordering::Relaxed);
        }
    }

    /// Id of the running job.
    pub fn current(&self) -> Option<u64> {
        self.current.as_ref().map(|(id, _)| *id)
    }

    /// Marks `job` finished (after its solution arrived) and stops the other workers.
    pub fn finish(&mut self, job: u64) {
        if self.current() == Some(job) {
            self.stop();
        }
    }

    /// Stops and joins every worker.
    pub fn shutdown(mut self) {
        self.stop();
        self.senders.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for PowPool {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker(index: u64, stride: u64, jobs: &Receiver<Job>, report: &Sender<PowReport>) {
    while let Ok(job) = jobs.recv() {
        let mut solver = PowSolver::new(&RustCrypto, &job.header, index, stride);
        let outcome = loop {
            if job.stop.load(Ordering::Relaxed) {
                break PowReport::Stopped {
                    job: job.id,
                    tries: solver.tries(),
                };
            }
            if let Some(nonce) = solver.solve_for(&RustCrypto, CHUNK) {
                job.stop.store(true, Ordering::Relaxed);
                break PowReport::Solved {
                    job: job.id,
                    nonce,
                    tries: solver.tries(),
                };
            }
        };
        if report.send(outcome).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_proto::pow::leading_zero_bits;

    #[test]
    fn pool_workers_find_a_nonce_meeting_the_difficulty() {
        let mut pool = PowPool::new(2).unwrap();
        let mut header = BlockHeaderRepr {
            difficulty: 14,
            relay_id: 3,
            height: 9,
            prev_hash: [1; 32],
            merkle_root: [2; 32],
            leaf_count: 5,
            time_ms: 1_700_000_000_000,
            nonce: 0,
        };
        let job = pool.start(header);
        let mut tries = 0;
        let nonce = loop {
            match pool
                .reports()
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap()
            {
                PowReport::Solved {
                    job: j,
                    nonce,
                    tries: t,
                } if j == job => {
                    tries += t;
                    break nonce;
                }
                PowReport::Solved { tries: t, .. } | PowReport::Stopped { tries: t, .. } => {
                    tries += t
                }
            }
        };
        pool.finish(job);
        header.nonce = nonce;
        assert!(leading_zero_bits(&header.hash(&RustCrypto)) >= 14);
        assert!(tries > 0);
        pool.shutdown();
    }
}
