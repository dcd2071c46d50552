//! The conformance suite against the SQLite store.

use dp3_store::Store;
use dp3_store::sqlite::SqliteStore;

#[test]
fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = std::sync::atomic::AtomicUsize::new(0);
    dp3_store::conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("store-{n}.db"));
        Box::new(SqliteStore::open(&path).expect("open")) as Box<dyn Store>
    });
}
