//! The HSM worker pool: a fixed set of OS threads that are the only callers
//! of [`Hsm`], fed by two bounded queues. Async callers await a oneshot and
//! never block a tokio worker; a full queue is [`KmsError::Busy`] at once, so
//! the server can shed load instead of piling up requests.
//!
//! The two queues are lanes, each with its own workers: [`Lane::Interactive`]
//! (every call a request waits on: login, transactions, readiness, the audit
//! trail's MACs) and [`Lane::Bulk`] (chunks of bulk MAC verification). An
//! interactive call never waits behind a bulk chunk, and the bulk workers
//! run at a lower CPU priority ([`PoolSize::bulk_nice`]): where the module
//! computes on the server's own cores (SoftHSM, or any software token) a
//! switch's batches take the CPU the interactive work leaves, and no more,
//! so `/ready` and logins keep their pace during a burst. With no interactive
//! work the bulk workers have the whole machine.
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

/// How many workers each lane has and how the bulk ones yield the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Interactive workers: the HSM calls requests wait on, at once.
    pub interactive: usize,
    /// Bulk workers (each uses its own HSM session while it works).
    pub bulk: usize,
    /// The bulk workers' nice value (0 to 19; Linux only, elsewhere ignored):
    /// the kernel runs them only on CPU the rest of the process leaves.
    pub bulk_nice: i32,
    /// Jobs that may wait in each lane before a caller gets
    /// [`KmsError::Busy`].
    pub queue_depth: usize,
}

impl PoolSize {
    /// `workers` in each lane, bulk at the same priority: for tools and tests.
    pub fn even(workers: usize, queue_depth: usize) -> Self {
        Self {
            interactive: workers,
            bulk: workers,
            bulk_nice: 0,
            queue_depth,
        }
    }
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
    size: PoolSize,
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
            .field("size", &self.0.size)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl HsmPool {
    /// Starts `workers` threads in each lane, both at the same priority
    /// ([`PoolSize::even`]).
    pub fn start(hsm: Arc<dyn Hsm>, workers: usize, queue_depth: usize) -> Result<Self> {
        Self::start_sized(hsm, PoolSize::even(workers, queue_depth))
    }

    /// Starts each lane's workers and queue.
    pub fn start_sized(hsm: Arc<dyn Hsm>, size: PoolSize) -> Result<Self> {
        let size = PoolSize {
            interactive: size.interactive.max(1),
            bulk: size.bulk.max(1),
            bulk_nice: size.bulk_nice.clamp(0, 19),
            queue_depth: size.queue_depth.max(1),
        };
        let caps = hsm.capabilities();
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(size.queue_depth);
        let (bulk_tx, bulk_rx) = crossbeam_channel::bounded::<Msg>(size.queue_depth);
        let stats = Arc::new(PoolStats::default());
        let threads = Workers::default();
        let lanes = [
            (Lane::Interactive, size.interactive, rx, 0),
            (Lane::Bulk, size.bulk, bulk_rx, size.bulk_nice),
        ];
        for (lane, workers, rx, nice) in lanes {
            for i in 0..workers {
                let (rx, hsm, stats) = (rx.clone(), hsm.clone(), stats.clone());
                let name = match lane {
                    Lane::Interactive => format!("hsm-worker-{i}"),
                    Lane::Bulk => format!("hsm-bulk-{i}"),
                };
                let handle = std::thread::Builder::new()
                    .name(name)
                    .spawn(move || {
                        if nice > 0 {
                            lower_priority(nice);
                        }
                        // Until a stop, sent in the lane after the jobs
                        // queued before it, or until the pool is gone.
                        while let Ok(Msg::Job(job)) = rx.recv() {
                            stats.busy.fetch_add(1, Ordering::Relaxed);
                            // A panicking job must not take the worker with
                            // it; its caller sees the dropped reply as an HSM
                            // failure.
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
        }
        Ok(Self(Arc::new(Shared {
            tx,
            bulk_tx,
            caps,
            size,
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
        // Blocks while a queue is full; fails only if its workers are gone.
        for _ in 0..self.0.size.interactive {
            let _ = self.0.tx.send(Msg::Stop);
        }
        for _ in 0..self.0.size.bulk {
            let _ = self.0.bulk_tx.send(Msg::Stop);
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

    /// Interactive workers: how many interactive HSM calls run at once.
    pub fn workers(&self) -> usize {
        self.0.size.interactive
    }

    /// Bulk workers: how many bulk chunks run at once.
    pub fn bulk_workers(&self) -> usize {
        self.0.size.bulk
    }

    /// Jobs waiting for a worker, in both lanes.
    pub fn queued(&self) -> usize {
        self.0.tx.len() + self.0.bulk_tx.len()
    }

    pub fn stats(&self) -> &PoolStats {
        &self.0.stats
    }
}

/// Lowers the calling thread's CPU priority to `nice` (Linux: a thread has
/// its own nice value). A refusal is logged, not fatal: the lane still works,
/// at the process's priority.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        let me = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(me), nice) {
            tracing::warn!(nice, error = %e, "cannot lower the bulk HSM worker's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::info!(
        nice,
        "bulk HSM workers run at the process's priority on this OS"
    );
}

fn worker_failed() -> KmsError {
    KmsError::Hsm {
        function: "worker",
        problem: "job ended without a result",
    }
}
