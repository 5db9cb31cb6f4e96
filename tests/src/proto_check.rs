//! Checks that hand-written prost messages agree with the published schema in `proto/`.
//!
//! The schema is compiled with `protox` (pure Rust, no `protoc`). For every message, a fully
//! populated Rust value is encoded with prost and decoded against the schema's descriptor:
//! every field the schema names must be present and nothing may be unknown to the schema, and
//! the schema must re-encode it to the same bytes (which proves the wire types agree). In the
//! other direction, a dynamic message with every schema field set must decode into the Rust
//! type and re-encode to the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

/// Compiles every `.proto` file in the workspace's `proto/` directory.
pub fn schema() -> DescriptorPool {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    assert!(!files.is_empty(), "no .proto files in {}", dir.display());
    let set = protox::compile(&files, [&dir]).expect("schema compiles");
    DescriptorPool::from_file_descriptor_set(set).unwrap()
}

/// The descriptor of message `name` (fully qualified), failing the test if it is absent.
pub fn descriptor(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not in the schema"))
}

/// Rust -> schema: every schema field is set from the Rust value and none is unknown.
/// `unset_ok` lists fields legitimately unset (other members of a oneof).
pub fn rust_matches_schema<M: Message>(
    pool: &DescriptorPool,
    name: &str,
    value: &M,
    unset_ok: &[&str],
) {
    let desc = descriptor(pool, name);
    let bytes = value.encode_to_vec();
    let dynamic =
        DynamicMessage::decode(desc.clone(), bytes.as_slice()).expect("schema decodes Rust bytes");
    assert_eq!(
        dynamic.unknown_fields().count(),
        0,
        "{name}: Rust sends fields the schema lacks"
    );
    for field in desc.fields() {
        if unset_ok.contains(&field.name()) {
            continue;
        }
        assert!(
            dynamic.has_field(&field),
            "{name}.{}: set in Rust, missing in schema decode",
            field.name()
        );
    }
    assert_eq!(
        dynamic.encode_to_vec(),
        bytes,
        "{name}: schema re-encodes differently"
    );
}

/// Schema -> Rust: a dynamic message filled by `fill` decodes into the Rust type and
/// re-encodes to the same bytes.
pub fn schema_matches_rust<M: Message + Default>(
    pool: &DescriptorPool,
    name: &str,
    fill: impl Fn(&mut DynamicMessage),
) {
    let mut dynamic = DynamicMessage::new(descriptor(pool, name));
    fill(&mut dynamic);
    let bytes = dynamic.encode_to_vec();
    let decoded = M::decode(bytes.as_slice()).expect("Rust decodes schema bytes");
    assert_eq!(
        decoded.encode_to_vec(),
        bytes,
        "{name}: Rust re-encodes differently"
    );
}
