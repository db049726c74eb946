//! DNS for STRICT_DNS and LOGICAL_DNS clusters, through the system resolver
//! (getaddrinfo on tokio's blocking pool), refreshed every `dns_refresh_rate`.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Cluster, Discovery, Host, HostAddr};

/// Names a DNS cluster resolves.
#[derive(Debug, Clone)]
pub struct DnsTargets {
    /// (name, port, weight) per endpoint.
    pub names: Vec<(String, u16, u32)>,
    /// `dns_lookup_family`.
    pub family: Family,
    /// `dns_refresh_rate` (Envoy's default 5 s).
    pub refresh: Duration,
}

/// `dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only.
    V4Only,
    /// IPv6 only.
    V6Only,
    /// Prefer IPv6, fall back to IPv4 (Envoy's AUTO).
    Auto,
    /// Prefer IPv4, fall back to IPv6.
    V4Preferred,
    /// Every address.
    All,
}

/// Resolves all targets once; keeps the previous hosts for a name that fails to resolve.
pub async fn resolve(cluster: &Cluster) -> Result<(), String> {
    let (targets, logical) = match &cluster.discovery {
        Discovery::StrictDns(t) => (t, false),
        Discovery::LogicalDns(t) => (t, true),
        _ => return Ok(()),
    };
    cluster.stats.update_attempt.inc();
    let previous = cluster.hosts.load_full();
    let mut hosts: Vec<Arc<Host>> = Vec::new();
    let mut errors = Vec::new();
    for (name, port, weight) in &targets.names {
        match lookup(name, *port, targets.family).await {
            Ok(addrs) => {
                let addrs = if logical {
                    addrs.into_iter().take(1).collect()
                } else {
                    addrs
                };
                for addr in addrs {
                    // Keep the existing host (and its pool) when the address did not change.
                    let host = previous
                        .hosts
                        .iter()
                        .find(|h| h.addr == HostAddr::Tcp(addr))
                        .cloned()
                        .unwrap_or_else(|| {
                            Arc::new(Host::new(
                                HostAddr::Tcp(addr),
                                Arc::from(name.as_str()),
                                *weight,
                            ))
                        });
                    hosts.push(host);
                }
            }
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                hosts.extend(
                    previous
                        .hosts
                        .iter()
                        .filter(|h| &*h.hostname == name)
                        .cloned(),
                );
            }
        }
    }
    if errors.is_empty() {
        cluster.stats.update_success.inc();
    }
    cluster.set_hosts(hosts);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Refreshes a DNS cluster until the returned task is aborted.
pub fn spawn_refresh(cluster: Arc<Cluster>) -> Option<tokio::task::JoinHandle<()>> {
    let refresh = match &cluster.discovery {
        Discovery::StrictDns(t) | Discovery::LogicalDns(t) => t.refresh,
        _ => return None,
    };
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(refresh).await;
            if let Err(e) = resolve(&cluster).await {
                tracing::warn!(cluster = %cluster.name, "DNS refresh failed: {e}");
            }
        }
    }))
}

async fn lookup(name: &str, port: u16, family: Family) -> std::io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((name, port)).await?.collect();
    let v4: Vec<_> = all.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let v6: Vec<_> = all.iter().copied().filter(SocketAddr::is_ipv6).collect();
    let chosen = match family {
        Family::V4Only => v4,
        Family::V6Only => v6,
        Family::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        Family::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        Family::All => all,
    };
    if chosen.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address of the requested family",
        ));
    }
    Ok(chosen)
}
