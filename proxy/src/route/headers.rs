//! Header additions and removals (`request_headers_to_add`, `response_headers_to_remove`, ...).
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// How an added header combines with existing values (Envoy's `append_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendAction {
    /// Append a value; add if absent (Envoy's default).
    AppendIfExistsOrAdd,
    /// Add only if the header is absent.
    AddIfAbsent,
    /// Replace existing values; add if absent.
    OverwriteIfExistsOrAdd,
    /// Replace existing values; do nothing if absent.
    OverwriteIfExists,
}

/// One header to add.
#[derive(Clone, Debug)]
pub struct HeaderAdd {
    /// Lower-cased name.
    pub name: HeaderName,
    /// Literal value.
    pub value: HeaderValue,
    /// How to combine with existing values.
    pub action: AppendAction,
    /// Add even when the value is empty.
    pub keep_empty: bool,
}

/// The header changes of one config level (route, virtual host, route config, cluster weight).
#[derive(Clone, Debug, Default)]
pub struct HeaderMutations {
    /// Removed first.
    pub remove: Vec<HeaderName>,
    /// Then added, in order.
    pub add: Vec<HeaderAdd>,
}

// === impl HeaderMutations ===

impl HeaderMutations {
    /// Whether this level changes nothing (lets the hot path skip it).
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Applies removals, then additions, to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for add in &self.add {
            if add.value.is_empty() && !add.keep_empty {
                continue;
            }
            match add.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(add.name.clone(), add.value.clone());
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&add.name) {
                        headers.insert(add.name.clone(), add.value.clone());
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(add.name.clone(), add.value.clone());
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&add.name) {
                        headers.insert(add.name.clone(), add.value.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(name: &'static str, value: &'static str, action: AppendAction) -> HeaderAdd {
        HeaderAdd {
            name: HeaderName::from_static(name),
            value: HeaderValue::from_static(value),
            action,
            keep_empty: false,
        }
    }

    #[test]
    fn append_actions_follow_envoy() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        h.insert("b", HeaderValue::from_static("1"));
        h.insert("gone", HeaderValue::from_static("1"));
        let m = HeaderMutations {
            remove: vec![HeaderName::from_static("gone")],
            add: vec![
                add("a", "2", AppendAction::AppendIfExistsOrAdd),
                add("b", "2", AppendAction::AddIfAbsent),
                add("c", "2", AppendAction::OverwriteIfExists),
                add("d", "2", AppendAction::OverwriteIfExistsOrAdd),
                add("e", "", AppendAction::AppendIfExistsOrAdd),
            ],
        };
        m.apply(&mut h);
        assert_eq!(h.get_all("a").iter().count(), 2);
        assert_eq!(h.get("b").unwrap(), "1");
        assert!(h.get("c").is_none());
        assert_eq!(h.get("d").unwrap(), "2");
        assert!(h.get("e").is_none());
        assert!(h.get("gone").is_none());
    }
}
