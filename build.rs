//! Compiles proto/ with protox (pure Rust, no system protoc) and generates
//! the prost message types. Services are not generated: our gRPC layer routes
//! by path and the handlers decode the prost messages themselves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etcd/kv.proto",
        "proto/etcd/rpc.proto",
        "proto/netsy/state.proto",
        "proto/netsy/elector.proto",
        "proto/netsy/node.proto",
        "proto/netsy/record.proto",
        "proto/netsy/primary.proto",
        "proto/netsy/file.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
