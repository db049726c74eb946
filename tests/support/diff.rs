//! Differential runs: one scenario, once per proxy kind, same bootstrap.
//!
//! A scenario starts its own upstreams and proxy, drives traffic, asserts the absolute expected
//! behaviour (so it cannot pass when both proxies are wrong in the same way) and records what it
//! saw into [`Observations`]. [`differential`] runs it against Envoy first, then Petrel, and fails
//! if the two sets of observations differ. Keys must not contain anything run-specific (ports,
//! request ids, dates).
//!
//! `E2E_PROXIES=envoy` or `E2E_PROXIES=petrel` runs a single kind (no comparison); the default is
//! both. A missing Envoy skips the test with a printed reason.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;

use crate::bins::ProxyKind;
use crate::proxy::Proxy;

/// What one run of a scenario observed, keyed by a run-independent description.
#[derive(Debug, Clone)]
pub struct Observations {
    kind: ProxyKind,
    entries: BTreeMap<String, String>,
}

// === impl Observations ===

impl Observations {
    /// Empty observations for a run against `kind`.
    pub fn new(kind: ProxyKind) -> Self {
        Self {
            kind,
            entries: BTreeMap::new(),
        }
    }

    /// The proxy kind these came from.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// Records `value` under `key`. A repeated key is a scenario bug and panics.
    pub fn record(&mut self, key: impl Into<String>, value: impl Debug) {
        let key = key.into();
        let prev = self.entries.insert(key.clone(), format!("{value:?}"));
        assert!(prev.is_none(), "observation {key:?} recorded twice");
    }

    /// Waits until stat `name` equals `expected` on `proxy`, then records it under
    /// `stat <label>` (`label` is `name` with run-specific parts such as ports replaced).
    pub async fn stat_eq(
        &mut self,
        proxy: &Proxy,
        label: &str,
        name: &str,
        expected: u64,
    ) -> anyhow::Result<()> {
        let v = proxy.admin().wait_for_stat_eq(name, expected).await?;
        self.record(format!("stat {label}"), v);
        Ok(())
    }

    /// The recorded entries.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.entries
    }
}

/// The proxy kinds this run should exercise (`E2E_PROXIES`, default both), or a reason to skip.
pub fn kinds() -> Result<Vec<ProxyKind>, String> {
    let kinds: Vec<ProxyKind> = match std::env::var("E2E_PROXIES") {
        Ok(list) if !list.trim().is_empty() => ProxyKind::ALL
            .into_iter()
            .filter(|k| {
                list.split(',')
                    .any(|s| s.trim().eq_ignore_ascii_case(k.name()))
            })
            .collect(),
        _ => ProxyKind::ALL.to_vec(),
    };
    assert!(
        !kinds.is_empty(),
        "E2E_PROXIES names no known proxy (use envoy, petrel or both)"
    );
    if kinds.contains(&ProxyKind::Envoy) {
        ProxyKind::Envoy.binary()?;
    }
    Ok(kinds)
}

/// Runs `scenario` against each proxy kind and asserts their observations agree.
///
/// Panics with the failing kind's error; prints a skip reason and returns if Envoy is missing.
pub async fn differential<F, Fut>(scenario: F)
where
    F: Fn(ProxyKind) -> Fut,
    Fut: Future<Output = anyhow::Result<Observations>>,
{
    crate::trace::init();
    let kinds = match kinds() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let mut runs = Vec::new();
    for kind in kinds {
        tracing::info!(%kind, "running scenario");
        crate::proxy::take_recent_logs();
        match scenario(kind).await {
            Ok(obs) => {
                assert_eq!(
                    obs.kind(),
                    kind,
                    "scenario returned another kind's observations"
                );
                for (k, v) in obs.entries() {
                    tracing::info!(%kind, "observed {k} = {v}");
                }
                runs.push(obs);
            }
            Err(e) => fail(kind, e),
        }
    }
    if let [reference, candidate] = runs.as_slice() {
        assert_same(reference, candidate);
    }
}

/// Runs `scenario` against one kind only, for behaviour where Petrel deliberately differs from
/// Envoy (e.g. SIGTERM drains instead of dropping in-flight requests). Respects `E2E_PROXIES`;
/// never skips for a missing Envoy when `kind` is Petrel.
pub async fn single<F, Fut>(kind: ProxyKind, scenario: F)
where
    F: FnOnce(ProxyKind) -> Fut,
    Fut: Future<Output = anyhow::Result<Observations>>,
{
    crate::trace::init();
    let selected = match std::env::var("E2E_PROXIES") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .any(|s| s.trim().eq_ignore_ascii_case(kind.name())),
        _ => true,
    };
    if !selected {
        eprintln!("SKIPPED: {kind} not in E2E_PROXIES");
        return;
    }
    if let Err(why) = kind.binary() {
        if kind == ProxyKind::Envoy {
            eprintln!("SKIPPED: {why}");
            return;
        }
    }
    crate::proxy::take_recent_logs();
    match scenario(kind).await {
        Ok(obs) => {
            for (k, v) in obs.entries() {
                tracing::info!(%kind, "observed {k} = {v}");
            }
        }
        Err(e) => fail(kind, e),
    }
}

fn fail(kind: ProxyKind, e: anyhow::Error) -> ! {
    for tail in crate::proxy::take_recent_logs() {
        eprintln!("{tail}");
    }
    panic!("scenario failed against {kind}: {e:#}")
}

fn assert_same(a: &Observations, b: &Observations) {
    let keys: std::collections::BTreeSet<&String> =
        a.entries.keys().chain(b.entries.keys()).collect();
    let mut diffs = Vec::new();
    for k in keys {
        let (va, vb) = (a.entries.get(k), b.entries.get(k));
        if va != vb {
            diffs.push(format!(
                "  {k}:\n    {}: {}\n    {}: {}",
                a.kind,
                va.map_or("<missing>", String::as_str),
                b.kind,
                vb.map_or("<missing>", String::as_str)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} and {} behaved differently:\n{}",
        a.kind,
        b.kind,
        diffs.join("\n")
    );
}
