//! The TSC's frequency, from the first source that knows it: the
//! hypervisor's timing leaf (0x4000_0010, TSC kHz), CPUID leaf 0x15
//! (crystal ratio), CPUID leaf 0x16 (base MHz), or counting PIT channel 0
//! ticks for 10 ms.

use x86_64::instructions::port::Port;

use crate::cpu::{cpuid, hypervisor, rdtsc};

const PIT_HZ: u64 = 1_193_182;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub tsc_hz: u64,
    pub source: &'static str,
}

impl Clock {
    pub fn calibrate() -> Clock {
        if let Some((_, max)) = hypervisor()
            && max >= 0x4000_0010
        {
            let khz = cpuid(0x4000_0010)[0];
            if khz != 0 {
                return Clock {
                    tsc_hz: u64::from(khz) * 1000,
                    source: "hypervisor timing leaf 0x40000010",
                };
            }
        }
        let max = cpuid(0)[0];
        if max >= 0x15 {
            let [denominator, numerator, crystal, _] = cpuid(0x15);
            if denominator != 0 && numerator != 0 && crystal != 0 {
                return Clock {
                    tsc_hz: u64::from(crystal) * u64::from(numerator) / u64::from(denominator),
                    source: "CPUID leaf 0x15 (crystal ratio)",
                };
            }
        }
        if max >= 0x16 {
            let mhz = cpuid(0x16)[0] & 0xffff;
            if mhz != 0 {
                return Clock {
                    tsc_hz: u64::from(mhz) * 1_000_000,
                    source: "CPUID leaf 0x16 (base frequency)",
                };
            }
        }
        match pit_calibrate() {
            Some(hz) => Clock {
                tsc_hz: hz,
                source: "PIT channel 0, 10 ms",
            },
            None => Clock {
                tsc_hz: 1_000_000_000,
                source: "none found: 1 GHz assumed",
            },
        }
    }

    /// Nanoseconds in `cycles` TSC cycles.
    pub fn ns(&self, cycles: u64) -> u64 {
        (u128::from(cycles) * 1_000_000_000 / u128::from(self.tsc_hz.max(1))) as u64
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
