//! What every case uses: the observation that a failed call changed
//! nothing, and the fresh setups the cases start from.

use vmem_core::{
    Arena, ArenaConfig, CPU0, CacheConfig, HeapMeta, ObjectCache, Policy, Reserve, SizeClasses,
};

// ---------------------------------------------------------------------
// What a case's call did.
// ---------------------------------------------------------------------

/// What a case's call did.
pub struct Outcome {
    /// `Ok(())` when the call succeeded, else its error kind.
    pub result: Result<(), vmem_core::ErrorKind>,
    /// Everything observed that differs after the call (empty: nothing changed).
    pub changed: Vec<String>,
    /// The first checker complaint after the call, if any.
    pub broken: Option<String>,
}

impl Outcome {
    /// Adds a finding of the case's own (something `probe` cannot see).
    pub fn and(mut self, extra: Result<(), String>) -> Self {
        if let Err(e) = extra {
            self.changed.push(e);
        }
        self
    }
}

// ---------------------------------------------------------------------
// Observing that a failed call changed nothing.
// ---------------------------------------------------------------------

/// Something whose state a case compares before and after its call.
pub trait Observed {
    /// Everything a failed call must leave alone, as text.
    fn state(&self) -> String;
    /// The checker's verdict.
    fn verify(&self) -> Result<(), String>;
}

impl Observed for Arena<'_> {
    /// Gauges only: the crate lets a failed call move its counters
    /// (refusals, and operations it undid, such as a reserve that could not
    /// be filled giving its slabs back), and take spare tags.
    fn state(&self) -> String {
        format!("arena {}: {}", self.name(), vmem_testkit::arena_state(self))
    }

    fn verify(&self) -> Result<(), String> {
        self.check()
            .map_err(|e| format!("arena {}: {e}", self.name()))
    }
}

impl Observed for ObjectCache<'_> {
    /// Gauges only, as for arenas.
    fn state(&self) -> String {
        format!("cache {}: {}", self.name(), vmem_testkit::cache_state(self))
    }

    fn verify(&self) -> Result<(), String> {
        self.check()
            .map_err(|e| format!("cache {}: {e}", self.name()))
    }
}

impl Observed for SizeClasses<'_> {
    fn state(&self) -> String {
        let mut out = self.arena().state();
        for cache in self.caches() {
            out.push('\n');
            out.push_str(&cache.state());
        }
        out
    }

    fn verify(&self) -> Result<(), String> {
        self.check().map_err(|e| format!("size classes: {e}"))?;
        self.arena().verify()
    }
}

impl Observed for Reserve<'_> {
    fn state(&self) -> String {
        format!(
            "reserve: available {} of {}",
            self.available(),
            self.capacity()
        )
    }

    fn verify(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Makes `call` with `observed` looked at before and after it.
pub fn probe<T>(
    observed: &[&dyn Observed],
    call: impl FnOnce() -> vmem_core::Result<T>,
) -> Outcome {
    let before: Vec<String> = observed.iter().map(|o| o.state()).collect();
    let result = call().map(|_| ()).map_err(|e| e.kind());
    let changed = observed
        .iter()
        .zip(&before)
        .filter_map(|(o, was)| {
            let now = o.state();
            (now != *was).then(|| format!("before: {was}\n  after:  {now}"))
        })
        .collect();
    let broken = observed.iter().find_map(|o| o.verify().err());
    Outcome {
        result,
        changed,
        broken,
    }
}

/// Makes `call`, which builds something, with nothing there before it.
pub fn alone<T>(call: impl FnOnce() -> vmem_core::Result<T>) -> Outcome {
    probe(&[], call)
}

/// Makes `call` on a fresh `standard` arena.
pub fn on_standard<T>(call: impl FnOnce(&Arena<'static>) -> vmem_core::Result<T>) -> Outcome {
    let a = standard();
    probe(&[&a], || call(&a))
}

/// Allocates `size` from a fresh `standard` arena (instant fit), then
/// makes `call` on the arena and the address it got.
pub fn after_alloc<T>(
    size: u64,
    call: impl FnOnce(&Arena<'static>, u64) -> vmem_core::Result<T>,
) -> Outcome {
    let a = standard();
    let x = a.alloc(size, Policy::InstantFit).unwrap();
    probe(&[&a], || call(&a, x))
}

// ---------------------------------------------------------------------
// Fresh setups.
// ---------------------------------------------------------------------

/// The quantum of most arenas here.
pub const Q: u64 = 0x1000;

/// An arena of quantum `Q` with the span `[base, base + size)`.
pub fn arena(base: u64, size: u64) -> Arena<'static> {
    Arena::create(ArenaConfig::new("a", Q).span(base, size).meta(&HeapMeta)).unwrap()
}

/// The arena most cases start from: one span [0x100000, 0x200000).
pub fn standard() -> Arena<'static> {
    arena(0x10_0000, 0x10_0000)
}

/// An arena of quantum `Q` importing from `parent`, at least `import` at a
/// time.
pub fn child<'a>(parent: &'a Arena<'a>, import: u64) -> Arena<'a> {
    Arena::create(
        ArenaConfig::new("child", Q)
            .source(parent, import)
            .meta(&HeapMeta),
    )
    .unwrap()
}

/// An arena over a fresh 2 MiB host buffer.
pub fn memory_arena() -> Arena<'static> {
    let bytes = 2 << 20;
    Arena::create(
        ArenaConfig::new("mem", Q)
            .span(vmem_testkit::buffer(bytes), bytes as u64)
            .meta(&HeapMeta),
    )
    .unwrap()
}

/// A no-touch cache with debug checks, `magazine` rounds per magazine.
pub fn cache<'a>(arena: &'a Arena<'a>, name: &str, size: u64, magazine: u32) -> ObjectCache<'a> {
    let config = CacheConfig::new(name, size, &HeapMeta, &CPU0)
        .magazine(magazine)
        .debug(true);
    ObjectCache::new(config, arena).unwrap()
}

/// A memory-mode cache with debug checks over `arena` (a `memory_arena`).
pub fn memory_cache<'a>(arena: &'a Arena<'a>, size: u64, magazine: u32) -> ObjectCache<'a> {
    // SAFETY: every memory-mode arena here hands out addresses of a leaked
    // host buffer that nothing else uses.
    let config = unsafe { CacheConfig::new("obj", size, &HeapMeta, &CPU0).memory() }
        .magazine(magazine)
        .debug(true);
    ObjectCache::new(config, arena).unwrap()
}

/// Writes `byte` at `addr` (inside a leaked host buffer).
pub fn poke(addr: u64, byte: u8) {
    // SAFETY: callers pass addresses inside a leaked `vmem_testkit::buffer`.
    unsafe { (addr as *mut u8).write(byte) }
}
