//! The store's private tokio runtime.
//!
//! [`dp3_store::Store`] is synchronous (hooks and the executor run on worker threads), while
//! the official driver is async-only. Every store call therefore drives its future to
//! completion on a small multi-thread runtime owned by the store: the driver's connection
//! pool, monitors and cursors live there, independent of whatever runtime (if any) the caller
//! uses. `block_on` must not be called from a thread that is already inside a tokio runtime
//! (tokio panics); such callers (e.g. an HTTP handler that forgot `spawn_blocking`) are served
//! on a short-lived scoped thread instead of panicking.

use std::future::Future;

use dp3_store::{Result, StoreError};

pub struct BlockingRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl BlockingRuntime {
    pub fn new() -> Result<BlockingRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dp3-mongo")
            .enable_all()
            .build()
            .map_err(|e| StoreError::backend("mongodb", format!("cannot start runtime: {e}")))?;
        Ok(BlockingRuntime { rt: Some(rt) })
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt
            .as_ref()
            .ok_or_else(|| StoreError::backend("mongodb", "store runtime already shut down"))
    }

    /// Run `fut` to completion and return its output.
    pub fn block_on<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self.runtime()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(rt.block_on(fut));
        }
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(fut))
                .join()
                .map_err(|_| StoreError::backend("mongodb", "store call panicked"))
        })
    }

    /// Enter the runtime's context (the driver spawns clean-up tasks when a client drops).
    pub fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.rt.as_ref().map(tokio::runtime::Runtime::enter)
    }
}

impl Drop for BlockingRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks and panics inside another runtime; shutting it down in
        // the background is safe from any thread.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_on_plain_threads_and_inside_other_runtimes() {
        let rt = BlockingRuntime::new().expect("runtime");
        assert_eq!(rt.block_on(async { 1 + 1 }).expect("run"), 2);
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("outer runtime");
        let v = outer.block_on(async { rt.block_on(async { 40 + 2 }).expect("nested") });
        assert_eq!(v, 42);
        drop(outer);
        drop(rt);
    }
}
