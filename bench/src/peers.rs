//! Every range-allocator peer behind one trait, in units of quanta.

use std::ptr::NonNull;

use std::sync::atomic::{AtomicIsize, Ordering};

use vmem_core::{Arena, ArenaConfig, Constraints, HeapMeta, META_PAGE, MetaSource, Policy};

/// The quantum, in bytes (page size; free-list requires it).
pub const QUANTUM: u64 = 4096;
/// Where byte-addressed spans start.
pub const BASE: u64 = 0x1000_0000_0000;

/// A range allocator driven in quanta.
pub trait RangePeer {
    /// What a live allocation is remembered by.
    type H: Copy;
    /// The peer's name in the tables.
    const NAME: &'static str;
    /// A peer managing `span` quanta, expected to hold about `live` ranges.
    fn new(span: u64, live: usize) -> Self;
    /// Allocates `q` quanta aligned to `align` quanta (1: none).
    fn alloc(&mut self, q: u64, align: u64) -> Option<Self::H>;
    /// Frees a live allocation.
    fn free(&mut self, h: Self::H);
    /// Quanta the allocation covers (its length as the peer reports it).
    fn len(h: Self::H) -> u64;
    /// Bytes of metadata the peer's kind holds now, where the binary's
    /// counting allocator does not see them (`None`: it does).
    fn meta_held() -> Option<isize> {
        None
    }
    /// Start of the allocation, in quanta from the span's start.
    fn start(h: Self::H) -> u64;
}

/// Bytes of meta pages that arenas hold from [`PoolMeta`] now.
static META_HELD: AtomicIsize = AtomicIsize::new(0);

/// vmem-core's own host meta source, [`HeapMeta`] (a process-wide pool cut
/// from 256 KiB chunks, and from 2 MiB chunks on large pages once it has
/// fetched 16 MiB), counted: [`META_HELD`] follows the pages arenas hold,
/// which the binary's counting allocator cannot see (the pool keeps the
/// pages arenas give back for later arenas).
pub struct PoolMeta;

impl MetaSource for PoolMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        let run = HeapMeta.alloc_pages(pages)?;
        META_HELD.fetch_add((pages * META_PAGE) as isize, Ordering::Relaxed);
        Some(run)
    }
    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        META_HELD.fetch_sub((pages * META_PAGE) as isize, Ordering::Relaxed);
        // SAFETY: the caller's promise, passed on: `base` came from
        // `alloc_pages(pages)`, which took it from `HeapMeta`.
        unsafe { HeapMeta.free_pages(base, pages) }
    }
}

/// vmem-core, instant fit (or next fit for IDs), tags from [`PoolMeta`].
pub struct VmemCore(pub Arena<'static>, pub Policy);

impl RangePeer for VmemCore {
    /// (address, bytes, made by `xalloc`).
    type H = (u64, u64, bool);
    const NAME: &'static str = "vmem-core";
    fn new(span: u64, _live: usize) -> Self {
        let arena = Arena::create(
            ArenaConfig::new("bench", QUANTUM)
                .span(BASE, span * QUANTUM)
                .meta(&PoolMeta),
        )
        .expect("vmem-core arena");
        VmemCore(arena, Policy::InstantFit)
    }
    fn meta_held() -> Option<isize> {
        Some(META_HELD.load(Ordering::Relaxed))
    }
    fn alloc(&mut self, q: u64, align: u64) -> Option<Self::H> {
        let size = q * QUANTUM;
        if align <= 1 {
            self.0.alloc(size, self.1).ok().map(|a| (a, size, false))
        } else {
            self.0
                .xalloc(size, &Constraints::aligned(align * QUANTUM), self.1)
                .ok()
                .map(|a| (a, size, true))
        }
    }
    fn free(&mut self, h: Self::H) {
        if h.2 {
            self.0.xfree(h.0, h.1).expect("vmem-core xfree");
        } else {
            self.0.free(h.0, h.1).expect("vmem-core free");
        }
    }
    fn len(h: Self::H) -> u64 {
        h.1 / QUANTUM
    }
    fn start(h: Self::H) -> u64 {
        (h.0 - BASE) / QUANTUM
    }
}

/// vmem-core with best fit: the same arena, searching for the smallest
/// free segment that holds the request.
pub struct VmemCoreBest(VmemCore);

impl RangePeer for VmemCoreBest {
    type H = (u64, u64, bool);
    const NAME: &'static str = "vmem-core best fit";
    fn new(span: u64, live: usize) -> Self {
        let mut core = VmemCore::new(span, live);
        core.1 = Policy::BestFit;
        VmemCoreBest(core)
    }
    fn alloc(&mut self, q: u64, align: u64) -> Option<Self::H> {
        self.0.alloc(q, align)
    }
    fn free(&mut self, h: Self::H) {
        self.0.free(h);
    }
    fn len(h: Self::H) -> u64 {
        VmemCore::len(h)
    }
    fn start(h: Self::H) -> u64 {
        VmemCore::start(h)
    }
    fn meta_held() -> Option<isize> {
        VmemCore::meta_held()
    }
}

/// Boundary tags for the `vmem` crate, from the global allocator.
pub struct BoxTags;

// SAFETY: tags come from and go back to the global allocator, with `Bt`'s
// layout.
unsafe impl vmem_peer::Allocator for BoxTags {
    fn allocate(&self) -> Option<NonNull<vmem_peer::Bt>> {
        let layout = std::alloc::Layout::new::<vmem_peer::Bt>();
        // SAFETY: `Bt` has a non-zero size.
        NonNull::new(unsafe { std::alloc::alloc(layout) }.cast())
    }
    unsafe fn deallocate(&self, ptr: NonNull<vmem_peer::Bt>) {
        let layout = std::alloc::Layout::new::<vmem_peer::Bt>();
        // SAFETY: `ptr` came from `allocate`, with this layout.
        unsafe { std::alloc::dealloc(ptr.as_ptr().cast(), layout) }
    }
}

type PeerArena = vmem_peer::Arena<'static, 'static, BoxTags, spin::Mutex<()>>;

/// The `vmem` crate 1.0.0, instant fit.
pub struct VmemCrate(pub PeerArena, pub vmem_peer::AllocPolicy);

impl RangePeer for VmemCrate {
    type H = (u64, u64);
    const NAME: &'static str = "vmem 1.0";
    fn new(span: u64, _live: usize) -> Self {
        let arena =
            PeerArena::create("bench", QUANTUM as usize, None, BoxTags).expect("vmem arena");
        arena
            .add_span(BASE as usize, (span * QUANTUM) as usize)
            .expect("vmem span");
        VmemCrate(arena, vmem_peer::AllocPolicy::InstantFit)
    }
    fn alloc(&mut self, q: u64, align: u64) -> Option<Self::H> {
        let size = (q * QUANTUM) as usize;
        let r = if align <= 1 {
            self.0.alloc(size, self.1)
        } else {
            let layout = vmem_peer::Layout::from_size_align(size, (align * QUANTUM) as usize)?;
            self.0.xalloc(layout, self.1)
        };
        r.ok().map(|a| (a as u64, size as u64))
    }
    fn free(&mut self, h: Self::H) {
        self.0.free(h.0 as usize).expect("vmem free");
    }
    fn len(h: Self::H) -> u64 {
        h.1 / QUANTUM
    }
    fn start(h: Self::H) -> u64 {
        (h.0 - BASE) / QUANTUM
    }
}

/// rust-vmm's vm-allocator 0.1.4 `AddressAllocator`, first match.
pub struct VmAlloc(pub vm_allocator::AddressAllocator);

impl RangePeer for VmAlloc {
    type H = vm_allocator::RangeInclusive;
    const NAME: &'static str = "vm-allocator";
    fn new(span: u64, _live: usize) -> Self {
        VmAlloc(vm_allocator::AddressAllocator::new(BASE, span * QUANTUM).expect("vm-allocator"))
    }
    fn alloc(&mut self, q: u64, align: u64) -> Option<Self::H> {
        self.0
            .allocate(
                q * QUANTUM,
                align.max(1) * QUANTUM,
                vm_allocator::AllocPolicy::FirstMatch,
            )
            .ok()
    }
    fn free(&mut self, h: Self::H) {
        self.0.free(&h).expect("vm-allocator free");
    }
    fn len(h: Self::H) -> u64 {
        h.len() / QUANTUM
    }
    fn start(h: Self::H) -> u64 {
        (h.start() - BASE) / QUANTUM
    }
}

/// Hermit's free-list 0.3 (`FreeList<16>`: a sorted vector of free ranges).
pub struct FreeListPeer(pub free_list::FreeList<16>);

impl RangePeer for FreeListPeer {
    type H = free_list::PageRange;
    const NAME: &'static str = "free-list";
    fn new(span: u64, _live: usize) -> Self {
        let mut fl = free_list::FreeList::new();
        let range = free_list::PageRange::from_start_len(BASE as usize, (span * QUANTUM) as usize)
            .expect("free-list range");
        // SAFETY: the range is an integer range nobody dereferences.
        unsafe { fl.deallocate(range) }.expect("free-list span");
        FreeListPeer(fl)
    }
    fn alloc(&mut self, q: u64, align: u64) -> Option<Self::H> {
        let layout = free_list::PageLayout::from_size_align(
            (q * QUANTUM) as usize,
            (align.max(1) * QUANTUM) as usize,
        )
        .ok()?;
        self.0.allocate(layout).ok()
    }
    fn free(&mut self, h: Self::H) {
        // SAFETY: as in `new`.
        unsafe { self.0.deallocate(h) }.expect("free-list free");
    }
    fn len(h: Self::H) -> u64 {
        h.len().get() as u64 / QUANTUM
    }
    fn start(h: Self::H) -> u64 {
        (h.start() as u64 - BASE) / QUANTUM
    }
}

/// range-alloc 0.1.5 (gfx-rs/wgpu): a sorted vector of free ranges, in quanta.
pub struct RangeAllocPeer(pub range_alloc::RangeAllocator<u64>);

impl RangePeer for RangeAllocPeer {
    type H = (u64, u64);
    const NAME: &'static str = "range-alloc";
    fn new(span: u64, _live: usize) -> Self {
        RangeAllocPeer(range_alloc::RangeAllocator::new(0..span))
    }
    fn alloc(&mut self, q: u64, align: u64) -> Option<Self::H> {
        let r = if align <= 1 {
            self.0.allocate_range(q)
        } else {
            self.0.allocate_range_aligned(q, align)
        };
        r.ok().map(|r| (r.start, r.end))
    }
    fn free(&mut self, h: Self::H) {
        self.0.free_range(h.0..h.1);
    }
    fn len(h: Self::H) -> u64 {
        h.1 - h.0
    }
    fn start(h: Self::H) -> u64 {
        h.0
    }
}

/// offset-allocator 0.2 (a port of Sebastian Aaltonen's TLSF-like offset
/// allocator), in quanta. It takes no alignment: an aligned request asks
/// for `q + align - 1` quanta and rounds the start up, so the waste is real.
pub struct OffsetPeer(pub offset_allocator::Allocator<u32>);

impl RangePeer for OffsetPeer {
    type H = (offset_allocator::Allocation<u32>, u64, u64);
    const NAME: &'static str = "offset-allocator";
    fn new(span: u64, live: usize) -> Self {
        let max = (live as u32).saturating_mul(2).max(1024);
        OffsetPeer(offset_allocator::Allocator::with_max_allocs(
            u32::try_from(span).expect("span fits u32"),
            max,
        ))
    }
    fn alloc(&mut self, q: u64, align: u64) -> Option<Self::H> {
        let align = align.max(1);
        let ask = q + align - 1;
        let a = self.0.allocate(u32::try_from(ask).ok()?)?;
        let start = (a.offset as u64).next_multiple_of(align);
        Some((a, start, ask))
    }
    fn free(&mut self, h: Self::H) {
        self.0.free(h.0);
    }
    fn len(h: Self::H) -> u64 {
        h.2
    }
    fn start(h: Self::H) -> u64 {
        h.1
    }
}
