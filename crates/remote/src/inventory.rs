//! The node inventory: the `nodes:` list of xbuild's YAML configuration
//! file. Other top-level keys of the file are kept as they are when the
//! inventory is rewritten (comments are not: `node add`/`rm` rewrite the file).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use xbuild_oci::Platform;

/// The agent command used when a node does not set one.
pub const DEFAULT_AGENT_COMMAND: &str = "xbuild agent --stdio";

/// The worker name that means "this machine" in `--node PLATFORM=local`.
pub const LOCAL: &str = "local";

/// Errors reading, validating or writing the inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed (the message carries line and column).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde_yaml's message, with its location.
        message: String,
    },
    /// A node entry is invalid.
    #[error("{}: node {name:?}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The node.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A node name is already taken.
    #[error("a node named {name:?} already exists in {} (remove it first: xbuild node rm {name})", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
    },
    /// No node of that name.
    #[error("no node named {name:?} in {} (known: {known})", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
        /// The names there are, comma-separated, or "none".
        known: String,
    },
}

/// An invalid `ssh://` address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node address {address:?}: {reason} (expected ssh://[user@]host[:port])")]
pub struct AddressError {
    /// The text given.
    pub address: String,
    /// What is wrong.
    pub reason: String,
}

/// `ssh://[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAddress {
    /// The remote user; `None` means the local user name, as with `ssh`.
    pub user: Option<String>,
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl SshAddress {
    /// The user to log in as: the address's, else `$USER`/`$LOGNAME`, else `root`.
    pub fn user_or_default(&self) -> String {
        self.user.clone().unwrap_or_else(|| {
            ["USER", "LOGNAME"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
                .unwrap_or_else(|| "root".into())
        })
    }

    /// `host:port` for messages (`[::1]:22` for IPv6).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for SshAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ssh://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 22 {
            write!(f, "{host}")
        } else {
            write!(f, "{host}:{}", self.port)
        }
    }
}

impl FromStr for SshAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        let err = |reason: &str| AddressError {
            address: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix("ssh://")
            .ok_or_else(|| err("it must start with ssh://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(err("a path, query or fragment is not allowed"));
        }
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => {
                if u.is_empty() || u.contains(':') {
                    return Err(err("bad user (a password in the address is not allowed)"));
                }
                (Some(u.to_string()), h)
            }
            None => (None, rest),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed [ in the host"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| err("junk after ]"))?),
            };
            (h.to_string(), port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(err("the host is empty"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@')
        {
            return Err(err("the host has invalid characters"));
        }
        let port = match port {
            None => 22,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(err("the port must be a number from 1 to 65535")),
            },
        };
        Ok(SshAddress { user, host, port })
    }
}

impl Serialize for SshAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SshAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One node as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSpec {
    /// Its name (`amd1`).
    pub name: String,
    /// Where to reach it.
    pub address: SshAddress,
    /// Platforms it builds natively.
    pub platforms: Vec<Platform>,
    /// Private key file (passphrase-less); else the ssh-agent and `~/.ssh/id_*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// How many platform builds it runs at once (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// The command started on the node (default `xbuild agent --stdio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_command: Option<String>,
    /// A `known_hosts` file to use instead of `~/.ssh/known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
}

impl NodeSpec {
    /// The command that runs the agent on the node.
    pub fn agent_command(&self) -> &str {
        self.agent_command
            .as_deref()
            .unwrap_or(DEFAULT_AGENT_COMMAND)
    }

    /// The command that prints the node's `AgentInfo`: the agent command
    /// with `--stdio` replaced by `--info` (or `--info` appended).
    pub fn info_command(&self) -> String {
        let words: Vec<&str> = self.agent_command().split(' ').collect();
        if words.contains(&"--stdio") {
            words
                .iter()
                .map(|w| if *w == "--stdio" { "--info" } else { w })
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            format!("{} --info", self.agent_command())
        }
    }

    /// `node amd1 (ssh://root@127.0.0.2:2222)`, for messages.
    pub fn label(&self) -> String {
        format!("node {} ({})", self.name, self.address)
    }

    fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        if self.platforms.is_empty() {
            return Err("it lists no platforms".into());
        }
        if self.max_parallel == Some(0) {
            return Err("max-parallel must be at least 1".into());
        }
        if let Some(c) = &self.agent_command {
            if c.trim().is_empty() {
                return Err("agent-command is empty".into());
            }
        }
        Ok(())
    }
}

/// Node names: a letter or digit, then letters, digits, `-`, `_`, `.`;
/// `local` is reserved for this machine.
pub fn validate_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_first
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.len() > 64
    {
        return Err(format!(
            "invalid node name {name:?}: use letters, digits, '-', '_' and '.', starting with a letter or digit"
        ));
    }
    if name == LOCAL {
        return Err(format!(
            "the node name {LOCAL:?} is reserved for this machine"
        ));
    }
    Ok(())
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<NodeSpec>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml::Value>,
}

/// The configuration file and its nodes.
#[derive(Debug)]
pub struct Inventory {
    path: PathBuf,
    file: ConfigFile,
}

impl Inventory {
    /// Read `path` (a missing file is an empty inventory).
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(InventoryError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(path, &text)
    }

    /// Parse `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
        let file: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| InventoryError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        let inv = Inventory {
            path: path.to_path_buf(),
            file,
        };
        let mut seen = std::collections::HashSet::new();
        for n in &inv.file.nodes {
            n.validate()
                .map_err(|message| inv.invalid(&n.name, message))?;
            if !seen.insert(n.name.as_str()) {
                return Err(inv.invalid(&n.name, "the name is used twice".into()));
            }
        }
        Ok(inv)
    }

    fn invalid(&self, name: &str, message: String) -> InventoryError {
        InventoryError::Invalid {
            path: self.path.clone(),
            name: name.to_string(),
            message,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All nodes, in file order.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.file.nodes
    }

    /// The node called `name`.
    pub fn get(&self, name: &str) -> Result<&NodeSpec, InventoryError> {
        self.file
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| InventoryError::NotFound {
                path: self.path.clone(),
                name: name.to_string(),
                known: self.names(),
            })
    }

    fn names(&self) -> String {
        if self.file.nodes.is_empty() {
            "none".into()
        } else {
            let v: Vec<&str> = self.file.nodes.iter().map(|n| n.name.as_str()).collect();
            v.join(", ")
        }
    }

    /// Add a node (its name must be new).
    pub fn add(&mut self, node: NodeSpec) -> Result<(), InventoryError> {
        node.validate()
            .map_err(|message| self.invalid(&node.name, message))?;
        if self.file.nodes.iter().any(|n| n.name == node.name) {
            return Err(InventoryError::Exists {
                path: self.path.clone(),
                name: node.name,
            });
        }
        self.file.nodes.push(node);
        Ok(())
    }

    /// Remove the node called `name`, returning it.
    pub fn remove(&mut self, name: &str) -> Result<NodeSpec, InventoryError> {
        self.get(name)?;
        let i = self
            .file
            .nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_default();
        Ok(self.file.nodes.remove(i))
    }

    /// Write the file back (atomically: a temporary file renamed over it).
    pub fn save(&self) -> Result<(), InventoryError> {
        let werr = |source| InventoryError::Write {
            path: self.path.clone(),
            source,
        };
        let yaml = serde_yaml::to_string(&self.file)
            .map_err(|e| werr(std::io::Error::other(e.to_string())))?;
        let text = format!(
            "# xbuild configuration (nodes are managed with `xbuild node add|rm`).\n{yaml}"
        );
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(werr)?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "config.yaml".into()),
            std::process::id()
        ));
        std::fs::write(&tmp, text).map_err(werr)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            werr(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a: SshAddress = "ssh://root@127.0.0.2:2222".parse().unwrap();
        assert_eq!(a.user.as_deref(), Some("root"));
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.2", 2222));
        assert_eq!(a.to_string(), "ssh://root@127.0.0.2:2222");
        let b: SshAddress = "ssh://build.example.com".parse().unwrap();
        assert_eq!((b.user.as_deref(), b.port), (None, 22));
        assert_eq!(b.to_string(), "ssh://build.example.com");
        let c: SshAddress = "ssh://u@[::1]:23".parse().unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 23));
        assert_eq!(c.host_port(), "[::1]:23");
        assert_eq!(c.to_string(), "ssh://u@[::1]:23");
        for bad in [
            "root@host",
            "ssh://",
            "ssh://host:0",
            "ssh://host:99999",
            "ssh://host/path",
            "ssh://u:pw@host",
            "ssh://[::1",
        ] {
            assert!(bad.parse::<SshAddress>().is_err(), "{bad}");
        }
        let e = "ssh://host:x".parse::<SshAddress>().unwrap_err();
        assert!(e.to_string().contains("ssh://host:x"), "{e}");
    }

    fn node(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            address: "ssh://root@127.0.0.2:2222".parse().unwrap(),
            platforms: vec![Platform::parse("linux/amd64").unwrap()],
            identity: Some("/k/id".into()),
            max_parallel: Some(2),
            agent_command: Some("/bin/xbuild agent --stdio --root /tmp/a".into()),
            known_hosts: None,
        }
    }

    #[test]
    fn round_trip_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.yaml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "registries:\n  mirror: x\n").unwrap();
        let mut inv = Inventory::load(&path).unwrap();
        assert!(inv.nodes().is_empty());
        inv.add(node("amd1")).unwrap();
        assert!(matches!(
            inv.add(node("amd1")),
            Err(InventoryError::Exists { .. })
        ));
        inv.save().unwrap();
        let back = Inventory::load(&path).unwrap();
        assert_eq!(back.nodes(), &[node("amd1")]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("mirror: x"), "{text}");
        assert!(text.contains("max-parallel: 2"), "{text}");
        let mut back = back;
        assert_eq!(back.remove("amd1").unwrap().name, "amd1");
        let e = back.remove("amd1").unwrap_err().to_string();
        assert!(e.contains("no node named \"amd1\""), "{e}");
        assert_eq!(
            node("a").info_command(),
            "/bin/xbuild agent --info --root /tmp/a"
        );
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../configs/xbuild.example.yaml");
        let inv = Inventory::parse(Path::new("xbuild.example.yaml"), text).unwrap();
        let names: Vec<&str> = inv.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["amd1", "arm1"]);
        assert_eq!(inv.nodes()[0].max_parallel, Some(2));
        assert_eq!(inv.nodes()[1].address.port, 2222);
        assert_eq!(
            inv.nodes()[1].info_command(),
            "/usr/local/bin/xbuild agent --info --root /var/lib/xbuild-agent"
        );
    }

    #[test]
    fn bad_files_name_the_file_and_line() {
        let p = Path::new("/etc/xb.yaml");
        let e = Inventory::parse(p, "nodes:\n  - name: a\n    addres: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/xb.yaml: "), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = Inventory::parse(
            p,
            "nodes:\n  - name: local\n    address: ssh://h\n    platforms: [linux/amd64]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("reserved"), "{e}");
        let e = Inventory::parse(
            p,
            "nodes:\n  - name: a\n    address: ftp://h\n    platforms: [linux/amd64]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ssh://"), "{e}");
        assert!(validate_name("a b").is_err());
        assert!(validate_name("amd-1.lan").is_ok());
    }
}
