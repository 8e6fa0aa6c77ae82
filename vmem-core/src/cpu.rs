//! Which CPU is running: the one thing the magazine layer asks of the
//! platform.

use core::sync::atomic::{AtomicUsize, Ordering};

/// Per-CPU magazine slots in every cache; a CPU index at or above this
/// shares a slot with `index % MAX_CPUS` (correct, only less scalable).
pub const MAX_CPUS: usize = 32;

/// The current CPU, as the platform knows it: a thread index on a host,
/// the `cpu N` command in scenarios, per-CPU data in a kernel.
pub trait CpuId: Sync {
    /// The index of the CPU the caller runs on.
    fn current(&self) -> usize;
}

/// A CPU index set by hand, shared by everything that reads it: the
/// scenario interpreter's `cpu N`, or a single-CPU platform.
#[derive(Debug, Default)]
pub struct FixedCpu(AtomicUsize);

impl FixedCpu {
    /// CPU `index`.
    pub const fn new(index: usize) -> Self {
        FixedCpu(AtomicUsize::new(index))
    }

    /// Makes CPU `index` the current one.
    pub fn set(&self, index: usize) {
        self.0.store(index, Ordering::Relaxed);
    }
}

impl CpuId for FixedCpu {
    fn current(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// CPU 0, always.
pub static CPU0: FixedCpu = FixedCpu::new(0);
