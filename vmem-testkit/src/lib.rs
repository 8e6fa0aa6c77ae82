//! # vmem-testkit: what vmem's tests and benchmarks share
//!
//! One copy of each helper that vmem-core's integration tests and
//! benchmarks, the fuzz targets, `wasm-harness`'s workload and the
//! `vmem-bench` binary need, so that they all draw the same numbers,
//! observe arenas the same way and measure the same peers:
//!
//! - [`SplitMix64`]: the deterministic generator behind every seeded
//!   workload (the same seed gives the same sequence everywhere);
//! - [`PageBudget`]: a meta source that runs dry after a fixed number of
//!   pages;
//! - [`walk`], [`arena_state`], [`cache_state`]: an arena's segments, and
//!   what a refused call must leave unchanged, as text;
//! - [`buffer`]: leaked host memory for memory-mode arenas;
//! - [`placement`]: the reference model of where a constrained allocation
//!   may go;
//! - `heaps` and `cross` (feature `peers`): the heap allocators the heap
//!   benchmarks compare, and two threads freeing each other's objects.
//!
//! Not published: it exists for this repository's own checks.
//!
//! ```
//! use vmem_core::{Arena, ArenaConfig, Policy};
//! use vmem_testkit::{PageBudget, SplitMix64, walk};
//!
//! let meta = PageBudget::new(4);
//! let arena: Arena = Arena::create(
//!     ArenaConfig::new("ids", 1).span(1, 1000).meta(&meta).static_tags(false),
//! )
//! .unwrap();
//! let mut rng = SplitMix64::new(7);
//! let id = arena.alloc(1 + rng.below(8), Policy::InstantFit).unwrap();
//! assert!(walk(&arena).iter().any(|s| s.start == id));
//! ```

mod arena;
#[cfg(feature = "peers")]
pub mod cross;
#[cfg(feature = "peers")]
pub mod heaps;
mod meta;
pub mod placement;
mod rng;

pub use arena::{arena_state, buffer, cache_state, leaked_arena, walk};
pub use meta::PageBudget;
pub use rng::SplitMix64;
