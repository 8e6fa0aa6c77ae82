//! `MemError`: what the kernel's memory layer (`phys`, the page tables,
//! the virtual arenas and stacks) says when it cannot do what it was
//! asked. An arena's refusal is kept whole; a refusal of the page tables
//! is named by what went wrong, not by the `x86_64` crate's generic
//! `MapToError`, which is converted here and nowhere else.

use core::fmt;

use vmem_core::ErrorKind;
use x86_64::PhysAddr;
use x86_64::structures::paging::PageSize;
use x86_64::structures::paging::mapper::MapToError;

/// Why the memory layer refused.
#[derive(Clone, Copy, Debug)]
pub enum MemError {
    /// An arena refused.
    Vmem(vmem_core::Error),
    /// No frame could be had for a page table (or the kernel's tables are
    /// not built yet).
    NoTableFrame,
    /// The page is mapped already, to the frame at this address.
    AlreadyMapped(PhysAddr),
    /// A huge page already maps the range the page lies in.
    InHugePage,
}

impl From<vmem_core::Error> for MemError {
    fn from(e: vmem_core::Error) -> MemError {
        MemError::Vmem(e)
    }
}

impl<S: PageSize> From<MapToError<S>> for MemError {
    fn from(e: MapToError<S>) -> MemError {
        match e {
            MapToError::FrameAllocationFailed => MemError::NoTableFrame,
            MapToError::ParentEntryHugePage => MemError::InHugePage,
            MapToError::PageAlreadyMapped(frame) => MemError::AlreadyMapped(frame.start_address()),
        }
    }
}

/// For an arena's `Source`, whose refusals are arena errors: a page table
/// that could not be had is the arena running out of space.
impl From<MemError> for vmem_core::Error {
    fn from(e: MemError) -> vmem_core::Error {
        match e {
            MemError::Vmem(e) => e,
            MemError::NoTableFrame => {
                vmem_core::Error::new(ErrorKind::NoSpace, "no frame for a page table")
            }
            MemError::AlreadyMapped(_) => {
                vmem_core::Error::new(ErrorKind::Overlap, "the page is mapped already")
            }
            MemError::InHugePage => {
                vmem_core::Error::new(ErrorKind::Overlap, "a huge page maps the range")
            }
        }
    }
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::Vmem(e) => write!(f, "{e}"),
            MemError::NoTableFrame => f.write_str("no frame for a page table"),
            MemError::AlreadyMapped(frame) => {
                write!(f, "the page is mapped already (to {frame:#x})")
            }
            MemError::InHugePage => f.write_str("a huge page maps the range"),
        }
    }
}
