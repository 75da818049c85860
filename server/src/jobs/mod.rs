//! Background work, one runner for all of it: each [`Job`] runs on its own
//! interval in its own task (a missed tick is delayed, not bunched up; an
//! error is logged with its code and the next tick retries; a panic is
//! caught and logged like an error, so a job never dies).
//!
//! A job marked `once_across_replicas` runs only on the replica holding its
//! lease (table `jobs`, [`lease::Leases`]): every tick, each replica asks
//! for the lease with one conditional write, the holder renews it, and the
//! lease lasts [`LEASE_INTERVALS`] intervals, so a dead replica's lease
//! lapses and another takes over. Other jobs run on every replica.
//!
//! The server's jobs are listed in [`server_jobs`] (docs/admin-api.md,
//! "Background jobs").

pub mod lease;

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use keyward_kms::db::{Database, TxError};
use tokio::task::JoinHandle;

pub use lease::{Lease, Leases};

use crate::metrics::Metrics;
use crate::state::AppState;

/// A lease lasts this many intervals: it survives a missed tick or two, not
/// a dead replica.
pub const LEASE_INTERVALS: u32 = 3;

/// What one run of a job returns.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

/// A job's work: called once per run with the runner's state.
pub type Work<S> = Box<dyn FnMut(S) -> JobFuture + Send>;

/// Why a run failed: logged with its code, retried next tick.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{error:#}")]
    Failed {
        code: &'static str,
        error: anyhow::Error,
    },
}

impl JobError {
    /// A failure other than the database's, under a stable code.
    pub fn failed(code: &'static str, error: impl Into<anyhow::Error>) -> Self {
        Self::Failed {
            code,
            error: error.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Database(e) => keyward_kms::db::error_code(e),
            Self::Failed { code, .. } => code,
        }
    }
}

impl TxError for JobError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Failed { .. } => None,
        }
    }
}

impl From<crate::online::OnlineError> for JobError {
    fn from(e: crate::online::OnlineError) -> Self {
        Self::failed(e.code(), e)
    }
}

/// One piece of background work and its schedule.
pub struct Job<S> {
    /// Names the job in logs and, for a leased job, its row in `jobs`.
    pub name: &'static str,
    pub every: Duration,
    /// Runs only on the replica holding the job's lease.
    pub once_across_replicas: bool,
    /// `false` when the caller just did the work before starting the
    /// runner: the first run is then one interval after start.
    pub run_at_start: bool,
    pub work: Work<S>,
}

impl<S> Job<S> {
    /// A job that runs at start and then every `every`, on every replica.
    pub fn new<F, Fut>(name: &'static str, every: Duration, mut work: F) -> Self
    where
        F: FnMut(S) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        Self {
            name,
            every,
            once_across_replicas: false,
            run_at_start: true,
            work: Box::new(move |s| Box::pin(work(s))),
        }
    }

    /// Runs only on the replica holding the job's lease.
    pub fn once_across_replicas(mut self) -> Self {
        self.once_across_replicas = true;
        self
    }

    /// The first run is one interval after start.
    pub fn after_first_interval(mut self) -> Self {
        self.run_at_start = false;
        self
    }

    /// The lease's length, in ms.
    fn lease_ms(&self) -> i64 {
        let lease = self.every.saturating_mul(LEASE_INTERVALS);
        i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
    }
}

impl<S> fmt::Debug for Job<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("every", &self.every)
            .field("once_across_replicas", &self.once_across_replicas)
            .field("run_at_start", &self.run_at_start)
            .finish_non_exhaustive()
    }
}

/// The jobs of one replica, before they start.
#[derive(Debug)]
pub struct Runner<S> {
    leases: Leases,
    replica: String,
    jobs: Vec<Job<S>>,
    metrics: Option<Metrics>,
}

impl<S: Clone + Send + Sync + 'static> Runner<S> {
    /// `replica` names this process in the leases: unique per process.
    pub fn new(db: Database, replica: impl Into<String>) -> Self {
        Self {
            leases: Leases::new(db),
            replica: replica.into(),
            jobs: Vec::new(),
            metrics: None,
        }
    }

    /// Counts failed runs and stamps successful ones
    /// (`keyward_job_failures_total`, `keyward_job_last_success_timestamp_seconds`).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn with(mut self, job: Job<S>) -> Self {
        self.jobs.push(job);
        self
    }

    /// Spawns one task per job; they run until [`Running`] is stopped or
    /// dropped.
    pub fn start(self, state: S) -> Running {
        tracing::info!(replica = %self.replica, jobs = self.jobs.len(), "background jobs started");
        let tasks = self
            .jobs
            .into_iter()
            .map(|job| {
                tokio::spawn(run_job(
                    job,
                    state.clone(),
                    self.leases.clone(),
                    self.replica.clone(),
                    self.metrics.clone(),
                ))
            })
            .collect();
        Running {
            tasks,
            leases: self.leases,
            replica: self.replica,
        }
    }
}

/// The started jobs. Dropping it aborts them and leaves their leases to
/// lapse, as a crash would; [`Running::stop`] hands the leases back.
#[derive(Debug)]
pub struct Running {
    tasks: Vec<JoinHandle<()>>,
    leases: Leases,
    replica: String,
}

impl Running {
    /// Stops every job (a run in progress is cut off, its transaction rolled
    /// back) and releases this replica's leases, so another replica takes
    /// over at its next tick instead of after the lease.
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        if let Err(e) = self.leases.release_all(&self.replica).await {
            tracing::warn!(code = e.code(), error = %e, "job leases not released; they lapse");
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Aborts the run it holds when the job's task is aborted.
struct AbortOnDrop(JoinHandle<Result<(), JobError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_job<S: Clone + Send + 'static>(
    mut job: Job<S>,
    state: S,
    leases: Leases,
    replica: String,
    metrics: Option<Metrics>,
) {
    // Exported from the start, so an alert on its increase sees the first.
    if let Some(m) = &metrics {
        m.job_failures.with_label_values(&[job.name]);
    }
    let mut tick = tokio::time::interval(job.every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if !job.run_at_start {
        tick.tick().await; // the first tick is immediate
    }
    let mut holding = false;
    loop {
        tick.tick().await;
        if job.once_across_replicas {
            let now = keyward_kms::db::now_ms();
            match leases.claim(job.name, &replica, now, job.lease_ms()).await {
                Ok(held) => {
                    if held != holding {
                        tracing::info!(job = job.name, %replica, held, "job lease changed hands");
                        holding = held;
                    }
                    if !held {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(job = job.name, code = e.code(), error = %e, "job lease not claimed; next tick retries");
                    continue;
                }
            }
        }
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| (job.work)(state.clone())))
        {
            // Its own task, so a panic inside ends the run, not the loop.
            Ok(run) => {
                let mut run = AbortOnDrop(tokio::spawn(run));
                match (&mut run.0).await {
                    Ok(outcome) => outcome,
                    Err(e) => Err(JobError::failed("job_panicked", anyhow::anyhow!("{e}"))),
                }
            }
            Err(_) => Err(JobError::failed(
                "job_panicked",
                anyhow::anyhow!("the job panicked before it started"),
            )),
        };
        match outcome {
            Ok(()) => {
                if let Some(m) = &metrics {
                    m.job_last_success
                        .with_label_values(&[job.name])
                        .set(keyward_kms::db::now_ms() / 1000);
                }
            }
            Err(e) => {
                if let Some(m) = &metrics {
                    m.job_failures.with_label_values(&[job.name]).inc();
                }
                tracing::warn!(job = job.name, code = e.code(), error = %e, "job failed; next tick retries");
            }
        }
    }
}

/// Every background job of a serving replica: what each does, its interval
/// key, and whether it runs once across replicas, are in the docs
/// (docs/admin-api.md, "Background jobs").
pub async fn server_jobs(state: &AppState) -> Vec<Job<AppState>> {
    vec![
        crate::edge::pki::crl_refresh_job(state).await,
        crate::http::idempotency::purge_job(),
        crate::edge::startup::import_recovery_job(state),
        online_maintenance_job(state),
        sessions_gauge_job(state),
        refusal_windows_job(state),
        crate::outbox::drain_job(state),
        crate::outbox::gauges_job(state),
        crate::load::sweeper_job(state),
        crate::load::gauges_job(state),
        crate::ledger::seal_job(state),
        crate::channel::sweep_job(),
    ]
}

/// [`crate::online::Online::close_refusal_windows`], on every replica (the
/// windows are per replica).
fn refusal_windows_job(state: &AppState) -> Job<AppState> {
    Job::new(
        "online.refusal_windows",
        online_interval(state),
        |state: AppState| async move {
            state.online.close_refusal_windows(false).await;
            Ok(())
        },
    )
}

/// The online service's interval (`online.jobs_interval_ms`).
fn online_interval(state: &AppState) -> Duration {
    Duration::from_millis(state.online.config().jobs_interval_ms.max(100))
}

/// [`crate::online::Online::maintain`], once across replicas.
fn online_maintenance_job(state: &AppState) -> Job<AppState> {
    Job::new(
        "online.maintenance",
        online_interval(state),
        |state: AppState| async move { state.online.maintain().await.map_err(Into::into) },
    )
    .once_across_replicas()
}

/// [`crate::online::Online::refresh_sessions_gauge`], on every replica.
fn sessions_gauge_job(state: &AppState) -> Job<AppState> {
    Job::new(
        "online.sessions_gauge",
        online_interval(state),
        |state: AppState| async move {
            state
                .online
                .refresh_sessions_gauge()
                .await
                .map_err(Into::into)
        },
    )
}

/// The runner of [`server_jobs`], under this replica's name.
pub async fn server_runner(state: &AppState) -> Runner<AppState> {
    server_jobs(state).await.into_iter().fold(
        Runner::new(state.kms.db().clone(), state.online.replica().to_owned())
            .with_metrics(state.metrics.clone()),
        Runner::with,
    )
}
