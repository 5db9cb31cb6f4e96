//! OTA: download with resume, SHA-256 verification, trial boot, confirmation and rollback,
//! on the in-memory NOR flash.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::codec::{decode, encode_into};
use iot_lifecycle::mem_flash::MemFlash;
use iot_lifecycle::ota::{
    BootDecision, JOB_MARKER_LEN, OtaError, OtaJob, OtaProgress, OtaState, OtaUpdater,
    RollbackReason, Slot, SlotLayout, Trial,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

type Flash = MemFlash<{ 5 * 1024 }, 512, 4>;
const LAYOUT: SlotLayout = SlotLayout {
    slot_a: 0,
    slot_b: 2048,
    slot_size: 2048,
    boot_state: 4096,
};

fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn job(version: u32, img: &[u8]) -> OtaJob {
    OtaJob {
        version,
        size: img.len() as u32,
        sha256: Sha256::digest(img).into(),
    }
}

fn booted(flash: Flash) -> (OtaUpdater<Flash>, BootDecision) {
    let mut ota = OtaUpdater::new(flash, LAYOUT).unwrap();
    let decision = ota.boot_check().unwrap();
    (ota, decision)
}

fn download(ota: &mut OtaUpdater<Flash>, img: &[u8], chunk: usize) {
    for (i, c) in img.chunks(chunk).enumerate() {
        ota.write_chunk((i * chunk) as u32, c).unwrap();
    }
}

fn slot_bytes(flash: &Flash, slot: Slot, len: usize) -> &[u8] {
    let start = match slot {
        Slot::A => LAYOUT.slot_a,
        Slot::B => LAYOUT.slot_b,
    } as usize;
    &flash.bytes()[start..start + len]
}

#[test]
fn full_update_confirms_and_the_next_one_uses_the_other_slot() {
    let (mut ota, d) = booted(Flash::new());
    assert_eq!(d, BootDecision::Normal(Slot::A));
    let img = image(1500, 1);
    ota.start(job(2, &img)).unwrap();
    download(&mut ota, &img, 100);
    assert_eq!(ota.state(), OtaState::Downloaded);
    ota.verify().unwrap();
    assert_eq!(ota.state(), OtaState::Verifying);
    ota.install().unwrap();
    assert_eq!(ota.state(), OtaState::Updating);
    assert_eq!(slot_bytes(ota.flash(), Slot::B, img.len()), &img[..]);

    let (mut ota, d) = booted(ota.into_flash());
    assert_eq!(d, BootDecision::Trial(Slot::B));
    assert_eq!(
        (ota.state(), ota.running_slot()),
        (OtaState::Testing, Slot::B)
    );
    ota.confirm().unwrap();
    assert_eq!(ota.state(), OtaState::Confirmed);
    assert_eq!(ota.progress().version, Some(2));

    // Confirmed survives reboots; the next update writes slot A.
    let (mut ota, d) = booted(ota.into_flash());
    assert_eq!(d, BootDecision::Normal(Slot::B));
    assert_eq!(ota.boot_state().active_version, 2);
    let img3 = image(700, 9);
    ota.start(job(3, &img3)).unwrap();
    download(&mut ota, &img3, 333);
    ota.verify().unwrap();
    assert_eq!(slot_bytes(ota.flash(), Slot::A, img3.len()), &img3[..]);
    assert_eq!(slot_bytes(ota.flash(), Slot::B, img.len()), &img[..]);
}

#[test]
fn a_download_interrupted_by_a_reboot_resumes_where_it_stopped() {
    let (mut ota, _) = booted(Flash::new());
    // Image bytes of 0xFF at the cut: the resumed prefix may end before them, and writing
    // them again leaves the flash as it is.
    let mut img = image(1500, 3);
    img[600..620].fill(0xFF);
    let job2 = job(2, &img);
    ota.start(job2).unwrap();
    download(&mut ota, &img[..620], 100);
    let erases = ota.flash().erase_count();

    // Power cut: the updater's RAM state is gone; the same job is offered again.
    let (mut ota, _) = booted(ota.into_flash());
    ota.start(job2).unwrap();
    let resume = ota.next_offset();
    assert!((596..=620).contains(&resume), "resumed at {resume}");
    assert_eq!(ota.flash().erase_count(), erases, "nothing erased");
    assert_eq!(ota.progress().next_offset, resume);
    for chunk in img[resume as usize..].chunks(128) {
        let at = ota.next_offset();
        ota.write_chunk(at, chunk).unwrap();
    }
    ota.verify().unwrap();
    ota.install().unwrap();
    assert_eq!(slot_bytes(ota.flash(), Slot::B, img.len()), &img[..]);

    // A different job is not a resumption: it starts over.
    let (mut ota, _) = booted(Flash::new());
    ota.start(job2).unwrap();
    download(&mut ota, &img[..400], 100);
    let (mut ota, _) = booted(ota.into_flash());
    let other = image(900, 5);
    ota.start(job(2, &other)).unwrap();
    assert_eq!(ota.next_offset(), 0);
}

#[test]
fn a_download_that_failed_verification_starts_over_when_offered_again() {
    let (mut ota, _) = booted(Flash::new());
    let img = image(1000, 4);
    let wrong = OtaJob {
        sha256: [7; 32],
        ..job(2, &img)
    };
    ota.start(wrong).unwrap();
    download(&mut ota, &img, 250);
    assert_eq!(ota.verify(), Err(OtaError::VerificationFailed));
    let (mut ota, _) = booted(ota.into_flash());
    ota.start(wrong).unwrap();
    assert_eq!(ota.next_offset(), 0, "the failed bytes are not resumed");
}

#[test]
fn download_resumes_after_link_loss_and_refuses_resent_or_skipped_chunks() {
    let (mut ota, _) = booted(Flash::new());
    let img = image(1000, 3);
    ota.start(job(2, &img)).unwrap();
    ota.write_chunk(0, &img[..250]).unwrap();
    ota.write_chunk(250, &img[250..377]).unwrap();
    // The link drops: the chunk at 377 is lost, the sender retransmits the previous one and
    // then jumps ahead. Neither is written.
    assert_eq!(
        ota.write_chunk(250, &img[250..377]),
        Err(OtaError::UnexpectedOffset {
            expected: 377,
            got: 250
        })
    );
    assert_eq!(
        ota.write_chunk(500, &img[500..600]),
        Err(OtaError::UnexpectedOffset {
            expected: 377,
            got: 500
        })
    );
    // After reconnecting the device says where to resume.
    let resume = ota.next_offset();
    assert_eq!(resume, 377);
    assert_eq!(ota.progress().next_offset, 377);
    ota.write_chunk(resume, &img[377..]).unwrap();
    assert_eq!(
        ota.write_chunk(1000, &[1]),
        Err(OtaError::WrongState(OtaState::Downloaded))
    );
    ota.verify().unwrap();
    assert_eq!(slot_bytes(ota.flash(), Slot::B, img.len()), &img[..]);
}

#[test]
fn chunks_past_the_end_are_refused() {
    let (mut ota, _) = booted(Flash::new());
    let img = image(10, 0);
    ota.start(job(2, &img)).unwrap();
    assert_eq!(ota.write_chunk(0, &[0; 11]), Err(OtaError::ChunkPastEnd));
    assert_eq!(ota.next_offset(), 0);
}

#[test]
fn wrong_digest_rolls_back_and_leaves_the_active_image() {
    let (mut ota, _) = booted(Flash::new());
    let img = image(600, 5);
    let mut bad = job(2, &img);
    bad.sha256[0] ^= 0xFF;
    ota.start(bad).unwrap();
    download(&mut ota, &img, 64);
    assert_eq!(ota.verify(), Err(OtaError::VerificationFailed));
    assert_eq!(ota.state(), OtaState::RolledBack);
    assert_eq!(
        ota.progress().rollback,
        Some(RollbackReason::VerificationFailed)
    );
    assert_eq!(
        ota.install(),
        Err(OtaError::WrongState(OtaState::RolledBack))
    );
    assert_eq!(ota.boot_state().trial, Trial::None);
    let (mut ota, d) = booted(ota.into_flash());
    assert_eq!(d, BootDecision::Normal(Slot::A));
    // A correct job can start over.
    ota.start(job(2, &img)).unwrap();
    download(&mut ota, &img, 64);
    ota.verify().unwrap();
}

#[test]
fn corruption_in_flash_is_caught_by_read_back_verification() {
    let (mut ota, _) = booted(Flash::new());
    let img = image(900, 7);
    ota.start(job(2, &img)).unwrap();
    download(&mut ota, &img, 128);
    // A bit flips in the candidate slot after it was written.
    ota.flash_mut().bytes_mut()[LAYOUT.slot_b as usize + 450] ^= 0x10;
    assert_eq!(ota.verify(), Err(OtaError::VerificationFailed));
    assert_eq!(ota.state(), OtaState::RolledBack);
}

#[test]
fn an_unconfirmed_trial_rolls_back_on_the_next_boot() {
    let (mut ota, _) = booted(Flash::new());
    let img = image(1200, 2);
    ota.start(job(2, &img)).unwrap();
    download(&mut ota, &img, 512);
    ota.verify().unwrap();
    ota.install().unwrap();
    let (mut ota, d) = booted(ota.into_flash());
    assert_eq!(d, BootDecision::Trial(Slot::B));
    // Asking again in the same boot changes nothing.
    assert_eq!(ota.boot_check(), Ok(BootDecision::Trial(Slot::B)));
    assert_eq!(ota.state(), OtaState::Testing);
    // The trial image hangs and the watchdog reboots before confirm().
    let (mut ota, d) = booted(ota.into_flash());
    assert_eq!(d, BootDecision::RolledBack(Slot::A));
    assert_eq!(ota.state(), OtaState::RolledBack);
    assert_eq!(ota.running_slot(), Slot::A);
    assert_eq!(ota.boot_state().active_version, 0);
    assert_eq!(ota.progress().rollback, Some(RollbackReason::NotConfirmed));
    assert_eq!(
        ota.confirm(),
        Err(OtaError::WrongState(OtaState::RolledBack))
    );
    let (_, d) = booted(ota.into_flash());
    assert_eq!(d, BootDecision::Normal(Slot::A));
}

#[test]
fn a_rejected_trial_rolls_back_at_once() {
    let (mut ota, _) = booted(Flash::new());
    let img = image(100, 2);
    ota.start(job(2, &img)).unwrap();
    download(&mut ota, &img, 100);
    ota.verify().unwrap();
    ota.install().unwrap();
    let (mut ota, _) = booted(ota.into_flash());
    ota.reject_trial().unwrap();
    assert_eq!(ota.state(), OtaState::RolledBack);
    // Slot B is still running until the reboot: it cannot be erased for a new download.
    assert_eq!(ota.running_slot(), Slot::B);
    assert_eq!(ota.start(job(3, &img)), Err(OtaError::CandidateRunning));
    let (_, d) = booted(ota.into_flash());
    assert_eq!(d, BootDecision::Normal(Slot::A));
}

#[test]
fn an_update_cannot_start_before_boot_check() {
    let mut ota = OtaUpdater::new(Flash::new(), LAYOUT).unwrap();
    let img = image(10, 0);
    assert_eq!(ota.start(job(2, &img)), Err(OtaError::BootNotChecked));
    ota.boot_check().unwrap();
    ota.start(job(2, &img)).unwrap();
}

#[test]
fn jobs_and_states_are_checked() {
    let (mut ota, _) = booted(Flash::new());
    assert_eq!(ota.verify(), Err(OtaError::WrongState(OtaState::Idle)));
    assert_eq!(
        ota.write_chunk(0, &[1]),
        Err(OtaError::WrongState(OtaState::Idle))
    );
    assert_eq!(ota.confirm(), Err(OtaError::WrongState(OtaState::Idle)));
    let too_big = OtaJob {
        version: 2,
        size: 2001,
        sha256: [0; 32],
    };
    // The slot keeps its last 48 bytes for the job marker.
    assert_eq!(
        ota.start(too_big),
        Err(OtaError::ImageSize {
            size: 2001,
            slot_size: 2048 - JOB_MARKER_LEN
        })
    );
    let empty = OtaJob {
        version: 2,
        size: 0,
        sha256: [0; 32],
    };
    assert!(matches!(ota.start(empty), Err(OtaError::ImageSize { .. })));
    let img = image(10, 0);
    ota.start(job(1, &img)).unwrap();
    assert_eq!(
        ota.start(job(1, &img)),
        Err(OtaError::WrongState(OtaState::Downloading))
    );
    ota.cancel().unwrap();
    assert_eq!(ota.state(), OtaState::Idle);
    // Downgrades are refused once a version is active.
    let ota = download_and_confirm(ota, 5);
    let (mut ota, _) = booted(ota.into_flash());
    assert_eq!(
        ota.start(job(5, &img)),
        Err(OtaError::NotNewer {
            active: 5,
            offered: 5
        })
    );
    assert_eq!(
        ota.start(job(4, &img)),
        Err(OtaError::NotNewer {
            active: 5,
            offered: 4
        })
    );
}

/// Installs and confirms `version`, across the reboot into it; returns the rebooted updater.
fn download_and_confirm(mut ota: OtaUpdater<Flash>, version: u32) -> OtaUpdater<Flash> {
    let img = image(64, version as u8);
    ota.start(job(version, &img)).unwrap();
    download(&mut ota, &img, 64);
    ota.verify().unwrap();
    ota.install().unwrap();
    let (mut next, _) = booted(ota.into_flash());
    next.confirm().unwrap();
    next
}

#[test]
fn layouts_that_do_not_fit_the_flash_are_refused() {
    let bad = [
        SlotLayout {
            slot_b: 1024,
            ..LAYOUT
        }, // overlaps slot A
        SlotLayout {
            slot_b: 2049,
            ..LAYOUT
        }, // not erase-aligned
        SlotLayout {
            boot_state: 5 * 1024,
            ..LAYOUT
        }, // outside the flash
        SlotLayout {
            boot_state: 2048,
            ..LAYOUT
        }, // inside slot B
        SlotLayout {
            slot_size: 0,
            ..LAYOUT
        },
    ];
    for layout in bad {
        assert_eq!(
            OtaUpdater::new(Flash::new(), layout).unwrap_err(),
            OtaError::InvalidLayout,
            "{layout:?}"
        );
    }
}

#[test]
fn a_torn_boot_record_reads_as_factory_state() {
    let (ota, _) = booted(Flash::new());
    let ota = download_and_confirm(ota, 2);
    let mut flash = ota.into_flash();
    flash.bytes_mut()[LAYOUT.boot_state as usize + 6] ^= 1; // version byte, checksum now wrong
    let (ota, d) = booted(flash);
    assert_eq!(d, BootDecision::Normal(Slot::A));
    assert_eq!(ota.boot_state().active_version, 0);
}

#[test]
fn wire_forms_round_trip() {
    let j = job(7, &image(10, 1));
    let mut buf = [0u8; 64];
    let n = encode_into(&j, &mut buf).unwrap();
    assert_eq!(decode::<OtaJob>(&buf[..n]), Ok(j));
    let p = OtaProgress {
        state: OtaState::Downloading,
        version: Some(7),
        next_offset: 4096,
        rollback: None,
    };
    let n = encode_into(&p, &mut buf).unwrap();
    assert_eq!(decode::<OtaProgress>(&buf[..n]), Ok(p));
}

fn download_with_write_size<const W: usize>(img: &[u8], cuts: &[usize], losses: &[bool]) {
    let mut ota = OtaUpdater::new(MemFlash::<{ 5 * 1024 }, 512, W>::new(), LAYOUT).unwrap();
    ota.boot_check().unwrap();
    ota.start(job(2, img)).unwrap();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (img.len() + 1)).collect();
    bounds.push(0);
    bounds.push(img.len());
    bounds.sort_unstable();
    bounds.dedup();
    for (i, w) in bounds.windows(2).enumerate() {
        let (from, to) = (w[0], w[1]);
        if losses.get(i).copied().unwrap_or(false) {
            // Lost on the way: the sender resends the previous chunk, which is refused,
            // then resumes at the offset the device reports.
            if from > 0 {
                assert!(matches!(
                    ota.write_chunk(0, &img[..1]),
                    Err(OtaError::UnexpectedOffset { .. })
                ));
            }
            assert_eq!(ota.next_offset() as usize, from);
        }
        assert_eq!(
            ota.write_chunk(from as u32, &img[from..to]).unwrap() as usize,
            to
        );
    }
    assert_eq!(ota.state(), OtaState::Downloaded);
    ota.verify().unwrap();
    let start = LAYOUT.slot_b as usize;
    assert_eq!(&ota.flash().bytes()[start..start + img.len()], img);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// However the image is cut into chunks, and whatever chunks are lost and resumed, the
    /// slot ends up holding exactly the image and it verifies, for write sizes 1, 4 and 16.
    #[test]
    fn any_chunking_with_losses_reassembles_the_image(
        img in prop::collection::vec(any::<u8>(), 1..2000),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        losses in prop::collection::vec(any::<bool>(), 0..14),
        write_size in 0..3usize,
    ) {
        match write_size {
            0 => download_with_write_size::<1>(&img, &cuts, &losses),
            1 => download_with_write_size::<4>(&img, &cuts, &losses),
            _ => download_with_write_size::<16>(&img, &cuts, &losses),
        }
    }
}

#[test]
fn update_outcomes_drive_the_lifecycle_out_of_maintenance() {
    use iot_lifecycle::ota::lifecycle_event;
    use iot_lifecycle::state::{Event, Lifecycle, State};

    assert_eq!(lifecycle_event(OtaState::Downloading), None);
    assert_eq!(lifecycle_event(OtaState::Testing), None);

    // Success: Active -> Maintenance -> (confirm) -> Active.
    let mut lc: Lifecycle<8> = Lifecycle::resume(State::Active);
    lc.apply(Event::ScheduledUpdate, 0, &mut ()).unwrap();
    let (mut ota, _) = booted(Flash::new());
    let img = image(300, 4);
    ota.start(job(2, &img)).unwrap();
    download(&mut ota, &img, 300);
    ota.verify().unwrap();
    ota.install().unwrap();
    assert_eq!(lifecycle_event(ota.state()), None);
    let (mut ota, _) = booted(ota.into_flash());
    ota.confirm().unwrap();
    lc.apply(lifecycle_event(ota.state()).unwrap(), 1, &mut ())
        .unwrap();
    assert_eq!(lc.state(), State::Active);

    // Failure: the next image never confirms; Maintenance -> Degraded.
    lc.apply(Event::ScheduledUpdate, 2, &mut ()).unwrap();
    let img = image(300, 5);
    ota.start(job(3, &img)).unwrap();
    download(&mut ota, &img, 300);
    ota.verify().unwrap();
    ota.install().unwrap();
    let (ota, _) = booted(ota.into_flash());
    let (ota, d) = booted(ota.into_flash());
    assert_eq!(d, BootDecision::RolledBack(Slot::B));
    lc.apply(lifecycle_event(ota.state()).unwrap(), 3, &mut ())
        .unwrap();
    assert_eq!(lc.state(), State::Degraded);
    assert_eq!(ota.boot_state().active_version, 2);
}
