//! Framed serial links: COBS framing with a CRC-16, so a UART can carry datagrams.
//!
//! A frame on the wire is `COBS(payload ‖ CRC-16/IBM-3740(payload), big-endian) ‖ 0x00`.
//! COBS removes every zero byte from the body, so `0x00` only ever means "end of frame": a
//! receiver that starts mid-stream, or sees line noise, throws away at most one frame and is
//! back in step at the next delimiter. The CRC catches corrupted bytes that COBS alone would
//! pass. Nothing here allocates or panics on input.
//!
//! * [`encode_frame`] writes one frame into a caller buffer.
//! * [`FrameDecoder`] takes bytes one at a time (from an interrupt, a DMA buffer or a poll
//!   loop) and yields checked payloads; errors are reported and counted, and it resynchronises.
//! * [`FramedLink`] turns any `embedded_io_async` serial port into a [`Link`]; [`FramedSerial`]
//!   is the blocking twin over `embedded_io`.
//!
//! ```
//! use iot_transport::framing::{encode_frame, FrameDecoder};
//!
//! let mut wire = [0u8; 32];
//! let n = encode_frame(b"hi\0there", &mut wire)?;
//! let mut decoder = FrameDecoder::<32>::new();
//! let mut got = None;
//! // Garbage before the frame is discarded at the first delimiter.
//! for &b in [0x13, 0x37, 0x00].iter().chain(&wire[..n]) {
//!     if let Ok(Some(frame)) = decoder.push(b) {
//!         got = Some(heapless::Vec::<u8, 32>::from_slice(frame).unwrap());
//!     }
//! }
//! assert_eq!(got.as_deref(), Some(&b"hi\0there"[..]));
//! assert_eq!(decoder.stats().frames, 1);
//! # Ok::<(), iot_transport::framing::FrameError>(())
//! ```

use crc::{CRC_16_IBM_3740, Crc};

use crate::link::{Link, LinkInfo, LinkState, Medium};

/// The CRC used on frames: CRC-16/IBM-3740 (a.k.a. CCITT-FALSE), polynomial 0x1021.
pub const FRAME_CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;

/// Bytes of CRC appended to each payload.
pub const CRC_LEN: usize = 2;

/// The largest encoded frame, delimiter included, for a payload of `payload_len` bytes.
pub const fn max_encoded_len(payload_len: usize) -> usize {
    let body = payload_len.saturating_add(CRC_LEN);
    // One COBS code byte per started 254-byte block, plus the delimiter.
    body.saturating_add(body / 254).saturating_add(2)
}

/// The largest payload whose frame fits in `buffer_len` bytes.
pub const fn max_payload_len(buffer_len: usize) -> usize {
    let mut p = buffer_len.saturating_sub(CRC_LEN + 2);
    while p > 0 && max_encoded_len(p) > buffer_len {
        p = p.saturating_sub(1);
    }
    p
}

/// Why a frame could not be encoded or decoded.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FrameError {
    /// The output buffer cannot hold the encoded frame.
    #[error("output buffer too small for the frame")]
    BufferTooSmall,
    /// A frame grew beyond the decoder's buffer; bytes up to the next delimiter are dropped.
    #[error("frame longer than the receive buffer")]
    Overflow,
    /// The bytes between two delimiters are not valid COBS.
    #[error("malformed COBS encoding")]
    Malformed,
    /// The frame is too short to carry a CRC.
    #[error("frame too short")]
    TooShort,
    /// The CRC does not match the payload.
    #[error("CRC mismatch")]
    Crc,
}

impl iot_core::Error for FrameError {
    fn kind(&self) -> iot_core::ErrorKind {
        use iot_core::ErrorKind;
        match self {
            Self::BufferTooSmall | Self::Overflow => ErrorKind::Capacity,
            Self::Malformed | Self::TooShort | Self::Crc => ErrorKind::Decode,
        }
    }
}

struct Out<'a> {
    buf: &'a mut [u8],
}

impl Out<'_> {
    fn put(&mut self, at: usize, byte: u8) -> Result<(), FrameError> {
        *self.buf.get_mut(at).ok_or(FrameError::BufferTooSmall)? = byte;
        Ok(())
    }
}

fn next_index(i: usize) -> Result<usize, FrameError> {
    i.checked_add(1).ok_or(FrameError::BufferTooSmall)
}

/// Encodes `payload` as one frame (COBS body, CRC, delimiter) into `out`; returns its length.
pub fn encode_frame(payload: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let crc = FRAME_CRC.checksum(payload).to_be_bytes();
    let mut out = Out { buf: out };
    let mut code_at = 0usize;
    let mut write_at = 1usize;
    let mut code: u8 = 1;
    for &byte in payload.iter().chain(crc.iter()) {
        if byte == 0 {
            out.put(code_at, code)?;
            code_at = write_at;
            write_at = next_index(write_at)?;
            code = 1;
        } else {
            out.put(write_at, byte)?;
            write_at = next_index(write_at)?;
            code = code.saturating_add(1);
            if code == 0xFF {
                out.put(code_at, code)?;
                code_at = write_at;
                write_at = next_index(write_at)?;
                code = 1;
            }
        }
    }
    out.put(code_at, code)?;
    out.put(write_at, DELIMITER)?;
    next_index(write_at)
}

/// Decodes COBS in place (the output is never longer than the input); returns the length.
fn cobs_decode_in_place(buf: &mut [u8]) -> Result<usize, FrameError> {
    let len = buf.len();
    let mut read = 0usize;
    let mut write = 0usize;
    while read < len {
        let code = *buf.get(read).ok_or(FrameError::Malformed)?;
        if code == 0 {
            return Err(FrameError::Malformed);
        }
        read = read.saturating_add(1);
        for _ in 1..code {
            let byte = *buf.get(read).ok_or(FrameError::Malformed)?;
            if byte == 0 {
                return Err(FrameError::Malformed);
            }
            *buf.get_mut(write).ok_or(FrameError::Malformed)? = byte;
            read = read.saturating_add(1);
            write = write.saturating_add(1);
        }
        if code != 0xFF && read < len {
            *buf.get_mut(write).ok_or(FrameError::Malformed)? = 0;
            write = write.saturating_add(1);
        }
    }
    Ok(write)
}

/// Decodes one complete frame body (without the delimiter) in place and checks its CRC;
/// returns the payload length.
pub fn decode_frame_in_place(body: &mut [u8]) -> Result<usize, FrameError> {
    let decoded = cobs_decode_in_place(body)?;
    let payload_len = decoded.checked_sub(CRC_LEN).ok_or(FrameError::TooShort)?;
    let (payload, rest) = body.split_at(payload_len);
    let crc = rest.get(..CRC_LEN).ok_or(FrameError::TooShort)?;
    if FRAME_CRC.checksum(payload).to_be_bytes() != crc {
        return Err(FrameError::Crc);
    }
    Ok(payload_len)
}

/// Counters kept by a [`FrameDecoder`]: nothing is dropped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FrameStats {
    /// Good frames delivered.
    pub frames: u32,
    /// Frames that failed the CRC.
    pub crc_errors: u32,
    /// Frames that were not valid COBS or too short.
    pub malformed: u32,
    /// Frames longer than the buffer.
    pub overflows: u32,
}

/// A streaming frame decoder holding at most `N` encoded bytes of one frame.
#[derive(Debug, Clone)]
pub struct FrameDecoder<const N: usize> {
    buf: [u8; N],
    len: usize,
    discarding: bool,
    reset_next: bool,
    stats: FrameStats,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            discarding: false,
            reset_next: false,
            stats: FrameStats {
                frames: 0,
                crc_errors: 0,
                malformed: 0,
                overflows: 0,
            },
        }
    }

    /// The counters so far.
    pub const fn stats(&self) -> FrameStats {
        self.stats
    }

    /// Takes one byte. Returns `Ok(Some(payload))` when a delimiter completes a good frame,
    /// `Ok(None)` while a frame is in progress, and an error for a bad frame (the decoder is
    /// then already resynchronised for the next one).
    pub fn push(&mut self, byte: u8) -> Result<Option<&[u8]>, FrameError> {
        if self.reset_next {
            self.len = 0;
            self.reset_next = false;
        }
        if byte != DELIMITER {
            if self.discarding {
                return Ok(None);
            }
            match self.buf.get_mut(self.len) {
                Some(slot) => {
                    *slot = byte;
                    self.len = self.len.saturating_add(1);
                    return Ok(None);
                }
                None => {
                    self.discarding = true;
                    self.len = 0;
                    self.stats.overflows = self.stats.overflows.saturating_add(1);
                    return Err(FrameError::Overflow);
                }
            }
        }
        if self.discarding {
            self.discarding = false;
            self.len = 0;
            return Ok(None);
        }
        if self.len == 0 {
            return Ok(None);
        }
        self.reset_next = true;
        let body = self.buf.get_mut(..self.len).ok_or(FrameError::Overflow)?;
        match decode_frame_in_place(body) {
            Ok(n) => {
                self.stats.frames = self.stats.frames.saturating_add(1);
                Ok(Some(body.get(..n).ok_or(FrameError::TooShort)?))
            }
            Err(e) => {
                if e == FrameError::Crc {
                    self.stats.crc_errors = self.stats.crc_errors.saturating_add(1);
                } else {
                    self.stats.malformed = self.stats.malformed.saturating_add(1);
                }
                Err(e)
            }
        }
    }
}

/// Why a framed serial link failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FramedError<E> {
    /// The serial port failed.
    #[error("serial I/O error: {0:?}")]
    Io(E),
    /// The datagram does not fit in one frame buffer.
    #[error("datagram too large for the frame buffer")]
    TooLarge,
    /// The caller's receive buffer is smaller than the frame.
    #[error("receive buffer too small")]
    BufferTooSmall,
    /// The serial port reported end of stream.
    #[error("end of stream")]
    Eof,
}

impl<E: embedded_io::Error> iot_core::Error for FramedError<E> {
    fn kind(&self) -> iot_core::ErrorKind {
        use iot_core::ErrorKind;
        match self {
            Self::Io(e) => crate::link::io_error_kind(e.kind()),
            Self::Eof => ErrorKind::Transport,
            Self::TooLarge | Self::BufferTooSmall => ErrorKind::Capacity,
        }
    }
}

const RX_CHUNK: usize = 64;

/// The parts shared by the async and blocking framed links.
#[derive(Debug)]
struct FramedCore<const N: usize> {
    tx: [u8; N],
    decoder: FrameDecoder<N>,
    chunk: [u8; RX_CHUNK],
    chunk_pos: usize,
    chunk_len: usize,
}

impl<const N: usize> FramedCore<N> {
    const fn new() -> Self {
        Self {
            tx: [0; N],
            decoder: FrameDecoder::new(),
            chunk: [0; RX_CHUNK],
            chunk_pos: 0,
            chunk_len: 0,
        }
    }

    /// Encodes with a leading delimiter too: whatever garbage the receiver holds is closed
    /// off as one bad frame instead of corrupting this one.
    fn encode<E>(&mut self, datagram: &[u8]) -> Result<&[u8], FramedError<E>> {
        let (lead, body) = self.tx.split_first_mut().ok_or(FramedError::TooLarge)?;
        *lead = DELIMITER;
        let n = encode_frame(datagram, body).map_err(|_| FramedError::TooLarge)?;
        self.tx
            .get(..n.saturating_add(1))
            .ok_or(FramedError::TooLarge)
    }

    /// The largest datagram one frame carries with `N`-byte buffers.
    const fn mtu() -> usize {
        max_payload_len(N.saturating_sub(1))
    }

    /// Runs buffered bytes through the decoder; `Some(len)` once a frame was copied to `out`.
    fn drain<E>(&mut self, out: &mut [u8]) -> Result<Option<usize>, FramedError<E>> {
        while self.chunk_pos < self.chunk_len {
            let byte = self.chunk.get(self.chunk_pos).copied().unwrap_or(DELIMITER);
            self.chunk_pos = self.chunk_pos.saturating_add(1);
            // Bad frames are counted in the decoder's stats and skipped: the link resynchronises.
            if let Ok(Some(frame)) = self.decoder.push(byte) {
                let dst = out
                    .get_mut(..frame.len())
                    .ok_or(FramedError::BufferTooSmall)?;
                dst.copy_from_slice(frame);
                return Ok(Some(frame.len()));
            }
        }
        Ok(None)
    }

    fn refilled<E>(&mut self, n: usize) -> Result<(), FramedError<E>> {
        if n == 0 {
            return Err(FramedError::Eof);
        }
        self.chunk_pos = 0;
        self.chunk_len = n.min(RX_CHUNK);
        Ok(())
    }
}

/// A [`Link`] over an async serial port (`embedded_io_async::Read + Write`) using COBS+CRC
/// frames held in `N`-byte buffers. Each frame is sent with a leading delimiter as well, so
/// a receiver holding line noise loses only the noise.
#[derive(Debug)]
pub struct FramedLink<T, const N: usize> {
    io: T,
    core: FramedCore<N>,
    bitrate_bps: u32,
}

impl<T, const N: usize> FramedLink<T, N> {
    /// Wraps a serial port running at `bitrate_bps` (used for link selection only).
    pub const fn new(io: T, bitrate_bps: u32) -> Self {
        Self {
            io,
            core: FramedCore::new(),
            bitrate_bps,
        }
    }

    /// The decoder's counters (good frames, CRC errors, malformed frames, overflows).
    pub const fn stats(&self) -> FrameStats {
        self.core.decoder.stats()
    }

    /// The wrapped port.
    pub fn into_inner(self) -> T {
        self.io
    }
}

fn serial_info(mtu: usize, bitrate_bps: u32) -> LinkInfo {
    LinkInfo {
        medium: Medium::Serial,
        mtu: u16::try_from(mtu).unwrap_or(u16::MAX),
        bitrate_bps,
        latency_ms: 1,
        energy_nj_per_byte: 50,
        cost_micro_per_kib: 0,
        rssi_dbm: None,
        snr_db: None,
        state: LinkState::Up,
    }
}

impl<T, const N: usize> Link for FramedLink<T, N>
where
    T: embedded_io_async::Read + embedded_io_async::Write + embedded_io::ReadReady,
{
    type Error = FramedError<T::Error>;

    fn info(&self) -> LinkInfo {
        serial_info(FramedCore::<N>::mtu(), self.bitrate_bps)
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), Self::Error> {
        let frame = self.core.encode(datagram)?;
        self.io.write_all(frame).await.map_err(FramedError::Io)?;
        self.io.flush().await.map_err(FramedError::Io)
    }

    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        loop {
            if let Some(n) = self.core.drain(buf)? {
                return Ok(n);
            }
            let n = self
                .io
                .read(&mut self.core.chunk)
                .await
                .map_err(FramedError::Io)?;
            self.core.refilled(n)?;
        }
    }

    fn try_receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error> {
        loop {
            if let Some(n) = self.core.drain(buf)? {
                return Ok(Some(n));
            }
            if !self.io.read_ready().map_err(FramedError::Io)? {
                return Ok(None);
            }
            match poll_read_once(&mut self.io, &mut self.core.chunk)? {
                Some(n) => self.core.refilled(n)?,
                None => return Ok(None),
            }
        }
    }
}

/// Reads from a port that reported `read_ready`: its `read` then completes without waiting,
/// so polling the future once is enough. `None` if it waits after all.
fn poll_read_once<T>(io: &mut T, buf: &mut [u8]) -> Result<Option<usize>, FramedError<T::Error>>
where
    T: embedded_io_async::Read,
{
    use core::future::Future;
    use core::pin::pin;
    use core::task::{Context, Poll, Waker};
    let mut fut = pin!(io.read(buf));
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.map(Some).map_err(FramedError::Io),
        // A port that said "ready" but then waits: no data this round.
        Poll::Pending => Ok(None),
    }
}

/// The blocking twin of [`FramedLink`], over `embedded_io::Read + Write`.
#[derive(Debug)]
pub struct FramedSerial<T, const N: usize> {
    io: T,
    core: FramedCore<N>,
}

impl<T, const N: usize> FramedSerial<T, N>
where
    T: embedded_io::Read + embedded_io::Write,
{
    /// Wraps a blocking serial port.
    pub const fn new(io: T) -> Self {
        Self {
            io,
            core: FramedCore::new(),
        }
    }

    /// The decoder's counters.
    pub const fn stats(&self) -> FrameStats {
        self.core.decoder.stats()
    }

    /// The largest datagram one frame carries.
    pub const fn mtu(&self) -> usize {
        FramedCore::<N>::mtu()
    }

    /// Sends one datagram as a frame.
    pub fn send(&mut self, datagram: &[u8]) -> Result<(), FramedError<T::Error>> {
        let frame = self.core.encode(datagram)?;
        self.io.write_all(frame).map_err(FramedError::Io)?;
        self.io.flush().map_err(FramedError::Io)
    }

    /// Blocks until a good frame arrives; bad frames are counted and skipped.
    pub fn receive(&mut self, buf: &mut [u8]) -> Result<usize, FramedError<T::Error>> {
        loop {
            if let Some(n) = self.core.drain(buf)? {
                return Ok(n);
            }
            let n = self
                .io
                .read(&mut self.core.chunk)
                .map_err(FramedError::Io)?;
            self.core.refilled(n)?;
        }
    }

    /// The wrapped port.
    pub fn into_inner(self) -> T {
        self.io
    }
}

/// Joins the two halves of a split UART (HALs hand out separate RX and TX drivers) into one
/// port for [`FramedLink`] and [`FramedSerial`].
#[derive(Debug)]
pub struct Duplex<R, W> {
    /// The receive half.
    pub rx: R,
    /// The transmit half.
    pub tx: W,
}

impl<R, W> Duplex<R, W> {
    /// Joins `rx` and `tx`.
    pub const fn new(rx: R, tx: W) -> Self {
        Self { rx, tx }
    }
}

/// An error of either half of a [`Duplex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DuplexError<RE, WE> {
    /// The receive half failed.
    #[error("receive half: {0:?}")]
    Rx(RE),
    /// The transmit half failed.
    #[error("transmit half: {0:?}")]
    Tx(WE),
}

impl<RE: embedded_io::Error, WE: embedded_io::Error> embedded_io::Error for DuplexError<RE, WE> {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            Self::Rx(e) => e.kind(),
            Self::Tx(e) => e.kind(),
        }
    }
}

impl<R: embedded_io::ErrorType, W: embedded_io::ErrorType> embedded_io::ErrorType for Duplex<R, W> {
    type Error = DuplexError<R::Error, W::Error>;
}

impl<R: embedded_io::Read, W: embedded_io::ErrorType> embedded_io::Read for Duplex<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.rx.read(buf).map_err(DuplexError::Rx)
    }
}

impl<R: embedded_io::ReadReady, W: embedded_io::ErrorType> embedded_io::ReadReady for Duplex<R, W> {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        self.rx.read_ready().map_err(DuplexError::Rx)
    }
}

impl<R: embedded_io::ErrorType, W: embedded_io::Write> embedded_io::Write for Duplex<R, W> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.tx.write(buf).map_err(DuplexError::Tx)
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        self.tx.flush().map_err(DuplexError::Tx)
    }
}

impl<R: embedded_io_async::Read, W: embedded_io::ErrorType> embedded_io_async::Read
    for Duplex<R, W>
{
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.rx.read(buf).await.map_err(DuplexError::Rx)
    }
}

impl<R: embedded_io::ErrorType, W: embedded_io_async::Write> embedded_io_async::Write
    for Duplex<R, W>
{
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.tx.write(buf).await.map_err(DuplexError::Tx)
    }
    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.tx.flush().await.map_err(DuplexError::Tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(payload: &[u8]) {
        let mut wire = [0u8; 1200];
        let n = encode_frame(payload, &mut wire).unwrap();
        assert!(n <= max_encoded_len(payload.len()));
        assert_eq!(wire[n - 1], 0);
        assert!(!wire[..n - 1].contains(&0));
        let mut d = FrameDecoder::<1200>::new();
        let mut got = None;
        for &b in &wire[..n] {
            if let Some(f) = d.push(b).unwrap() {
                got = Some(f.to_vec());
            }
        }
        assert_eq!(got.as_deref(), Some(payload));
    }

    #[test]
    fn edge_payloads_round_trip() {
        round_trip(&[]);
        round_trip(&[0]);
        round_trip(&[0, 0, 0]);
        round_trip(&[1; 253]);
        round_trip(&[1; 254]);
        round_trip(&[1; 255]);
        round_trip(&[7; 1000]);
        let mixed: std::vec::Vec<u8> = (0..=255u8).cycle().take(900).collect();
        round_trip(&mixed);
    }

    #[test]
    fn serial_errors_keep_their_io_kind() {
        use iot_core::{Error as _, ErrorKind};
        let timeout = FramedError::Io(embedded_io::ErrorKind::TimedOut);
        assert_eq!(timeout.kind(), ErrorKind::Timeout);
        let denied = FramedError::Io(embedded_io::ErrorKind::PermissionDenied);
        assert_eq!(denied.kind(), ErrorKind::Unauthorized);
        let broken = FramedError::Io(embedded_io::ErrorKind::BrokenPipe);
        assert_eq!(broken.kind(), ErrorKind::Transport);
        assert_eq!(
            FramedError::<embedded_io::ErrorKind>::Eof.kind(),
            ErrorKind::Transport
        );
    }

    #[test]
    fn short_output_is_an_error_not_a_panic() {
        let mut out = [0u8; 4];
        assert_eq!(
            encode_frame(&[1, 2, 3], &mut out),
            Err(FrameError::BufferTooSmall)
        );
        assert_eq!(encode_frame(&[], &mut []), Err(FrameError::BufferTooSmall));
    }

    #[test]
    fn max_payload_len_is_tight() {
        for buf in 0..600usize {
            let p = max_payload_len(buf);
            if buf >= 4 {
                assert!(max_encoded_len(p) <= buf, "{buf}");
                assert!(max_encoded_len(p + 1) > buf, "{buf}");
            }
        }
    }

    #[test]
    fn corrupted_byte_is_caught_and_decoder_recovers() {
        let mut wire = [0u8; 64];
        let n = encode_frame(b"hello world", &mut wire).unwrap();
        let mut bad = wire;
        bad[3] ^= 0x01;
        let mut d = FrameDecoder::<64>::new();
        let mut errors = 0;
        let mut frames = 0;
        for &b in bad[..n].iter().chain(&wire[..n]) {
            match d.push(b) {
                Ok(Some(f)) => {
                    assert_eq!(f, b"hello world");
                    frames += 1;
                }
                Ok(None) => {}
                Err(_) => errors += 1,
            }
        }
        assert_eq!((frames, errors), (1, 1));
        assert_eq!(d.stats().frames, 1);
        assert_eq!(d.stats().crc_errors + d.stats().malformed, 1);
    }

    #[test]
    fn overflow_discards_until_delimiter() {
        let mut d = FrameDecoder::<8>::new();
        let mut overflow = 0;
        for b in 1..=20u8 {
            if d.push(b) == Err(FrameError::Overflow) {
                overflow += 1;
            }
        }
        assert_eq!(overflow, 1);
        assert_eq!(d.push(0), Ok(None));
        let mut wire = [0u8; 8];
        let n = encode_frame(b"ok", &mut wire).unwrap();
        let mut got = false;
        for &b in &wire[..n] {
            if let Ok(Some(f)) = d.push(b) {
                assert_eq!(f, b"ok");
                got = true;
            }
        }
        assert!(got);
        assert_eq!(d.stats().overflows, 1);
    }

    #[test]
    fn too_short_and_malformed_bodies() {
        let mut d = FrameDecoder::<8>::new();
        // Code 0x05 promises 4 bytes but only 1 follows.
        assert_eq!(d.push(5), Ok(None));
        assert_eq!(d.push(1), Ok(None));
        assert_eq!(d.push(0), Err(FrameError::Malformed));
        // A valid COBS body holding a single byte has no room for a CRC.
        assert_eq!(d.push(2), Ok(None));
        assert_eq!(d.push(9), Ok(None));
        assert_eq!(d.push(0), Err(FrameError::TooShort));
        assert_eq!(d.stats().malformed, 2);
    }
}
