//! Image naming: which image a release runs. The convention is one repository per app and
//! environment, one tag per release (`gilgal/app-<app>-<env>:v<release>`), so a rollback is a
//! tag that still exists and old releases can be pruned by tag.

use gilgal_runtime::InstanceLabels;

use crate::error::DockerError;

/// The default [`crate::DockerRuntimeConfig::image_template`].
pub const DEFAULT_IMAGE_TEMPLATE: &str = "gilgal/app-{app}-{env}:v{release}";

/// The tag the pipeline gives the image it builds for a release, matching
/// [`DEFAULT_IMAGE_TEMPLATE`].
pub fn app_image_tag(app: &str, env: &str, release: u64) -> String {
    format!("gilgal/app-{app}-{env}:v{release}")
}

/// Fills `{app}`, `{env}`, `{release}` and `{process_type}` into an image template.
pub fn render_image_template(template: &str, labels: &InstanceLabels) -> String {
    template
        .replace("{app}", &labels.app)
        .replace("{env}", &labels.env)
        .replace("{release}", &labels.release.to_string())
        .replace("{process_type}", &labels.process_type)
}

/// Checks that `reference` is a Docker image reference of the form `[host[:port]/]path[:tag]`
/// with lowercase path components, so a bad app or tag name fails before dockerd is asked.
pub fn validate_reference(reference: &str) -> Result<(), DockerError> {
    let invalid = |reason: &str| DockerError::InvalidReference {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    };
    if reference.is_empty() || reference.len() > 255 {
        return Err(invalid("must be 1-255 characters"));
    }
    let (name, tag) = match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (reference, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(invalid(
                "the tag must be 1-128 characters of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // A first component with a dot or a port is a registry host.
    if components.len() > 1
        && components
            .first()
            .is_some_and(|first| first.contains(['.', ':']) || *first == "localhost")
    {
        components.remove(0);
    }
    for component in components {
        let bytes = component.as_bytes();
        let ok = !component.is_empty()
            && bytes
                .first()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes
                .last()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && component.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !ok {
            return Err(invalid(
                "each path component must be lowercase letters, digits and separators (. _ -), \
                 starting and ending with a letter or digit",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_and_tag_agree() {
        let labels = InstanceLabels {
            app: "billing".into(),
            env: "production".into(),
            release: 7,
            process_type: "web".into(),
            index: 0,
        };
        assert_eq!(
            render_image_template(DEFAULT_IMAGE_TEMPLATE, &labels),
            app_image_tag("billing", "production", 7)
        );
        assert_eq!(
            app_image_tag("billing", "production", 7),
            "gilgal/app-billing-production:v7"
        );
        assert_eq!(
            render_image_template("gilgal/python:bookworm", &labels),
            "gilgal/python:bookworm"
        );
    }

    #[test]
    fn references_are_checked() {
        for good in [
            "gilgal/app-billing-production:v7",
            "gilgal/base:bookworm",
            "registry.example.com:5000/team/app:1.2",
            "busybox",
        ] {
            assert!(validate_reference(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Gilgal/app",
            "gilgal/app-x-prod_:v1",
            "gilgal/app:",
            "gilgal/app:-x",
            "a//b",
        ] {
            assert!(validate_reference(bad).is_err(), "{bad}");
        }
    }
}
