//! What went wrong: an [`ErrorKind`], a sentence, and where.

use core::fmt;

/// The kinds of failure every call of this crate reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The machine description is inconsistent: a region or reserved range
    /// off the quantum, outside the physical address space, empty, or
    /// overlapping another; a duplicate or overlong name; a bad ID pool.
    BadMachine,
    /// A request's parameters are invalid: zero size, an alignment or
    /// boundary that is not a power of two, a phase not below the
    /// alignment, a window with `min >= max`, or a size the boundary
    /// cannot hold.
    BadRequest,
    /// No free range (or ID) meets the request.
    NoSpace,
    /// No allocation (or allocated ID) matches the address, range or ID.
    NotAllocated,
    /// The range or ID asked for is taken.
    InUse,
    /// No region or ID pool has that number.
    NoSuchRegion,
    /// A move's target breaks the allocation's constraints or leaves its
    /// region.
    Constraint,
    /// A snapshot is malformed; the message names what is wrong.
    BadSnapshot,
    /// An arena refused for a reason of its own (out of boundary tags).
    Arena,
}

/// An error: its kind, what went wrong, and the address or ID concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    what: &'static str,
    at: Option<u64>,
}

impl Error {
    pub(crate) const fn new(kind: ErrorKind, what: &'static str) -> Self {
        Error {
            kind,
            what,
            at: None,
        }
    }

    pub(crate) const fn at(mut self, at: u64) -> Self {
        self.at = Some(at);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What went wrong, in a sentence.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The address, offset or ID concerned, if one is.
    pub fn address(&self) -> Option<u64> {
        self.at
    }

    /// An arena's error in this crate's kinds, with vmem-core's message.
    pub(crate) fn from_arena(e: vmem_core::Error) -> Self {
        let kind = match e.kind() {
            vmem_core::ErrorKind::NoSpace | vmem_core::ErrorKind::ImportFailed => {
                ErrorKind::NoSpace
            }
            vmem_core::ErrorKind::ZeroSize
            | vmem_core::ErrorKind::Misaligned
            | vmem_core::ErrorKind::BadConstraint
            | vmem_core::ErrorKind::Overconstrained
            | vmem_core::ErrorKind::Overflow => ErrorKind::BadRequest,
            vmem_core::ErrorKind::Overlap | vmem_core::ErrorKind::InUse => ErrorKind::InUse,
            vmem_core::ErrorKind::BadFree => ErrorKind::NotAllocated,
            _ => ErrorKind::Arena,
        };
        Error {
            kind,
            what: e.what(),
            at: None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.what)?;
        if let Some(at) = self.at {
            write!(f, " (at {at:#x})")?;
        }
        Ok(())
    }
}

impl core::error::Error for Error {}

/// This crate's result.
pub type Result<T> = core::result::Result<T, Error>;
