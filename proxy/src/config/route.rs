//! `RouteConfiguration` → `RouteTable`.
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher, RegexMatcher, StringMatcher as PbStringMatcher,
};
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use regex::Regex;

use super::{duration, ConfigError};
use crate::policy::retry::{RetryPolicy, RouteTimeouts};
use crate::policy::Fraction;
use crate::route::*;

/// Envoy's default route timeout.
const DEFAULT_ROUTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Compiles a route configuration; `path` prefixes error paths.
pub(crate) fn build(rc: &pb::RouteConfiguration, path: &str) -> Result<RouteTable, ConfigError> {
    let mut table = RouteTable {
        name: Arc::from(rc.name.as_str()),
        request_headers: mutations(
            &rc.request_headers_to_add,
            &rc.request_headers_to_remove,
            path,
        )?,
        response_headers: mutations(
            &rc.response_headers_to_add,
            &rc.response_headers_to_remove,
            path,
        )?,
        ..Default::default()
    };
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let vpath = format!("{path}.virtual_hosts[{i}]");
        if vh.domains.is_empty() {
            return Err(ConfigError::new(
                format!("{vpath}.domains"),
                "must not be empty",
            ));
        }
        for domain in &vh.domains {
            let d = domain.to_ascii_lowercase();
            let dup = if d == "*" {
                table.wildcard.replace(i).is_some()
            } else if let Some(suffix) = d.strip_prefix('*') {
                if table.suffixes.iter().any(|(s, _)| s == suffix) {
                    true
                } else {
                    table.suffixes.push((suffix.to_string(), i));
                    false
                }
            } else if let Some(prefix) = d.strip_suffix('*') {
                if table.prefixes.iter().any(|(s, _)| s == prefix) {
                    true
                } else {
                    table.prefixes.push((prefix.to_string(), i));
                    false
                }
            } else {
                table.exact.insert(d, i).is_some()
            };
            if dup {
                // Envoy refuses a route config where two virtual hosts claim one domain.
                return Err(ConfigError::new(
                    format!("{vpath}.domains"),
                    format!("domain {domain:?} is used by more than one virtual host"),
                ));
            }
        }
        table.vhosts.push(virtual_host(vh, &vpath)?);
    }
    // Longest suffix / prefix first, as Envoy's wildcard precedence.
    table.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    table.prefixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    Ok(table)
}

fn virtual_host(vh: &pb::VirtualHost, path: &str) -> Result<VirtualHost, ConfigError> {
    // A route's own retry_policy replaces the virtual host's (Envoy does not merge them).
    let vh_retry = match &vh.retry_policy {
        Some(p) => Arc::new(RetryPolicy::from_proto(p, &format!("{path}.retry_policy"))?),
        None => Arc::new(RetryPolicy::default()),
    };
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(r, &format!("{path}.routes[{i}]"), &vh_retry))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost {
        name: Arc::from(vh.name.as_str()),
        attempt_count_in_request: vh.include_request_attempt_count,
        attempt_count_in_response: vh.include_attempt_count_in_response,
        routes,
        request_headers: mutations(
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
            path,
        )?,
        response_headers: mutations(
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
            path,
        )?,
    })
}

fn route(r: &pb::Route, path: &str, vh_retry: &Arc<RetryPolicy>) -> Result<Route, ConfigError> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.match"), "missing"))?;
    let matcher = route_match(m, &format!("{path}.match"))?;
    let action = match &r.action {
        Some(pb::route::Action::Route(ra)) => {
            Action::Forward(Box::new(forward(ra, &format!("{path}.route"), vh_retry)?))
        }
        Some(pb::route::Action::Redirect(ra)) => {
            Action::Redirect(Box::new(redirect(ra, &format!("{path}.redirect"))?))
        }
        Some(pb::route::Action::DirectResponse(d)) => {
            let dpath = format!("{path}.direct_response");
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| {
                    ConfigError::new(format!("{dpath}.status"), "must be in [200, 600)")
                })?;
            let body = match &d.body {
                Some(ds) => data_source(ds, &format!("{dpath}.body"))?,
                None => Bytes::new(),
            };
            Action::Direct { status, body }
        }
        Some(_) => return Err(ConfigError::new(path, "route action not supported")),
        None => {
            return Err(ConfigError::new(
                path,
                "missing action (route, redirect or direct_response)",
            ))
        }
    };
    Ok(Route {
        name: Arc::from(r.name.as_str()),
        matcher,
        action,
        request_headers: mutations(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            path,
        )?,
        response_headers: mutations(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            path,
        )?,
    })
}

fn route_match(m: &pb::RouteMatch, path: &str) -> Result<RouteMatcher, ConfigError> {
    use pb::route_match::PathSpecifier;
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let pm = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(re)) => {
            PathMatch::Regex(regex(re, &format!("{path}.safe_regex"))?)
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            if p.contains(['?', '#']) || p.ends_with('/') {
                return Err(ConfigError::new(
                    format!("{path}.path_separated_prefix"),
                    "must not contain ? or # nor end with /",
                ));
            }
            PathMatch::SeparatedPrefix(p.clone())
        }
        Some(_) => return Err(ConfigError::new(path, "path specifier not supported")),
        None => {
            return Err(ConfigError::new(
                path,
                "missing path specifier (prefix, path, safe_regex, ...)",
            ))
        }
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h, &format!("{path}.headers[{i}]")))
        .collect::<Result<_, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| {
            use pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
            let qpath = format!("{path}.query_parameters[{i}]");
            let value = match &q.query_parameter_match_specifier {
                Some(Q::StringMatch(s)) => {
                    Some(string_matcher(s, &format!("{qpath}.string_match"))?)
                }
                Some(Q::PresentMatch(_)) | None => None,
            };
            Ok(QueryMatcher {
                name: q.name.clone(),
                value,
            })
        })
        .collect::<Result<_, ConfigError>>()?;
    let fraction = match &m.runtime_fraction {
        // The runtime key is ignored (Petrel has no runtime layer): the default value decides,
        // as it does in Envoy when the key is not set.
        Some(rf) => Some(match &rf.default_value {
            Some(fp) => {
                Fraction::from_proto(fp, &format!("{path}.runtime_fraction.default_value"))?
            }
            None => Fraction::ZERO,
        }),
        None => None,
    };
    Ok(RouteMatcher {
        path: pm,
        case_sensitive,
        headers,
        query,
        grpc: m.grpc.is_some(),
        fraction,
    })
}

fn header_matcher(h: &pb::HeaderMatcher, path: &str) -> Result<HeaderMatcher, ConfigError> {
    use pb::header_matcher::HeaderMatchSpecifier as H;
    let s = |m: StringMatcher| HeaderCondition::String(m);
    let condition = match &h.header_match_specifier {
        Some(H::ExactMatch(v)) => s(StringMatcher::Exact(v.clone(), false)),
        Some(H::PrefixMatch(v)) => s(StringMatcher::Prefix(v.clone(), false)),
        Some(H::SuffixMatch(v)) => s(StringMatcher::Suffix(v.clone(), false)),
        Some(H::ContainsMatch(v)) => s(StringMatcher::Contains(v.clone(), false)),
        Some(H::SafeRegexMatch(re)) => s(StringMatcher::Regex(regex(
            re,
            &format!("{path}.safe_regex_match"),
        )?)),
        Some(H::StringMatch(m)) => s(string_matcher(m, &format!("{path}.string_match"))?),
        Some(H::PresentMatch(p)) => HeaderCondition::Present(*p),
        Some(H::RangeMatch(_)) => {
            return Err(ConfigError::new(
                format!("{path}.range_match"),
                "not supported",
            ))
        }
        // No specifier: Envoy treats it as "present".
        None => HeaderCondition::Present(true),
    };
    if h.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        condition,
        invert: h.invert_match,
        missing_as_empty: h.treat_missing_header_as_empty,
    })
}

pub(crate) fn string_matcher(
    m: &PbStringMatcher,
    path: &str,
) -> Result<StringMatcher, ConfigError> {
    use string_matcher::MatchPattern as P;
    let ic = m.ignore_case;
    Ok(match &m.match_pattern {
        Some(P::Exact(v)) => StringMatcher::Exact(v.clone(), ic),
        Some(P::Prefix(v)) => StringMatcher::Prefix(v.clone(), ic),
        Some(P::Suffix(v)) => StringMatcher::Suffix(v.clone(), ic),
        Some(P::Contains(v)) => StringMatcher::Contains(v.clone(), ic),
        Some(P::SafeRegex(re)) => StringMatcher::Regex(regex(re, &format!("{path}.safe_regex"))?),
        Some(_) => return Err(ConfigError::new(path, "match pattern not supported")),
        None => return Err(ConfigError::new(path, "missing match pattern")),
    })
}

pub(crate) fn regex(re: &RegexMatcher, path: &str) -> Result<Regex, ConfigError> {
    // RE2 and the regex crate share the syntax Envoy configs use (no backreferences or
    // look-around in either), so patterns compile with the same meaning.
    Regex::new(&re.regex)
        .map_err(|e| ConfigError::new(format!("{path}.regex"), format!("invalid regex: {e}")))
}

fn forward(
    ra: &pb::RouteAction,
    path: &str,
    vh_retry: &Arc<RetryPolicy>,
) -> Result<ForwardAction, ConfigError> {
    use pb::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
    let target = match &ra.cluster_specifier {
        Some(C::Cluster(name)) if !name.is_empty() => {
            ClusterTarget::Named(Arc::from(name.as_str()))
        }
        Some(C::Cluster(_)) => {
            return Err(ConfigError::new(
                format!("{path}.cluster"),
                "must not be empty",
            ))
        }
        Some(C::ClusterHeader(h)) => {
            ClusterTarget::Header(header_name(h, &format!("{path}.cluster_header"))?)
        }
        Some(C::WeightedClusters(wc)) => {
            ClusterTarget::Weighted(weighted(wc, &format!("{path}.weighted_clusters"))?)
        }
        Some(_) => return Err(ConfigError::new(path, "cluster specifier not supported")),
        None => {
            return Err(ConfigError::new(
                path,
                "missing cluster, cluster_header or weighted_clusters",
            ))
        }
    };
    let timeout = match &ra.timeout {
        Some(d) => {
            let d = duration(d, &format!("{path}.timeout"))?;
            (!d.is_zero()).then_some(d)
        }
        None => Some(DEFAULT_ROUTE_TIMEOUT),
    };
    let host_rewrite = match &ra.host_rewrite_specifier {
        Some(H::HostRewriteLiteral(h)) => {
            HostRewrite::Literal(HeaderValue::from_str(h).map_err(|_| {
                ConfigError::new(
                    format!("{path}.host_rewrite_literal"),
                    "invalid header value",
                )
            })?)
        }
        Some(H::AutoHostRewrite(b)) if b.value => HostRewrite::Auto,
        Some(H::AutoHostRewrite(_)) => HostRewrite::None,
        Some(H::HostRewriteHeader(h)) => {
            HostRewrite::Header(header_name(h, &format!("{path}.host_rewrite_header"))?)
        }
        Some(_) => {
            return Err(ConfigError::new(
                path,
                "host rewrite specifier not supported",
            ))
        }
        None => HostRewrite::None,
    };
    let regex_rewrite = match &ra.regex_rewrite {
        Some(rr) => {
            let rpath = format!("{path}.regex_rewrite");
            let pattern = rr
                .pattern
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{rpath}.pattern"), "missing"))?;
            // Envoy substitutions use `\1`; the regex crate uses `${1}`.
            let sub = convert_substitution(&rr.substitution);
            Some((regex(pattern, &format!("{rpath}.pattern"))?, sub))
        }
        None => None,
    };
    let cluster_not_found = match ra.cluster_not_found_response_code {
        0 => StatusCode::SERVICE_UNAVAILABLE,
        1 => StatusCode::NOT_FOUND,
        2 => StatusCode::INTERNAL_SERVER_ERROR,
        other => {
            return Err(ConfigError::new(
                format!("{path}.cluster_not_found_response_code"),
                format!("unknown value {other}"),
            ))
        }
    };
    let upgrades = ra
        .upgrade_configs
        .iter()
        .filter(|u| u.enabled.as_ref().is_none_or(|b| b.value))
        .map(|u| u.upgrade_type.to_ascii_lowercase())
        .collect();
    let retry = match &ra.retry_policy {
        Some(p) => Arc::new(RetryPolicy::from_proto(p, &format!("{path}.retry_policy"))?),
        None => vh_retry.clone(),
    };
    let opt_duration = |d: &Option<envoy_types::pb::google::protobuf::Duration>, field: &str| {
        d.as_ref()
            .map(|d| duration(d, &format!("{path}.{field}")))
            .transpose()
    };
    let timeouts = RouteTimeouts {
        timeout: timeout.unwrap_or(std::time::Duration::ZERO),
        max_grpc_timeout: opt_duration(&ra.max_grpc_timeout, "max_grpc_timeout")?,
        grpc_timeout_offset: opt_duration(&ra.grpc_timeout_offset, "grpc_timeout_offset")?,
        per_try_timeout: retry.per_try_timeout,
    };
    let idle_timeout = opt_duration(&ra.idle_timeout, "idle_timeout")?.filter(|d| !d.is_zero());
    let max_stream_duration = match &ra.max_stream_duration {
        Some(m) => {
            let mpath = format!("{path}.max_stream_duration");
            if m.grpc_timeout_header_max.is_some() || m.grpc_timeout_header_offset.is_some() {
                return Err(ConfigError::new(
                    format!("{mpath}.grpc_timeout_header_max"),
                    "not supported (use max_grpc_timeout)",
                ));
            }
            m.max_stream_duration
                .as_ref()
                .map(|d| duration(d, &format!("{mpath}.max_stream_duration")))
                .transpose()?
                .filter(|d| !d.is_zero())
        }
        None => None,
    };
    let priority =
        match envoy_types::pb::envoy::config::core::v3::RoutingPriority::try_from(ra.priority) {
            Ok(p) => crate::policy::breaker::Priority::from(p),
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.priority"),
                    format!("unknown value {}", ra.priority),
                ))
            }
        };
    let mirrors = ra
        .request_mirror_policies
        .iter()
        .enumerate()
        .map(|(i, m)| mirror(m, &format!("{path}.request_mirror_policies[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(ForwardAction {
        target,
        timeout,
        prefix_rewrite: (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.clone()),
        regex_rewrite,
        host_rewrite,
        upgrades,
        cluster_not_found,
        retry,
        timeouts,
        idle_timeout,
        max_stream_duration,
        priority,
        mirrors,
        hash_policy: crate::upstream::lb::hash::HashPolicies::compile(
            &ra.hash_policy,
            &format!("{path}.hash_policy"),
        )?,
    })
}

fn mirror(
    m: &pb::route_action::RequestMirrorPolicy,
    path: &str,
) -> Result<MirrorPolicy, ConfigError> {
    let target = match (m.cluster.is_empty(), m.cluster_header.is_empty()) {
        (false, true) => MirrorTarget::Named(Arc::from(m.cluster.as_str())),
        (true, false) => MirrorTarget::Header(header_name(
            &m.cluster_header,
            &format!("{path}.cluster_header"),
        )?),
        (false, false) => {
            return Err(ConfigError::new(
                path,
                "only one of cluster and cluster_header may be set",
            ))
        }
        (true, true) => {
            return Err(ConfigError::new(
                format!("{path}.cluster"),
                "one of cluster and cluster_header is required",
            ))
        }
    };
    let fraction = match m
        .runtime_fraction
        .as_ref()
        .and_then(|r| r.default_value.as_ref())
    {
        Some(fp) => Fraction::from_proto(fp, &format!("{path}.runtime_fraction.default_value"))?,
        None if m.runtime_fraction.is_some() => Fraction::ZERO,
        None => Fraction::ALL,
    };
    Ok(MirrorPolicy {
        target,
        fraction,
        keep_host: m.disable_shadow_host_suffix_append,
    })
}

fn convert_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let d = chars.next().unwrap_or('0');
                out.push_str(&format!("${{{d}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn weighted(wc: &pb::WeightedCluster, path: &str) -> Result<WeightedClusters, ConfigError> {
    use pb::weighted_cluster::RandomValueSpecifier as R;
    if wc.clusters.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.clusters"),
            "must not be empty",
        ));
    }
    let mut clusters = Vec::with_capacity(wc.clusters.len());
    let mut total = 0u64;
    for (i, c) in wc.clusters.iter().enumerate() {
        let cpath = format!("{path}.clusters[{i}]");
        if c.name.is_empty() {
            return Err(ConfigError::new(
                format!("{cpath}.name"),
                "must not be empty",
            ));
        }
        let weight = c.weight.as_ref().map_or(0, |w| w.value as u64);
        total += weight;
        let host_rewrite = match &c.host_rewrite_specifier {
            Some(
                pb::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h),
            ) => Some(HeaderValue::from_str(h).map_err(|_| {
                ConfigError::new(
                    format!("{cpath}.host_rewrite_literal"),
                    "invalid header value",
                )
            })?),
            None => None,
        };
        clusters.push(WeightedCluster {
            name: Arc::from(c.name.as_str()),
            weight,
            upper: total,
            request_headers: mutations(
                &c.request_headers_to_add,
                &c.request_headers_to_remove,
                &cpath,
            )?,
            response_headers: mutations(
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
                &cpath,
            )?,
            host_rewrite,
        });
    }
    if total == 0 {
        return Err(ConfigError::new(
            format!("{path}.clusters"),
            "weights sum to zero",
        ));
    }
    if let Some(tw) = &wc.total_weight {
        if tw.value as u64 != total {
            return Err(ConfigError::new(
                format!("{path}.total_weight"),
                format!("is {} but the weights sum to {total}", tw.value),
            ));
        }
    }
    let header = match &wc.random_value_specifier {
        Some(R::HeaderName(h)) => Some(header_name(h, &format!("{path}.header_name"))?),
        Some(R::UseHashPolicy(_)) => {
            return Err(ConfigError::new(
                format!("{path}.use_hash_policy"),
                "not supported",
            ))
        }
        None => None,
    };
    Ok(WeightedClusters {
        clusters,
        total,
        header,
    })
}

fn redirect(ra: &pb::RedirectAction, path: &str) -> Result<Redirect, ConfigError> {
    use pb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let scheme = match &ra.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::HttpsRedirect(false)) | None => None,
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
    };
    let rpath = match &ra.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => RedirectPath::Replace(p.clone()),
        Some(P::PrefixRewrite(p)) => RedirectPath::PrefixRewrite(p.clone()),
        Some(_) => {
            return Err(ConfigError::new(
                path,
                "path rewrite specifier not supported",
            ))
        }
        None => RedirectPath::Keep,
    };
    let status = match ra.response_code {
        0 => StatusCode::MOVED_PERMANENTLY,
        1 => StatusCode::FOUND,
        2 => StatusCode::SEE_OTHER,
        3 => StatusCode::TEMPORARY_REDIRECT,
        4 => StatusCode::PERMANENT_REDIRECT,
        other => {
            return Err(ConfigError::new(
                format!("{path}.response_code"),
                format!("unknown value {other}"),
            ))
        }
    };
    let port = u16::try_from(ra.port_redirect)
        .map_err(|_| ConfigError::new(format!("{path}.port_redirect"), "not a port"))?;
    Ok(Redirect {
        scheme,
        host: (!ra.host_redirect.is_empty()).then(|| ra.host_redirect.clone()),
        port,
        path: rpath,
        status,
        strip_query: ra.strip_query,
    })
}

fn header_name(h: &str, path: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(path, format!("{h:?} is not a valid header name")))
}

/// Compiles `*_headers_to_add` / `*_headers_to_remove`.
pub(crate) fn mutations(
    add: &[HeaderValueOption],
    remove: &[String],
    path: &str,
) -> Result<HeaderMutations, ConfigError> {
    let remove = remove
        .iter()
        .map(|h| header_name(h, &format!("{path}.headers_to_remove")))
        .collect::<Result<_, _>>()?;
    let add = add
        .iter()
        .enumerate()
        .map(|(i, o)| header_add(o, &format!("{path}.headers_to_add[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(HeaderMutations { remove, add })
}

fn header_add(o: &HeaderValueOption, path: &str) -> Result<HeaderAdd, ConfigError> {
    let hv = o
        .header
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.header"), "missing"))?;
    let name = header_name(&hv.key, &format!("{path}.header.key"))?;
    let raw: &[u8] = if hv.raw_value.is_empty() {
        hv.value.as_bytes()
    } else {
        &hv.raw_value
    };
    // Envoy expands `%COMMAND%` formatters in header values; Petrel implements none yet, so a
    // value using one is refused rather than sent literally. `%%` is a literal percent.
    let text = String::from_utf8_lossy(raw);
    if text.replace("%%", "").contains('%') {
        return Err(ConfigError::new(
            format!("{path}.header.value"),
            "header value formatters (%...%) are not supported",
        ));
    }
    let value = HeaderValue::from_bytes(text.replace("%%", "%").as_bytes())
        .map_err(|_| ConfigError::new(format!("{path}.header.value"), "invalid header value"))?;
    let action = match (&o.append, o.append_action) {
        (Some(append), _) => {
            if append.value {
                AppendAction::AppendIfExistsOrAdd
            } else {
                AppendAction::OverwriteIfExistsOrAdd
            }
        }
        (None, a) => match header_value_option::HeaderAppendAction::try_from(a) {
            Ok(header_value_option::HeaderAppendAction::AppendIfExistsOrAdd) => {
                AppendAction::AppendIfExistsOrAdd
            }
            Ok(header_value_option::HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
            Ok(header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd) => {
                AppendAction::OverwriteIfExistsOrAdd
            }
            Ok(header_value_option::HeaderAppendAction::OverwriteIfExists) => {
                AppendAction::OverwriteIfExists
            }
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.append_action"),
                    format!("unknown value {a}"),
                ))
            }
        },
    };
    Ok(HeaderAdd {
        name,
        value,
        action,
        keep_empty: o.keep_empty_value,
    })
}

/// Reads a `DataSource` (inline or file).
pub(crate) fn data_source(
    ds: &envoy_types::pb::envoy::config::core::v3::DataSource,
    path: &str,
) -> Result<Bytes, ConfigError> {
    match &ds.specifier {
        Some(data_source::Specifier::InlineString(s)) => Ok(Bytes::from(s.clone())),
        Some(data_source::Specifier::InlineBytes(b)) => Ok(Bytes::from(b.clone())),
        Some(data_source::Specifier::Filename(f)) => std::fs::read(f)
            .map(Bytes::from)
            .map_err(|e| ConfigError::new(format!("{path}.filename"), format!("reading {f}: {e}"))),
        Some(_) => Err(ConfigError::new(path, "data source kind not supported")),
        None => Ok(Bytes::new()),
    }
}
