//! The QEMU `virt` board: a 16550 UART at 0x1000_0000, the `time` CSR (10 MHz) and the
//! sifive_test exit device at 0x10_0000. This is the only code in the project that touches
//! hardware registers.

use core::convert::Infallible;
use core::ptr::{read_volatile, write_volatile};

const UART_BASE: usize = 0x1000_0000;
const UART_THR: usize = UART_BASE; // transmit holding register (write)
const UART_RBR: usize = UART_BASE; // receive buffer register (read)
const UART_LSR: usize = UART_BASE + 5; // line status register
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;
const EXIT_DEVICE: usize = 0x10_0000;
/// The virt machine's timebase.
const TIME_HZ: u64 = 10_000_000;

/// Milliseconds since reset, from the `time` CSR.
pub fn now_ms() -> u64 {
    riscv::register::time::read64() / (TIME_HZ / 1_000)
}

/// The virt machine's UART, polled. Implements the embedded-io traits the framed link needs.
pub struct Uart;

impl Uart {
    fn write_byte(&mut self, byte: u8) {
        // SAFETY: UART_LSR and UART_THR are the 16550's registers on QEMU virt; byte-wide
        // volatile accesses are how the device is specified to be driven.
        unsafe {
            while read_volatile(UART_LSR as *const u8) & LSR_THR_EMPTY == 0 {}
            write_volatile(UART_THR as *mut u8, byte);
        }
    }

    fn data_ready(&self) -> bool {
        // SAFETY: as above, for the line status register.
        unsafe { read_volatile(UART_LSR as *const u8) & LSR_DATA_READY != 0 }
    }

    fn read_byte(&mut self) -> u8 {
        // SAFETY: as above, for the receive buffer register.
        unsafe { read_volatile(UART_RBR as *const u8) }
    }
}

impl embedded_io::ErrorType for Uart {
    type Error = Infallible;
}

impl embedded_io::ReadReady for Uart {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.data_ready())
    }
}

impl embedded_io_async::Read for Uart {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.data_ready() {
            core::hint::spin_loop();
        }
        let mut n = 0;
        for slot in buf.iter_mut() {
            if n > 0 && !self.data_ready() {
                break;
            }
            *slot = self.read_byte();
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io_async::Write for Uart {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &b in buf {
            self.write_byte(b);
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        // Every byte is in the transmit register when `write` returns.
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
