//! The TSC's frequency, from the first source that knows it: the
//! hypervisor's timing leaf (0x4000_0010, TSC kHz), CPUID leaf 0x15
//! (crystal ratio), CPUID leaf 0x16 (base MHz), or counting PIT channel 0
//! ticks for 10 ms; and the accelerator the guest runs under, which
//! every printed timing names, since a figure taken under TCG's emulation
//! (or software KVM) is no measure of the hardware.

use x86_64::instructions::port::Port;

use crate::cpu::{cpuid, hypervisor, rdtsc};

const PIT_HZ: u64 = 1_193_182;

/// The accelerator QEMU runs the guest under, as `ci/boot` says on the
/// command line (`accel=kvm`, `accel=kvm-software` or `accel=tcg`). The
/// guest cannot tell for itself: CPUID's hypervisor leaf says KVM for
/// hardware and software KVM alike, and TCG may show no signature at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM on a CPU with VMX or SVM: timings near the hardware's.
    Kvm,
    /// KVM on a CPU without VMX or SVM (such as `kvm_pvm`): every exit is
    /// emulated in software, some 2,000 times slower than TCG.
    KvmSoftware,
    /// QEMU's TCG: the guest's instructions translated and emulated.
    Tcg,
    /// No `accel=` word, or one this kernel does not know.
    Unknown,
}

impl Accel {
    /// The accelerator named by an `accel=` value.
    pub fn from_word(value: Option<&str>) -> Accel {
        match value {
            Some("kvm") => Accel::Kvm,
            Some("kvm-software") => Accel::KvmSoftware,
            Some("tcg") => Accel::Tcg,
            _ => Accel::Unknown,
        }
    }

    /// The short mark printed beside every timing.
    pub fn mark(self) -> &'static str {
        match self {
            Accel::Kvm => "[kvm]",
            Accel::KvmSoftware => "[kvm-software]",
            Accel::Tcg => "[tcg]",
            Accel::Unknown => "[accel?]",
        }
    }

    /// What a timing taken under this accelerator is worth.
    pub fn meaning(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM with hardware virtualization: near hardware figures",
            Accel::KvmSoftware => {
                "software KVM (the CPU shows no VMX/SVM): emulated, far slower than hardware or TCG"
            }
            Accel::Tcg => "TCG emulation: emulated figures, not hardware ones",
            Accel::Unknown => {
                "unknown accelerator (no accel= word this kernel knows): perhaps emulated figures"
            }
        }
    }
}

/// Converts TSC cycles to time, and knows what that time is worth.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub tsc_hz: u64,
    pub source: &'static str,
    /// Under what the cycles were counted; every timing prints its mark.
    pub accel: Accel,
}

impl Clock {
    pub fn calibrate(accel: Accel) -> Clock {
        let (tsc_hz, source) = tsc_frequency();
        Clock {
            tsc_hz,
            source,
            accel,
        }
    }

    /// Nanoseconds in `cycles` TSC cycles.
    pub fn ns(&self, cycles: u64) -> u64 {
        (u128::from(cycles) * 1_000_000_000 / u128::from(self.tsc_hz.max(1))) as u64
    }

    /// The mark each printed timing carries, such as `[tcg]`.
    pub fn mark(&self) -> &'static str {
        self.accel.mark()
    }
}

/// TSC cycles per second and where the figure came from.
fn tsc_frequency() -> (u64, &'static str) {
    if let Some((_, max)) = hypervisor()
        && max >= 0x4000_0010
    {
        let khz = cpuid(0x4000_0010)[0];
        if khz != 0 {
            return (u64::from(khz) * 1000, "hypervisor timing leaf 0x40000010");
        }
    }
    let max = cpuid(0)[0];
    if max >= 0x15 {
        let [denominator, numerator, crystal, _] = cpuid(0x15);
        if denominator != 0 && numerator != 0 && crystal != 0 {
            return (
                u64::from(crystal) * u64::from(numerator) / u64::from(denominator),
                "CPUID leaf 0x15 (crystal ratio)",
            );
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16)[0] & 0xffff;
        if mhz != 0 {
            return (
                u64::from(mhz) * 1_000_000,
                "CPUID leaf 0x16 (base frequency)",
            );
        }
    }
    match pit_calibrate() {
        Some(hz) => (hz, "PIT channel 0, 10 ms"),
        None => (1_000_000_000, "none found: 1 GHz assumed"),
    }
}

/// TSC cycles per second, counted against PIT channel 0 in mode 2 (rate
/// generator) read by latching; `None` if the counter does not move.
fn pit_calibrate() -> Option<u64> {
    let mut command = Port::<u8>::new(0x43);
    let mut channel0 = Port::<u8>::new(0x40);
    let mut read = || {
        // SAFETY: latching and reading PIT channel 0 has no memory effects.
        unsafe {
            command.write(0x00);
            let lo = channel0.read();
            let hi = channel0.read();
            u16::from_le_bytes([lo, hi])
        }
    };
    // SAFETY: channel 0, low then high byte, mode 2, binary, count 65535;
    // no interrupt is enabled, so its ticks only feed this count.
    unsafe {
        Port::<u8>::new(0x43).write(0x34);
        Port::<u8>::new(0x40).write(0xff);
        Port::<u8>::new(0x40).write(0xff);
    }
    let target = PIT_HZ / 100;
    let mut prev = read();
    let start = rdtsc();
    let mut ticks = 0u64;
    let mut polls = 0u64;
    while ticks < target {
        let now = read();
        ticks += u64::from(prev.wrapping_sub(now));
        prev = now;
        polls += 1;
        if ticks == 0 && polls > 100_000 {
            return None;
        }
    }
    Some((rdtsc() - start) * PIT_HZ / ticks)
}
