//! The state file: what Petrel installed, so that a crashed proxy's rules can be removed at the
//! next start (the rules outlive the process; the file says which backend holds them and which
//! host changes were ours).
//!
//! The format is a few `key=value` lines, readable by an operator and by `--cleanup`.
use std::fmt::Write as _;
use std::path::Path;

use super::Backend;
use crate::error::RedirectError;
use crate::rules::{Family, HostStep};

/// What one apply installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureState {
    /// The backend holding our rules (never `Auto`).
    pub backend: Backend,
    /// Families with rules.
    pub families: Vec<Family>,
    /// Host changes that Petrel made (and so removes).
    pub host_steps: Vec<HostStep>,
    /// iptables-nft tables that did not exist before Petrel created them (nf_tables tables,
    /// unlike x_tables ones, can be deleted again, so cleanup leaves `iptables-save` as it was).
    pub created_tables: Vec<(Family, String)>,
}

// === impl CaptureState ===

impl CaptureState {
    /// Serialises the state.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# Petrel capture state: removed by `petrel redirect --cleanup --state-file ...`\n",
        );
        let _ = writeln!(out, "backend={}", self.backend.name());
        for f in &self.families {
            let _ = writeln!(out, "family={}", if *f == Family::V4 { 4 } else { 6 });
        }
        for step in &self.host_steps {
            match step {
                HostStep::TproxyRoute {
                    family,
                    mark,
                    table,
                } => {
                    let fam = if *family == Family::V4 { 4 } else { 6 };
                    let _ = writeln!(out, "tproxy_route={fam},{mark},{table}");
                }
                HostStep::LoopbackPassthroughV6 => out.push_str("loopback_v6=added\n"),
            }
        }
        for (family, table) in &self.created_tables {
            let fam = if *family == Family::V4 { 4 } else { 6 };
            let _ = writeln!(out, "created_table={fam},{table}");
        }
        out
    }

    /// Parses a state file's text; unknown lines are ignored (newer writers), a bad backend is
    /// an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut backend = None;
        let mut families = Vec::new();
        let mut host_steps = Vec::new();
        let mut created_tables = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "backend" => {
                    backend = Some(
                        Backend::from_name(value).ok_or(format!("unknown backend {value:?}"))?,
                    )
                }
                "family" if value == "4" => families.push(Family::V4),
                "family" if value == "6" => families.push(Family::V6),
                "loopback_v6" => host_steps.push(HostStep::LoopbackPassthroughV6),
                "tproxy_route" => {
                    let parts: Vec<&str> = value.split(',').collect();
                    if let [fam, mark, table] = parts[..] {
                        let family = if fam == "6" { Family::V6 } else { Family::V4 };
                        let (Ok(mark), Ok(table)) = (mark.parse(), table.parse()) else {
                            return Err(format!("bad tproxy_route {value:?}"));
                        };
                        host_steps.push(HostStep::TproxyRoute {
                            family,
                            mark,
                            table,
                        });
                    }
                }
                "created_table" => match value.split_once(',') {
                    Some(("4", t)) => created_tables.push((Family::V4, t.to_string())),
                    Some(("6", t)) => created_tables.push((Family::V6, t.to_string())),
                    _ => return Err(format!("bad created_table {value:?}")),
                },
                _ => {}
            }
        }
        let backend = backend.ok_or("no backend line")?;
        Ok(Self {
            backend,
            families,
            host_steps,
            created_tables,
        })
    }

    /// Reads the state file; `Ok(None)` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, RedirectError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .map(Some)
                .map_err(|e| RedirectError::State {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RedirectError::State {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the state file atomically (temp file + rename).
    pub fn store(&self, path: &Path) -> Result<(), RedirectError> {
        let err = |source| RedirectError::State {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.render()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Removes the state file (after a successful cleanup).
    pub fn remove(path: &Path) -> Result<(), RedirectError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RedirectError::State {
                path: path.to_path_buf(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let state = CaptureState {
            backend: Backend::IptablesNft,
            families: vec![Family::V4, Family::V6],
            host_steps: vec![
                HostStep::LoopbackPassthroughV6,
                HostStep::TproxyRoute {
                    family: Family::V6,
                    mark: 1337,
                    table: 133,
                },
            ],
            created_tables: vec![(Family::V4, "nat".into()), (Family::V6, "mangle".into())],
        };
        assert_eq!(CaptureState::parse(&state.render()), Ok(state));
        assert!(CaptureState::parse("").is_err(), "no backend");
        assert!(CaptureState::parse("backend=ipfw").is_err());
        assert!(CaptureState::parse("backend=nft\ntproxy_route=4,x,133").is_err());
        assert!(
            CaptureState::parse("backend=nft\nfuture_key=1").is_ok(),
            "unknown keys are skipped"
        );
    }

    #[test]
    fn missing_state_file_is_not_an_error() {
        let path =
            std::env::temp_dir().join(format!("petrel-no-such-state-{}", std::process::id()));
        assert!(matches!(CaptureState::load(&path), Ok(None)));
        assert!(CaptureState::remove(&path).is_ok());
    }
}
