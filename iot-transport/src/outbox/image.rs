//! The outbox's saved image: a header with a CRC-32, then one record per queued message.

use crc::{CRC_32_ISO_HDLC, Crc};
use embedded_storage::Storage;
use iot_core::{MessageId, QoS};

use super::{Outbox, OutboxError, Priority};

impl<const N: usize, const M: usize> Outbox<N, M> {
    /// The number of bytes [`Outbox::save`] writes for the current contents.
    pub fn image_len(&self) -> usize {
        self.iter().fold(HEADER_LEN, |acc, e| {
            acc.saturating_add(RECORD_HEADER_LEN)
                .saturating_add(e.data.len())
        })
    }

    /// Writes the queued messages (not the counters) to `storage` at `offset`.
    ///
    /// The header, with a CRC-32 over the records, is written last, so an interrupted save
    /// is detected by [`Outbox::restore`] as corrupt rather than restored half-way.
    pub fn save<S: Storage>(&self, storage: &mut S, offset: u32) -> Result<(), OutboxError> {
        let total = u32::try_from(self.image_len()).map_err(|_| OutboxError::StorageTooSmall)?;
        let end = offset
            .checked_add(total)
            .ok_or(OutboxError::StorageTooSmall)?;
        if usize::try_from(end).map_err(|_| OutboxError::StorageTooSmall)? > storage.capacity() {
            return Err(OutboxError::StorageTooSmall);
        }
        let mut digest = IMAGE_CRC.digest();
        let mut at = offset
            .checked_add(HEADER_LEN_U32)
            .ok_or(OutboxError::StorageTooSmall)?;
        for e in self.iter() {
            let len = u16::try_from(e.data.len()).map_err(|_| OutboxError::StorageTooSmall)?;
            let mut rec = [0u8; RECORD_HEADER_LEN];
            rec[0..4].copy_from_slice(&e.id.0.to_le_bytes());
            rec[4] = e.priority.code();
            rec[5] = e.qos.code();
            rec[6..10].copy_from_slice(&e.attempts.to_le_bytes());
            rec[10..18].copy_from_slice(&e.enqueued_ms.to_le_bytes());
            rec[18..20].copy_from_slice(&len.to_le_bytes());
            for part in [&rec[..], &e.data[..]] {
                digest.update(part);
                storage.write(at, part).map_err(|_| OutboxError::Storage)?;
                at = at
                    .checked_add(u32::try_from(part.len()).map_err(|_| OutboxError::Corrupt)?)
                    .ok_or(OutboxError::StorageTooSmall)?;
            }
        }
        let count = u16::try_from(self.len()).map_err(|_| OutboxError::StorageTooSmall)?;
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC);
        header[4..6].copy_from_slice(&count.to_le_bytes());
        header[6..10].copy_from_slice(&total.to_le_bytes());
        header[10..14].copy_from_slice(&digest.finalize().to_le_bytes());
        storage
            .write(offset, &header)
            .map_err(|_| OutboxError::Storage)
    }

    /// Replaces the queued messages with those saved at `offset`; they become due at
    /// `now_ms` with a fresh retry budget (their `attempts` are kept). That includes a
    /// message that was waiting for the ack of its last attempt when saved: the ack may have
    /// been lost with the reboot, so it is sent again (the receiver's dedup window drops a
    /// duplicate). Counters are kept. On error the outbox is unchanged.
    pub fn restore<S: Storage>(
        &mut self,
        storage: &mut S,
        offset: u32,
        now_ms: u64,
    ) -> Result<usize, OutboxError> {
        let mut header = [0u8; HEADER_LEN];
        storage
            .read(offset, &mut header)
            .map_err(|_| OutboxError::Storage)?;
        let [m0, m1, m2, m3, c0, c1, t0, t1, t2, t3, k0, k1, k2, k3] = header;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(OutboxError::Corrupt);
        }
        let count = usize::from(u16::from_le_bytes([c0, c1]));
        let total = u32::from_le_bytes([t0, t1, t2, t3]);
        let crc = u32::from_le_bytes([k0, k1, k2, k3]);
        if count > N || total < HEADER_LEN_U32 {
            return Err(OutboxError::Corrupt);
        }
        let body_start = offset
            .checked_add(HEADER_LEN_U32)
            .ok_or(OutboxError::Corrupt)?;
        let body_end = offset.checked_add(total).ok_or(OutboxError::Corrupt)?;
        if usize::try_from(body_end).map_err(|_| OutboxError::Corrupt)? > storage.capacity() {
            return Err(OutboxError::Corrupt);
        }
        // First pass: verify the CRC without trusting any record.
        let mut digest = IMAGE_CRC.digest();
        let mut at = body_start;
        let mut chunk = [0u8; 64];
        while at < body_end {
            let n = (body_end.saturating_sub(at)).min(64);
            let part = chunk
                .get_mut(..usize::try_from(n).map_err(|_| OutboxError::Corrupt)?)
                .ok_or(OutboxError::Corrupt)?;
            storage.read(at, part).map_err(|_| OutboxError::Storage)?;
            digest.update(part);
            at = at.saturating_add(n);
        }
        if digest.finalize() != crc {
            return Err(OutboxError::Corrupt);
        }
        // Second pass: parse into a fresh outbox, then swap it in.
        let mut next = Self::new(self.policy, self.retry);
        next.stats = self.stats;
        let mut at = body_start;
        for _ in 0..count {
            let mut rec = [0u8; RECORD_HEADER_LEN];
            storage
                .read(at, &mut rec)
                .map_err(|_| OutboxError::Storage)?;
            at = at
                .checked_add(RECORD_HEADER_LEN_U32)
                .ok_or(OutboxError::Corrupt)?;
            let [
                i0,
                i1,
                i2,
                i3,
                p,
                q,
                a0,
                a1,
                a2,
                a3,
                e0,
                e1,
                e2,
                e3,
                e4,
                e5,
                e6,
                e7,
                l0,
                l1,
            ] = rec;
            let id = MessageId(u32::from_le_bytes([i0, i1, i2, i3]));
            let priority = Priority::from_code(p).ok_or(OutboxError::Corrupt)?;
            let qos = QoS::from_code(q).ok_or(OutboxError::Corrupt)?;
            let attempts = u32::from_le_bytes([a0, a1, a2, a3]);
            let enqueued_ms = u64::from_le_bytes([e0, e1, e2, e3, e4, e5, e6, e7]);
            let len = u16::from_le_bytes([l0, l1]);
            let mut data: heapless::Vec<u8, M> = heapless::Vec::new();
            data.resize(usize::from(len), 0)
                .map_err(|_| OutboxError::Corrupt)?;
            let end = at.checked_add(u32::from(len)).ok_or(OutboxError::Corrupt)?;
            if end > body_end {
                return Err(OutboxError::Corrupt);
            }
            storage
                .read(at, &mut data)
                .map_err(|_| OutboxError::Storage)?;
            at = end;
            if next.contains(id) {
                return Err(OutboxError::Corrupt);
            }
            let slot = next
                .insert(id, priority, qos, &data, now_ms)
                .map_err(|_| OutboxError::Corrupt)?;
            if let Some(e) = next.slots.get_mut(slot) {
                e.enqueued_ms = enqueued_ms;
                e.attempts = attempts;
            }
        }
        if at != body_end {
            return Err(OutboxError::Corrupt);
        }
        *self = next;
        Ok(count)
    }
}

const MAGIC: [u8; 4] = *b"OBX1";
const HEADER_LEN: usize = 14;
const HEADER_LEN_U32: u32 = 14;
const RECORD_HEADER_LEN: usize = 20;
const RECORD_HEADER_LEN_U32: u32 = 20;
const IMAGE_CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
