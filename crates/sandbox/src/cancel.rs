//! Stopping every running sandbox at once, for an interrupted build
//! (Ctrl-C): [`cancel_all`] kills each running init (whose death kills the
//! sandboxed process through its parent-death signal) and makes later runs
//! fail at once with [`SandboxError::Cancelled`](crate::SandboxError).
//! The executor's callers then unwind normally, so their mounts and
//! scratch directories are released by their guards.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static CANCELLED: AtomicBool = AtomicBool::new(false);
/// Pids of inits that are running and not yet reaped. A pid is removed
/// before its process is waited for, so a kill never reaches a reused pid.
static RUNNING: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Kills every running sandbox and refuses new ones from now on (for the
/// rest of the process: an interrupted build does not resume). Returns how
/// many were running.
pub fn cancel_all() -> usize {
    CANCELLED.store(true, Ordering::SeqCst);
    let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    for pid in running.iter() {
        // SAFETY: plain kill(2) of a child we spawned and have not reaped.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    running.len()
}

/// Whether [`cancel_all`] was called.
pub fn is_cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// A running init, known to [`cancel_all`] until dropped.
pub(crate) struct Registration(i32);

impl Registration {
    /// Registers `pid`; if the build was cancelled in the meantime, kills
    /// it at once.
    pub(crate) fn new(pid: u32) -> Registration {
        let pid = i32::try_from(pid).unwrap_or(i32::MAX);
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(pid);
        if is_cancelled() {
            // SAFETY: as in cancel_all.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Registration(pid)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}
