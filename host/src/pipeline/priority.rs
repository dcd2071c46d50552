//! Threads that feed the store writer run at a lower scheduling priority than the writer.
//!
//! On a machine with few cores, the single store writer caps ingestion, and it waited for a
//! CPU 15–30% of the time while HTTP and lane threads ran (measured from the writer's
//! scheduler statistics under `dp3 load` on 2 cores). Accepting or preparing more tasks than
//! the writer can apply only fills the queues; lowering the feeders' priority (a nicer value,
//! which needs no privilege) lets the writer run whenever it can, and the feeders use the
//! rest.

/// Niceness of HTTP threads (0 is the default; 19 the lowest priority). They answer POSTs,
/// so their latency is the API's: at +10 the POST p99 rose from 43 to 50 ms in an A/B run.
pub const HTTP_NICENESS: i32 = 5;
/// Niceness of lanes. They run behind the accept log, so deferring them further costs no
/// request latency; staging is bounded, so they cannot fall behind for long.
pub const LANE_NICENESS: i32 = 10;

/// Lower the calling thread's scheduling priority to `niceness` (Linux; elsewhere nothing
/// happens).
pub fn defer_to_writer(niceness: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority on the calling thread's id only
    // changes its niceness (raising it needs no privilege). A failure leaves it unchanged.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, niceness);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = niceness;
}
