//! The device index: device id -> slot number in the registry's dense storage.
//!
//! One SwissTable (`hashbrown::HashTable`, no_std) of `u32` slot numbers; the ids live in
//! the slots themselves, so the table costs 4 bytes plus one control byte per device.
//!
//! **Hasher.** Device ids reach the backend from the network (every message names one) and
//! from tenants' manufacturing lists, so an attacker chooses keys: a tenant could import
//! ids that all collide under a fixed, public hash function (HashDoS), making every lookup
//! of every tenant walk one long probe sequence. The index therefore hashes with
//! SipHash-1-3 (the `siphasher` crate, the function std's `HashMap` uses) under a 128-bit
//! secret key: without the key nobody can construct collisions. With the `std` feature the
//! key is drawn from the operating system's CSPRNG when the first id is inserted; a no_std
//! gateway supplies one from its hardware RNG with [`crate::Fleet::set_index_key`] (until
//! then the key is fixed, which is safe only when every tenant is trusted). Faster
//! unkeyed hashes (FxHash, foldhash with its weak per-process seed) were rejected for this
//! reason; the cost of SipHash over a short id is a few tens of nanoseconds per lookup,
//! against about a microsecond for the B-tree search it replaces at 100,000 devices.

use core::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;
use iot_core::DeviceId;
use siphasher::sip::SipHasher13;

/// SipHash-1-3 under a secret key.
#[derive(Clone, Copy)]
struct Keyed {
    k0: u64,
    k1: u64,
}

impl BuildHasher for Keyed {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

impl Keyed {
    fn hash(self, id: &DeviceId) -> u64 {
        // The id's text only (not its zero padding): shorter input, same equality.
        let mut h = self.build_hasher();
        h.write(id.as_str().as_bytes());
        h.finish()
    }
}

/// Device id -> slot number.
pub(crate) struct DeviceIndex {
    table: HashTable<u32>,
    key: Keyed,
    /// Whether `key` is a secret one (drawn or supplied), not the initial fixed key.
    keyed: bool,
}

impl Default for DeviceIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceIndex {
    pub(crate) const fn new() -> Self {
        Self {
            table: HashTable::new(),
            key: Keyed { k0: 0, k1: 0 },
            keyed: false,
        }
    }

    /// The slot of `id`; `id_of` gives the id stored in a slot.
    pub(crate) fn find<'a>(
        &self,
        id: &DeviceId,
        id_of: impl Fn(u32) -> Option<&'a DeviceId>,
    ) -> Option<u32> {
        self.table
            .find(self.key.hash(id), |&slot| id_of(slot) == Some(id))
            .copied()
    }

    /// Records that `id` (not in the index yet) lives in `slot`.
    pub(crate) fn insert<'a>(
        &mut self,
        id: &DeviceId,
        slot: u32,
        id_of: impl Fn(u32) -> Option<&'a DeviceId>,
    ) {
        #[cfg(feature = "std")]
        if !self.keyed && self.table.is_empty() {
            let mut key = [0u8; 16];
            if rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut key).is_ok() {
                self.set_key_of_empty(key);
            }
        }
        let key = self.key;
        self.table.insert_unique(key.hash(id), slot, |&s| {
            id_of(s).map_or(0, |stored| key.hash(stored))
        });
    }

    fn set_key_of_empty(&mut self, key: [u8; 16]) {
        let (k0, k1) = key.split_at(8);
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        self.key = Keyed {
            k0: word(k0),
            k1: word(k1),
        };
        self.keyed = true;
    }

    /// Re-keys the index with `key` and rebuilds it from the slots `0..slots` (`id_of`
    /// gives each slot's id).
    pub(crate) fn rekey<'a>(
        &mut self,
        key: [u8; 16],
        slots: u32,
        id_of: impl Fn(u32) -> Option<&'a DeviceId> + Copy,
    ) {
        self.set_key_of_empty(key);
        self.table.clear();
        for slot in 0..slots {
            if let Some(id) = id_of(slot) {
                let k = self.key;
                self.table.insert_unique(k.hash(id), slot, |&s| {
                    id_of(s).map_or(0, |stored| k.hash(stored))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn ids(n: u32) -> Vec<DeviceId> {
        (0..n)
            .map(|i| {
                let b = i.to_be_bytes();
                DeviceId::from_mac([0x24, 0x0a, b[0], b[1], b[2], b[3]])
            })
            .collect()
    }

    #[test]
    fn finds_every_inserted_id_before_and_after_rekeying() {
        let ids = ids(5_000);
        let mut index = DeviceIndex::new();
        for (slot, id) in ids.iter().enumerate() {
            index.insert(id, slot as u32, |s| ids.get(s as usize));
        }
        let unknown = DeviceId::new("not-imported").unwrap();
        let check = |index: &DeviceIndex| {
            for (slot, id) in ids.iter().enumerate() {
                assert_eq!(index.find(id, |s| ids.get(s as usize)), Some(slot as u32));
            }
            assert_eq!(index.find(&unknown, |s| ids.get(s as usize)), None);
        };
        check(&index);
        let before = index.key.hash(&ids[0]);
        index.rekey([7; 16], ids.len() as u32, |s| ids.get(s as usize));
        assert_ne!(
            index.key.hash(&ids[0]),
            before,
            "the new key hashes differently"
        );
        check(&index);
    }

    #[cfg(feature = "std")]
    #[test]
    fn std_draws_a_secret_key_at_the_first_insert() {
        let ids = ids(1);
        let (mut a, mut b) = (DeviceIndex::new(), DeviceIndex::new());
        a.insert(&ids[0], 0, |s| ids.get(s as usize));
        b.insert(&ids[0], 0, |s| ids.get(s as usize));
        assert!(a.keyed && b.keyed);
        assert_ne!((a.key.k0, a.key.k1), (b.key.k0, b.key.k1));
    }
}
