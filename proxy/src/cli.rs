//! Envoy's command line, as pilot-agent and other sidecar launchers pass it.
//!
//! Flags Petrel honours change its behaviour; flags that only matter to Envoy's process model
//! (hot restart, base id) are accepted so launchers need no change, and are documented as
//! having no effect. An unknown flag is an error, as in Envoy.
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// `petrel`: a drop-in for `envoy`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "petrel",
    version,
    about = "Petrel service-mesh sidecar (Envoy-compatible)"
)]
pub struct Args {
    /// Path to the v3 bootstrap (YAML, JSON or binary .pb).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<PathBuf>,

    /// Bootstrap YAML merged over the file given with -c.
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,

    /// `serve` runs the proxy; `validate` checks the configuration and exits.
    #[arg(long, value_enum, default_value_t = Mode::Serve)]
    pub mode: Mode,

    /// Log level: trace, debug, info, warning/warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,

    /// Per-component levels, `component:level,...` (Envoy component names map to Petrel modules).
    #[arg(long = "component-log-level")]
    pub component_log_level: Option<String>,

    /// Log line format (accepted; Petrel uses its own compact format).
    #[arg(long = "log-format")]
    pub log_format: Option<String>,

    /// Write logs to this file instead of stderr.
    #[arg(long = "log-path")]
    pub log_path: Option<PathBuf>,

    /// Escape newlines in log lines (accepted; Petrel's lines never contain raw newlines).
    #[arg(long = "log-format-escaped")]
    pub log_format_escaped: bool,

    /// Overrides `node.id`.
    #[arg(long = "service-node")]
    pub service_node: Option<String>,

    /// Overrides `node.cluster`.
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,

    /// Overrides `node.locality.zone`.
    #[arg(long = "service-zone")]
    pub service_zone: Option<String>,

    /// Seconds given to in-flight requests when draining.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,

    /// `gradual` or `immediate` (how connections are encouraged to close while draining).
    #[arg(long = "drain-strategy", value_enum, default_value_t = DrainStrategy::Gradual)]
    pub drain_strategy: DrainStrategy,

    /// Hot-restart parent shutdown time (accepted; Petrel has no hot restart).
    #[arg(long = "parent-shutdown-time-s", default_value_t = 900)]
    pub parent_shutdown_time_s: u64,

    /// Number of worker threads (default: the number of CPUs).
    #[arg(long)]
    pub concurrency: Option<usize>,

    /// IP version of the local address used in `server_info` (v4 or v6).
    #[arg(long = "local-address-ip-version", value_enum, default_value_t = IpVersion::V4)]
    pub local_address_ip_version: IpVersion,

    /// Accepted; Petrel never hot-restarts.
    #[arg(long = "disable-hot-restart")]
    pub disable_hot_restart: bool,

    /// Accepted; Petrel never hot-restarts.
    #[arg(long = "use-dynamic-base-id")]
    pub use_dynamic_base_id: bool,

    /// Accepted; Petrel never hot-restarts.
    #[arg(long = "base-id")]
    pub base_id: Option<u32>,

    /// Accepted; Petrel never hot-restarts.
    #[arg(long = "base-id-path")]
    pub base_id_path: Option<PathBuf>,

    /// Accepted; Petrel never hot-restarts.
    #[arg(long = "restart-epoch", default_value_t = 0)]
    pub restart_epoch: u32,

    /// Ignore fields of the static configuration that do not exist in the protos.
    #[arg(long = "allow-unknown-static-fields")]
    pub allow_unknown_static_fields: bool,

    /// Reject unknown dynamic fields (Petrel always rejects unknown fields in xDS resources).
    #[arg(long = "reject-unknown-dynamic-fields")]
    pub reject_unknown_dynamic_fields: bool,

    /// Access log flush interval in milliseconds.
    #[arg(long = "file-flush-interval-msec", default_value_t = 10000)]
    pub file_flush_interval_msec: u64,

    /// Maximum stat name length (accepted; Petrel does not limit names).
    #[arg(long = "max-obj-name-len")]
    pub max_obj_name_len: Option<u64>,

    // --- Petrel's own flags (not Envoy's) ---
    /// The application's `spec.yaml` (services, ports, protocol, health path): sent in the
    /// node metadata and shown in `/config_dump`; `petrel run --capture` captures its ports.
    #[arg(long = "spec")]
    pub spec: Option<PathBuf>,

    /// Serve the mesh DNS on this address (e.g. 127.0.0.1:15053): mesh service names resolve
    /// to capture addresses, every other name is forwarded to /etc/resolv.conf's resolvers.
    #[arg(long = "mesh-dns")]
    pub mesh_dns: Option<std::net::SocketAddr>,

    /// The range capture addresses are allocated from.
    #[arg(long = "capture-cidr", default_value = "240.240.0.0/16")]
    pub capture_cidr: String,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Run the proxy.
    Serve,
    /// Load and check the configuration, then exit.
    Validate,
}

/// `--drain-strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrainStrategy {
    /// Encourage connections to close over the drain time.
    Gradual,
    /// Encourage all connections to close at once.
    Immediate,
}

/// `--local-address-ip-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

// === impl Args ===

impl Args {
    /// The `tracing` filter directive for `-l` and `--component-log-level`.
    pub fn log_filter(&self) -> Result<String, String> {
        let level = envoy_level(&self.log_level)?;
        let mut directive = format!("{level},h2=warn,hyper=warn,tonic=warn,tower=warn");
        if let Some(components) = &self.component_log_level {
            for part in components.split(',').filter(|p| !p.is_empty()) {
                let (component, lvl) = part.split_once(':').ok_or_else(|| {
                    format!("--component-log-level: expected component:level, got {part:?}")
                })?;
                let lvl = envoy_level(lvl)?;
                // Envoy's components have no Petrel module of the same name; they are mapped
                // to the module that does that job.
                let target = match component {
                    "upstream" | "pool" | "conn_handler" | "connection" => "petrel::upstream",
                    "http" | "http2" | "router" => "petrel::http",
                    "config" | "main" | "admin" => "petrel",
                    "misc" | "filter" | "runtime" => "petrel",
                    other => {
                        return Err(format!(
                            "--component-log-level: unknown component {other:?}"
                        ))
                    }
                };
                directive.push_str(&format!(",{target}={lvl}"));
            }
        }
        Ok(directive)
    }
}

fn envoy_level(level: &str) -> Result<&'static str, String> {
    Ok(match level {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        other => return Err(format!("invalid log level {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pilot_agent_flags() {
        let args = Args::try_parse_from([
            "petrel",
            "-c",
            "etc/istio/proxy/envoy-rev.json",
            "--drain-time-s",
            "45",
            "--drain-strategy",
            "immediate",
            "--local-address-ip-version",
            "v4",
            "--file-flush-interval-msec",
            "1000",
            "--disable-hot-restart",
            "--allow-unknown-static-fields",
            "--log-format",
            "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t",
            "-l",
            "warning",
            "--component-log-level",
            "misc:error",
            "--concurrency",
            "2",
        ])
        .expect("pilot-agent's flags parse");
        assert_eq!(args.drain_time_s, 45);
        assert_eq!(args.concurrency, Some(2));
        assert!(args.log_filter().unwrap().contains("petrel=error"));
    }

    #[test]
    fn unknown_flag_is_an_error() {
        let err = Args::try_parse_from(["petrel", "--no-such-flag"]).unwrap_err();
        assert!(err.to_string().contains("--no-such-flag"));
    }

    #[test]
    fn bad_log_level_is_an_error() {
        let args = Args::try_parse_from(["petrel", "-l", "loud"]).unwrap();
        assert!(args.log_filter().is_err());
    }
}
