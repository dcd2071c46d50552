//! Handing tasks to the pipeline from background jobs.
//!
//! Jobs produce tasks in bulk (delete tasks, updater outputs). DP3's publisher blocks when the
//! queue is full; [`TaskSubmitter::submit`] refuses instead, so jobs retry here until the
//! tasks are accepted and durable (or the process stops). Waiting for durability lets a job
//! record its progress only for work that cannot be lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dp3_model::DataPointTask;
use tracing::debug;

use super::error::{BackgroundError, Result};
use crate::queue::{SubmitError, TaskSubmitter};

/// At most this many tasks per `submit` call.
pub const SUBMIT_CHUNK: usize = 1000;

/// How long a job keeps retrying when tasks cannot be persisted at all (e.g. a full disk)
/// before giving up until its next run.
const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(30);

/// Submit `tasks` in chunks, retrying while the queues are full, and wait until every chunk
/// is durable.
pub fn submit_all(
    submitter: &dyn TaskSubmitter,
    tasks: Vec<DataPointTask>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut tasks = tasks;
    while !tasks.is_empty() {
        let rest = tasks.split_off(tasks.len().min(SUBMIT_CHUNK));
        submit_chunk(submitter, &tasks, stop)?;
        tasks = rest;
    }
    Ok(())
}

fn submit_chunk(
    submitter: &dyn TaskSubmitter,
    tasks: &[DataPointTask],
    stop: &AtomicBool,
) -> Result<()> {
    let started = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(BackgroundError::Stopped);
        }
        let outcome = match submitter.submit(tasks.to_vec()) {
            Ok(accepted) => match accepted.blocking_recv() {
                Ok(r) => r,
                Err(_) => Err(SubmitError::Unavailable(
                    "the pipeline dropped the submission".into(),
                )),
            },
            Err(e) => Err(e),
        };
        let wait = match outcome {
            Ok(()) => return Ok(()),
            Err(SubmitError::Overloaded { retry_after_secs }) => {
                debug!(tasks = tasks.len(), "queues full; background job waits");
                Duration::from_secs(u64::from(retry_after_secs.clamp(1, 5)))
            }
            Err(SubmitError::Unavailable(_)) if started.elapsed() < UNAVAILABLE_PATIENCE => {
                Duration::from_secs(1)
            }
            Err(e) => return Err(e.into()),
        };
        sleep_unless_stopped(wait, stop);
    }
}

/// Sleep in short steps so a shutdown is noticed quickly.
pub fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let deadline = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Accepted;
    use parking_lot::Mutex;
    use tokio::sync::oneshot;

    /// Refuses the first `busy` submissions as overloaded, then accepts.
    struct Busy {
        busy: Mutex<usize>,
        got: Mutex<Vec<usize>>,
    }

    impl TaskSubmitter for Busy {
        fn submit(&self, tasks: Vec<DataPointTask>) -> std::result::Result<Accepted, SubmitError> {
            let mut b = self.busy.lock();
            if *b > 0 {
                *b -= 1;
                return Err(SubmitError::Overloaded {
                    retry_after_secs: 0,
                });
            }
            self.got.lock().push(tasks.len());
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(()));
            Ok(rx)
        }
    }

    #[test]
    fn retries_while_overloaded_and_chunks() {
        let s = Busy {
            busy: Mutex::new(1),
            got: Mutex::new(Vec::new()),
        };
        let stop = AtomicBool::new(false);
        let tasks = vec![DataPointTask::default(); SUBMIT_CHUNK + 5];
        submit_all(&s, tasks, &stop).unwrap();
        assert_eq!(*s.got.lock(), vec![SUBMIT_CHUNK, 5]);
    }

    #[test]
    fn stops_when_asked() {
        let s = Busy {
            busy: Mutex::new(usize::MAX),
            got: Mutex::new(Vec::new()),
        };
        let stop = AtomicBool::new(true);
        let r = submit_all(&s, vec![DataPointTask::default()], &stop);
        assert!(matches!(r, Err(BackgroundError::Stopped)));
    }
}
