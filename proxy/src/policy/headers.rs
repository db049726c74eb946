//! A compiled Envoy `HeaderMatcher` over an `http::HeaderMap` (used by retry's
//! `retriable_headers`/`retriable_request_headers` and fault's `headers`).
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as H;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher as XdsHeaderMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use http::HeaderMap;

use crate::config::ConfigError;

/// One header condition, as Envoy's `HeaderUtility::matchHeaders`.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lower-cased name. Pseudo-headers (`:method`, ...) are not in an `http::HeaderMap`
    /// and so are treated as absent; route matching handles those.
    name: String,
    kind: Kind,
    invert: bool,
    missing_as_empty: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Present(bool),
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(regex::Regex),
    Range(i64, i64),
}

impl HeaderMatch {
    /// Matches when `name` is present (the form `x-envoy-retriable-header-names` uses).
    pub fn present(name: http::HeaderName) -> Self {
        HeaderMatch {
            name: name.as_str().to_string(),
            kind: Kind::Present(true),
            invert: false,
            missing_as_empty: false,
        }
    }

    /// Compiles a `HeaderMatcher`.
    #[allow(deprecated)]
    pub fn from_proto(h: &XdsHeaderMatcher, path: &str) -> Result<Self, ConfigError> {
        let name = h.name.to_ascii_lowercase();
        if !name.starts_with(':') && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "invalid header name",
            ));
        }
        let regex = |r: &str, p: &str| {
            regex::Regex::new(&format!("^(?:{r})$"))
                .map_err(|e| ConfigError::new(p.to_string(), e.to_string()))
        };
        let kind = match &h.header_match_specifier {
            None => Kind::Present(true),
            Some(H::PresentMatch(b)) => Kind::Present(*b),
            Some(H::ExactMatch(s)) => Kind::Exact(s.clone(), false),
            Some(H::PrefixMatch(s)) => Kind::Prefix(s.clone(), false),
            Some(H::SuffixMatch(s)) => Kind::Suffix(s.clone(), false),
            Some(H::ContainsMatch(s)) => Kind::Contains(s.clone(), false),
            Some(H::SafeRegexMatch(r)) => {
                Kind::Regex(regex(&r.regex, &format!("{path}.safe_regex_match.regex"))?)
            }
            Some(H::RangeMatch(r)) => Kind::Range(r.start, r.end),
            Some(H::StringMatch(m)) => {
                let ic = m.ignore_case;
                match &m.match_pattern {
                    Some(MatchPattern::Exact(s)) => Kind::Exact(s.clone(), ic),
                    Some(MatchPattern::Prefix(s)) => Kind::Prefix(s.clone(), ic),
                    Some(MatchPattern::Suffix(s)) => Kind::Suffix(s.clone(), ic),
                    Some(MatchPattern::Contains(s)) => Kind::Contains(s.clone(), ic),
                    Some(MatchPattern::SafeRegex(r)) => Kind::Regex(regex(
                        &r.regex,
                        &format!("{path}.string_match.safe_regex.regex"),
                    )?),
                    Some(MatchPattern::Custom(_)) | None => {
                        return Err(ConfigError::new(
                            format!("{path}.string_match"),
                            "unsupported or missing match pattern",
                        ))
                    }
                }
            }
        };
        Ok(HeaderMatch {
            name,
            kind,
            invert: h.invert_match,
            missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    /// Whether `headers` satisfy the condition (several values are joined with `,`).
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut it = headers.get_all(self.name.as_str()).iter();
        let value = match it.next() {
            None if self.missing_as_empty => String::new(),
            None => {
                return matches!(self.kind, Kind::Present(p) if p == self.invert);
            }
            Some(first) => {
                let mut v = String::from_utf8_lossy(first.as_bytes()).into_owned();
                for more in it {
                    v.push(',');
                    v.push_str(&String::from_utf8_lossy(more.as_bytes()));
                }
                v
            }
        };
        let fold = |a: &str, b: &str, ic: bool| {
            if ic {
                (a.to_ascii_lowercase(), b.to_ascii_lowercase())
            } else {
                (a.to_string(), b.to_string())
            }
        };
        let m = match &self.kind {
            Kind::Present(p) => *p,
            Kind::Exact(s, ic) => {
                let (v, s) = fold(&value, s, *ic);
                v == s
            }
            Kind::Prefix(s, ic) => {
                let (v, s) = fold(&value, s, *ic);
                v.starts_with(&s)
            }
            Kind::Suffix(s, ic) => {
                let (v, s) = fold(&value, s, *ic);
                v.ends_with(&s)
            }
            Kind::Contains(s, ic) => {
                let (v, s) = fold(&value, s, *ic);
                v.contains(&s)
            }
            Kind::Regex(re) => re.is_match(&value),
            Kind::Range(start, end) => value.parse::<i64>().is_ok_and(|n| *start <= n && n < *end),
        };
        m != self.invert
    }
}
