//! gridpow's `no_std` code on a real RV32IMC CPU (the ESP32-C3's instruction
//! set: no atomics, no floating point) under QEMU's `virt` machine:
//!
//! ```text
//! qemu-system-riscv32 -machine virt -cpu rv32,a=false,f=false,d=false -m 16M \
//!   -bios none -nographic -semihosting-config enable=on,target=native -kernel ELF
//! ```
//!
//! Output and the exit code go through semihosting: 0 when every test passed,
//! 1 when a check failed, 101 on a panic, 2 on a CPU trap. It checks logic on
//! the real instruction set (32-bit arithmetic, soft float, alignment, stack
//! use), not drivers: `virt` has no ESP32 peripherals and no radio.
//!
//! `unsafe` is limited to `rt.rs` (start-up assembly and reading the stack).
#![no_std]
#![no_main]

#[macro_use]
mod harness;
mod rt;

use harness::Suite;

/// Declares the test modules and the order they run in. Adding a suite is
/// one name here (and the file `src/<name>.rs` with a `tests![...]` list).
macro_rules! suites {
    ($($m:ident),+ $(,)?) => {
        $(mod $m;)+
        /// Every suite, in run order.
        pub static SUITES: &[Suite] = &[$(Suite { name: stringify!($m), tests: $m::TESTS }),+];
    };
}

suites! {
    vectors,
    metering,
    state_log,
    lifecycle,
    journal_cut,
    provisioning,
}

#[no_mangle]
extern "C" fn main() -> ! {
    let (passed, failed) = harness::run();
    let (used, size) = rt::stack_used();
    semihosting::println!("stack high-water mark: {used} of {size} bytes");
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    semihosting::println!("test result: {verdict}. {passed} passed; {failed} failed");
    semihosting::process::exit(if failed == 0 { 0 } else { 1 })
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    semihosting::println!("PANIC{}: {info}", harness::RunningTest);
    semihosting::process::exit(101)
}
