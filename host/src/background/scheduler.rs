//! The cron scheduler (core.md §1.14): jobs with APScheduler cron semantics
//! ([`dp3_model::schedule::CronSchedule`]), coalesced, at most one instance of a job at a time,
//! and a misfire grace time (a run later than the grace is skipped, not queued).
//!
//! Each due job runs on its own short-lived thread, so a long job (a snapshot run, an updater
//! batch) never starves the others, unlike DP3's shared 10-thread pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use dp3_model::cron::{CronExpression, CronField};
use dp3_model::schedule::{CronError, CronFields, CronSchedule};
use parking_lot::Mutex;
use tracing::{debug, error, warn};

use crate::clock::Clock;

/// A job body.
pub type JobFn = Arc<dyn Fn() + Send + Sync>;

struct Job {
    id: u64,
    name: String,
    schedule: CronSchedule,
    func: JobFn,
    running: Arc<AtomicBool>,
    next: Option<DateTime<Utc>>,
    misfire_grace: TimeDelta,
}

/// Runs jobs on their schedules.
pub struct Scheduler {
    clock: Arc<dyn Clock>,
    jobs: Mutex<Vec<Job>>,
    next_id: AtomicU64,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// The cron fields of a configuration-file cron expression.
pub fn fields_of(expr: &CronExpression) -> CronFields {
    let f = |v: &Option<CronField>| {
        v.as_ref().map(|c| match c {
            CronField::Value(n) => n.to_string(),
            CronField::Expr(s) => s.clone(),
        })
    };
    CronFields {
        year: expr.year.clone(),
        month: expr.month.map(|m| m.to_string()),
        day: f(&expr.day),
        week: expr.week.map(|w| w.to_string()),
        day_of_week: f(&expr.day_of_week),
        hour: f(&expr.hour),
        minute: f(&expr.minute),
        second: f(&expr.second),
        timezone: expr.timezone.clone(),
    }
}

/// Parse a configuration-file cron expression.
pub fn schedule_of(expr: &CronExpression) -> Result<CronSchedule, CronError> {
    CronSchedule::parse(&fields_of(expr))
}

impl Scheduler {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            clock,
            jobs: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            stop: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
            workers: Mutex::new(Vec::new()),
        })
    }

    /// Register a job; returns its id (consecutive from 1, as DP3's scheduler).
    pub fn add(&self, name: impl Into<String>, schedule: CronSchedule, func: JobFn) -> u64 {
        self.add_with_grace(name, schedule, func, TimeDelta::seconds(1))
    }

    /// Register a job with an explicit misfire grace time.
    pub fn add_with_grace(
        &self,
        name: impl Into<String>,
        schedule: CronSchedule,
        func: JobFn,
        misfire_grace: TimeDelta,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let next = schedule.next_after(self.clock.now());
        self.jobs.lock().push(Job {
            id,
            name: name.into(),
            schedule,
            func,
            running: Arc::new(AtomicBool::new(false)),
            next,
            misfire_grace,
        });
        id
    }

    /// Names and next fire times of the jobs.
    pub fn jobs(&self) -> Vec<(u64, String, Option<DateTime<Utc>>)> {
        self.jobs
            .lock()
            .iter()
            .map(|j| (j.id, j.name.clone(), j.next))
            .collect()
    }

    /// Start the timer thread.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let me = Arc::clone(self);
        let h = std::thread::Builder::new()
            .name("dp3-scheduler".into())
            .spawn(move || {
                while !me.stop.load(Ordering::SeqCst) {
                    me.run_due(me.clock.now());
                    std::thread::sleep(Duration::from_millis(100));
                }
            })?;
        *self.thread.lock() = Some(h);
        Ok(())
    }

    /// Start every job that is due at `now`; returns the ids started. Used by the timer
    /// thread, and directly by tests with a manual clock.
    pub fn run_due(&self, now: DateTime<Utc>) -> Vec<u64> {
        let mut started = Vec::new();
        let mut jobs = self.jobs.lock();
        for job in jobs.iter_mut() {
            let Some(due) = job.next else { continue };
            if due > now {
                continue;
            }
            // Coalesce: however many fire times passed, run at most once, then schedule the
            // next one after now.
            job.next = job.schedule.next_after(now);
            if now - due > job.misfire_grace {
                warn!(job = %job.name, late_ms = (now - due).num_milliseconds(), "job run missed (misfire grace exceeded)");
                continue;
            }
            if job.running.swap(true, Ordering::SeqCst) {
                debug!(job = %job.name, "previous run still in progress; skipped");
                continue;
            }
            let (func, running, name) = (job.func.clone(), job.running.clone(), job.name.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("dp3-job-{}", job.id))
                .spawn(move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| func()));
                    if r.is_err() {
                        error!(job = %name, "job panicked");
                    }
                    running.store(false, Ordering::SeqCst);
                });
            match spawned {
                Ok(h) => {
                    started.push(job.id);
                    let mut workers = self.workers.lock();
                    workers.retain(|w| !w.is_finished());
                    workers.push(h);
                }
                Err(e) => {
                    job.running.store(false, Ordering::SeqCst);
                    error!(job = %job.name, error = %e, "cannot start job thread");
                }
            }
        }
        started
    }

    /// Stop the timer and wait for running jobs (bounded by `timeout`).
    pub fn stop(&self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
        let deadline = std::time::Instant::now() + timeout;
        let workers: Vec<_> = std::mem::take(&mut *self.workers.lock());
        for w in workers {
            while !w.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            } else {
                warn!("a job is still running at shutdown");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use chrono::TimeZone;

    fn every_minute() -> CronSchedule {
        CronSchedule::parse(&CronFields {
            second: Some("0".into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn runs_when_due_coalesces_and_skips_misfires() {
        let t0 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 30).unwrap();
        let clock = ManualClock::new(t0);
        let s = Scheduler::new(Arc::new(clock.clone()));
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let id = s.add(
            "tick",
            every_minute(),
            Arc::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert_eq!(id, 1);
        assert!(s.run_due(t0).is_empty());
        // on time
        let t1 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 1, 0).unwrap();
        assert_eq!(s.run_due(t1), vec![1]);
        s.stop(Duration::from_secs(5));
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // 10 minutes late: missed (grace 1 s), and only one next run is scheduled
        let late = Utc.with_ymd_and_hms(2025, 1, 1, 0, 11, 0).unwrap() + TimeDelta::seconds(5);
        assert!(s.run_due(late).is_empty());
        assert_eq!(
            s.jobs()[0].2,
            Some(Utc.with_ymd_and_hms(2025, 1, 1, 0, 12, 0).unwrap())
        );
    }

    #[test]
    fn at_most_one_instance_runs() {
        let t0 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 30).unwrap();
        let s = Scheduler::new(Arc::new(ManualClock::new(t0)));
        let gate = Arc::new(AtomicBool::new(false));
        let g = gate.clone();
        s.add(
            "slow",
            every_minute(),
            Arc::new(move || {
                while !g.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }),
        );
        let t1 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 1, 0).unwrap();
        assert_eq!(s.run_due(t1).len(), 1);
        let t2 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 2, 0).unwrap();
        assert!(s.run_due(t2).is_empty(), "still running: skipped");
        gate.store(true, Ordering::SeqCst);
        s.stop(Duration::from_secs(5));
    }
}
