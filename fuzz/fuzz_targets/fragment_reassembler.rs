//! The fragment reassembler fed arbitrary fragments at arbitrary times, in both
//! configurations (the default one, and the endpoint's evicting one that forgets completed
//! messages). Never panics; a completed message has the length its header states and
//! holds the completing fragment's body at its offset; its counters account for every
//! completion and rejection; and a completed message, fragmented again at any MTU, is
//! reassembled unchanged.
#![no_main]

use iot_fuzz::records;
use iot_transport::fragment::{
    Feed, FragmentError, FragmentHeader, Fragmenter, HEADER_LEN, Reassembler,
};
use libfuzzer_sys::fuzz_target;

const SLOTS: usize = 3;
const MAX: usize = 256;
const TIMEOUT_MS: u64 = 5_000;

fn reassembler(endpoint_style: bool) -> Reassembler<SLOTS, MAX> {
    let r = Reassembler::new(TIMEOUT_MS);
    if endpoint_style {
        r.evicting().remembering_completed(false)
    } else {
        r
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let endpoint_style = mode & 1 == 1;
    let mut rx = reassembler(endpoint_style);
    let (mut completed, mut rejected) = (0u32, 0u32);
    let mut now = 0u64;
    for record in records(data) {
        now += u64::from(record.step) * 100;
        let fragment = record.bytes;
        match rx.push(fragment, now) {
            Ok(Feed::Complete(len)) => {
                completed += 1;
                let (header, body) =
                    FragmentHeader::parse(fragment).expect("a completing fragment parses");
                assert_eq!(len, usize::from(header.total));
                assert_eq!(rx.last_tag(), Some(header.tag));
                let message = rx
                    .take(len)
                    .expect("the completed message is readable")
                    .to_vec();
                assert_eq!(message.len(), len);
                assert_eq!(
                    &message[header.offset()..header.offset() + body.len()],
                    body
                );

                // Fragment it again and reassemble it in a fresh reassembler.
                let mtu = HEADER_LEN + 4 + usize::from(record.control % 60);
                let mut again = reassembler(endpoint_style);
                let mut frags =
                    Fragmenter::new(&message, record.control, mtu).expect("fits 64 fragments");
                let mut buf = vec![0u8; mtu];
                let mut done = None;
                while let Some(n) = frags.next_into(&mut buf).expect("fragments fit the MTU") {
                    assert!(done.is_none(), "complete before the last fragment");
                    if let Feed::Complete(l) = again
                        .push(&buf[..n], now)
                        .expect("own fragments are accepted")
                    {
                        done = Some(l);
                    }
                }
                assert_eq!(done, Some(len));
                assert_eq!(again.take(len), Some(message.as_slice()));
            }
            Ok(Feed::Pending | Feed::Duplicate) => {}
            Err(
                FragmentError::Malformed | FragmentError::Inconsistent | FragmentError::TooLarge,
            ) => {
                rejected += 1;
            }
            Err(FragmentError::NoFreeSlot) => {
                assert!(
                    !endpoint_style,
                    "an evicting reassembler always finds a slot"
                );
                assert_eq!(rx.in_progress(), SLOTS);
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
        assert!(rx.in_progress() <= SLOTS);
    }
    let stats = rx.stats();
    assert_eq!(stats.completed, completed);
    assert_eq!(stats.rejected, rejected);
});
