//! Generated protobuf and gRPC types of `switchyard.v1`. The only module that names generated code;
//! everything else goes through the conversions in `snapshot`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("switchyard.v1");

/// Encoded `FileDescriptorSet` of `proto/`, served by gRPC reflection on both planes.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

/// Wire protocol revision spoken by this build (sent in `Hello.protocol`).
pub const PROTOCOL: u32 = 1;
