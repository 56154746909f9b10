//! Credentials from Docker's `config.json`: the `auths` map (base64 `auth`
//! or `username`/`password`, `registrytoken`), `credHelpers` and
//! `credsStore` (`docker-credential-<helper> get|store|erase`), and writing
//! logins back the way `docker login` does.

use crate::error::RegistryError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use xbuild_oci::reference::{DOCKER_HUB, DOCKER_HUB_API};

/// The key Docker uses for Docker Hub in `auths` and with credential helpers.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A secret string (password, token) that never shows in `Debug` or
/// `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (HTTP basic, or exchanged for a bearer token).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A bearer token used as-is (`registrytoken`).
    Bearer(Secret),
}

impl Credential {
    /// The matching `oci-client` auth.
    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match self {
            Credential::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.expose().to_string())
            }
            Credential::Bearer(t) => RegistryAuth::Bearer(t.expose().to_string()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "registrytoken")]
    registry_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

/// A parsed Docker `config.json`.
#[derive(Debug)]
pub struct DockerConfig {
    path: PathBuf,
    raw: RawConfig,
}

/// `host[:port]` of an `auths` key or registry name: scheme and path
/// dropped, lowercased, Docker Hub's aliases folded into `docker.io`.
pub fn normalize_registry_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | DOCKER_HUB_API => DOCKER_HUB.to_string(),
        _ => host,
    }
}

/// The server name Docker hands credential helpers and uses as `auths` key.
pub fn server_key(registry: &str) -> String {
    if normalize_registry_key(registry) == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.to_string()
    }
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> PathBuf {
        if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("config.json");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".docker").join("config.json")
    }

    /// Read and parse `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let raw = match std::fs::read(path) {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => RawConfig::default(),
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RegistryError::DockerConfig {
                path: path.to_path_buf(),
                detail: format!("invalid JSON: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RawConfig::default(),
            Err(e) => {
                return Err(RegistryError::DockerConfig {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })
            }
        };
        Ok(DockerConfig {
            path: path.to_path_buf(),
            raw,
        })
    }

    /// The credential helper configured for `registry`, if any: its
    /// `credHelpers` entry, else `credsStore`.
    pub fn helper_for(&self, registry: &str) -> Option<(&str, bool)> {
        let want = normalize_registry_key(registry);
        self.raw
            .cred_helpers
            .iter()
            .find(|(k, _)| normalize_registry_key(k) == want)
            .map(|(_, h)| (h.as_str(), true))
            .or_else(|| {
                self.raw
                    .creds_store
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(|s| (s, false))
            })
    }

    /// Credentials for `registry` (`docker.io`, `localhost:5000`):
    /// `credHelpers`, then `credsStore`, then `auths`; `None` means anonymous.
    pub fn credentials_for(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some((helper, explicit)) = self.helper_for(registry) {
            match helper_get(helper, registry) {
                Ok(Some(c)) => return Ok(Some(c)),
                Ok(None) => {}
                // A credsStore that is not installed here (a config copied
                // from a desktop) falls back to `auths`, as for anonymous use.
                Err(HelperError::Missing) if !explicit => {}
                Err(e) => return Err(e.into_registry_error(helper, registry)),
            }
        }
        self.auths_entry(registry)
    }

    fn auths_entry(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        let want = normalize_registry_key(registry);
        let Some((key, entry)) = self
            .raw
            .auths
            .iter()
            .find(|(k, _)| normalize_registry_key(k) == want)
        else {
            return Ok(None);
        };
        if let Some(t) = entry.registry_token.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credential::Bearer(Secret::new(t))));
        }
        if let Some(a) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = |detail: &str| RegistryError::DockerConfig {
                path: self.path.clone(),
                detail: format!("auths[{key:?}].auth {detail}"),
            };
            let decoded = B64
                .decode(a.trim())
                .map_err(|_| bad("is not valid base64"))?;
            let s = String::from_utf8(decoded).map_err(|_| bad("is not UTF-8"))?;
            let (u, p) = s
                .split_once(':')
                .ok_or_else(|| bad("is not base64 of user:password"))?;
            return Ok(Some(Credential::Basic {
                username: u.to_string(),
                password: Secret::new(p),
            }));
        }
        match (&entry.username, &entry.password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credential::Basic {
                username: u.clone(),
                password: Secret::new(p.clone()),
            })),
            _ => Ok(None),
        }
    }
}

/// Record a login: through the registry's credential helper when one is
/// configured, else as base64 `user:password` in `auths`.
pub fn store_login(
    path: &Path,
    registry: &str,
    username: &str,
    password: &Secret,
) -> Result<(), RegistryError> {
    let cfg = DockerConfig::load(path)?;
    if let Some((helper, _)) = cfg.helper_for(registry) {
        let input = serde_json::json!({
            "ServerURL": server_key(registry),
            "Username": username,
            "Secret": password.expose(),
        })
        .to_string();
        return run_helper(helper, "store", &input)
            .map(|_| ())
            .map_err(|e| e.into_registry_error(helper, registry));
    }
    edit_config(path, |doc| {
        let auths = doc.entry("auths").or_insert_with(|| serde_json::json!({}));
        if !auths.is_object() {
            *auths = serde_json::json!({});
        }
        let map = auths.as_object_mut().expect("just made an object");
        let want = normalize_registry_key(registry);
        map.retain(|k, _| normalize_registry_key(k) != want);
        let auth = B64.encode(format!("{username}:{}", password.expose()));
        map.insert(server_key(registry), serde_json::json!({ "auth": auth }));
    })
}

/// Forget a login: erase it from the credential helper (if any) and from
/// `auths`. Returns whether anything was removed from `auths` or the helper.
pub fn remove_login(path: &Path, registry: &str) -> Result<bool, RegistryError> {
    let cfg = DockerConfig::load(path)?;
    let mut removed = false;
    if let Some((helper, explicit)) = cfg.helper_for(registry) {
        match run_helper(helper, "erase", &server_key(registry)) {
            Ok(_) => removed = true,
            Err(HelperError::NotFound) => {}
            Err(HelperError::Missing) if !explicit => {}
            Err(e) => return Err(e.into_registry_error(helper, registry)),
        }
    }
    if !path.exists() {
        return Ok(removed);
    }
    let want = normalize_registry_key(registry);
    let mut had = false;
    edit_config(path, |doc| {
        if let Some(m) = doc.get_mut("auths").and_then(|a| a.as_object_mut()) {
            let before = m.len();
            m.retain(|k, _| normalize_registry_key(k) != want);
            had = m.len() != before;
        }
    })?;
    Ok(removed || had)
}

/// Read the config as a JSON object (keeping fields we do not know), apply
/// `f`, write it back atomically with mode 0600.
fn edit_config(
    path: &Path,
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<(), RegistryError> {
    let err = |detail: String| RegistryError::DockerConfig {
        path: path.to_path_buf(),
        detail,
    };
    let mut doc = match std::fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => serde_json::Map::new(),
        Ok(b) => serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&b)
            .map_err(|e| err(format!("invalid JSON: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
        Err(e) => return Err(err(e.to_string())),
    };
    f(&mut doc);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(format!("create directory: {e}")))?;
    let mut bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(doc))
        .map_err(|e| err(e.to_string()))?;
    bytes.push(b'\n');
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.json".into()),
        std::process::id()
    ));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err(format!("write: {e}")))?;
        file.write_all(&bytes)
            .and_then(|_| file.sync_all())
            .map_err(|e| err(format!("write: {e}")))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(format!("replace: {e}"))
    })
}

#[derive(Debug)]
enum HelperError {
    /// The helper binary is not on PATH.
    Missing,
    /// The helper has no credentials for the server.
    NotFound,
    /// Anything else.
    Failed(String),
}

impl HelperError {
    fn into_registry_error(self, helper: &str, registry: &str) -> RegistryError {
        let detail = match self {
            HelperError::Missing => format!("docker-credential-{helper} not found on PATH"),
            HelperError::NotFound => "no credentials stored".to_string(),
            HelperError::Failed(m) => m,
        };
        RegistryError::CredentialHelper {
            helper: helper.to_string(),
            registry: registry.to_string(),
            detail,
        }
    }
}

fn run_helper(helper: &str, action: &str, input: &str) -> Result<Vec<u8>, HelperError> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                HelperError::Missing
            } else {
                HelperError::Failed(format!("cannot run {program}: {e}"))
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading gives EPIPE; its status tells.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| HelperError::Failed(format!("{program}: {e}")))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let msg = String::from_utf8_lossy(&out.stdout).trim().to_string()
        + String::from_utf8_lossy(&out.stderr).trim();
    if msg.to_ascii_lowercase().contains("credentials not found") {
        return Err(HelperError::NotFound);
    }
    // Never echo what the helper printed on success paths; on failure its
    // message is an error text, not a secret.
    Err(HelperError::Failed(format!(
        "{program} {action} failed ({}): {}",
        out.status,
        msg.chars().take(200).collect::<String>()
    )))
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

fn helper_get(helper: &str, registry: &str) -> Result<Option<Credential>, HelperError> {
    let out = match run_helper(helper, "get", &server_key(registry)) {
        Ok(o) => o,
        Err(HelperError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    let reply: HelperReply = serde_json::from_slice(&out).map_err(|e| {
        HelperError::Failed(format!(
            "docker-credential-{helper} get printed invalid JSON: {e}"
        ))
    })?;
    if reply.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credential::Basic {
        username: reply.username,
        password: Secret::new(reply.secret),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) -> PathBuf {
        let p = dir.join("config.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    fn basic(u: &str, p: &str) -> Option<Credential> {
        Some(Credential::Basic {
            username: u.into(),
            password: Secret::new(p),
        })
    }

    #[test]
    fn secret_is_redacted() {
        let c = basic("bob", "hunter2").unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("<redacted>"), "{d}");
        assert_eq!(Secret::new("x").to_string(), "<redacted>");
    }

    #[test]
    fn auths_base64_and_fields() {
        let t = tempfile::tempdir().unwrap();
        let a = B64.encode("alice:pa:ss");
        let p = write(
            t.path(),
            &format!(
                r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{a}"}},
                "localhost:5000":{{"username":"u","password":"p"}},
                "http://reg.example:8443/v2/":{{"auth":"{a}"}},
                "tok.example":{{"registrytoken":"T"}},
                "empty.example":{{}}
            }}}}"#
            ),
        );
        let c = DockerConfig::load(&p).unwrap();
        assert_eq!(
            c.credentials_for("docker.io").unwrap(),
            basic("alice", "pa:ss")
        );
        assert_eq!(
            c.credentials_for("registry-1.docker.io").unwrap(),
            basic("alice", "pa:ss")
        );
        assert_eq!(
            c.credentials_for("localhost:5000").unwrap(),
            basic("u", "p")
        );
        assert_eq!(
            c.credentials_for("reg.example:8443").unwrap(),
            basic("alice", "pa:ss")
        );
        assert_eq!(
            c.credentials_for("tok.example").unwrap(),
            Some(Credential::Bearer(Secret::new("T")))
        );
        assert_eq!(c.credentials_for("empty.example").unwrap(), None);
        assert_eq!(c.credentials_for("other.example").unwrap(), None);
    }

    #[test]
    fn missing_and_bad_files() {
        let t = tempfile::tempdir().unwrap();
        let c = DockerConfig::load(&t.path().join("nope.json")).unwrap();
        assert_eq!(c.credentials_for("docker.io").unwrap(), None);
        let p = write(t.path(), "{not json");
        assert!(matches!(
            DockerConfig::load(&p),
            Err(RegistryError::DockerConfig { .. })
        ));
        let p = write(t.path(), r#"{"auths":{"x.example":{"auth":"!!!"}}}"#);
        let e = DockerConfig::load(&p)
            .unwrap()
            .credentials_for("x.example")
            .unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
    }

    #[test]
    fn store_and_remove_keep_other_fields() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("sub").join("config.json");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            r#"{"psFormat":"table","auths":{"localhost:5000":{"auth":"eDp5"}}}"#,
        )
        .unwrap();
        store_login(&p, "localhost:5000", "me", &Secret::new("pw")).unwrap();
        store_login(&p, "docker.io", "hub", &Secret::new("hp")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "table");
        assert_eq!(v["auths"]["localhost:5000"]["auth"], B64.encode("me:pw"));
        assert_eq!(
            v["auths"][DOCKER_HUB_AUTH_KEY]["auth"],
            B64.encode("hub:hp")
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(remove_login(&p, "localhost:5000").unwrap());
        assert!(!remove_login(&p, "localhost:5000").unwrap());
        let c = DockerConfig::load(&p).unwrap();
        assert_eq!(c.credentials_for("localhost:5000").unwrap(), None);
        assert_eq!(c.credentials_for("docker.io").unwrap(), basic("hub", "hp"));
    }

    #[test]
    fn normalizes_keys() {
        assert_eq!(
            normalize_registry_key("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(normalize_registry_key("Registry-1.Docker.io"), "docker.io");
        assert_eq!(normalize_registry_key("http://h:5000/v2/"), "h:5000");
        assert_eq!(server_key("docker.io"), DOCKER_HUB_AUTH_KEY);
        assert_eq!(server_key("h:5000"), "h:5000");
    }
}
