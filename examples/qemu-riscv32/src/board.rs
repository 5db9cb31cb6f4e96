//! The QEMU `virt` board: a 16550 UART at 0x1000_0000 and the sifive_test exit device at
//! 0x10_0000. This is the only code in the project that touches hardware registers.

use core::ptr::{read_volatile, write_volatile};

const UART_BASE: usize = 0x1000_0000;
const UART_THR: usize = UART_BASE; // transmit holding register (write)
const UART_LSR: usize = UART_BASE + 5; // line status register
const LSR_THR_EMPTY: u8 = 1 << 5;
const EXIT_DEVICE: usize = 0x10_0000;

/// The virt machine's UART, polled.
pub struct Uart;

impl Uart {
    /// Writes one byte, waiting for room in the transmitter.
    pub fn write_byte(&mut self, byte: u8) {
        // SAFETY: UART_LSR and UART_THR are the 16550's registers on QEMU virt; byte-wide
        // volatile accesses are how the device is specified to be driven.
        unsafe {
            while read_volatile(UART_LSR as *const u8) & LSR_THR_EMPTY == 0 {}
            write_volatile(UART_THR as *mut u8, byte);
        }
    }
}

impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            self.write_byte(b);
        }
        Ok(())
    }
}

/// Ends the emulation with a pass (`code == 0`) or fail status.
pub fn exit(code: u16) -> ! {
    let value: u32 = if code == 0 {
        0x5555
    } else {
        (u32::from(code) << 16) | 0x3333
    };
    // SAFETY: EXIT_DEVICE is QEMU's sifive_test device on virt; writing it stops the machine.
    unsafe { write_volatile(EXIT_DEVICE as *mut u32, value) };
    #[allow(clippy::empty_loop)]
    loop {}
}
