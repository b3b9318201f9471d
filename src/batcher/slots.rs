//! A counting semaphore for CPU-heavy work, shared by the generator workers and the
//! pipeline's routing, projection and compositing: as many tasks run at once as there are
//! slots, so that on a CPU-only machine they take turns on the cores instead of thrashing.

use std::sync::{Condvar, Mutex};

pub struct CpuSlots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// A taken slot; it is given back when dropped.
pub struct CpuSlot<'a>(&'a CpuSlots);

impl CpuSlots {
    pub fn new(slots: usize) -> Self {
        Self { free: Mutex::new(slots.max(1)), freed: Condvar::new() }
    }

    /// Blocks until a slot is free.
    pub fn acquire(&self) -> CpuSlot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        CpuSlot(self)
    }
}

impl Drop for CpuSlot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}
