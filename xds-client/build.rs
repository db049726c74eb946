//! Embeds envoy-types' FileDescriptorSet (`src/generated/types.bin`).
//!
//! envoy-types ships the descriptor set of every proto it compiles but does not export it, so
//! we locate the crate's sources through `cargo metadata` and copy the file into OUT_DIR. The
//! descriptors drive prost-reflect, which decodes Envoy YAML/JSON (including `Any` with `@type`)
//! into the real prost types instead of hand-written mirror structs.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    // Offline first: in a normal build every package is already downloaded. If the lock
    // file names a package that is not (a dependency added while building), ask again online.
    let metadata = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(manifest.join("Cargo.toml"));
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().expect("running cargo metadata")
    };
    let mut out = metadata(true);
    if !out.status.success() {
        out = metadata(false);
    }
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let pkg = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types is a dependency");
    let crate_dir = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"))
        .parent()
        .expect("crate dir")
        .to_path_buf();
    let src = crate_dir.join("src/generated/types.bin");
    let dst = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_types.bin");
    std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", src.display());
}
