//! Compiles `proto/sspm/v1/*.proto` (the public API) and `proto/sspm/internal/v1/*.proto`
//! (the calls between SSPM's services) with protox (pure Rust, no system `protoc`) and writes
//! the encoded descriptor set next to the generated code for server reflection. The set
//! served by reflection also holds `google/rpc/error_details.proto` (vendored from
//! googleapis), so grpcurl and other reflection clients can decode the error details
//! (`ErrorInfo`, `BadRequest`, `PreconditionFailure`) our statuses carry, and, imported by
//! our protos, `google/api/field_behavior.proto` (also vendored), whose annotations say
//! which fields are REQUIRED, OUTPUT_ONLY or IMMUTABLE.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let public = ["common", "request", "authorization", "approval", "ticketing", "audit"]
        .map(|name| root.join(format!("sspm/v1/{name}.proto")));
    let internal =
        ["authorization", "approval", "ticketing"].map(|name| root.join(format!("sspm/internal/v1/{name}.proto")));
    let files: Vec<PathBuf> = public.into_iter().chain(internal).collect();

    let fds = protox::compile(&files, [&root])?;

    let error_details = root.join("google/rpc/error_details.proto");
    let mut served = files.to_vec();
    served.push(error_details.clone());
    // Encoded by protox itself: a `prost_types` round trip would drop the custom options
    // (the `google.api.field_behavior` annotations) that reflection clients read.
    let reflection = protox::Compiler::new([&root])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(&served)?
        .encode_file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("sspm_descriptor.bin"), reflection)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    // Name every file: a directory is only checked for its own modification time.
    println!("cargo:rerun-if-changed={}", root.join("sspm/v1").display());
    println!("cargo:rerun-if-changed={}", root.join("sspm/internal/v1").display());
    for f in &served {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
