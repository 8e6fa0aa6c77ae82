//! vmem-core's scenario interpreter as a Wasm module with no imports: the
//! guest that `wasm-harness` runs under wasmtime, and that the docs
//! playground runs in a browser.
//!
//! The module is pure computation: it asks its host for nothing (no WASI,
//! no clock, no randomness), so one scenario gives the same bytes in every
//! engine. Its heap is vmem-core itself: [`GlobalHeap`] size classes over an
//! arena of linear memory, whose metadata comes from a second arena.
//!
//! # ABI
//!
//! Every value is an `i32` holding a `u32`; pointers are offsets into the
//! exported `memory`.
//!
//! | export | signature | what it does |
//! | --- | --- | --- |
//! | `memory` | memory | the module's linear memory |
//! | `vmem_input` | `(len: u32) -> u32` | makes the input buffer `len` bytes long and returns its address; the host writes the scenario text (UTF-8) there |
//! | `vmem_run` | `(len: u32) -> u32` | runs the first `len` bytes of the input buffer as a fresh scenario (a new interpreter, lines run one by one) and returns the byte length of its JSON Lines output, kept in the output buffer |
//! | `vmem_render` | `() -> u32` | puts the readable view of the last run's interpreter in the output buffer and returns its length (0 before any run) |
//! | `vmem_output` | `() -> u32` | the address of the output buffer (valid until the next `vmem_run` or `vmem_render`) |
//! | `vmem_line` | `() -> u32` | the 1-based number of the line being run; after a trap, the line that trapped. 0 outside a line (before the first, after the last, during `vmem_render`) and when the input is not UTF-8 |
//!
//! The linker also exports the globals `__data_end` and `__heap_base`; no
//! host uses them.
//!
//! A host runs a scenario as `p = vmem_input(n)`, writes `n` bytes at `p`,
//! `n_out = vmem_run(n)`, then reads `n_out` bytes at `vmem_output()`.
//! Call `vmem_output` after `vmem_run`: the run may move the buffer.
//!
//! A panic (a bug, or the heap out of memory) executes `unreachable`: the
//! host sees a trap and asks `vmem_line` where it happened.
//!
//! # Memory
//!
//! Linear memory starts with only the stack (512 KiB, set by the build's
//! `-zstack-size`; `wasm-harness/src/guest_stack.rs` says why) and static
//! data. The heap arena grows it with `memory.grow` when the size classes
//! run out, so the host's memory limit is the only bound on a scenario's
//! memory.
//!
//! # Building
//!
//! `wasm-harness`'s build script builds it on every harness build. By hand,
//! from the repository root:
//!
//! ```sh
//! RUSTFLAGS="-C link-arg=-zstack-size=524288" cargo build --release \
//!     --target wasm32-unknown-unknown --manifest-path wasm-harness/guest/Cargo.toml
//! ```

#![no_std]

#[cfg(not(target_arch = "wasm32"))]
compile_error!("vmem-wasm is a Wasm module: build it with --target wasm32-unknown-unknown");

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use spin::Once;
use vmem_core::scenario::Interpreter;
use vmem_core::{
    Arena, ArenaConfig, ArenaMeta, CPU0, GlobalHeap, META_PAGE, MetaSource, SizeClasses,
};

// ---------------------------------------------------------------------------
// The heap: vmem arenas over linear memory.

/// Bytes in a Wasm page, the unit of `memory.grow`.
const WASM_PAGE: u64 = 65536;

/// The heap arena's quantum: slabs and large blocks start on pages.
const HEAP_QUANTUM: u64 = 4096;

/// The least the heap arena grows by: a few slabs of every size class, so
/// that growing is rare.
const HEAP_GROWTH: u64 = 1 << 20;

/// The least the meta arena grows by.
const META_GROWTH: u64 = 256 << 10;

/// Grows linear memory by at least `bytes` and returns the new range, or
/// `None` when the host refuses (its memory limit).
fn grow_memory(bytes: u64) -> Option<(u64, u64)> {
    let pages = bytes.div_ceil(WASM_PAGE);
    let previous = wasm32::memory_grow(0, usize::try_from(pages).ok()?);
    if previous == usize::MAX {
        return None;
    }
    Some((previous as u64 * WASM_PAGE, pages * WASM_PAGE))
}

/// Adds at least `bytes` of fresh linear memory to `arena` as a span; false
/// when memory cannot grow.
fn grow_arena(arena: &Arena<'static>, bytes: u64, least: u64) -> bool {
    match grow_memory(bytes.max(least)) {
        Some((base, size)) => arena.add_span(base, size).is_ok(),
        None => false,
    }
}

/// The arena that holds the heap's metadata pages (boundary tags, slab
/// records, magazines, hash tables). Its own few tags are static ones.
static META_ARENA: Once<Option<Arena<'static>>> = Once::new();

/// The heap arena, whose integers are the addresses of heap memory.
static HEAP_ARENA: Once<Option<Arena<'static>>> = Once::new();

/// Meta pages for the heap arena and its caches, taken from [`META_ARENA`]
/// by [`ArenaMeta`], growing linear memory when the arena is empty.
struct GrowingMeta;

impl GrowingMeta {
    fn arena() -> Option<&'static Arena<'static>> {
        META_ARENA
            .call_once(|| Arena::create(ArenaConfig::new("wasm_meta", META_PAGE as u64)).ok())
            .as_ref()
    }
}

impl MetaSource for GrowingMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        let arena = GrowingMeta::arena()?;
        // SAFETY: the meta arena's integers are addresses of linear memory
        // that `grow_memory` handed to it alone.
        let meta = unsafe { ArenaMeta::new(arena) };
        if let Some(page) = meta.alloc_pages(pages) {
            return Some(page);
        }
        let bytes = (pages as u64).checked_mul(META_PAGE as u64)?;
        if !grow_arena(arena, bytes, META_GROWTH) {
            return None;
        }
        meta.alloc_pages(pages)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        if let Some(arena) = GrowingMeta::arena() {
            // SAFETY: as in `alloc_pages`; the caller gives back pages that
            // `alloc_pages` handed out.
            unsafe { ArenaMeta::new(arena).free_pages(base, pages) };
        }
    }
}

static GROWING_META: GrowingMeta = GrowingMeta;

fn heap_arena() -> Option<&'static Arena<'static>> {
    HEAP_ARENA
        .call_once(|| {
            Arena::create(ArenaConfig::new("wasm_heap", HEAP_QUANTUM).meta(&GROWING_META)).ok()
        })
        .as_ref()
}

fn size_classes() -> Option<SizeClasses<'static>> {
    // SAFETY: the heap arena's integers are addresses of linear memory that
    // `grow_memory` handed to it alone. One CPU: Wasm here has no threads.
    unsafe { SizeClasses::new(heap_arena()?, &GROWING_META, &CPU0, false) }.ok()
}

/// [`GlobalHeap`] over the heap arena, which grows into fresh linear memory
/// whenever the size classes cannot serve a request.
///
/// The heap is made on first use rather than in the static's initializer:
/// a `GlobalHeap` holds its `init` function pointer beside about 50 KiB of
/// not-yet-made size classes, and a static with any non-zero byte is stored
/// whole in the module's data section, while an all-zero one costs nothing.
struct GrowingHeap(Once<GlobalHeap>);

impl GrowingHeap {
    fn heap(&self) -> &GlobalHeap {
        self.0.call_once(|| GlobalHeap::new(size_classes))
    }
}

// SAFETY: every block comes from `GlobalHeap`, whose contract this keeps;
// growing only adds fresh linear memory to the heap arena between calls.
unsafe impl GlobalAlloc for GrowingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout contract passes through.
        let block = unsafe { self.heap().alloc(layout) };
        if !block.is_null() {
            return block;
        }
        let Some(arena) = heap_arena() else {
            return block;
        };
        // Enough for the block at any alignment within the new span.
        let bytes = layout.size() as u64 + layout.align() as u64;
        if !grow_arena(arena, bytes, HEAP_GROWTH) {
            return block;
        }
        // SAFETY: as above.
        unsafe { self.heap().alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, which is `GlobalHeap`'s.
        unsafe { self.heap().dealloc(ptr, layout) }
    }
}

#[global_allocator]
static HEAP: GrowingHeap = GrowingHeap(Once::new());

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    wasm32::unreachable()
}

// ---------------------------------------------------------------------------
// The exports.

/// The buffers and the last run's interpreter.
struct Session {
    input: Vec<u8>,
    output: String,
    interpreter: Option<Interpreter>,
}

struct SessionCell(UnsafeCell<Session>);

// SAFETY: this Wasm module has no threads.
unsafe impl Sync for SessionCell {}

static SESSION: SessionCell = SessionCell(UnsafeCell::new(Session {
    input: Vec::new(),
    output: String::new(),
    interpreter: None,
}));

/// The line being run, kept apart from the session so that the host can
/// read it after a trap left the session half changed.
static LINE: AtomicU32 = AtomicU32::new(0);

/// The session, for the one export running now.
///
/// # Safety
/// At most one reference may be live: each export takes it once. Exports
/// never nest, since the module calls no host function that could call
/// back into it.
unsafe fn session() -> &'static mut Session {
    // SAFETY: the caller holds the only reference (see above).
    unsafe { &mut *SESSION.0.get() }
}

fn wasm_u32(n: usize) -> u32 {
    // usize is 32 bits on wasm32.
    n as u32
}

/// Makes the input buffer `len` bytes long and returns its address.
#[unsafe(no_mangle)]
pub extern "C" fn vmem_input(len: u32) -> u32 {
    // SAFETY: the one reference of this export.
    let session = unsafe { session() };
    session.input.clear();
    session.input.resize(len as usize, 0);
    wasm_u32(session.input.as_ptr() as usize)
}

/// Runs the first `len` input bytes as a fresh scenario; returns the length
/// of the JSON Lines output.
#[unsafe(no_mangle)]
pub extern "C" fn vmem_run(len: u32) -> u32 {
    // SAFETY: the one reference of this export.
    let session = unsafe { session() };
    // The last run's arenas go before this run's start.
    session.interpreter = None;
    session.output = String::new();
    LINE.store(0, Ordering::Relaxed);
    let len = (len as usize).min(session.input.len());
    let Ok(script) = core::str::from_utf8(&session.input[..len]) else {
        wasm32::unreachable()
    };
    let mut interpreter = Interpreter::new();
    for (index, text) in script.lines().enumerate() {
        let line_no = index + 1;
        LINE.store(wasm_u32(line_no), Ordering::Relaxed);
        if let Some(json) = interpreter.run_line(line_no, text) {
            session.output.push_str(&json);
            session.output.push('\n');
        }
    }
    LINE.store(0, Ordering::Relaxed);
    session.interpreter = Some(interpreter);
    wasm_u32(session.output.len())
}

/// Puts the last run's readable view in the output buffer; returns its
/// length.
#[unsafe(no_mangle)]
pub extern "C" fn vmem_render() -> u32 {
    // SAFETY: the one reference of this export.
    let session = unsafe { session() };
    LINE.store(0, Ordering::Relaxed);
    session.output = session
        .interpreter
        .as_ref()
        .map(Interpreter::render)
        .unwrap_or_default();
    wasm_u32(session.output.len())
}

/// The address of the output buffer.
#[unsafe(no_mangle)]
pub extern "C" fn vmem_output() -> u32 {
    // SAFETY: the one reference of this export.
    let session = unsafe { session() };
    wasm_u32(session.output.as_ptr() as usize)
}

/// The line being run, or that trapped.
#[unsafe(no_mangle)]
pub extern "C" fn vmem_line() -> u32 {
    LINE.load(Ordering::Relaxed)
}
