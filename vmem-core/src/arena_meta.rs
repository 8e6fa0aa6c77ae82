//! Meta pages from an arena: the [`MetaSource`] a kernel builds over its
//! physical-page arena. It sits above the arena it allocates from, so the
//! metadata layer under the arena never names one.

use core::ptr::NonNull;

use lock_api::RawMutex;

use crate::arena::{Arena, Policy};
use crate::constraint::Constraints;
use crate::meta::{META_PAGE, MetaSource};

/// Meta pages from an arena whose integers are addresses of memory this
/// program may use (a kernel's direct map, a host buffer): metadata from
/// arenas, as the design asks.
///
/// It never hands out pages at address 0, which is no pointer, nor pages
/// that pass the end of the address space (past `usize::MAX`). When the
/// arena offers such pages first, `ArenaMeta` gives them straight back and
/// asks for pages between the two (a constrained `xalloc`, which searches),
/// and answers `None` if there are none; the arena is then as it was.
pub struct ArenaMeta<'a, 's, R: RawMutex> {
    arena: &'a Arena<'s, R>,
}

impl<'a, 's, R: RawMutex> ArenaMeta<'a, 's, R> {
    /// Meta pages taken from `arena` by `xalloc` with page alignment.
    ///
    /// # Safety
    /// Every integer `arena` hands out must be the address of writable
    /// memory that nothing else uses while it is allocated, except pages at
    /// 0 or past the end of the address space, which `ArenaMeta` never
    /// hands on (so a span that starts at 0 need not be memory there).
    pub const unsafe fn new(arena: &'a Arena<'s, R>) -> Self {
        ArenaMeta { arena }
    }
}

/// The exclusive end of the addresses a pointer can hold, as an `xalloc`
/// `max` (0, no limit, where `usize` has 64 bits).
const POINTER_END: u64 = match (usize::MAX as u64).checked_add(1) {
    Some(end) => end,
    None => 0,
};

/// `bytes` (not 0) at `addr` as a pointer, if `addr` is not 0 and they end
/// within the address space.
fn pointer_to(addr: u64, bytes: u64) -> Option<NonNull<u8>> {
    usize::try_from(addr.checked_add(bytes - 1)?).ok()?;
    NonNull::new(usize::try_from(addr).ok()? as *mut u8)
}

impl<'s, R: RawMutex> MetaSource for ArenaMeta<'_, 's, R>
where
    Arena<'s, R>: Sync,
{
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        let bytes = (pages as u64)
            .checked_mul(META_PAGE as u64)
            .filter(|&b| b > 0)?;
        let aligned = Constraints::aligned(META_PAGE as u64);
        let addr = self
            .arena
            .xalloc(bytes, &aligned, Policy::InstantFit)
            .ok()?;
        if let Some(page) = pointer_to(addr, bytes) {
            return Some(page);
        }
        // The pages came from this arena, so the free cannot be refused.
        let _ = self.arena.xfree(addr, bytes);
        let pointable = Constraints {
            min: 1,
            max: POINTER_END,
            ..aligned
        };
        let addr = self
            .arena
            .xalloc(bytes, &pointable, Policy::InstantFit)
            .ok()?;
        let page = pointer_to(addr, bytes);
        if page.is_none() {
            // The constraints rule this out; give the pages back all the same.
            let _ = self.arena.xfree(addr, bytes);
        }
        page
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        let bytes = (pages * META_PAGE) as u64;
        // The pages came from this arena, so the free cannot be refused.
        let _ = self.arena.xfree(base.as_ptr() as usize as u64, bytes);
    }
}
