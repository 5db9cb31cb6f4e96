//! `Envelope::decode`, zero-copy and into fixed capacity: never panics; both forms agree;
//! what decodes re-encodes to `encoded_len` bytes that decode to the same envelope, and the
//! re-encoding is a fixed point.
#![no_main]

use iot_core::message::{EnvelopeBuf, EnvelopeRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let borrowed = EnvelopeRef::decode(data);
    let fixed = EnvelopeBuf::<64>::decode(data);
    match (&borrowed, &fixed) {
        (Ok(b), Ok(f)) => assert_eq!(*b, f.as_ref(), "zero-copy and fixed-capacity decode agree"),
        (Err(_), Ok(_)) => panic!("fixed capacity accepts what zero-copy refuses"),
        // Fixed capacity refuses payloads over 64 bytes.
        (Ok(b), Err(_)) => assert!(
            b.payload.len() > 64,
            "fixed capacity refuses a small payload"
        ),
        (Err(_), Err(_)) => {}
    }
    let Ok(env) = borrowed else {
        return;
    };
    let bytes = env.to_vec().expect("a decoded envelope encodes");
    assert_eq!(bytes.len(), env.encoded_len());
    let mut buf = vec![0u8; env.encoded_len()];
    assert_eq!(env.encode_into(&mut buf), Ok(bytes.len()));
    assert_eq!(buf, bytes);
    let again = EnvelopeRef::decode(&bytes).expect("an encoded envelope decodes");
    assert_eq!(again, env);
    assert_eq!(
        again.to_vec().expect("encodes"),
        bytes,
        "the encoding is canonical"
    );
});
