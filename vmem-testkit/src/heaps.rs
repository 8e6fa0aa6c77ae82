//! The allocators the heap benchmarks compare, driven one way: vmem-core's
//! caches and size classes, talc, linked_list_allocator,
//! buddy_system_allocator, rlsf and the system allocator, each over its own
//! 64 MiB host buffer. Used by `vmem-core/benches/cache.rs` and by the
//! `vmem-bench` binary (`bench/`), so both measure the same code.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;

use talc::DefaultBinning;
use talc::base::Talc;
use talc::source::Manual;
use vmem_core::{Arena, CacheConfig, CpuId, HeapMeta, ObjectCache, SizeClasses, ThreadCpus};

/// Object size, in bytes.
const OBJ: usize = 64;
/// Object alignment, in bytes.
const ALIGN: usize = 8;
/// Bytes of host memory each allocator manages.
const HEAP: usize = 64 << 20;
/// The vmem arenas' quantum.
const QUANTUM: u64 = 4096;

fn layout() -> Layout {
    Layout::from_size_align(OBJ, ALIGN).expect("64-byte layout")
}

/// A fresh leaked, page-aligned host buffer of [`HEAP`] bytes.
fn host_buffer() -> NonNull<u8> {
    object(crate::buffer(HEAP) as usize)
}

/// A memory-mode arena whose one span is a fresh [`host_buffer`].
fn memory_arena(name: &str) -> &'static Arena<'static> {
    crate::leaked_arena(name, QUANTUM, crate::buffer(HEAP), HEAP as u64)
}

/// A memory-mode cache of 64-byte objects over a fresh arena; `magazine`
/// overrides the default magazine size (0 turns magazines off).
pub fn vmem_cache(
    name: &str,
    magazine: Option<u32>,
    cpu: &'static dyn CpuId,
) -> ObjectCache<'static> {
    let arena = memory_arena(name);
    // SAFETY: the arena hands out addresses inside its leaked buffer, which
    // nothing else uses.
    let config = unsafe { CacheConfig::new(name, OBJ as u64, &HeapMeta, cpu).memory() };
    let config = match magazine {
        Some(rounds) => config.magazine(rounds),
        None => config,
    };
    ObjectCache::new(config, arena).unwrap_or_else(|e| panic!("cache {name}: {e:?}"))
}

/// A memory-mode cache of 64-byte objects on the fast path: each thread
/// that uses it holds a CPU slot of the process's [`ThreadCpus`] and
/// allocates with [`ObjectCache::alloc_local`].
// `repr(C)`: the platform, read on every call, first, not on the line of
// the cache's locks at its end.
#[repr(C)]
pub struct HeldCache {
    cpus: &'static ThreadCpus,
    cache: ObjectCache<'static>,
}

impl HeldCache {
    /// The cache, for its counters and checker.
    pub fn cache(&self) -> &ObjectCache<'static> {
        &self.cache
    }
}

/// A [`HeldCache`] with the default magazines over a fresh arena.
pub fn vmem_held_cache(name: &str) -> HeldCache {
    let cpus = ThreadCpus::global();
    let arena = memory_arena(name);
    // SAFETY: as in `vmem_cache`.
    let config =
        unsafe { CacheConfig::new(name, OBJ as u64, &HeapMeta, cpus).memory() }.local(cpus);
    let cache = ObjectCache::new(config, arena).unwrap_or_else(|e| panic!("cache {name}: {e:?}"));
    HeldCache { cache, cpus }
}

impl Shared for HeldCache {
    #[inline]
    fn alloc(&self) -> usize {
        match self.cache.alloc_local(self.cpus) {
            Ok(addr) => addr as usize,
            Err(e) => panic!("cache alloc failed: {e:?}"),
        }
    }

    #[inline]
    unsafe fn free(&self, p: usize) {
        if let Err(e) = self.cache.free_local(self.cpus, p as u64) {
            panic!("cache free({p:#x}) failed: {e:?}");
        }
    }
}

/// Size classes over a fresh memory-mode arena.
pub fn vmem_kmalloc(cpu: &'static dyn CpuId) -> Kmalloc {
    let arena = memory_arena("kmalloc");
    // SAFETY: as in `vmem_cache`.
    let classes = unsafe { SizeClasses::new(arena, &HeapMeta, cpu, false) }.expect("size classes");
    Kmalloc(classes)
}

/// An allocator of 64-byte objects that threads can share.
pub trait Shared: Sync {
    /// A new object's address.
    fn alloc(&self) -> usize;
    /// Frees an object.
    ///
    /// # Safety
    /// `p` came from `self.alloc()` and was not freed since.
    unsafe fn free(&self, p: usize);

    /// One hot pair: allocates an object and frees it at once (the address
    /// through `black_box`, so the pair is not optimized away).
    #[inline]
    fn pair(&self) {
        let p = self.alloc();
        // SAFETY: allocated just above, freed once.
        unsafe { self.free(black_box(p)) }
    }
}

/// An allocator of 64-byte objects with a `&mut self` API.
pub trait Local: Send {
    /// A new object's address.
    fn alloc(&mut self) -> usize;
    /// Frees an object.
    ///
    /// # Safety
    /// `p` came from `self.alloc()` and was not freed since.
    unsafe fn free(&mut self, p: usize);

    /// One hot pair, as [`Shared::pair`].
    #[inline]
    fn pair(&mut self) {
        let p = self.alloc();
        // SAFETY: allocated just above, freed once.
        unsafe { self.free(black_box(p)) }
    }
}

impl Shared for ObjectCache<'_> {
    #[inline]
    fn alloc(&self) -> usize {
        match ObjectCache::alloc(self) {
            Ok(addr) => addr as usize,
            Err(e) => panic!("cache alloc failed: {e:?}"),
        }
    }

    #[inline]
    unsafe fn free(&self, p: usize) {
        if let Err(e) = ObjectCache::free(self, p as u64) {
            panic!("cache free({p:#x}) failed: {e:?}");
        }
    }
}

/// vmem's size classes.
pub struct Kmalloc(pub SizeClasses<'static>);

impl Shared for Kmalloc {
    #[inline]
    fn alloc(&self) -> usize {
        match self.0.alloc(OBJ as u64, ALIGN as u64) {
            Ok(addr) => addr as usize,
            Err(e) => panic!("kmalloc failed: {e:?}"),
        }
    }

    #[inline]
    unsafe fn free(&self, p: usize) {
        if let Err(e) = self.0.free(p as u64, OBJ as u64, ALIGN as u64) {
            panic!("kfree({p:#x}) failed: {e:?}");
        }
    }
}

/// The system allocator.
pub struct SystemAlloc;

impl Shared for SystemAlloc {
    #[inline]
    fn alloc(&self) -> usize {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { System.alloc(layout()) };
        assert!(!p.is_null(), "system allocator out of memory");
        p as usize
    }

    #[inline]
    unsafe fn free(&self, p: usize) {
        // SAFETY: the caller passes back what `alloc` returned, same layout.
        unsafe { System.dealloc(p as *mut u8, layout()) }
    }
}

/// An object's address from a peer's answer, which is `None` when the
/// peer's 64 MiB are used up (the benchmarks never get there).
fn address(p: Option<NonNull<u8>>, peer: &str) -> usize {
    match p {
        Some(p) => p.as_ptr() as usize,
        None => panic!("{peer} out of memory"),
    }
}

/// The pointer a peer takes back for the address `p` it handed out.
fn object(p: usize) -> NonNull<u8> {
    NonNull::new(p as *mut u8).expect("non-null object")
}

/// talc 5 over its own buffer, acquiring nothing more (`Manual`).
pub struct TalcHeap(Talc<Manual, DefaultBinning>);

/// linked_list_allocator over its own buffer.
pub struct LinkedListHeap(linked_list_allocator::Heap);

/// buddy_system_allocator over its own buffer (orders up to 2^31 bytes).
pub struct BuddyHeap(buddy_system_allocator::Heap<32>);

/// rlsf's TLSF over its own buffer: 24 first-level classes of 16 second-level
/// ones, so blocks up to 512 MiB.
pub struct TlsfHeap(rlsf::Tlsf<'static, u32, u32, 24, 16>);

impl Default for TalcHeap {
    /// talc over a fresh buffer.
    fn default() -> Self {
        let mut talc = Talc::new(Manual);
        // SAFETY: the leaked buffer is talc's alone from now on.
        unsafe { talc.claim(host_buffer().as_ptr(), HEAP) }.expect("talc claim");
        TalcHeap(talc)
    }
}

impl Default for LinkedListHeap {
    /// linked_list_allocator over a fresh buffer.
    fn default() -> Self {
        let mut heap = linked_list_allocator::Heap::empty();
        // SAFETY: the leaked buffer is the heap's alone from now on.
        unsafe { heap.init(host_buffer().as_ptr(), HEAP) };
        LinkedListHeap(heap)
    }
}

impl Default for BuddyHeap {
    /// buddy_system_allocator over a fresh buffer.
    fn default() -> Self {
        let mut heap = buddy_system_allocator::Heap::<32>::new();
        // SAFETY: the leaked buffer is the heap's alone from now on.
        unsafe { heap.init(host_buffer().as_ptr() as usize, HEAP) };
        BuddyHeap(heap)
    }
}

impl Default for TlsfHeap {
    /// rlsf over a fresh buffer.
    fn default() -> Self {
        let mut tlsf = rlsf::Tlsf::new();
        let block = NonNull::slice_from_raw_parts(host_buffer(), HEAP);
        // SAFETY: the leaked buffer is the TLSF's alone and outlives it.
        unsafe { tlsf.insert_free_block_ptr(block) }.expect("rlsf pool");
        TlsfHeap(tlsf)
    }
}

impl Local for TalcHeap {
    #[inline]
    fn alloc(&mut self) -> usize {
        // SAFETY: the layout has a non-zero size.
        address(unsafe { self.0.allocate(layout()) }, "talc")
    }

    #[inline]
    unsafe fn free(&mut self, p: usize) {
        // SAFETY: the caller passes back what `alloc` returned, same layout.
        unsafe { self.0.deallocate(p as *mut u8, layout()) }
    }
}

/// [`Local`] for a peer heap kept in a one-field tuple struct, from the
/// peer's own calls: `alloc` gives the object's address (and panics with
/// the peer's name when its 64 MiB are used up), `free` hands the object
/// back with the layout it was allocated with.
macro_rules! local_heap {
    ($heap:ty, $peer:literal, alloc: |$a:ident| $alloc:expr, free: |$f:ident, $p:ident| $free:expr) => {
        impl Local for $heap {
            #[inline]
            fn alloc(&mut self) -> usize {
                let $a = &mut self.0;
                address($alloc, $peer)
            }

            #[inline]
            unsafe fn free(&mut self, p: usize) {
                let ($f, $p) = (&mut self.0, object(p));
                // SAFETY: the caller passes back what `alloc` returned, and
                // the peer's call is given the layout `alloc` used.
                unsafe { $free }
            }
        }
    };
}

local_heap!(LinkedListHeap, "linked_list_allocator",
    alloc: |heap| heap.allocate_first_fit(layout()).ok(),
    free: |heap, p| heap.deallocate(p, layout()));
local_heap!(BuddyHeap, "buddy_system_allocator",
    alloc: |heap| heap.alloc(layout()).ok(),
    free: |heap, p| heap.dealloc(p, layout()));
local_heap!(TlsfHeap, "rlsf",
    alloc: |tlsf| tlsf.allocate(layout()),
    free: |tlsf, p| tlsf.deallocate(p, ALIGN));
