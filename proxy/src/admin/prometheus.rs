//! `/stats/prometheus`: Envoy's metric names and tag extraction for the stats Petrel has.
use std::collections::BTreeMap;

use crate::stats::StatValue;

/// Splits an Envoy stat name into a Prometheus name and labels, following Envoy's default
/// tag extractors for the stat families Petrel emits.
fn convert(name: &str) -> (String, Vec<(&'static str, String)>) {
    let mut labels = Vec::new();
    let (family, rest) = name.split_once('.').unwrap_or((name, ""));
    let (base, tag_name) = match family {
        "cluster" => ("cluster", Some("envoy_cluster_name")),
        "http" => ("http", Some("envoy_http_conn_manager_prefix")),
        "listener" => ("listener", Some("envoy_listener_address")),
        "tcp" => ("tcp", Some("envoy_tcp_prefix")),
        _ => ("", None),
    };
    let mut stat = name.to_string();
    if let Some(tag) = tag_name {
        // The tag value is everything between the family and the last component(s).
        if let Some((value, leaf)) = rest.rsplit_once('.') {
            labels.push((tag, value.to_string()));
            stat = format!("{base}.{leaf}");
        }
    }
    // upstream_rq_200 → upstream_rq{envoy_response_code="200"}; *_2xx → *_xx{class="2"}.
    if let Some((head, code)) = stat.rsplit_once('_') {
        if code.len() == 3
            && code.chars().all(|c| c.is_ascii_digit())
            && (head.ends_with("upstream_rq") || head.ends_with("downstream_rq"))
        {
            labels.push(("envoy_response_code", code.to_string()));
            stat = head.to_string();
        } else if code.len() == 3 && code.ends_with("xx") && code.as_bytes()[0].is_ascii_digit() {
            labels.push(("envoy_response_code_class", code[..1].to_string()));
            stat = format!("{head}_xx");
        }
    }
    let prom = format!("envoy_{}", stat.replace(['.', '-', ':'], "_"));
    (prom, labels)
}

/// Renders all stats in the Prometheus text format, grouped by metric name.
pub fn render(stats: &[StatValue], used_only: bool) -> String {
    let mut groups: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    for s in stats.iter().filter(|s| !used_only || s.used) {
        let (name, labels) = convert(&s.name);
        // Envoy writes `{}` even for metrics without labels (`envoy_server_state{} 0`).
        let labels = if labels.is_empty() {
            "{}".to_string()
        } else {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        let g = groups
            .entry(name.clone())
            .or_insert((s.is_counter, Vec::new()));
        g.1.push(format!("{name}{labels} {}", s.value));
    }
    let mut out = String::new();
    for (name, (is_counter, lines)) in groups {
        out.push_str(&format!(
            "# TYPE {name} {}\n",
            if is_counter { "counter" } else { "gauge" }
        ));
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_names_and_labels() {
        assert_eq!(
            convert("cluster.backend.upstream_rq_total"),
            (
                "envoy_cluster_upstream_rq_total".into(),
                vec![("envoy_cluster_name", "backend".into())]
            )
        );
        assert_eq!(
            convert("cluster.backend.upstream_rq_503"),
            (
                "envoy_cluster_upstream_rq".into(),
                vec![
                    ("envoy_cluster_name", "backend".into()),
                    ("envoy_response_code", "503".into())
                ]
            )
        );
        assert_eq!(
            convert("http.ingress.downstream_rq_2xx"),
            (
                "envoy_http_downstream_rq_xx".into(),
                vec![
                    ("envoy_http_conn_manager_prefix", "ingress".into()),
                    ("envoy_response_code_class", "2".into())
                ]
            )
        );
        assert_eq!(
            convert("server.state"),
            ("envoy_server_state".into(), vec![])
        );
    }
}
