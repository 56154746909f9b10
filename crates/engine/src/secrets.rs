//! Build secrets (`--secret id=...`): values handed to `RUN --mount=type=secret`.
//!
//! Values never reach a cache key, a layer, the history, a log or an error:
//! [`Secrets`] prints only its ids, and the engine writes a value only into a
//! private tmpfs (or the environment of the one process that asked for it).

use std::collections::BTreeMap;
use std::fmt;

/// Secret values by id, and the ssh-agent sockets of `--ssh` by id.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, Vec<u8>>,
    ssh: BTreeMap<String, std::path::PathBuf>,
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Secrets::default()
    }

    /// Adds (or replaces) the secret `id`.
    pub fn insert(&mut self, id: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.values.insert(id.into(), value.into());
    }

    /// The value of `id`.
    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.values.get(id).map(Vec::as_slice)
    }

    /// Expose the ssh-agent listening at `socket` as `--ssh` id `id`.
    pub fn insert_ssh(&mut self, id: impl Into<String>, socket: impl Into<std::path::PathBuf>) {
        self.ssh.insert(id.into(), socket.into());
    }

    /// The agent socket of ssh id `id`.
    pub fn ssh_socket(&self, id: &str) -> Option<&std::path::Path> {
        self.ssh.get(id).map(|p| p.as_path())
    }

    /// The ssh ids, sorted.
    pub fn ssh_ids(&self) -> impl Iterator<Item = &str> {
        self.ssh.keys().map(String::as_str)
    }

    /// The ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Number of secrets.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl From<BTreeMap<String, Vec<u8>>> for Secrets {
    fn from(values: BTreeMap<String, Vec<u8>>) -> Self {
        Secrets {
            values,
            ssh: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("ids", &self.values.keys().collect::<Vec<_>>())
            .field("ssh", &self.ssh.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        for v in self.values.values_mut() {
            v.iter_mut().for_each(|b| *b = 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_ids_only() {
        let mut s = Secrets::new();
        s.insert("tok", b"hunter2".to_vec());
        let d = format!("{s:?}");
        assert!(d.contains("tok"));
        assert!(!d.contains("hunter2"));
        assert_eq!(s.get("tok"), Some(b"hunter2".as_slice()));
    }
}
