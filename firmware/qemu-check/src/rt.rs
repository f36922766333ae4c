//! The smallest runtime that runs Rust on QEMU's `virt` machine: `_start` sets
//! up gp, sp and the trap vector, zeroes `.bss`, paints the stack (to measure
//! its high-water mark) and calls `main`. `.data` needs no copy: QEMU loads
//! the whole ELF into RAM, where it runs.
//!
//! A trap (illegal instruction such as an atomic on this A-less CPU,
//! misaligned access, access fault, `ebreak` outside semihosting) is reported
//! with its cause and address and ends the run with a failure, instead of
//! hanging until the script's timeout.

use core::arch::global_asm;

/// What `_start` writes over the whole stack; `stack_used` looks for it.
const STACK_PAINT: u32 = 0x5354_4b21;

global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
_start:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    la sp, _stack_top
    la t0, _trap_entry
    csrw mtvec, t0

    la t0, _sbss
    la t1, _ebss
1:  bgeu t0, t1, 2f
    sw zero, 0(t0)
    addi t0, t0, 4
    j 1b
2:
    la t0, _stack_bottom
    la t1, _stack_top
    li t2, {paint}
3:  bgeu t0, t1, 4f
    sw t2, 0(t0)
    addi t0, t0, 4
    j 3b
4:
    call main
5:  j 5b

    .balign 4
_trap_entry:
    csrr a0, mcause
    csrr a1, mepc
    csrr a2, mtval
    la sp, _stack_top
    call qemu_check_trap
6:  j 6b
    "#,
    paint = const STACK_PAINT,
);

extern "C" {
    static _stack_bottom: u32;
    static _stack_top: u32;
}

/// Bytes of the stack written since `_start` painted it (high-water mark),
/// and the stack's size.
pub fn stack_used() -> (usize, usize) {
    // The linker script defines both symbols around the `.stack` section;
    // only their addresses are taken.
    let bottom = core::ptr::addr_of!(_stack_bottom) as usize;
    let top = core::ptr::addr_of!(_stack_top) as usize;
    let mut p = bottom;
    while p < top {
        // SAFETY: `p` is a 4-byte aligned address inside the stack section,
        // which is RAM; reading it is a plain load (volatile: the compiler
        // must not assume anything about memory it did not write).
        if unsafe { core::ptr::read_volatile(p as *const u32) } != STACK_PAINT {
            break;
        }
        p += 4;
    }
    (top - p, top - bottom)
}

/// Called by `_trap_entry` with the trap's CSRs; never returns.
#[no_mangle]
extern "C" fn qemu_check_trap(mcause: usize, mepc: usize, mtval: usize) -> ! {
    let what = match mcause {
        0 => "instruction address misaligned",
        1 => "instruction access fault",
        2 => "illegal instruction",
        3 => "breakpoint",
        4 => "load address misaligned",
        5 => "load access fault",
        6 => "store/AMO address misaligned",
        7 => "store/AMO access fault",
        _ => "other trap or interrupt",
    };
    semihosting::println!(
        "TRAP: {what} (mcause {mcause:#x}) at pc {mepc:#010x}, mtval {mtval:#010x}{}",
        crate::harness::RunningTest
    );
    semihosting::process::exit(2)
}
