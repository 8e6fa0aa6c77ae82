//! # vmem-core: the vmem resource allocator
//!
//! ## Theory
//!
//! An **arena** manages a set of integers: addresses, guest-physical pages,
//! interrupt numbers, process IDs. It does not care what they mean. Every
//! integer is a `u64`, and the arena hands them out in multiples of its
//! **quantum**, a power of two (4096 for pages, 1 for IDs).
//!
//! The integers enter an arena as **spans**, non-overlapping ranges added by
//! the owner ([`Arena::add_span`]) or **imported** from a **source**: any
//! [`Source`], and every arena is one. An arena with a source imports a span
//! (at least its minimum import size) when a request that is not confined to
//! a window or a boundary finds nothing free, and releases that span back the moment it is wholly free
//! again. Trees of arenas follow: a kernel's virtual heap imports from its
//! virtual address range, which imports from nothing.
//!
//! Inside each span, **segments** tile the range exactly: each is free or
//! allocated. Each span and segment is described by a **boundary tag**, and
//! the tags form one list in address order, each span's marker followed by
//! its segments. The span markers also sit in a search tree keyed by start
//! (a treap whose priorities hash the start), so adding, finding or
//! removing one of an arena's n spans looks at O(log n) of them (expected;
//! an adversary who knows the hash could make it deeper, never wrong). Freeing a segment coalesces it with free neighbours at
//! once, so two free segments are never adjacent inside a span; the span
//! markers in the list stop coalescing at span edges. Each tag records, in
//! spare bits of its links, whether the tags before and after it are free,
//! so a free reads a neighbour's tag only to merge with it, and a change
//! of class writes the neighbours' links without reading them
//! ([`Arena::check`] verifies the bits).
//!
//! Free segments also sit on **freelists** by size class: each power of two
//! `[2^i, 2^(i+1))` splits into eight classes of equal width (sizes below 8
//! have a class each), and a two-level bitmap (one bit per power of two, one
//! byte of class bits under it) marks the classes that are not empty. This
//! gives the three **policies** ([`Policy`]):
//! - *instant fit* takes the head of the first non-empty class whose every
//!   member is large enough (the request's own class when the request is
//!   its smallest size, else the classes above): two bit scans, O(1), with
//!   no search. Only when there is none does it search from the list that
//!   *might* fit upwards, so a request fails only when nothing free is
//!   large enough;
//! - *best fit* searches from the might-fit list up for the smallest segment
//!   that holds the request;
//! - *next fit* walks the segment list from a **rotor** left after the
//!   previous allocation, so integers are reused as late as possible (as for
//!   process IDs).
//!
//! Allocated segments sit in a **hash** keyed by address, so a free finds
//! its segment in expected O(1) time. The hash grows with the number of
//! live segments a little at a time: a larger table is installed without
//! moving anything, and each later successful call moves at most 32
//! chains and 32 segments into it, lookups searching both tables
//! meanwhile, so no call rehashes the whole table under the lock. A meta
//! source that refused a table is asked again only once the live count has
//! doubled, and the tables go back when the arena empties. A free names the
//! address and size; a mismatch, an address not allocated, the wrong call
//! (`free` for `xalloc`), or a release of an imported span by anyone but
//! the [`Importer`] it was handed to is refused.
//!
//! **Constrained allocation** ([`Arena::xalloc`], [`Constraints`]) adds
//! alignment, phase, a boundary not to cross, and a `[min, max)` window; an
//! exact address is a window around one address. Under instant fit a
//! request constrained by alignment and phase alone takes the head of the
//! first list whose members all hold `size + align - quantum` (any of them
//! has an aligned placement), so it stays O(1); other constrained requests
//! search every list that might hold them. A request constrained by
//! alignment and phase alone imports as a plain one does, asking the
//! source for a span of `size + phase` with the request's alignment (as
//! illumos's and FreeBSD's `vmem_xalloc` do), so it fails only when neither
//! the arena's free space nor its source holds an aligned placement.
//! Requests with a `nocross` boundary or a `[min, max)` window never
//! import: a source cannot promise constraints on the child's address
//! space.
//!
//! ## Tags need no heap
//!
//! The allocator must not need the allocator it serves. An arena takes its
//! tags in pages from a [`MetaSource`] its owner supplies (a kernel gives
//! physical pages), and from a **static pool** shared by all arenas when it
//! has no meta source or the source has no page (unless its configuration
//! forbids the pool). Every operation **reserves** the tags it may need
//! (four: a span and its free segment for an import, and two fragments
//! around the allocation) before it touches anything, so no operation fails
//! halfway and running out of tags is a clean `NoSpace`. A free needs no
//! tag and never asks a meta source for memory, so it cannot fail for want
//! of it. Tags and hash tables are fetched and given back with the arena
//! unlocked, so a meta source may itself allocate from arenas, even from
//! one that imports from the arena it serves. A reap gives back every tag
//! page it can empty: the arena moves its tags in use (span markers
//! excepted) onto as few pages as hold them and four spare ones, so after a
//! full reap it holds the pages its remaining segments need, whatever its
//! peak was.
//!
//! ## Object caches and magazines
//!
//! Over an arena sits the slab layer ([`ObjectCache`]): objects of one size
//! carved from **slabs** the cache allocates from its arena, returned when
//! a reap finds them empty. The bookkeeping lives outside the slab (a
//! record with bitmaps, found through a hash), so the same code serves
//! **memory mode**, where the integers are real memory and debug checks may
//! poison freed objects and guard red zones, and **no-touch mode**, where
//! the integers are IDs or guest-physical ranges the cache never reads.
//!
//! Over every cache sits the **magazine layer**. Each CPU ([`CpuId`]) has a
//! *loaded* and a *previous* magazine, stacks of constructed objects; it
//! allocates from the loaded one, swaps in the previous one when it runs
//! dry, and only then trades an empty magazine for a full one at the
//! **depot**, which has its own lock. Frees mirror this, except that a free
//! never allocates: it trades a full magazine only for an empty one the
//! depot already holds, and with none at hand the object goes back to its
//! slab. Empty magazines are added by allocations the slab layer served:
//! one when the depot has none, and one for each magazine's worth of frees
//! that found none, so after one round trip the magazine layer is in its
//! steady state. A CPU thus touches
//! shared state once per magazine of operations, which is what lets
//! allocation scale with CPUs. The depot counts how often its lock is
//! contended and grows the magazine size when it is; it remembers how low
//! its stacks ran (the working set), so a periodic reap returns only idle
//! magazines, and a full reap returns everything but the magazines of a
//! CPU another context holds ([`CpuLocal`]), which it asks that context
//! to return.
//!
//! **Quantum caches** ([`QuantumCaches`]) put caches in front of an arena
//! for sizes of 1 to 16 quanta, with slabs of `max(2^highbit(3 *
//! qcache_max), 64)` integers; `xalloc` bypasses them. **Reserves**
//! ([`Reserve`], DragonFly's MPIPE) hold objects back for callers that must
//! never fail or block. **Size classes** ([`SizeClasses`]) are kmalloc:
//! caches from 8 bytes to 8 KiB and the arena beyond, and [`GlobalHeap`]
//! makes them a `#[global_allocator]` (one that answers null while it is
//! being made, since its making may reach it through a meta source). All
//! metadata (slab records, magazines, hash tables) comes in pages from a
//! [`MetaSource`], which a kernel backs with an arena ([`ArenaMeta`]);
//! caches ask it for pages only when allocating, never when freeing, and a
//! reap gives back every page of records or magazines none of which is in
//! use, and the slab table once no slab is left. A cache may be moved while
//! its objects are out: its debug tags mix in a salt chosen when it is
//! made, never its address.
//!
//! ## Errors
//!
//! Every call returns a [`Result`]; the [`ErrorKind`]s are the scenario
//! language's. Sizes, alignments and phases near 2^64 are `Overflow` or
//! `Overconstrained`, never a wrapped sum. A failed call changes nothing
//! (statistics counters aside), and [`Arena::check`] verifies every
//! invariant after any sequence of calls. [`Arena::destroy`] refuses an
//! arena that has a child importing from it or an object cache over it. Fault injection ([`FaultPlan`], [`Arena::inject_faults`],
//! [`FaultyMeta`]) fails chosen imports and metadata requests on a
//! deterministic schedule, so tests reach every failure path.
//!
//! ## Locking
//!
//! Each arena has one lock (a spin lock by default, or any
//! [`lock_api::RawMutex`]), held only while it changes its own lists. It
//! calls its [`Source`] (import, release, attach, detach) and its
//! [`MetaSource`] with that lock dropped, as illumos's `vmem_xalloc` drops
//! its lock around an import, and takes the lock again, with tags reserved
//! afresh, to add the imported span. So an arena never holds its lock while
//! another arena's is taken: a parent may refill its tags or grow its hash
//! during a child's import, and its meta source may allocate from the child
//! or a grandchild.
//!
//! A cache takes a CPU's lock, then the depot's, then its slab layer's,
//! then its arena's: always in that order. It calls its meta source only
//! when allocating: with its slab lock held (slab records, the slab hash)
//! or with the depot's alone (an empty magazine for later frees), so a meta
//! source must not allocate from a cache that uses it. Its slab lock stays
//! held while its arena imports a span for a new slab, so neither a source
//! nor a meta source may allocate from a cache over the importing arena. A
//! free holds at most a CPU's lock and then the depot's, or the slab
//! layer's alone, and never takes the arena's: slabs go back to the arena
//! only on a reap, whose meta pages go back after the cache's locks are
//! dropped.
//!
//! ## Layers
//!
//! The modules stand in floors: a module's code (its unit tests aside)
//! imports only from floors below its own, so no two modules import each
//! other (`ci/layers` prints the import graph and fails on a cycle). Top
//! first:
//!
//! ```text
//! scenario                       the scenario language's interpreter
//! kmalloc  reserve  arena_meta   size classes, reserves, meta pages from an arena
//! qcache                         quantum caches: the arena's QuantumFront
//! cache                          object caches: magazines over slabs
//! magazine                       magazines and the depot
//! slab                           slabs: every arena is their Backing
//! arena                          the arena, in parts, top first:
//!   mod.rs                         the public API and configuration
//!   check  policy                  the checker; instant, best and next fit
//!   segment                        the state under the lock; segment surgery
//!   span_tree  front               span markers by start; what the arena
//!                                  asks of the floors above it
//! freelist  hash  constraint     freelists, the allocated-segment hash, requests
//! tag  fault  heap_meta          boundary tags, fault plans, meta pages from the heap,
//!   thread_cpu                     the host's CPU slots held by threads
//! meta  error  sync  cpu  name   meta pages, errors, locks, CPUs, names
//! ```
//!
//! In illumos, vmem and kmem call each other: the arena hands small
//! requests to its quantum caches, which take their slabs from the arena.
//! Here the arena declares what it needs from the floors above as traits
//! of its own (`QuantumFront`: an object of n quanta, and this one back;
//! `Backing`: a slab, and this one back) with the typed error a quantum
//! cache answers a free it does not hold with, and the floors above
//! implement them.
//!
//! ## Example
//!
//! ```
//! use vmem_core::{Arena, ArenaConfig, Constraints, Policy};
//!
//! # fn main() -> vmem_core::Result<()> {
//! let heap: Arena = Arena::create(ArenaConfig::new("heap", 4096).span(0x10_0000, 0x10_0000))?;
//! let a = heap.alloc(5000, Policy::InstantFit)?; // rounded up to 8192
//! let b = heap.xalloc(4096, &Constraints::aligned(0x1_0000), Policy::InstantFit)?;
//! assert_eq!(b % 0x1_0000, 0);
//! heap.free(a, 5000)?;
//! heap.xfree(b, 4096)?;
//! heap.check()?;
//! assert_eq!(heap.size().alloc, 0);
//! # Ok(())
//! # }
//! ```

#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(loom, feature = "std"))]
extern crate std;

mod arena;
mod arena_meta;
mod cache;
mod constraint;
mod cpu;
mod error;
mod fault;
mod freelist;
mod hash;
#[cfg(feature = "alloc")]
mod heap_meta;
mod kmalloc;
mod magazine;
mod meta;
mod name;
mod qcache;
mod reserve;
#[cfg(feature = "scenario")]
pub mod scenario;
mod slab;
mod sync;
mod tag;
#[cfg(test)]
mod testing;
#[cfg(feature = "std")]
mod thread_cpu;

pub use arena::{
    Arena, ArenaConfig, ArenaSize, DefaultLock, Policy, Segment, SegmentKind, Source, Stats,
};
pub use arena_meta::ArenaMeta;
pub use cache::{CacheConfig, CacheStats, CpuStats, DEFAULT_MAGAZINE, ObjectCache, ObjectHook};
pub use constraint::Constraints;
pub use cpu::{CPU0, CpuGuard, CpuId, CpuLocal, FixedCpu, HELD_CPUS, MAX_CPUS, NoCpuLocal};
pub use error::{Error, ErrorKind, Result};
pub use fault::{FaultPlan, FaultSchedule, FaultSite, FaultyMeta};
#[cfg(feature = "alloc")]
pub use heap_meta::{CHUNK_PAGES, HUGE_AFTER_PAGES, HUGE_CHUNK_PAGES, HeapMeta};
pub use kmalloc::{GlobalHeap, SIZE_CLASSES, SizeClasses};
pub use meta::{META_PAGE, MetaSource};
pub use name::NAME_MAX;
pub use qcache::{QCACHE_MAX_QUANTA, QuantumCaches};
pub use reserve::Reserve;
#[cfg(loom)]
pub use sync::LoomLock;
pub use tag::{Importer, STATIC_TAGS, static_tags_available};
#[cfg(feature = "std")]
pub use thread_cpu::ThreadCpus;

// The README's example is what crates.io shows first; this keeps it compiling
// and passing.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
