//! The HSM worker pool: a fixed set of OS threads that are the only callers
//! of [`Hsm`], fed by a bounded queue. Async callers await a oneshot and never
//! block a tokio worker; a full queue is [`KmsError::Busy`] at once, so the
//! server can shed load instead of piling up requests.
//!
//! [`HsmPool::shutdown`] finishes the queued jobs and joins the workers. A
//! process calls it before it exits: a worker still inside the PKCS#11
//! module while the process runs its exit handlers can crash it (seen with
//! SoftHSM 2.6.1 in `C_CloseSession`).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};

use crate::error::{KmsError, Result};
use crate::hsm::{Capabilities, Hsm};

type Job = Box<dyn FnOnce(&dyn Hsm) + Send>;

/// What a worker receives.
enum Msg {
    Job(Job),
    /// Exit after the jobs queued before this one.
    Stop,
}

/// The workers' threads, for [`HsmPool::shutdown`].
#[derive(Default)]
struct Workers {
    closed: AtomicBool,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// When the last pool clone goes (its sender first, so the workers' queue is
/// closed and they stop after their current job), wait for the workers: a
/// worker still inside the PKCS#11 module (closing its session) while the
/// process runs its exit handlers can crash it (SoftHSM 2.6.1), which a test
/// process that simply returns would otherwise risk. A worker never joins
/// itself (a job that held the last clone).
impl Drop for Workers {
    fn drop(&mut self) {
        let me = std::thread::current().id();
        let handles = match self.handles.get_mut() {
            Ok(h) => std::mem::take(h),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

/// Counters for metrics and readiness.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Jobs running on a worker right now.
    pub busy: AtomicUsize,
    /// Jobs refused because the queue was full.
    pub rejected: AtomicU64,
    /// Jobs finished (with any outcome).
    pub completed: AtomicU64,
}

/// Cheap to clone; all clones feed the same workers.
#[derive(Clone)]
pub struct HsmPool {
    tx: Sender<Msg>,
    caps: Capabilities,
    workers: usize,
    threads: Arc<Workers>,
    stats: Arc<PoolStats>,
}

impl std::fmt::Debug for HsmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmPool")
            .field("workers", &self.workers)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl HsmPool {
    /// Starts `workers` threads and a queue of `queue_depth` waiting jobs.
    pub fn start(hsm: Arc<dyn Hsm>, workers: usize, queue_depth: usize) -> Result<Self> {
        let caps = hsm.capabilities();
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(queue_depth);
        let stats = Arc::new(PoolStats::default());
        let threads = Arc::new(Workers::default());
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let hsm = hsm.clone();
            let stats = stats.clone();
            let handle = std::thread::Builder::new()
                .name(format!("hsm-worker-{i}"))
                .spawn(move || {
                    while let Ok(Msg::Job(job)) = rx.recv() {
                        stats.busy.fetch_add(1, Ordering::Relaxed);
                        // A panicking job must not take the worker with it; its
                        // caller sees the dropped reply as an HSM failure.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&*hsm)));
                        stats.busy.fetch_sub(1, Ordering::Relaxed);
                        stats.completed.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot start an HSM worker thread");
                    KmsError::Hsm {
                        function: "spawn worker",
                        problem: "the OS refused a thread",
                    }
                })?;
            if let Ok(mut handles) = threads.handles.lock() {
                handles.push(handle);
            }
        }
        Ok(Self {
            tx,
            caps,
            workers: workers.max(1),
            threads,
            stats,
        })
    }

    /// Runs the jobs already queued, stops the workers and waits for them.
    /// Jobs submitted afterwards are refused ([`KmsError::PoolClosed`]).
    /// Blocks: call it outside the async runtime, as the process ends.
    /// A second call does nothing.
    pub fn shutdown(&self) {
        if self.threads.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        for _ in 0..self.workers {
            // Blocks while the queue is full; fails only if every worker is gone.
            let _ = self.tx.send(Msg::Stop);
        }
        let handles = match self.threads.handles.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for h in handles {
            let _ = h.join();
        }
    }

    /// Runs `f` on a worker and awaits its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Hsm) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |hsm| {
            let _ = reply.send(f(hsm));
        }))?;
        rx.await.map_err(|_| worker_failed())?
    }

    /// Runs `f` on a worker from synchronous code (rustls and rcgen signers,
    /// tools). Do not call from an async context without `block_in_place`.
    pub fn run_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Hsm) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.submit(Box::new(move |hsm| {
            let _ = reply.send(f(hsm));
        }))?;
        rx.recv().map_err(|_| worker_failed())?
    }

    fn submit(&self, job: Job) -> Result<()> {
        if self.threads.closed.load(Ordering::SeqCst) {
            return Err(KmsError::PoolClosed);
        }
        self.tx.try_send(Msg::Job(job)).map_err(|e| match e {
            TrySendError::Full(_) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                KmsError::Busy
            }
            TrySendError::Disconnected(_) => KmsError::PoolClosed,
        })
    }

    /// The vendor differences of the HSM behind the pool.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }
}

fn worker_failed() -> KmsError {
    KmsError::Hsm {
        function: "worker",
        problem: "job ended without a result",
    }
}
