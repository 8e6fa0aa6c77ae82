//! `HeapMeta`'s large chunks: once the pool has fetched 16 MiB, single
//! pages come from 2 MiB chunks aligned to 2 MiB, advised MADV_HUGEPAGE on
//! Linux. A test binary of its own, so that no other test shares the pool.

#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::ptr::NonNull;

use vmem_core::{HUGE_AFTER_PAGES, HUGE_CHUNK_PAGES, HeapMeta, META_PAGE, MetaSource};

const HUGE: usize = HUGE_CHUNK_PAGES * META_PAGE;

/// The `THPeligible` flag of the mapping holding `addr`, from
/// /proc/self/smaps.
fn thp_eligible(addr: usize) -> Option<bool> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = (lo..hi).contains(&addr);
        } else if inside && let Some(flag) = line.strip_prefix("THPeligible:") {
            return Some(flag.trim() == "1");
        }
    }
    None
}

#[test]
fn pages_past_sixteen_mib_come_from_advised_large_page_chunks() {
    let pages: Vec<NonNull<u8>> = (0..HUGE_AFTER_PAGES + 2 * HUGE_CHUNK_PAGES)
        .map(|_| HeapMeta.alloc_pages(1).expect("a meta page"))
        .collect();
    // The last large chunk handed out whole: most of its pages share one
    // 2 MiB-aligned block.
    let mut blocks: HashMap<usize, usize> = HashMap::new();
    for page in &pages[HUGE_AFTER_PAGES..] {
        *blocks
            .entry(page.as_ptr() as usize & !(HUGE - 1))
            .or_default() += 1;
    }
    let (&block, &count) = blocks.iter().max_by_key(|(_, n)| **n).expect("pages");
    assert!(
        count >= HUGE_CHUNK_PAGES - 16,
        "no 2 MiB block holds most of a chunk: {count} pages at most"
    );
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
    match thp {
        Ok(mode) if !mode.contains("[never]") => assert_eq!(
            thp_eligible(block),
            Some(true),
            "the chunk at {block:#x} is not eligible for huge pages (THP: {})",
            mode.trim()
        ),
        _ => eprintln!("transparent huge pages are off here: the advice is not checked"),
    }
    for page in pages {
        // SAFETY: each page came from `alloc_pages(1)` and is used no more.
        unsafe { HeapMeta.free_pages(page, 1) };
    }
}
