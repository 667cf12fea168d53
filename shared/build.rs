//! Compiles `../proto` with protox (no `protoc` needed) into Rust types and a descriptor set that
//! both planes serve through gRPC reflection.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

const PROTOS: [&str; 3] = [
    "switchyard/v1/snapshot.proto",
    "switchyard/v1/control_plane.proto",
    "switchyard/v1/proxy_admin.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let descriptors = protox::compile(PROTOS, ["../proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("switchyard_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Chunks are cut from one shared buffer and sent to every proxy without copying.
        .bytes(".switchyard.v1.SnapshotChunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
