//! Settings of the YAML configuration file besides `nodes:` (which
//! `xbuild_remote::inventory` owns): today the registries spoken to over
//! plain HTTP.
//!
//! ```yaml
//! insecure-registries:
//!   - registry.lan:5000
//!   - 10.0.0.5
//! ```

use anyhow::{bail, Context, Result};
use std::path::Path;
use xbuild_registry::{Registry, RegistryConfig};

/// The `insecure-registries` list of the config file at `path` (none when
/// the file does not exist). Entries are `host` or `host:port`, without a
/// scheme or path.
pub fn insecure_registries(path: &Path) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    parse_insecure(path, &text)
}

fn parse_insecure(path: &Path, text: &str) -> Result<Vec<String>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).with_context(|| format!("{}: invalid YAML", path.display()))?;
    let Some(list) = doc.get("insecure-registries") else {
        return Ok(Vec::new());
    };
    let Some(items) = list.as_sequence() else {
        bail!(
            "{}: insecure-registries must be a list of host[:port]",
            path.display()
        );
    };
    let mut out = Vec::new();
    for item in items {
        let Some(host) = item.as_str() else {
            bail!(
                "{}: insecure-registries: {item:?} is not a host[:port] string",
                path.display()
            );
        };
        let host = host.trim();
        if host.is_empty() || host.contains("://") || host.contains('/') || host.contains(' ') {
            bail!(
                "{}: insecure-registries: {host:?} is not a host[:port] (no scheme, no path)",
                path.display()
            );
        }
        out.push(host.to_ascii_lowercase());
    }
    Ok(out)
}

/// The registry client every command uses: credentials from the Docker
/// config, blob origins remembered under the state directory, and the
/// configured insecure registries.
pub fn registry(root: Option<&Path>) -> Result<Registry> {
    let insecure = match crate::paths::config_file() {
        Ok(path) => insecure_registries(&path)?,
        // No HOME and no XBUILD_CONFIG: no configuration.
        Err(_) => Vec::new(),
    };
    Ok(Registry::new(RegistryConfig {
        insecure,
        origins: root.map(|r| r.join("origins")),
        ..RegistryConfig::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_registries_are_read_next_to_nodes() {
        let p = Path::new("config.yaml");
        let text = "nodes:\n  - name: a\n    address: ssh://h\n    platforms: [linux/amd64]\n\
                    insecure-registries:\n  - Registry.LAN:5000\n  - 10.0.0.5\n";
        assert_eq!(
            parse_insecure(p, text).unwrap(),
            ["registry.lan:5000", "10.0.0.5"]
        );
        assert!(parse_insecure(p, "nodes: []\n").unwrap().is_empty());
        assert!(parse_insecure(p, "").unwrap().is_empty());
    }

    #[test]
    fn bad_entries_name_the_file() {
        let p = Path::new("/etc/xb.yaml");
        for bad in [
            "insecure-registries: reg.lan\n",
            "insecure-registries: [\"http://reg.lan\"]\n",
            "insecure-registries: [\"reg.lan/v2\"]\n",
            "insecure-registries: [5]\n",
            "insecure-registries: [\n",
        ] {
            let e = format!("{:#}", parse_insecure(p, bad).unwrap_err());
            assert!(e.contains("/etc/xb.yaml"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_missing_file_is_no_setting() {
        let dir = tempfile::tempdir().unwrap();
        assert!(insecure_registries(&dir.path().join("none.yaml"))
            .unwrap()
            .is_empty());
    }
}
