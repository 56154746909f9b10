//! [`ImageConfig`]: the image configuration JSON shared by the OCI spec and
//! Docker, with Docker's field names (`User`, `Env`, `Cmd`, ...) inside
//! `config`, and empty optional fields omitted as Docker omits them.

use crate::descriptor::{encode, DescriptorError, Encoded};
use crate::digest::Digest;
use crate::media_types as mt;
use crate::platform::Platform;
use serde::de::{Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// Errors from parsing or encoding an image config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not a valid image config.
    #[error("invalid image config JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] DescriptorError),
}

/// The value of a set-like map in Docker's JSON (`"80/tcp": {}`); any value
/// is accepted when parsing and `{}` is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Empty;

impl Serialize for Empty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Empty)
    }
}

/// Docker accepts `"Cmd": "string"` as well as a list; null means unset.
fn de_str_slice<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

fn de_null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

/// The image configuration document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// OS version (Windows).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features (Windows).
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub os_features: Vec<String>,
    /// CPU variant (`v7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The runtime configuration.
    #[serde(
        default,
        skip_serializing_if = "ContainerConfig::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub config: ContainerConfig,
    /// The layers' uncompressed digests.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per Dockerfile step, including empty layers.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub history: Vec<History>,
    /// Unknown fields (`container_config`, `docker_version`, ...), kept as-is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The `config` object: how to run the image (Docker's names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(
        rename = "User",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub user: String,
    /// `EXPOSE`: `"80/tcp"` keys.
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    /// `ENV`: `KEY=value` in order.
    #[serde(
        rename = "Env",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub env: Vec<String>,
    /// `ENTRYPOINT`; `None` is unset, `Some([])` is explicitly empty.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_str_slice"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`; `None` is unset, `Some([])` is explicitly empty.
    #[serde(
        rename = "Cmd",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_str_slice"
    )]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`.
    #[serde(
        rename = "Volumes",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub volumes: BTreeMap<String, Empty>,
    /// `WORKDIR`.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub working_dir: String,
    /// `LABEL`.
    #[serde(
        rename = "Labels",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub labels: BTreeMap<String, String>,
    /// `STOPSIGNAL`.
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub stop_signal: String,
    /// `SHELL`.
    #[serde(
        rename = "Shell",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub shell: Vec<String>,
    /// `HEALTHCHECK`.
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<Healthcheck>,
    /// `ONBUILD` triggers.
    #[serde(
        rename = "OnBuild",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub on_build: Vec<String>,
    /// Windows-only: the command line is already escaped.
    #[serde(
        rename = "ArgsEscaped",
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_null_default"
    )]
    pub args_escaped: bool,
    /// Unknown fields (`Hostname`, `Image`, ...), kept as-is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ContainerConfig {
    /// True when nothing is set, so the whole object is omitted.
    pub fn is_empty(&self) -> bool {
        *self == ContainerConfig::default()
    }

    /// The value of environment variable `key`, if set.
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            (k == key).then_some(v)
        })
    }

    /// Set `key=value`, replacing an earlier value in place (Docker's order).
    pub fn env_set(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        for kv in &mut self.env {
            let k = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv.as_str());
            if k == key {
                *kv = entry;
                return;
            }
        }
        self.env.push(entry);
    }
}

/// `HEALTHCHECK` settings; durations are nanoseconds as Docker stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", cmd]`.
    #[serde(
        rename = "Test",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_null_default"
    )]
    pub test: Vec<String>,
    /// Time between checks, ns.
    #[serde(
        rename = "Interval",
        default,
        skip_serializing_if = "is_zero_i64",
        deserialize_with = "de_null_default"
    )]
    pub interval: i64,
    /// Time before a check is considered hung, ns.
    #[serde(
        rename = "Timeout",
        default,
        skip_serializing_if = "is_zero_i64",
        deserialize_with = "de_null_default"
    )]
    pub timeout: i64,
    /// Start period, ns.
    #[serde(
        rename = "StartPeriod",
        default,
        skip_serializing_if = "is_zero_i64",
        deserialize_with = "de_null_default"
    )]
    pub start_period: i64,
    /// Interval during the start period, ns.
    #[serde(
        rename = "StartInterval",
        default,
        skip_serializing_if = "is_zero_i64",
        deserialize_with = "de_null_default"
    )]
    pub start_interval: i64,
    /// Consecutive failures before unhealthy.
    #[serde(
        rename = "Retries",
        default,
        skip_serializing_if = "is_zero_i32",
        deserialize_with = "de_null_default"
    )]
    pub retries: i32,
}

/// The `rootfs` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests (diffIDs), base first.
    #[serde(default, deserialize_with = "de_null_default")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction, e.g. `RUN /bin/sh -c make # buildkit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment (`buildkit.dockerfile.v0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step produced no layer.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "de_null_default"
    )]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// An empty config for `platform`.
    pub fn for_platform(platform: &Platform) -> Self {
        let mut c = ImageConfig::default();
        c.set_platform(platform);
        c
    }

    /// The normalized platform this config declares.
    pub fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }

    /// Set `os`, `architecture` and `variant` from `platform`.
    pub fn set_platform(&mut self, platform: &Platform) {
        self.os = platform.os().to_string();
        self.architecture = platform.architecture().to_string();
        self.variant = platform.variant().map(str::to_string);
    }

    /// Parse an OCI or Docker image config.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ConfigError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Canonical bytes and descriptor with the OCI config media type.
    pub fn encode(&self) -> Result<Encoded, ConfigError> {
        self.encode_as(mt::OCI_CONFIG)
    }

    /// Canonical bytes and descriptor with the given media type
    /// ([`mt::DOCKER_CONFIG`] for Docker manifests).
    pub fn encode_as(&self, media_type: &str) -> Result<Encoded, ConfigError> {
        Ok(encode(self, media_type)?)
    }

    /// The image id as Docker shows it: the digest of the config bytes.
    pub fn id(&self) -> Result<Digest, ConfigError> {
        Ok(self.encode()?.descriptor.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_omitted() {
        let mut c = ImageConfig::for_platform(&Platform::parse("linux/arm64").unwrap());
        let j = String::from_utf8(c.encode().unwrap().bytes).unwrap();
        assert_eq!(
            j,
            r#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
        );
        c.config.cmd = Some(vec![]);
        c.config.exposed_ports.insert("80/tcp".into(), Empty);
        let j = String::from_utf8(c.encode().unwrap().bytes).unwrap();
        assert!(
            j.contains(r#""config":{"ExposedPorts":{"80/tcp":{}},"Cmd":[]}"#),
            "{j}"
        );
    }

    #[test]
    fn docker_quirks_parse() {
        let j = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":"/bin/sh","Env":null,"ExposedPorts":{"80/tcp":null},"Hostname":"x","Entrypoint":null},"rootfs":{"type":"layers","diff_ids":null},"history":null,"docker_version":"20"}"#;
        let c = ImageConfig::from_slice(j).unwrap();
        assert_eq!(c.config.cmd, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(c.config.entrypoint, None);
        assert!(c.config.env.is_empty());
        assert!(c.config.exposed_ports.contains_key("80/tcp"));
        assert_eq!(c.config.extra["Hostname"], "x");
        assert_eq!(c.extra["docker_version"], "20");
    }

    #[test]
    fn env_helpers() {
        let mut c = ContainerConfig::default();
        c.env_set("PATH", "/bin");
        c.env_set("A", "1");
        c.env_set("PATH", "/usr/bin:/bin");
        assert_eq!(c.env, ["PATH=/usr/bin:/bin", "A=1"]);
        assert_eq!(c.env_get("A"), Some("1"));
        assert_eq!(c.env_get("B"), None);
    }
}
