//! The HSM worker pool: a fixed set of OS threads that are the only callers
//! of [`Hsm`], fed by a bounded queue. Async callers await a oneshot and never
//! block a tokio worker; a full queue is [`KmsError::Busy`] at once, so the
//! server can shed load instead of piling up requests.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::{Sender, TrySendError};

use crate::error::{KmsError, Result};
use crate::hsm::Hsm;

type Job = Box<dyn FnOnce(&dyn Hsm) + Send>;

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
    tx: Sender<Job>,
    hsm: Arc<dyn Hsm>,
    workers: usize,
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
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue_depth);
        let stats = Arc::new(PoolStats::default());
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let hsm = hsm.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!("hsm-worker-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        stats.busy.fetch_add(1, Ordering::Relaxed);
                        // A panicking job must not take the worker with it; its
                        // caller sees the dropped reply as an HSM failure.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&*hsm)));
                        stats.busy.fetch_sub(1, Ordering::Relaxed);
                        stats.completed.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| KmsError::Hsm {
                    function: "spawn worker".into(),
                    rv: e.to_string(),
                })?;
        }
        Ok(Self {
            tx,
            hsm,
            workers: workers.max(1),
            stats,
        })
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
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                KmsError::Busy
            }
            TrySendError::Disconnected(_) => KmsError::PoolClosed,
        })
    }

    /// The HSM behind the pool, for start-up work before serving.
    pub fn hsm(&self) -> &Arc<dyn Hsm> {
        &self.hsm
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
        function: "worker".into(),
        rv: "job ended without a result".into(),
    }
}
