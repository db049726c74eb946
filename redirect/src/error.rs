//! Errors of the capture setup.
//!
//! Each variant names the condition, and the `Display` text says what the operator has to do
//! (fix a flag, install a binary, run with `CAP_NET_ADMIN`). Callers that need to branch use the
//! predicates (`is_invalid_input`, `is_missing_privileges`, ...), never the text.
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while validating, generating, applying or removing rules.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// A flag value could not be parsed or is not allowed (blame: the operator).
    #[error("invalid value {value:?} for {flag}: {reason}")]
    InvalidFlag {
        /// The flag as the operator wrote it, e.g. `-i/--istio-service-cidr`.
        flag: &'static str,
        /// The offending value (one element of a comma separated list).
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// An istio-iptables flag Petrel recognises but does not implement.
    #[error("{flag} is not supported by petrel redirect: {reason}")]
    Unsupported {
        /// The flag.
        flag: &'static str,
        /// Why, and what to do instead.
        reason: &'static str,
    },

    /// The backend's binary is not installed or not on `PATH`.
    #[error(
        "`{binary}` was not found: the {backend} backend needs it (install the `{package}` package, \
         or choose another backend with --backend; --no-ipv6 skips the ip6tables tools)"
    )]
    MissingBinary {
        /// The program that was looked for.
        binary: String,
        /// The backend that needs it.
        backend: &'static str,
        /// The Debian package providing it.
        package: &'static str,
    },

    /// The process may not change the firewall (needs root or `CAP_NET_ADMIN`).
    #[error(
        "missing privileges to {action}: run as root or grant CAP_NET_ADMIN (and CAP_NET_RAW) \
         to the process, e.g. `securityContext.capabilities.add: [NET_ADMIN, NET_RAW]` in an init \
         container"
    )]
    MissingPrivileges {
        /// What was attempted.
        action: String,
    },

    /// iptables-legacy as a non-root user: capabilities are not enough for it.
    #[error(
        "`{command}` needs root ({stderr}): iptables-legacy lists its tables in \
         /proc/net/ip_tables_names, which only root can read, so CAP_NET_ADMIN alone is not \
         enough; run as root, or use an nf_tables backend (--backend iptables-nft or nft), \
         which works for an unprivileged proxy user with CAP_NET_ADMIN and CAP_NET_RAW"
    )]
    LegacyNeedsRoot {
        /// The command line.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
    },

    /// An external command ran and failed; nothing was half-applied (restore is atomic).
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },

    /// The state file recording what Petrel installed could not be read or written.
    #[error("state file {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Any other I/O error (spawning a command, writing to stdout).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

// === impl RedirectError ===

impl RedirectError {
    pub(crate) fn invalid(
        flag: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidFlag {
            flag,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// The operator passed a bad flag value; retrying cannot help.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Self::InvalidFlag { .. } | Self::Unsupported { .. })
    }

    /// The process lacks root / `CAP_NET_ADMIN`.
    pub fn is_missing_privileges(&self) -> bool {
        matches!(
            self,
            Self::MissingPrivileges { .. } | Self::LegacyNeedsRoot { .. }
        )
    }

    /// A required binary (iptables, nft, ip) is not installed.
    pub fn is_missing_binary(&self) -> bool {
        matches!(self, Self::MissingBinary { .. })
    }
}
