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

/// Slots taken without waiting ([`CpuSlots::take_free`]), given back when dropped.
pub struct FreeSlots<'a> {
    slots: &'a CpuSlots,
    pub count: usize,
}

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

    /// Up to `most` of the slots free now, without waiting for any (work that can split
    /// borrows the cores nobody is using).
    pub fn take_free(&self, most: usize) -> FreeSlots<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let count = most.min(*free);
        *free -= count;
        FreeSlots { slots: self, count }
    }
}

impl Drop for FreeSlots<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            *self.slots.free.lock().unwrap_or_else(|e| e.into_inner()) += self.count;
            self.slots.freed.notify_all();
        }
    }
}

impl Drop for CpuSlot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Free slots are taken without waiting, never more than are free, and come back when the
    /// taker is done.
    #[test]
    fn free_slots_are_lent_and_given_back() {
        let slots = CpuSlots::new(4);
        let held = slots.acquire();
        let lent = slots.take_free(8);
        assert_eq!(lent.count, 3, "all the free ones, no more");
        assert_eq!(slots.take_free(2).count, 0, "none left to lend");
        drop(lent);
        assert_eq!(slots.take_free(2).count, 2, "given back when dropped");
        drop(held);
        assert_eq!(slots.take_free(9).count, 4);
        // A thread waiting for a slot wakes when lent slots come back.
        let slots = std::sync::Arc::new(CpuSlots::new(1));
        let lent = slots.take_free(1);
        let waiter = {
            let slots = slots.clone();
            std::thread::spawn(move || drop(slots.acquire()))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "waits while the slot is lent");
        drop(lent);
        waiter.join().unwrap();
    }
}
