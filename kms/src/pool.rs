//! The HSM worker pool: a fixed set of OS threads that are the only callers
//! of [`Hsm`], fed by two bounded queues. Async callers await a oneshot and
//! never block a tokio worker; a full queue is [`KmsError::Busy`] at once, so
//! the server can shed load instead of piling up requests.
//!
//! The two queues are lanes: [`Lane::Interactive`] (every call a request
//! waits on: login, transactions, readiness, the audit trail's MACs) and
//! [`Lane::Bulk`] (chunks of bulk MAC verification). A worker always takes an
//! interactive job first, so an interactive call waits behind at most one
//! bulk chunk per worker, never behind a whole queue of them: a switch's
//! batches cannot make `/ready` time out or logins starve.
//!
//! [`HsmPool::shutdown`] finishes the queued jobs and joins the workers, and
//! so does dropping the last clone: a worker still inside the PKCS#11 module
//! while the process runs its exit handlers can crash it (seen with SoftHSM
//! 2.6.1: in `C_CloseSession`, and at the exit of a test process whose last
//! requests left channel-key clean-up jobs queued). So nothing may keep a
//! pool alive for the whole process: a process-wide handle is a
//! [`PoolExit`], which does not.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

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

/// When the last pool clone goes (its senders first, so the workers' queues
/// are closed and they stop after the jobs already queued), wait for the
/// workers: a worker still inside the PKCS#11 module (closing its session)
/// while the process runs its exit handlers can crash it (SoftHSM 2.6.1),
/// which a test process that simply returns would otherwise risk. A worker
/// never joins itself (a job that held the last clone).
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

/// Which queue a job waits in; workers serve [`Lane::Interactive`] first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Work a request is waiting on.
    Interactive,
    /// Throughput work cut into short jobs (bulk verification).
    Bulk,
}

/// Cheap to clone; all clones feed the same workers.
#[derive(Clone)]
pub struct HsmPool(Arc<Shared>);

/// What the clones share. The senders drop before the workers' handles, so
/// the queues are closed when [`Workers`] joins.
struct Shared {
    tx: Sender<Msg>,
    bulk_tx: Sender<Msg>,
    caps: Capabilities,
    workers: usize,
    stats: Arc<PoolStats>,
    threads: Workers,
}

/// Shuts a pool down at the end of a process if it is still alive, without
/// keeping it alive meanwhile (a pool whose clones are all gone has already
/// joined its workers).
#[derive(Clone, Debug, Default)]
pub struct PoolExit(Weak<Shared>);

impl PoolExit {
    /// [`HsmPool::shutdown`], if the pool still exists.
    pub fn shutdown(&self) {
        if let Some(shared) = self.0.upgrade() {
            HsmPool(shared).shutdown();
        }
    }
}

impl std::fmt::Debug for HsmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmPool")
            .field("workers", &self.0.workers)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl HsmPool {
    /// Starts `workers` threads and two queues (one per [`Lane`]) of
    /// `queue_depth` waiting jobs each.
    pub fn start(hsm: Arc<dyn Hsm>, workers: usize, queue_depth: usize) -> Result<Self> {
        let caps = hsm.capabilities();
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(queue_depth);
        let (bulk_tx, bulk_rx) = crossbeam_channel::bounded::<Msg>(queue_depth);
        let stats = Arc::new(PoolStats::default());
        let threads = Workers::default();
        for i in 0..workers.max(1) {
            let (rx, bulk_rx) = (rx.clone(), bulk_rx.clone());
            let hsm = hsm.clone();
            let stats = stats.clone();
            let handle = std::thread::Builder::new()
                .name(format!("hsm-worker-{i}"))
                .spawn(move || {
                    let run = |job: Job| {
                        stats.busy.fetch_add(1, Ordering::Relaxed);
                        // A panicking job must not take the worker with it; its
                        // caller sees the dropped reply as an HSM failure.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&*hsm)));
                        stats.busy.fetch_sub(1, Ordering::Relaxed);
                        stats.completed.fetch_add(1, Ordering::Relaxed);
                    };
                    while let Some(job) = next_job(&rx, &bulk_rx) {
                        run(job);
                    }
                    // Stopping: the bulk jobs queued before the stop still run.
                    while let Ok(Msg::Job(job)) = bulk_rx.try_recv() {
                        run(job);
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
        Ok(Self(Arc::new(Shared {
            tx,
            bulk_tx,
            caps,
            workers: workers.max(1),
            stats,
            threads,
        })))
    }

    /// A handle that shuts this pool down at the end of the process without
    /// keeping it alive until then.
    pub fn exit_handle(&self) -> PoolExit {
        PoolExit(Arc::downgrade(&self.0))
    }

    /// Runs the jobs already queued, stops the workers and waits for them.
    /// Jobs submitted afterwards are refused ([`KmsError::PoolClosed`]).
    /// Blocks: call it outside the async runtime, as the process ends.
    /// A second call does nothing.
    pub fn shutdown(&self) {
        if self.0.threads.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        for _ in 0..self.0.workers {
            // Blocks while the queue is full; fails only if every worker is gone.
            let _ = self.0.tx.send(Msg::Stop);
        }
        let handles = match self.0.threads.handles.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for h in handles {
            let _ = h.join();
        }
    }

    /// Runs `f` on a worker, in the interactive lane, and awaits its result.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Hsm) -> Result<T> + Send + 'static,
    {
        self.run_in(Lane::Interactive, f).await
    }

    /// Runs `f` on a worker, in `lane`, and awaits its result.
    pub async fn run_in<T, F>(&self, lane: Lane, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Hsm) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |hsm| {
            let _ = reply.send(f(hsm));
        });
        match lane {
            Lane::Interactive => self.submit(&self.0.tx, job)?,
            Lane::Bulk => self.submit(&self.0.bulk_tx, job)?,
        }
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
        self.submit(
            &self.0.tx,
            Box::new(move |hsm| {
                let _ = reply.send(f(hsm));
            }),
        )?;
        rx.recv().map_err(|_| worker_failed())?
    }

    /// Queues `f` in the interactive lane without waiting for it
    /// (clean-up from `Drop`).
    pub(crate) fn detach<F>(&self, f: F) -> Result<()>
    where
        F: FnOnce(&dyn Hsm) + Send + 'static,
    {
        self.submit(&self.0.tx, Box::new(f))
    }

    fn submit(&self, lane: &Sender<Msg>, job: Job) -> Result<()> {
        if self.0.threads.closed.load(Ordering::SeqCst) {
            return Err(KmsError::PoolClosed);
        }
        lane.try_send(Msg::Job(job)).map_err(|e| match e {
            TrySendError::Full(_) => {
                self.0.stats.rejected.fetch_add(1, Ordering::Relaxed);
                KmsError::Busy
            }
            TrySendError::Disconnected(_) => KmsError::PoolClosed,
        })
    }

    /// The vendor differences of the HSM behind the pool.
    pub fn capabilities(&self) -> Capabilities {
        self.0.caps
    }

    pub fn workers(&self) -> usize {
        self.0.workers
    }

    /// Jobs waiting for a worker, in both lanes.
    pub fn queued(&self) -> usize {
        self.0.tx.len() + self.0.bulk_tx.len()
    }

    pub fn stats(&self) -> &PoolStats {
        &self.0.stats
    }
}

/// A worker's next job: an interactive one if any waits, else whichever
/// lane has one first. `None` on a stop (sent in the interactive lane, after
/// the jobs queued before it) or when the pool is gone.
fn next_job(rx: &Receiver<Msg>, bulk_rx: &Receiver<Msg>) -> Option<Job> {
    let msg = match rx.try_recv() {
        Ok(msg) => Ok(msg),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => crossbeam_channel::select_biased! {
            recv(rx) -> msg => msg,
            recv(bulk_rx) -> msg => msg,
        },
    };
    match msg {
        Ok(Msg::Job(job)) => Some(job),
        Ok(Msg::Stop) | Err(_) => None,
    }
}

fn worker_failed() -> KmsError {
    KmsError::Hsm {
        function: "worker",
        problem: "job ended without a result",
    }
}
