//! Evaluating route matchers against a request.
use http::HeaderMap;

use super::{HeaderCondition, HeaderMatcher, PathMatch, QueryMatcher, RouteMatcher, StringMatcher};

/// The parts of a request that routing looks at, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Lower-cased host (`:authority` or `Host`), with port if given.
    pub host: &'a str,
    /// Path with query string.
    pub path: &'a str,
    /// Method.
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The request's random value, for `runtime_fraction` matches.
    pub random: u64,
}

impl RequestView<'_> {
    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    /// The query string (without `?`).
    pub fn query(&self) -> &str {
        self.path.split_once('?').map_or("", |(_, q)| q)
    }
}

// === impl RouteMatcher ===

impl RouteMatcher {
    /// Whether the request matches every condition.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path_matches(req)
            && self.fraction.is_none_or(|f| f.hit(req.random))
            && (!self.grpc || is_grpc(req.headers))
            && self.headers.iter().all(|h| h.matches(req))
            && self.query.iter().all(|q| q.matches(req.query()))
    }

    fn path_matches(&self, req: &RequestView<'_>) -> bool {
        match &self.path {
            PathMatch::Prefix(p) => starts_with(req.path, p, self.case_sensitive),
            PathMatch::Exact(p) => eq(req.path_only(), p, self.case_sensitive),
            PathMatch::Regex(re) => full_match(re, req.path_only()),
            PathMatch::SeparatedPrefix(p) => {
                let path = req.path_only();
                starts_with(path, p, self.case_sensitive)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(prefix)
    } else {
        s.len() >= prefix.len()
            && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

fn eq(a: &str, b: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        a == b
    } else {
        a.eq_ignore_ascii_case(b)
    }
}

/// Envoy's `safe_regex` matches the whole input, not a substring.
fn full_match(re: &regex::Regex, s: &str) -> bool {
    re.find(s)
        .is_some_and(|m| m.start() == 0 && m.end() == s.len())
}

// === impl HeaderMatcher ===

impl HeaderMatcher {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = self.value(req);
        let result = match (&self.condition, value) {
            (HeaderCondition::Present(want), v) => v.is_some() == *want,
            (HeaderCondition::String(_), None) if !self.missing_as_empty => {
                // A missing header never matches, even inverted (Envoy's rule).
                return false;
            }
            (HeaderCondition::String(m), v) => m.matches(v.as_deref().unwrap_or("")),
        };
        result != self.invert
    }

    /// The header's value; several values are joined with `,` as Envoy does.
    fn value<'r>(&self, req: &RequestView<'r>) -> Option<std::borrow::Cow<'r, str>> {
        use std::borrow::Cow;
        match self.name.as_str() {
            ":path" => return Some(Cow::Borrowed(req.path)),
            ":method" => return Some(Cow::Borrowed(req.method)),
            ":authority" => return Some(Cow::Borrowed(req.host)),
            ":scheme" => return Some(Cow::Borrowed(req.scheme)),
            _ => {}
        }
        let mut values = req.headers.get_all(self.name.as_str()).iter();
        let first = values.next()?;
        let first = String::from_utf8_lossy(first.as_bytes());
        let Some(second) = values.next() else {
            // The common case, one value: borrowed, no allocation on the request path.
            return Some(first);
        };
        let mut joined = first.into_owned();
        for v in std::iter::once(second).chain(values) {
            joined.push(',');
            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        Some(Cow::Owned(joined))
    }
}

// === impl StringMatcher ===

impl StringMatcher {
    /// Whether `v` satisfies the matcher.
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StringMatcher::Exact(s, ic) => eq(v, s, !ic),
            StringMatcher::Prefix(s, ic) => starts_with(v, s, !ic),
            StringMatcher::Suffix(s, ic) => {
                v.len() >= s.len()
                    && if *ic {
                        v.as_bytes()[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
                    } else {
                        v.ends_with(s.as_str())
                    }
            }
            StringMatcher::Contains(s, ic) => {
                if *ic {
                    v.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
                } else {
                    v.contains(s.as_str())
                }
            }
            StringMatcher::Regex(re) => full_match(re, v),
        }
    }
}

// === impl QueryMatcher ===

impl QueryMatcher {
    fn matches(&self, query: &str) -> bool {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == self.name {
                return match &self.value {
                    None => true,
                    Some(m) => m.matches(v),
                };
            }
        }
        false
    }
}
