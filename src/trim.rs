//! Memory going back after a burst: freed memory is given back to the system, so that the
//! process returns near its steady size once an attack or a burst is over.
//!
//! glibc keeps freed memory in its heap: it trims only the top on its own, and a burst leaves
//! live blocks above the freed ones (a call that outlives the flood, a client's queue), so most
//! of the burst would stay resident. `malloc_trim` releases every whole free page inside the
//! heap too; run every few seconds it costs a walk of the free lists. Blocks of 32 KiB and
//! more are given pages of their own (`init`), so the large ones never sit in the heap at all.
//! musl's mallocng (the static builds) unmaps freed groups and large blocks by itself: nothing
//! to do there.

use std::time::Duration;

use smol::Timer;

/// How often freed memory is given back.
pub const EVERY: Duration = Duration::from_secs(2);

/// Whether this build's allocator needs the help: glibc's does, musl's mallocng (the static
/// builds callwire ships) does not, and a timer there would only wake an idle gateway.
pub const NEEDED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Blocks at least this large get pages of their own from the system (glibc's
/// `M_MMAP_THRESHOLD`), handed back the moment they are freed: frames and payloads of tens of
/// kilobytes, which an attack sends by the thousand, never spread through the heap. glibc's
/// own threshold starts at 128 KiB and rises to the largest block freed, so after one large
/// message every later one would go to the heap. Events are a few kilobytes; a block this
/// large is rare enough that its `mmap` costs nothing that shows.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const OWN_PAGES_FROM: usize = 32 * 1024;

/// Sets the allocator up for memory that goes back: at start-up, before anything is allocated
/// in bulk.
pub fn init() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: a documented parameter and a value in its range; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM as libc::c_int);
    }
}

/// Gives freed memory back every `EVERY`, forever.
pub async fn run() {
    loop {
        Timer::after(EVERY).await;
        release();
    }
}

/// Gives the heap's free pages back to the system.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: no arguments to check; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
