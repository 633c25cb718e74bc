//! Which worker thread a request runs on: per-worker state (upstream connection pools,
//! Redis connections) is indexed by it, so that a worker's requests never contend with
//! another's. A leaf: it imports nothing of the crate.

/// Worker threads a process may run (each its own current-thread runtime).
pub const MAX_WORKERS: usize = 64;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as worker `index` (thread-per-core `serve`).
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index % MAX_WORKERS));
}

/// The worker the calling thread serves as (0 outside thread-per-core `serve`).
pub fn worker_id() -> usize {
    WORKER.with(|w| w.get())
}
