//! Default hostnames: `{project}.{base}` for production, `{project}-{env}.{base}` otherwise.

/// The environment whose hostname carries no suffix.
pub const PRODUCTION: &str = "production";

/// The default hostname of `project`'s `environment` under `base_domain` (e.g. `localhost`).
///
/// Inputs are validated DNS labels, so the result is a valid hostname; it is lowercased
/// because hostnames compare case-insensitively and the proxy keys routes by lowercase host.
pub fn default_hostname(project: &str, environment: &str, base_domain: &str) -> String {
    let base = base_domain.trim_matches('.');
    let host = if environment == PRODUCTION {
        format!("{project}.{base}")
    } else {
        format!("{project}-{environment}.{base}")
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_has_no_suffix_others_do() {
        assert_eq!(
            default_hostname("shop", "production", "localhost"),
            "shop.localhost"
        );
        assert_eq!(
            default_hostname("shop", "staging", "apps.example.com"),
            "shop-staging.apps.example.com"
        );
        assert_eq!(
            default_hostname("shop", "production", ".example.com."),
            "shop.example.com"
        );
    }
}
