//! `FlashStorage`: keyed records in a `sequential-storage` map on a `NorFlash`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    unreachable_pub
)]

use iot_agent::Storage;
use iot_agent::storage::{AGENT_RECORD, FlashStorage, OUTBOX_RECORD, StorageError};
use iot_lifecycle::mem_flash::MemFlash;

type Flash = MemFlash<4096, 1024, 4>;

#[test]
fn records_under_different_keys_are_kept_apart_and_the_newest_wins() {
    let mut store: FlashStorage<Flash, 512> = FlashStorage::new(MemFlash::new(), 0..4096).unwrap();
    let mut buf = [0u8; 512];
    assert_eq!(store.load(&mut buf).unwrap(), None);
    // Many more saves than the pages hold copies: older copies are collected.
    for i in 0..200u32 {
        store.save(&i.to_le_bytes()).unwrap();
        let outbox = [i as u8; 300];
        store.save_item(OUTBOX_RECORD, &outbox).unwrap();
    }
    assert_eq!(
        store.load(&mut buf).unwrap(),
        Some(&199u32.to_le_bytes()[..])
    );
    let got = store.load_item(OUTBOX_RECORD, &mut buf).unwrap().unwrap();
    assert_eq!(got, &[199u8; 300][..]);
    // A new storage over the same flash (a reboot) reads the same.
    let flash = store.into_inner();
    assert!(flash.erase_count() > 10, "{}", flash.erase_count());
    let mut store: FlashStorage<Flash, 512> = FlashStorage::new(flash, 0..4096).unwrap();
    let got = store.load_item(AGENT_RECORD, &mut buf).unwrap().unwrap();
    assert_eq!(got, &199u32.to_le_bytes()[..]);
}

#[test]
fn oversized_records_and_bad_layouts_are_errors_not_panics() {
    let mut store: FlashStorage<Flash, 512> = FlashStorage::new(MemFlash::new(), 0..4096).unwrap();
    assert_eq!(store.save(&[0u8; 600]), Err(StorageError::TooLarge));
    store.save(&[7u8; 100]).unwrap();
    let mut small = [0u8; 50];
    assert_eq!(store.load(&mut small), Err(StorageError::TooLarge));
    // Not page-aligned, one page only, past the end of the flash.
    for range in [100..4096, 0..1024, 0..8192] {
        assert!(matches!(
            FlashStorage::<Flash, 512>::new(MemFlash::new(), range),
            Err(StorageError::Layout)
        ));
    }
}
