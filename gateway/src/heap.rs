//! Handing freed heap back to the kernel.
//!
//! glibc keeps what the program frees for later allocations, so a daemon's
//! resident memory stays at its high-water mark: after a bulk load (the
//! records it read), and in steady state after bursts (a crowd's decisions,
//! sled's transactions). `malloc_trim` returns the free pages of every
//! arena (BENCHMARKS.md §2a). Not I/O; a no-op off glibc.

/// Return freed heap pages to the kernel; cheap (it walks the free lists,
/// well under a millisecond for the daemon's heap).
pub fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it
    // only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
