//! Who holds an allocation or an ID: a device's BAR, a device, or a
//! caller's label.

use core::fmt;

use crate::error::{Error, ErrorKind, Result};

/// Longest [`Label`], in bytes.
pub const LABEL_MAX: usize = 31;

/// A short name (at most [`LABEL_MAX`] bytes of UTF-8), stored inline so
/// owners are `Copy` and a snapshot records them as they are.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    len: u8,
    bytes: [u8; LABEL_MAX],
}

impl Label {
    /// `name` as a label; `BadRequest` if it is empty or longer than
    /// [`LABEL_MAX`] bytes.
    pub fn new(name: &str) -> Result<Self> {
        Self::from_bytes(name.as_bytes()).ok_or(Error::new(
            ErrorKind::BadRequest,
            "a label is 1 to 31 bytes",
        ))
    }

    /// A label from UTF-8 bytes, if they are 1 to [`LABEL_MAX`] of them.
    pub(crate) fn from_bytes(name: &[u8]) -> Option<Self> {
        if name.is_empty() || name.len() > LABEL_MAX || core::str::from_utf8(name).is_err() {
            return None;
        }
        let mut bytes = [0; LABEL_MAX];
        bytes[..name.len()].copy_from_slice(name);
        Some(Label {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The label's text.
    pub fn as_str(&self) -> &str {
        // Only whole UTF-8 strings are stored (`from_bytes` checks).
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device, by the number the VMM gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

/// The owner every allocation and ID carries, so that it can be found and
/// freed by owner ([`GuestLayout::free_owner`](crate::GuestLayout::free_owner),
/// [`GuestLayout::free_device`](crate::GuestLayout::free_device)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// A device's base address register.
    Bar {
        /// The device.
        device: DeviceId,
        /// The BAR's index (0 to 5 for a PCI function).
        bar: u8,
    },
    /// A device, for anything but a BAR (an interrupt, a slot, a window).
    Device(DeviceId),
    /// Anything else, by a caller's label (`"ram-low"`, `"firmware"`).
    Label(Label),
}

impl Owner {
    /// A label owner; `BadRequest` as [`Label::new`].
    pub fn label(name: &str) -> Result<Self> {
        Label::new(name).map(Owner::Label)
    }

    /// The device this owner belongs to, if any.
    pub fn device(&self) -> Option<DeviceId> {
        match *self {
            Owner::Bar { device, .. } | Owner::Device(device) => Some(device),
            Owner::Label(_) => None,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Bar { device, bar } => write!(f, "dev {} bar {}", device.0, bar),
            Owner::Device(device) => write!(f, "dev {}", device.0),
            Owner::Label(label) => write!(f, "{label}"),
        }
    }
}
