//! The application's `spec.yaml` (TSF Mesh format): the services a VM or pod runs, their
//! ports and protocols, and their health check path.
//!
//! ```yaml
//! apiVersion: v1
//! kind: Application
//! spec:
//!   services:
//!     - name: user
//!       ports:
//!         - targetPort: 8091
//!           protocol: http
//!       healthCheck:
//!         path: /health
//! ```
//!
//! Petrel captures inbound traffic only to these ports on a VM, sends the spec to the control
//! plane in the node metadata ([`NODE_METADATA_KEY`]), and shows it in `/config_dump`.
//! Unknown fields are ignored (TSF tooling may add its own); every value Petrel uses is
//! validated, and errors name the field (`spec.services[0].ports[1].targetPort: 70000 is not
//! a port`).
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where `petrel` looks for the spec when no flag names one (TSF Mesh's default location).
pub const DEFAULT_SPEC_PATH: &str = "/opt/tsf/app_config/spec.yaml";

/// The node metadata key [`AppSpec::to_node_metadata`] is meant to be put under.
pub const NODE_METADATA_KEY: &str = "APPLICATION_SPEC";

/// A validated `spec.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Always `v1`.
    pub api_version: String,
    /// Always `Application`.
    pub kind: String,
    /// The services.
    pub spec: AppSpecBody,
}

/// `spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppSpecBody {
    /// At least one service; names and ports are unique.
    pub services: Vec<AppService>,
}

/// `spec.services[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppService {
    /// Service name (a DNS label or name, lower case).
    pub name: String,
    /// At least one port.
    pub ports: Vec<AppPort>,
    /// The health check, if the service has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// `spec.services[].ports[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppPort {
    /// The port the application listens on (and Petrel captures inbound).
    pub target_port: u16,
    /// The protocol spoken on it.
    pub protocol: Protocol,
}

/// `spec.services[].healthCheck`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// HTTP path, starting with `/`.
    pub path: String,
}

/// A port's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// HTTP/2 (cleartext or over TLS).
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// HTTP over TLS terminated by the application.
    Https,
    /// Opaque TLS.
    Tls,
    /// Opaque TCP.
    Tcp,
}

/// A `spec.yaml` Petrel cannot use; `path` names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InvalidSpec {
    /// Field path, e.g. `spec.services[0].ports[1].targetPort`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Reading or validating a spec file failed.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("reading {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// Why (in the message, not a `source`: printing the chain would say it twice).
        cause: std::io::Error,
    },
    /// The file is not a valid spec.
    #[error("{file}: {error}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong.
        error: InvalidSpec,
    },
}

// Loose mirror of the file: every field optional and untyped where a wrong value must be
// reported with its path rather than as a serde type error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    api_version: Option<serde_yaml::Value>,
    kind: Option<serde_yaml::Value>,
    spec: Option<RawBody>,
}

#[derive(Deserialize)]
struct RawBody {
    services: Option<Vec<RawService>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawService {
    name: Option<serde_yaml::Value>,
    ports: Option<Vec<RawPort>>,
    health_check: Option<RawHealthCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPort {
    target_port: Option<serde_yaml::Value>,
    protocol: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
struct RawHealthCheck {
    path: Option<serde_yaml::Value>,
}

// === impl AppSpec ===

impl AppSpec {
    /// Parses and validates spec.yaml text.
    pub fn parse(yaml: &str) -> Result<Self, InvalidSpec> {
        let raw: RawSpec = serde_yaml::from_str(yaml).map_err(|e| {
            let msg = e.to_string();
            // serde_yaml prefixes the field path ("spec.services[0]: ...") when it knows it.
            match msg.split_once(": ") {
                Some((path, rest)) if path.starts_with("spec") || path.starts_with("api") => {
                    invalid(path, rest)
                }
                _ => invalid("spec.yaml", msg),
            }
        })?;
        let api_version = string(raw.api_version.as_ref(), "apiVersion")?;
        if api_version != "v1" {
            return Err(invalid(
                "apiVersion",
                format!("{api_version:?} is not supported (expected v1)"),
            ));
        }
        let kind = string(raw.kind.as_ref(), "kind")?;
        if kind != "Application" {
            return Err(invalid(
                "kind",
                format!("{kind:?} is not supported (expected Application)"),
            ));
        }
        let body = raw.spec.ok_or_else(|| invalid("spec", "is required"))?;
        let raw_services = body
            .services
            .ok_or_else(|| invalid("spec.services", "is required"))?;
        if raw_services.is_empty() {
            return Err(invalid("spec.services", "at least one service is required"));
        }
        let mut services = Vec::with_capacity(raw_services.len());
        let mut names: Vec<String> = Vec::new();
        let mut ports: Vec<(u16, String)> = Vec::new();
        for (i, s) in raw_services.into_iter().enumerate() {
            let at = format!("spec.services[{i}]");
            let name = string(s.name.as_ref(), &format!("{at}.name"))?;
            if !is_service_name(&name) {
                return Err(invalid(
                    &format!("{at}.name"),
                    format!(
                        "{name:?} is not a service name (lower-case letters, digits, '-' and '.')"
                    ),
                ));
            }
            if let Some(j) = names.iter().position(|n| *n == name) {
                return Err(invalid(
                    &format!("{at}.name"),
                    format!("{name:?} is already used by spec.services[{j}]"),
                ));
            }
            names.push(name.clone());
            let raw_ports = s
                .ports
                .ok_or_else(|| invalid(&format!("{at}.ports"), "is required"))?;
            if raw_ports.is_empty() {
                return Err(invalid(
                    &format!("{at}.ports"),
                    "at least one port is required",
                ));
            }
            let mut svc_ports = Vec::with_capacity(raw_ports.len());
            for (k, p) in raw_ports.into_iter().enumerate() {
                let pat = format!("{at}.ports[{k}]");
                let port = target_port(p.target_port.as_ref(), &format!("{pat}.targetPort"))?;
                if let Some((_, other)) = ports.iter().find(|(q, _)| *q == port) {
                    return Err(invalid(
                        &format!("{pat}.targetPort"),
                        format!("{port} is already used by {other}"),
                    ));
                }
                ports.push((port, pat.clone()));
                let protocol = protocol(p.protocol.as_ref(), &format!("{pat}.protocol"))?;
                svc_ports.push(AppPort {
                    target_port: port,
                    protocol,
                });
            }
            let health_check = match s.health_check {
                None => None,
                Some(h) => {
                    let hat = format!("{at}.healthCheck.path");
                    let path = string(h.path.as_ref(), &hat)?;
                    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace()) {
                        return Err(invalid(
                            &hat,
                            format!(
                                "{path:?} is not an HTTP path (must start with '/', no spaces)"
                            ),
                        ));
                    }
                    Some(HealthCheck { path })
                }
            };
            services.push(AppService {
                name,
                ports: svc_ports,
                health_check,
            });
        }
        Ok(AppSpec {
            api_version,
            kind,
            spec: AppSpecBody { services },
        })
    }

    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SpecError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Self::parse(&text).map_err(|error| SpecError::Invalid {
            file: path.display().to_string(),
            error,
        })
    }

    /// Every service port, sorted and unique: the inbound ports to capture (`-b`).
    pub fn inbound_ports(&self) -> Vec<u16> {
        let set: BTreeSet<u16> = self
            .spec
            .services
            .iter()
            .flat_map(|s| s.ports.iter().map(|p| p.target_port))
            .collect();
        set.into_iter().collect()
    }

    /// The service and port serving `port`, if any.
    pub fn port(&self, port: u16) -> Option<(&AppService, &AppPort)> {
        self.spec.services.iter().find_map(|s| {
            s.ports
                .iter()
                .find(|p| p.target_port == port)
                .map(|p| (s, p))
        })
    }

    /// The spec as a JSON object in the shape of the file (camelCase keys), for the node
    /// metadata (under [`NODE_METADATA_KEY`]; it converts to a `google.protobuf.Struct` as
    /// is: only objects, arrays, strings and numbers) and for `/config_dump`.
    pub fn to_node_metadata(&self) -> serde_json::Value {
        // Serializing plain strings, integers and vectors cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The node metadata value as a `google.protobuf.Struct`.
    pub fn to_node_metadata_struct(&self) -> envoy_types::pb::google::protobuf::Struct {
        match json_to_pb(self.to_node_metadata()).kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(s)) => s,
            _ => Default::default(),
        }
    }
}

fn json_to_pb(v: serde_json::Value) -> envoy_types::pb::google::protobuf::Value {
    use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(json_to_pb).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_pb(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn invalid(path: &str, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        path: path.to_string(),
        message: message.into(),
    }
}

fn describe(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::Null => "null".into(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::String(s) => format!("{s:?}"),
        serde_yaml::Value::Sequence(_) => "a list".into(),
        serde_yaml::Value::Mapping(_) => "a mapping".into(),
        serde_yaml::Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn string(v: Option<&serde_yaml::Value>, path: &str) -> Result<String, InvalidSpec> {
    match v {
        None | Some(serde_yaml::Value::Null) => Err(invalid(path, "is required")),
        Some(serde_yaml::Value::String(s)) if s.trim().is_empty() => {
            Err(invalid(path, "must not be empty"))
        }
        Some(serde_yaml::Value::String(s)) => Ok(s.trim().to_string()),
        Some(other) => Err(invalid(
            path,
            format!("{} is not a string", describe(other)),
        )),
    }
}

fn target_port(v: Option<&serde_yaml::Value>, path: &str) -> Result<u16, InvalidSpec> {
    let v = match v {
        None | Some(serde_yaml::Value::Null) => return Err(invalid(path, "is required")),
        Some(v) => v,
    };
    // A quoted number ("8080") is accepted, as Kubernetes tooling often writes it.
    let n = match v {
        serde_yaml::Value::Number(n) => n.as_i64(),
        serde_yaml::Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(invalid(path, format!("{} is not a port", describe(v)))),
    }
}

fn protocol(v: Option<&serde_yaml::Value>, path: &str) -> Result<Protocol, InvalidSpec> {
    let s = string(v, path)?;
    Ok(match s.to_ascii_lowercase().as_str() {
        "http" | "http1" => Protocol::Http,
        "http2" | "h2" | "h2c" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        "https" => Protocol::Https,
        "tls" => Protocol::Tls,
        "tcp" => Protocol::Tcp,
        _ => {
            return Err(invalid(
                path,
                format!(
                    "{s:?} is not a protocol (expected one of http, http2, grpc, https, tls, tcp)"
                ),
            ))
        }
    })
}

fn is_service_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

// === impl Protocol ===

impl Protocol {
    /// Whether the port speaks HTTP that Petrel can route (HTTP/1, HTTP/2, gRPC).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// The protocol as written in spec.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Https => "https",
            Protocol::Tls => "tls",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/spec.yaml");

    fn err(yaml: &str) -> String {
        AppSpec::parse(yaml).unwrap_err().to_string()
    }

    fn with_port(port: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Application\nspec:\n  services:\n  - name: user\n    ports:\n    - targetPort: 8080\n      protocol: http\n    - targetPort: {port}\n      protocol: tcp\n"
        )
    }

    #[test]
    fn example_spec_parses() {
        let spec = AppSpec::parse(EXAMPLE).unwrap();
        assert_eq!(spec.spec.services.len(), 2);
        let user = &spec.spec.services[0];
        assert_eq!(user.name, "user");
        assert_eq!(
            user.health_check,
            Some(HealthCheck {
                path: "/health".into()
            })
        );
        assert_eq!(spec.inbound_ports(), vec![8091, 8092, 9090]);
        let (svc, port) = spec.port(9090).unwrap();
        assert_eq!(
            (svc.name.as_str(), port.protocol),
            ("order", Protocol::Grpc)
        );
        assert!(port.protocol.is_http());
        assert_eq!(spec.port(1), None);
    }

    #[test]
    fn node_metadata_has_the_shape_of_the_file() {
        let spec = AppSpec::parse(EXAMPLE).unwrap();
        let md = spec.to_node_metadata();
        assert_eq!(md["apiVersion"], "v1");
        assert_eq!(md["kind"], "Application");
        assert_eq!(md["spec"]["services"][0]["ports"][0]["targetPort"], 8091);
        assert_eq!(md["spec"]["services"][0]["ports"][0]["protocol"], "http");
        assert_eq!(md["spec"]["services"][0]["healthCheck"]["path"], "/health");
        assert!(md["spec"]["services"][1].get("healthCheck").is_none());
        // Round trip: what we send (and dump) is a valid spec again.
        let again = AppSpec::parse(&serde_json::to_string(&md).unwrap()).unwrap();
        assert_eq!(again, spec);

        use envoy_types::pb::google::protobuf::value::Kind;
        let s = spec.to_node_metadata_struct();
        assert_eq!(
            s.fields["kind"].kind,
            Some(Kind::StringValue("Application".into()))
        );
        let Some(Kind::StructValue(body)) = &s.fields["spec"].kind else {
            panic!("{s:?}")
        };
        assert!(matches!(
            body.fields["services"].kind,
            Some(Kind::ListValue(_))
        ));
    }

    #[test]
    fn bad_ports_name_the_field() {
        assert_eq!(
            err(&with_port("70000")),
            "spec.services[0].ports[1].targetPort: 70000 is not a port"
        );
        assert_eq!(
            err(&with_port("0")),
            "spec.services[0].ports[1].targetPort: 0 is not a port"
        );
        assert_eq!(
            err(&with_port("http")),
            "spec.services[0].ports[1].targetPort: \"http\" is not a port"
        );
        assert_eq!(
            err(&with_port("8080")),
            "spec.services[0].ports[1].targetPort: 8080 is already used by spec.services[0].ports[0]"
        );
        let spec = AppSpec::parse(&with_port("\"9000\"")).unwrap();
        assert_eq!(spec.inbound_ports(), vec![8080, 9000]);
    }

    #[test]
    fn invalid_specs_are_rejected_with_clear_errors() {
        let base = "apiVersion: v1\nkind: Application\n";
        let cases: &[(String, &str)] = &[
            ("apiVersion: v2\nkind: Application\nspec: {services: []}\n".into(),
             "apiVersion: \"v2\" is not supported (expected v1)"),
            ("kind: Application\n".into(), "apiVersion: is required"),
            ("apiVersion: v1\nkind: Deployment\n".into(),
             "kind: \"Deployment\" is not supported (expected Application)"),
            (base.to_string(), "spec: is required"),
            (format!("{base}spec: {{}}\n"), "spec.services: is required"),
            (format!("{base}spec:\n  services: []\n"), "spec.services: at least one service is required"),
            (format!("{base}spec:\n  services:\n  - ports: [{{targetPort: 80, protocol: http}}]\n"),
             "spec.services[0].name: is required"),
            (format!("{base}spec:\n  services:\n  - name: User_Svc\n    ports: [{{targetPort: 80, protocol: http}}]\n"),
             "spec.services[0].name: \"User_Svc\" is not a service name (lower-case letters, digits, '-' and '.')"),
            (format!("{base}spec:\n  services:\n  - name: a\n    ports: [{{targetPort: 80, protocol: http}}]\n  - name: a\n    ports: [{{targetPort: 81, protocol: http}}]\n"),
             "spec.services[1].name: \"a\" is already used by spec.services[0]"),
            (format!("{base}spec:\n  services:\n  - name: a\n"), "spec.services[0].ports: is required"),
            (format!("{base}spec:\n  services:\n  - name: a\n    ports: []\n"),
             "spec.services[0].ports: at least one port is required"),
            (format!("{base}spec:\n  services:\n  - name: a\n    ports: [{{targetPort: 80}}]\n"),
             "spec.services[0].ports[0].protocol: is required"),
            (format!("{base}spec:\n  services:\n  - name: a\n    ports: [{{targetPort: 80, protocol: dubbo}}]\n"),
             "spec.services[0].ports[0].protocol: \"dubbo\" is not a protocol (expected one of http, http2, grpc, https, tls, tcp)"),
            (format!("{base}spec:\n  services:\n  - name: a\n    ports: [{{targetPort: 80, protocol: http}}]\n    healthCheck: {{path: health}}\n"),
             "spec.services[0].healthCheck.path: \"health\" is not an HTTP path (must start with '/', no spaces)"),
            (format!("{base}spec:\n  services:\n  - name: a\n    ports: [{{targetPort: 80, protocol: http}}]\n    healthCheck: {{}}\n"),
             "spec.services[0].healthCheck.path: is required"),
        ];
        for (yaml, want) in cases {
            assert_eq!(&err(yaml), want, "{yaml}");
        }
    }

    #[test]
    fn yaml_type_errors_keep_serde_paths() {
        let e = err("apiVersion: v1\nkind: Application\nspec:\n  services: 3\n");
        assert!(e.starts_with("spec.services: invalid type"), "{e}");
        let e = err("apiVersion: v1\nkind: Application\nspec:\n  services:\n  - name: a\n    ports: {x: 1}\n");
        assert!(e.starts_with("spec.services[0].ports: invalid type"), "{e}");
        let e = err("a: [1, 2\n");
        assert!(e.starts_with("spec.yaml: "), "{e}");
        let e = err("just a string");
        assert!(e.starts_with("spec.yaml: "), "{e}");
    }

    #[test]
    fn protocols_are_case_insensitive_and_unknown_fields_ignored() {
        let spec = AppSpec::parse(
            "apiVersion: v1\nkind: Application\nmetadata: {name: x}\nspec:\n  services:\n  - name: a.b\n    extra: 1\n    ports: [{targetPort: 80, protocol: GRPC, name: p}]\n",
        )
        .unwrap();
        assert_eq!(spec.spec.services[0].ports[0].protocol, Protocol::Grpc);
    }

    #[test]
    fn load_reports_the_file() {
        let e = AppSpec::load(Path::new("/nonexistent/spec.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("reading /nonexistent/spec.yaml: "),
            "{e}"
        );
    }
}
