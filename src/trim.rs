//! Memory going back after a burst: freed memory is given back to the system, so that the
//! process returns near its steady size once an attack or a burst is over.
//!
//! glibc keeps freed memory in its heap: it trims only the top on its own, and a burst leaves
//! live blocks above the freed ones (a call that outlives the flood, a client's queue), so most
//! of the burst would stay resident. `malloc_trim` releases every whole free page inside the
//! heap too; run every few seconds it costs a walk of the free lists. musl's mallocng (the
//! static builds) unmaps freed groups and large blocks by itself: nothing to do there.

use std::time::Duration;

use smol::Timer;

/// How often freed memory is given back.
pub const EVERY: Duration = Duration::from_secs(2);

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
