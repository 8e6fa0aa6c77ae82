//! The serial console on COM1 and the verdict port (QEMU's isa-debug-exit).
//!
//! Output is buffered per line and sent with one `rep outsb`: under KVM a
//! string port write leaves the guest once for the whole line instead of
//! once per byte, which is most of the boot report's cost. QEMU's UART
//! transmits each byte as it is written, so the line-status register is
//! not polled (on real hardware it would have to be).

use core::fmt::{self, Write};

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
/// isa-debug-exit, as ci/boot configures it (`iobase=0xf4`).
const DEBUG_EXIT: u16 = 0xf4;
const LINE: usize = 256;

/// What the kernel tells ci/boot. QEMU exits with `(value << 1) | 1`: 33 for
/// a pass, 35 for a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    Pass = 0x10,
    Fail = 0x11,
}

pub struct Console {
    line: [u8; LINE],
    len: usize,
}

impl Console {
    const fn new() -> Self {
        Console {
            line: [0; LINE],
            len: 0,
        }
    }

    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: COM1's data port takes any byte; the buffer holds `len`
        // initialised bytes.
        unsafe {
            core::arch::asm!(
                "rep outsb",
                in("dx") COM1,
                inout("rsi") self.line.as_ptr() => _,
                inout("rcx") self.len => _,
                options(nostack, preserves_flags, readonly)
            );
        }
        self.len = 0;
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if b == b'\n' {
                self.push(b'\r');
            }
            self.push(b);
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

impl Console {
    fn push(&mut self, b: u8) {
        if self.len == LINE {
            self.flush();
        }
        self.line[self.len] = b;
        self.len += 1;
    }
}

static CONSOLE: spin::mutex::SpinMutex<Console> = spin::mutex::SpinMutex::new(Console::new());

/// Programs COM1 for 115200 8N1 with interrupts off.
pub fn init() {
    let regs = [
        (1, 0x00),
        (3, 0x80),
        (0, 0x01),
        (1, 0x00),
        (3, 0x03),
        (4, 0x03),
    ];
    for (offset, value) in regs {
        // SAFETY: COM1's registers; programming them has no memory effects.
        unsafe { Port::<u8>::new(COM1 + offset).write(value) };
    }
}

pub fn print(args: fmt::Arguments<'_>) {
    let mut console = CONSOLE.lock();
    let _ = console.write_fmt(args);
}

/// Prints without the console lock: for the exception and panic paths,
/// which may have interrupted a holder of the lock.
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    // SAFETY: nothing runs after a fatal report but the report itself, so
    // the interrupted holder never touches the console again.
    let console = unsafe { &mut *CONSOLE.as_mut_ptr() };
    let _ = console.write_fmt(args);
    console.flush();
}

/// Ends the run with `verdict`.
pub fn exit(verdict: Verdict) -> ! {
    // SAFETY: as in `print_unlocked`: the run ends here.
    unsafe { &mut *CONSOLE.as_mut_ptr() }.flush();
    // SAFETY: isa-debug-exit stops QEMU; nothing is left to run.
    unsafe { Port::<u32>::new(DEBUG_EXIT).write(verdict as u32) };
    // Without the device (not booted by ci/boot), stop here.
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
