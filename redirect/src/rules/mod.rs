//! Rule generation: a validated [`CaptureConfig`] in, restore scripts out.
//!
//! The rules reproduce istio-iptables' semantics and chain names for the same flags
//! (`ISTIO_INBOUND`, `ISTIO_IN_REDIRECT`, `ISTIO_OUTPUT`, `ISTIO_REDIRECT`, and for TPROXY
//! `ISTIO_DIVERT`/`ISTIO_TPROXY`), so `iptables-save` reads the way Istio operators expect. Three
//! deliberate differences, all about coexisting with rules that are not ours:
//!
//! - Jumps into our chains are **inserted** at the head of the built-in chains (`-I PREROUTING 1`)
//!   instead of appended, so an earlier `ACCEPT` of someone else cannot bypass capture.
//! - Every rule we put in a built-in chain carries `-m comment --comment petrel`; that is how
//!   cleanup and re-apply find exactly our rules and nothing else.
//! - Per-interface `RETURN`s (`-c`, `-k`) live at the head of our own chains rather than in the
//!   built-in chains: with head insertion, a `RETURN` in `PREROUTING` would skip everybody
//!   else's rules too.
//!
//! Everything here is pure (strings in, strings out) and snapshot-tested; reading the current
//! rule set and running the restore tools is `apply`'s job.
use crate::config::CaptureConfig;

pub mod iptables;
pub mod nft;

pub use iptables::{parse_save, Installed, IptablesRules, TableRules};

/// The comment marking every rule Petrel puts in a built-in chain.
pub const COMMENT: &str = "petrel";

/// Prefix of every chain Petrel owns in the iptables backends (istio's names).
pub const CHAIN_PREFIX: &str = "ISTIO_";

/// IP family of one rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `iptables-restore`, `ip` in nft.
    V4,
    /// `ip6tables-restore`, `ip6` in nft.
    V6,
}

/// Extra, non-firewall steps a rule set needs (done with `ip`, not with the restore tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostStep {
    /// TPROXY: `ip rule add fwmark MARK lookup TABLE` and a `local default dev lo` route in it.
    TproxyRoute {
        /// Family of the rule and route.
        family: Family,
        /// The TPROXY mark.
        mark: u32,
        /// The routing table.
        table: u32,
    },
    /// IPv6: `ip -6 addr add ::6/128 dev lo`, the inbound passthrough source (IPv6 `lo` only
    /// has `::1`, unlike IPv4's whole 127/8).
    LoopbackPassthroughV6,
}

// === impl Family ===

impl Family {
    /// The host route for localhost, as istio writes it.
    pub fn localhost(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.1/32",
            Self::V6 => "::1/128",
        }
    }

    /// The inbound passthrough source the proxy binds to reach the app.
    pub fn passthrough(self) -> &'static str {
        match self {
            Self::V4 => crate::config::INBOUND_PASSTHROUGH_V4,
            Self::V6 => crate::config::INBOUND_PASSTHROUGH_V6,
        }
    }

    /// `ip -4` / `ip -6`.
    pub fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }

    /// The families a config produces rules for.
    pub fn enabled(cfg: &CaptureConfig) -> &'static [Family] {
        if cfg.ipv6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        }
    }

    fn matches(self, ip: std::net::IpAddr) -> bool {
        match self {
            Self::V4 => ip.is_ipv4(),
            Self::V6 => ip.is_ipv6(),
        }
    }
}

/// The host steps a config needs besides the firewall rules.
pub fn host_steps(cfg: &CaptureConfig) -> Vec<HostStep> {
    let mut steps = Vec::new();
    if cfg.ipv6 {
        steps.push(HostStep::LoopbackPassthroughV6);
    }
    if cfg.mode == crate::config::InterceptMode::Tproxy
        && cfg.inbound_ports != crate::config::InboundPorts::None
    {
        for &family in Family::enabled(cfg) {
            steps.push(HostStep::TproxyRoute {
                family,
                mark: cfg.tproxy_mark,
                table: cfg.tproxy_route_table,
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests;
