//! Compiles `proto/meridian/v1` with protox (pure Rust: no `protoc` to install)
//! and writes the descriptor set that feeds gRPC reflection.

use std::path::PathBuf;

const PROTO_ROOT: &str = "../../proto";
const FILES: [&str; 6] = [
    "meridian/v1/common.proto",
    "meridian/v1/ingest.proto",
    "meridian/v1/identity.proto",
    "meridian/v1/consent.proto",
    "meridian/v1/audience.proto",
    "meridian/bus/v1/events.proto",
];

/// Messages that carry personal data or secrets: their `Debug` is written by
/// hand in `redact.rs` so that a stray `{:?}` prints no identity.
const REDACTED_DEBUG: [&str; 10] = [
    ".meridian.v1.Identifier",
    ".meridian.v1.Event",
    ".meridian.v1.Context",
    ".meridian.v1.Device",
    ".meridian.v1.Profile",
    ".meridian.v1.ProfileIdentifier",
    ".meridian.v1.ProfileEvent",
    ".meridian.v1.SubmitRequestRequest",
    ".meridian.v1.DataSubjectRequest",
    ".meridian.v1.CreateDestinationRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let descriptors = protox::compile(FILES, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("meridian_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .skip_debug(REDACTED_DEBUG)
        // Decoded straight into JSON (src/json.rs): every service reads these fields as JSON.
        .extern_path(".google.protobuf.Struct", "crate::JsonObject")
        .compile_fds(descriptors)?;
    Ok(())
}
