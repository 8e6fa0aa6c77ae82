//! Meta sources that tests steer.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use vmem_core::{HeapMeta, MetaSource};

/// Meta pages from the heap, a fixed number of them at a time: a request
/// beyond what is left is refused, and freed pages count again. Tests use
/// it to run an arena out of boundary tags.
#[derive(Debug)]
pub struct PageBudget {
    left: AtomicUsize,
}

impl PageBudget {
    /// A source that hands out at most `pages` pages at once.
    pub const fn new(pages: usize) -> Self {
        PageBudget {
            left: AtomicUsize::new(pages),
        }
    }

    /// Pages it would still hand out.
    pub fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }
}

impl MetaSource for PageBudget {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_sub(pages)
            })
            .ok()?;
        HeapMeta.alloc_pages(pages)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        self.left.fetch_add(pages, Ordering::AcqRel);
        // SAFETY: passed through from the caller's contract.
        unsafe { HeapMeta.free_pages(base, pages) }
    }
}

#[cfg(test)]
mod tests {
    use super::PageBudget;
    use vmem_core::MetaSource;

    #[test]
    fn refuses_past_the_budget_and_counts_freed_pages_again() {
        let meta = PageBudget::new(2);
        let a = meta.alloc_pages(1).expect("first page");
        let b = meta.alloc_pages(1).expect("second page");
        assert!(meta.alloc_pages(1).is_none(), "the budget is spent");
        assert_eq!(meta.left(), 0);
        // SAFETY: `a` came from `alloc_pages(1)` and is not used again.
        unsafe { meta.free_pages(a, 1) };
        assert_eq!(meta.left(), 1);
        assert!(meta.alloc_pages(2).is_none(), "one page left, not two");
        // SAFETY: as for `a`.
        unsafe { meta.free_pages(b, 1) };
        assert_eq!(meta.left(), 2);
    }
}
