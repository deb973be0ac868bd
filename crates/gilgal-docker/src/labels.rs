//! Container labels: the durable record of who a container belongs to. Every container the
//! runtime creates carries them, so a restarted server finds its containers by label (never by
//! remembering ids) and rebuilds [`InstanceLabels`] from them.

use std::collections::HashMap;

use gilgal_runtime::{InstanceLabels, RestartPolicy};

/// Prefix of every label Gilgal puts on containers and images.
pub const LABEL_PREFIX: &str = "dev.gilgal.";
/// `true` on every container Gilgal manages.
pub const LABEL_MANAGED: &str = "dev.gilgal.managed";
/// The runtime namespace ([`crate::DockerRuntimeConfig::namespace`]) that owns the container.
pub const LABEL_NAMESPACE: &str = "dev.gilgal.namespace";
/// `instance` or `oneoff`.
pub const LABEL_KIND: &str = "dev.gilgal.kind";
/// App name.
pub const LABEL_APP: &str = "dev.gilgal.app";
/// Environment name.
pub const LABEL_ENV: &str = "dev.gilgal.env";
/// Release number.
pub const LABEL_RELEASE: &str = "dev.gilgal.release";
/// Procfile process type.
pub const LABEL_PROCESS_TYPE: &str = "dev.gilgal.process-type";
/// Replica index.
pub const LABEL_INDEX: &str = "dev.gilgal.index";
/// Host port the instance's `$PORT` is published on (absent without a port).
pub const LABEL_PORT: &str = "dev.gilgal.port";
/// Restart policy: `always`, `on-failure` or `never`.
pub const LABEL_RESTART: &str = "dev.gilgal.restart";

/// Whether a container is a supervised instance or a one-off run (one-off containers are
/// removed when done, or when found after a server restart).
pub(crate) use gilgal_runtime::host::InstanceKind as Kind;

fn kind_str(kind: Kind) -> &'static str {
    match kind {
        Kind::Instance => "instance",
        Kind::Oneoff => "oneoff",
    }
}

fn restart_str(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
    }
}

/// The labels of a new container.
pub(crate) fn container_labels(
    namespace: &str,
    kind: Kind,
    labels: &InstanceLabels,
    port: Option<u16>,
    restart: RestartPolicy,
) -> HashMap<String, String> {
    let mut map = HashMap::new();
    map.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
    map.insert(LABEL_NAMESPACE.to_owned(), namespace.to_owned());
    map.insert(LABEL_KIND.to_owned(), kind_str(kind).to_owned());
    map.insert(LABEL_APP.to_owned(), labels.app.clone());
    map.insert(LABEL_ENV.to_owned(), labels.env.clone());
    map.insert(LABEL_RELEASE.to_owned(), labels.release.to_string());
    map.insert(LABEL_PROCESS_TYPE.to_owned(), labels.process_type.clone());
    map.insert(LABEL_INDEX.to_owned(), labels.index.to_string());
    if let Some(port) = port {
        map.insert(LABEL_PORT.to_owned(), port.to_string());
    }
    map.insert(LABEL_RESTART.to_owned(), restart_str(restart).to_owned());
    map
}

/// What the labels of an existing container say; `None` when they are not Gilgal's or are
/// malformed (such a container is left alone).
#[derive(Debug, Clone)]
pub(crate) struct ParsedLabels {
    pub kind: Kind,
    pub labels: InstanceLabels,
    pub port: Option<u16>,
    pub restart: RestartPolicy,
}

pub(crate) fn parse_labels(map: &HashMap<String, String>) -> Option<ParsedLabels> {
    let kind = match map.get(LABEL_KIND)?.as_str() {
        "instance" => Kind::Instance,
        "oneoff" => Kind::Oneoff,
        _ => return None,
    };
    let labels = InstanceLabels {
        app: map.get(LABEL_APP)?.clone(),
        env: map.get(LABEL_ENV)?.clone(),
        release: map.get(LABEL_RELEASE)?.parse().ok()?,
        process_type: map.get(LABEL_PROCESS_TYPE)?.clone(),
        index: map.get(LABEL_INDEX)?.parse().ok()?,
    };
    let port = match map.get(LABEL_PORT) {
        Some(text) => Some(text.parse().ok()?),
        None => None,
    };
    let restart = match map.get(LABEL_RESTART).map(String::as_str) {
        Some("always") | None => RestartPolicy::Always,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some("never") => RestartPolicy::Never,
        Some(_) => return None,
    };
    Some(ParsedLabels {
        kind,
        labels,
        port,
        restart,
    })
}

/// A readable, unique container name: `gilgal-<ns>-<app>-<env>-<type>-<index>-r<release>-<rand>`
/// (`docker ps` shows it; the random suffix keeps replacements from clashing).
pub(crate) fn container_name(namespace: &str, kind: Kind, labels: &InstanceLabels) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let short = suffix.get(..8).unwrap_or("0");
    let kind = match kind {
        Kind::Instance => "",
        Kind::Oneoff => "run-",
    };
    format!(
        "gilgal-{namespace}-{}-{}-{kind}{}-{}-r{}-{short}",
        labels.app, labels.env, labels.process_type, labels.index, labels.release
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        let labels = InstanceLabels {
            app: "billing".into(),
            env: "production".into(),
            release: 12,
            process_type: "web".into(),
            index: 3,
        };
        let map = container_labels(
            "ns",
            Kind::Instance,
            &labels,
            Some(20001),
            RestartPolicy::OnFailure,
        );
        let parsed = parse_labels(&map).expect("parses");
        assert_eq!(parsed.labels, labels);
        assert_eq!(parsed.port, Some(20001));
        assert_eq!(parsed.restart, RestartPolicy::OnFailure);
        assert_eq!(parsed.kind, Kind::Instance);
        let name = container_name("ns", Kind::Instance, &labels);
        assert!(
            name.starts_with("gilgal-ns-billing-production-web-3-r12-"),
            "{name}"
        );
    }

    #[test]
    fn foreign_labels_are_ignored() {
        let mut map = HashMap::new();
        map.insert(LABEL_KIND.to_owned(), "something".to_owned());
        assert!(parse_labels(&map).is_none());
        assert!(parse_labels(&HashMap::new()).is_none());
    }
}
