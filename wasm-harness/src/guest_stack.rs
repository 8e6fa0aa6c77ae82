/// Bytes of the guest's stack (its `-zstack-size`), at the bottom of linear
/// memory, where an overflow traps instead of corrupting data. rustc's
/// default is 1 MiB; the scenarios here peak at about 210 KiB, because
/// vmem-core builds large values (size classes, quantum caches: tens of KiB
/// each on wasm32) on the stack and moves them by value. The
/// `stack_has_headroom` test fails past three quarters of this.
pub const GUEST_STACK_BYTES: usize = 512 << 10;
