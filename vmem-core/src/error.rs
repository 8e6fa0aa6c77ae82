//! Errors: one closed set of kinds, shared with the scenario language.

use core::fmt;

/// What went wrong, as the scenario language names it.
///
/// The set is closed and matches `docs/src/scenario-language.md`; the
/// arena uses the kinds that describe its own calls, and the scenario
/// interpreter the rest (`Parse`, `UnknownArena`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A scenario line could not be read.
    Parse,
    /// No arena has that name.
    UnknownArena,
    /// No object cache has that name.
    UnknownCache,
    /// No live allocation has that handle.
    UnknownHandle,
    /// The name is already taken.
    DuplicateName,
    /// A size of zero.
    ZeroSize,
    /// A span, alignment, phase or boundary that is not a multiple of the quantum.
    Misaligned,
    /// A constraint that is malformed on its own (alignment not a power of
    /// two, phase not below alignment, min not below max, ...).
    BadConstraint,
    /// Constraints that are well formed but that no placement could ever meet.
    Overconstrained,
    /// A range or size that does not fit in 64 bits.
    Overflow,
    /// Nothing free satisfies the request (after any import), or no boundary
    /// tag could be had for it.
    NoSpace,
    /// A free of something not allocated here, with the wrong size, or with
    /// the wrong call.
    BadFree,
    /// A span that overlaps one the arena already has.
    Overlap,
    /// Destroying an arena that still has live allocations or a child arena.
    InUse,
    /// The arena's source could not supply a span.
    ImportFailed,
    /// The consistency checker found a broken invariant: always a bug.
    Corrupt,
}

impl ErrorKind {
    /// The kind's name exactly as the scenario language spells it.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::Parse => "Parse",
            ErrorKind::UnknownArena => "UnknownArena",
            ErrorKind::UnknownCache => "UnknownCache",
            ErrorKind::UnknownHandle => "UnknownHandle",
            ErrorKind::DuplicateName => "DuplicateName",
            ErrorKind::ZeroSize => "ZeroSize",
            ErrorKind::Misaligned => "Misaligned",
            ErrorKind::BadConstraint => "BadConstraint",
            ErrorKind::Overconstrained => "Overconstrained",
            ErrorKind::Overflow => "Overflow",
            ErrorKind::NoSpace => "NoSpace",
            ErrorKind::BadFree => "BadFree",
            ErrorKind::Overlap => "Overlap",
            ErrorKind::InUse => "InUse",
            ErrorKind::ImportFailed => "ImportFailed",
            ErrorKind::Corrupt => "Corrupt",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error from an arena call: its kind, a fixed description, and the
/// address it concerns when there is one.
///
/// It carries no heap data, so it can be made anywhere, with any lock held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    what: &'static str,
    at: Option<u64>,
}

impl Error {
    /// An error of `kind` described by `what`.
    pub const fn new(kind: ErrorKind, what: &'static str) -> Self {
        Error {
            kind,
            what,
            at: None,
        }
    }

    /// The same error, naming the address it concerns.
    pub const fn at(self, addr: u64) -> Self {
        Error {
            at: Some(addr),
            ..self
        }
    }

    /// The kind, as the scenario language names it.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What went wrong, in words (for `Corrupt`, the broken invariant).
    pub const fn what(&self) -> &'static str {
        self.what
    }

    /// The address the error concerns, if any.
    pub const fn addr(&self) -> Option<u64> {
        self.at
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(addr) => write!(f, "{}: {} at {:#x}", self.kind, self.what, addr),
            None => write!(f, "{}: {}", self.kind, self.what),
        }
    }
}

impl core::error::Error for Error {}

/// The result of every fallible vmem call.
pub type Result<T> = core::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_and_address() {
        let e = Error::new(ErrorKind::BadFree, "not allocated").at(0x3000);
        assert_eq!(format!("{e}"), "BadFree: not allocated at 0x3000");
        assert_eq!(e.kind(), ErrorKind::BadFree);
        assert_eq!(e.addr(), Some(0x3000));
        let plain = Error::new(ErrorKind::ZeroSize, "size is zero");
        assert_eq!(format!("{plain}"), "ZeroSize: size is zero");
    }
}
