//! Compiles the minimal etcd v3 API subset in `../proto/etcd` with protox (no `protoc` needed)
//! into a gRPC client for the etcd provider (`provider/kv/etcd.rs`) and the ACME storage in etcd.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=../proto/etcd");
    let descriptors = protox::compile(["etcd/rpc.proto"], ["../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
