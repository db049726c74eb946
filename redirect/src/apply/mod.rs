//! Applying and removing the rule set.
//!
//! - **Atomic**: each family's rules go in through one `iptables-restore --noflush` (or one
//!   `nft -f`) transaction; a bad rule leaves the previous rule set untouched.
//! - **Idempotent**: the current rule set is read back first and the transaction replaces our
//!   previous chains and jump rules (see [`crate::rules::iptables`]); `nft` replaces our tables.
//! - **Exact cleanup**: only `ISTIO_*` chains and rules carrying the `petrel` comment (or our
//!   `petrel_*` nft tables) are removed, plus the host changes the state file says were ours.
//! - **Backend detection** follows istio: whichever iptables variant already holds rules wins
//!   (two variants would evaluate separately and fight), then what `iptables --version`
//!   reports, then native nftables if only `nft` is installed.
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::config::CaptureConfig;
use crate::error::RedirectError;
use crate::rules::{self, nft, Family, HostStep, IptablesRules};

mod exec;
mod guard;
mod state;

pub use guard::CaptureGuard;
pub use state::CaptureState;

/// Which tool holds the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Backend {
    /// Detect (see the module docs).
    Auto,
    /// `iptables-legacy-restore` (x_tables in the kernel).
    IptablesLegacy,
    /// `iptables-nft-restore` (iptables syntax on nf_tables).
    IptablesNft,
    /// `nft -f` with Petrel's own `inet` tables.
    Nft,
}

/// How to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOptions {
    /// The backend, or `Auto`.
    pub backend: Backend,
    /// Where to record what was installed (for cleanup after a crash); none if `None`.
    pub state_file: Option<PathBuf>,
}

// === impl Backend ===

impl Backend {
    /// The name used on the command line and in the state file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::IptablesLegacy => "iptables-legacy",
            Self::IptablesNft => "iptables-nft",
            Self::Nft => "nft",
        }
    }

    /// The inverse of [`Backend::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        [
            Self::Auto,
            Self::IptablesLegacy,
            Self::IptablesNft,
            Self::Nft,
        ]
        .into_iter()
        .find(|b| b.name() == s)
    }

    /// `(save, restore)` binaries of an iptables backend for `family`.
    fn iptables_tools(self, family: Family) -> (String, String) {
        let base = if family == Family::V4 {
            "iptables"
        } else {
            "ip6tables"
        };
        let variant = if self == Self::IptablesLegacy {
            "legacy"
        } else {
            "nft"
        };
        (
            format!("{base}-{variant}-save"),
            format!("{base}-{variant}-restore"),
        )
    }

    fn package(self) -> &'static str {
        if self == Self::Nft {
            "nftables"
        } else {
            "iptables"
        }
    }

    /// Locates a tool of this backend, falling back to the unsuffixed `iptables-*` name when
    /// `iptables --version` says it is this variant (distributions without the alternatives).
    fn binary(self, name: &str) -> Result<PathBuf, RedirectError> {
        if let Some(p) = exec::find_binary(name) {
            return Ok(p);
        }
        let generic = name.replace("-legacy", "").replace("-nft", "");
        if generic != name && detect_variant_by_version() == Some(self) {
            if let Some(p) = exec::find_binary(&generic) {
                return Ok(p);
            }
        }
        Err(RedirectError::MissingBinary {
            binary: name.to_string(),
            backend: self.name(),
            package: self.package(),
        })
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Resolves `Auto` to a concrete backend (explicit choices are returned as they are).
pub fn detect_backend(choice: Backend) -> Result<Backend, RedirectError> {
    if choice != Backend::Auto {
        return Ok(choice);
    }
    let count = |b: Backend| -> usize {
        let (save, _) = b.iptables_tools(Family::V4);
        exec::find_binary(&save)
            .and_then(|p| exec::run(&p, &[], None).ok())
            .map(|out| out.lines().filter(|l| l.starts_with("-A ")).count())
            .unwrap_or(0)
    };
    let (nft_rules, legacy_rules) = (count(Backend::IptablesNft), count(Backend::IptablesLegacy));
    debug!(nft_rules, legacy_rules, "iptables backend detection");
    let chosen = if nft_rules > 0 {
        Backend::IptablesNft
    } else if legacy_rules > 0 {
        Backend::IptablesLegacy
    } else if let Some(b) = detect_variant_by_version() {
        b
    } else if exec::find_binary("nft").is_some() {
        Backend::Nft
    } else {
        return Err(RedirectError::MissingBinary {
            binary: "iptables-restore or nft".into(),
            backend: "auto",
            package: "iptables",
        });
    };
    info!(backend = %chosen, "detected capture backend");
    Ok(chosen)
}

/// `iptables v1.8.9 (nf_tables)` or `(legacy)`.
fn detect_variant_by_version() -> Option<Backend> {
    let bin = exec::find_binary("iptables")?;
    let out = exec::run(&bin, &["--version"], None).ok()?;
    if out.contains("nf_tables") {
        Some(Backend::IptablesNft)
    } else if out.contains("legacy") {
        Some(Backend::IptablesLegacy)
    } else {
        None
    }
}

/// The scripts `--dry-run` prints for `backend` (no system state is read: the prologue that
/// replaces a previous installation is computed at apply time).
pub fn dry_run_script(cfg: &CaptureConfig, backend: Backend) -> String {
    let mut out = String::new();
    if backend == Backend::Nft {
        out.push_str("# nft -f -\n");
        out.push_str(&nft::script(cfg));
    } else {
        for &family in Family::enabled(cfg) {
            let tool = if family == Family::V4 {
                "iptables"
            } else {
                "ip6tables"
            };
            out.push_str(&format!("# {tool}-restore --noflush\n"));
            out.push_str(&IptablesRules::build(cfg, family).restore_script(&Default::default()));
        }
    }
    for step in rules::host_steps(cfg) {
        out.push_str(&format!("# {}\n", host_step_commands(&step).join(" && ")));
    }
    out
}

fn host_step_commands(step: &HostStep) -> Vec<String> {
    match step {
        HostStep::LoopbackPassthroughV6 => vec!["ip -6 addr add ::6/128 dev lo".into()],
        HostStep::TproxyRoute {
            family,
            mark,
            table,
        } => {
            let (f, dflt) = (
                family.ip_flag(),
                if *family == Family::V4 {
                    "default"
                } else {
                    "::/0"
                },
            );
            vec![
                format!("ip {f} rule add fwmark {mark} lookup {table}"),
                format!("ip {f} route replace local {dflt} dev lo table {table}"),
            ]
        }
    }
}

fn check_privileges(action: &str) -> Result<(), RedirectError> {
    if exec::has_net_admin() == Some(false) {
        return Err(RedirectError::MissingPrivileges {
            action: action.into(),
        });
    }
    Ok(())
}

/// Installs the capture rules for `cfg`, replacing any previous Petrel rules; records the
/// result in the state file if one is configured. Returns what was installed.
pub fn apply(cfg: &CaptureConfig, opts: &ApplyOptions) -> Result<CaptureState, RedirectError> {
    check_privileges("install capture rules")?;
    let previous = match &opts.state_file {
        Some(p) => CaptureState::load(p)?,
        None => None,
    };
    let backend = detect_backend(opts.backend)?;
    // A previous run on another backend (flag changed, or detection changed) would keep
    // capturing next to ours: remove it first.
    if let Some(prev) = previous.as_ref().filter(|p| p.backend != backend) {
        warn!(previous = %prev.backend, now = %backend, "removing capture rules left on another backend");
        remove_rules(prev.backend, &prev.families)?;
    }
    let families = Family::enabled(cfg).to_vec();
    let mut created_tables: Vec<(Family, String)> = previous
        .as_ref()
        .filter(|p| p.backend == backend)
        .map(|p| p.created_tables.clone())
        .unwrap_or_default();
    if backend == Backend::Nft {
        let nft = backend.binary("nft")?;
        exec::run(&nft, &["-f", "-"], Some(&nft::script(cfg)))?;
    } else {
        for &family in &families {
            let (save, restore) = backend.iptables_tools(family);
            let (save, restore) = (backend.binary(&save)?, backend.binary(&restore)?);
            let saved = exec::run(&save, &[], None)?;
            let installed = rules::parse_save(&saved);
            let ours = IptablesRules::build(cfg, family);
            if backend == Backend::IptablesNft {
                let existing: Vec<&str> =
                    saved.lines().filter_map(|l| l.strip_prefix('*')).collect();
                for t in &ours.tables {
                    let entry = (family, t.table.to_string());
                    if !existing.contains(&t.table) && !created_tables.contains(&entry) {
                        created_tables.push(entry);
                    }
                }
            }
            let script = ours.restore_script(&installed);
            debug!(?family, %script, "iptables-restore");
            exec::run(&restore, &["--noflush", "--wait=10"], Some(&script))?;
        }
    }
    let mut host_steps = Vec::new();
    for step in rules::host_steps(cfg) {
        let ours = apply_host_step(&step)?
            || previous
                .as_ref()
                .is_some_and(|p| p.host_steps.contains(&step));
        if ours {
            host_steps.push(step);
        }
    }
    // Host changes of the previous configuration that this one no longer needs (TPROXY →
    // REDIRECT, IPv6 turned off) are undone like at cleanup.
    if let Some(prev) = &previous {
        for step in prev.host_steps.iter().filter(|s| !host_steps.contains(s)) {
            undo_host_step(step);
        }
    }
    let state = CaptureState {
        backend,
        families,
        host_steps,
        created_tables,
    };
    if let Some(path) = &opts.state_file {
        state.store(path)?;
    }
    info!(backend = %backend, "capture rules installed");
    Ok(state)
}

/// Applies one host step; `Ok(true)` if Petrel made the change (so cleanup undoes it).
fn apply_host_step(step: &HostStep) -> Result<bool, RedirectError> {
    let ip = exec::find_binary("ip").ok_or(RedirectError::MissingBinary {
        binary: "ip".into(),
        backend: "TPROXY/IPv6 capture",
        package: "iproute2",
    })?;
    match step {
        HostStep::LoopbackPassthroughV6 => {
            match exec::run(&ip, &["-6", "addr", "add", "::6/128", "dev", "lo"], None) {
                Ok(_) => Ok(true),
                Err(RedirectError::CommandFailed { stderr, .. })
                    if stderr.contains("exists") || stderr.contains("already") =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        }
        HostStep::TproxyRoute {
            family,
            mark,
            table,
        } => {
            let (f, mark, table) = (family.ip_flag(), mark.to_string(), table.to_string());
            let rules = exec::run(&ip, &[f, "rule", "show"], None)?;
            let want = format!(
                "fwmark {:#x} lookup {table}",
                mark.parse::<u32>().unwrap_or_default()
            );
            let mut added = false;
            if !rules.lines().any(|l| l.contains(&want)) {
                exec::run(
                    &ip,
                    &[f, "rule", "add", "fwmark", &mark, "lookup", &table],
                    None,
                )?;
                added = true;
            }
            let dflt = if *family == Family::V4 {
                "default"
            } else {
                "::/0"
            };
            exec::run(
                &ip,
                &[
                    f, "route", "replace", "local", dflt, "dev", "lo", "table", &table,
                ],
                None,
            )?;
            Ok(added)
        }
    }
}

fn undo_host_step(step: &HostStep) {
    let Some(ip) = exec::find_binary("ip") else {
        return;
    };
    let result = match step {
        HostStep::LoopbackPassthroughV6 => {
            exec::run(&ip, &["-6", "addr", "del", "::6/128", "dev", "lo"], None)
        }
        HostStep::TproxyRoute {
            family,
            mark,
            table,
        } => {
            let (f, mark, table) = (family.ip_flag(), mark.to_string(), table.to_string());
            let dflt = if *family == Family::V4 {
                "default"
            } else {
                "::/0"
            };
            let _ = exec::run(
                &ip,
                &[
                    f, "route", "del", "local", dflt, "dev", "lo", "table", &table,
                ],
                None,
            );
            exec::run(
                &ip,
                &[f, "rule", "del", "fwmark", &mark, "lookup", &table],
                None,
            )
        }
    };
    if let Err(error) = result {
        warn!(?step, %error, "could not undo host change");
    }
}

/// Removes everything Petrel installed. With a state file, its backend and host changes are
/// used; otherwise the given backend, and with `Auto` every available backend is cleaned.
pub fn cleanup(opts: &ApplyOptions) -> Result<(), RedirectError> {
    check_privileges("remove capture rules")?;
    let state = match &opts.state_file {
        Some(p) => CaptureState::load(p)?,
        None => None,
    };
    let both = [Family::V4, Family::V6];
    match (&state, opts.backend) {
        (Some(s), _) => remove_state(s)?,
        (None, Backend::Auto) => {
            // Every backend that exists is cleaned; one failing (say, no nf_tables in this
            // kernel) does not keep the others from being cleaned.
            let mut found = false;
            let mut failure = None;
            for b in [Backend::IptablesLegacy, Backend::IptablesNft, Backend::Nft] {
                match remove_rules(b, &both) {
                    Ok(()) => found = true,
                    Err(e) if e.is_missing_binary() => {
                        debug!(backend = %b, "not installed; nothing to clean")
                    }
                    // An unprivileged user (the systemd unit's) cannot read iptables-legacy,
                    // so cannot have installed rules there either: clean the others.
                    Err(e @ RedirectError::LegacyNeedsRoot { .. }) => {
                        debug!(backend = %b, error = %e, "not readable without root; skipped");
                    }
                    Err(e) if e.is_missing_privileges() => return Err(e),
                    Err(e) => {
                        warn!(backend = %b, error = %e, "cleanup failed on this backend");
                        failure = Some(e);
                    }
                }
            }
            if let (false, Some(e)) = (found, failure) {
                return Err(e);
            }
            if !found {
                return Err(RedirectError::MissingBinary {
                    binary: "iptables-restore or nft".into(),
                    backend: "auto",
                    package: "iptables",
                });
            }
        }
        (None, b) => remove_rules(b, &both)?,
    }
    if let Some(p) = &opts.state_file {
        CaptureState::remove(p)?;
    }
    info!("capture rules removed");
    Ok(())
}

/// Removes what `state` records: our rules, our host changes, the tables we created.
fn remove_state(state: &CaptureState) -> Result<(), RedirectError> {
    remove_rules(state.backend, &[Family::V4, Family::V6])?;
    for step in &state.host_steps {
        undo_host_step(step);
    }
    if state.backend == Backend::IptablesNft {
        for (family, table) in &state.created_tables {
            delete_table_if_empty(*family, table);
        }
    }
    Ok(())
}

/// Deletes an iptables-nft table Petrel created, if nobody has put anything in it since.
fn delete_table_if_empty(family: Family, table: &str) {
    let (save, _) = Backend::IptablesNft.iptables_tools(family);
    let (Some(save), Some(nft)) = (exec::find_binary(&save), exec::find_binary("nft")) else {
        return;
    };
    let Ok(text) = exec::run(&save, &["-t", table], None) else {
        return;
    };
    let empty = !text.lines().any(|l| l.starts_with("-A "))
        && text
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .all(|c| c.split_whitespace().nth(1) == Some("ACCEPT"));
    if !empty {
        debug!(table, "table Petrel created is in use now; kept");
        return;
    }
    let fam = if family == Family::V4 { "ip" } else { "ip6" };
    if let Err(error) = exec::run(&nft, &["delete", "table", fam, table], None) {
        warn!(table, %error, "could not delete the table Petrel created");
    }
}

/// Removes our rules from one backend (both families where the tools exist).
fn remove_rules(backend: Backend, families: &[Family]) -> Result<(), RedirectError> {
    if backend == Backend::Nft {
        let nft = backend.binary("nft")?;
        return exec::run(&nft, &["-f", "-"], Some(&nft::cleanup_script())).map(drop);
    }
    for (i, &family) in families.iter().enumerate() {
        let (save, restore) = backend.iptables_tools(family);
        let tools = backend
            .binary(&save)
            .and_then(|s| Ok((s, backend.binary(&restore)?)));
        let (save, restore) = match tools {
            Ok(t) => t,
            // IPv6 tools missing is fine when IPv4 ones exist: nothing of ours can be there.
            Err(e) if i > 0 && e.is_missing_binary() => continue,
            Err(e) => return Err(e),
        };
        let installed = rules::parse_save(&exec::run(&save, &[], None)?);
        if installed.is_empty() {
            continue;
        }
        let script = rules::iptables::cleanup_script(&installed);
        debug!(?family, %script, "iptables-restore (cleanup)");
        exec::run(&restore, &["--noflush", "--wait=10"], Some(&script))?;
    }
    Ok(())
}

/// Removes the rules recorded in `state_file`, if it exists: call at proxy start, before
/// applying, to recover from a crash that skipped cleanup. Returns whether anything was found.
pub fn cleanup_from_state(state_file: &Path) -> Result<bool, RedirectError> {
    if CaptureState::load(state_file)?.is_none() {
        return Ok(false);
    }
    cleanup(&ApplyOptions {
        backend: Backend::Auto,
        state_file: Some(state_file.to_path_buf()),
    })?;
    Ok(true)
}

/// Whether the host has IPv6 (used when neither `--ipv6` nor `--no-ipv6` is given).
pub fn ipv6_available() -> bool {
    Path::new("/proc/net/if_inet6").exists()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
            .map(|s| s.trim() == "0")
            .unwrap_or(false)
}
