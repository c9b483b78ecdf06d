//! Compiles `proto/gateway.proto` for the `tonic_gateway` example with protox, a
//! protobuf compiler in Rust, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/gateway.proto");
    let descriptors = protox::compile(["gateway.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".anet.gateway")
        .compile_fds(descriptors)?;
    Ok(())
}
