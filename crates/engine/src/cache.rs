//! The build cache: step keys and the records that map a key to its result,
//! one directory per platform.
//!
//! A key is the sha256 of a canonical JSON document made of the parent's
//! key, the platform, the step text, the build args the step uses and what
//! the step reads (base manifest digest, source checksums, another stage's
//! key). Nothing in it depends on paths, times or the host, so the same
//! Dockerfile and context give the same keys everywhere.
//!
//! ```text
//! cache/<platform>/<key hex>.json       CacheRecord (with its StepTrace)
//! cache/<platform>/children/<parent hex> keys recorded under a parent, one a line
//! cache/<platform>/slots/<hex>           the last key built in a step slot
//! cache/_listings/<hex>.json             context listings named by traces
//! ```
//!
//! The trace, the children and the slots exist only to say why a step
//! missed: the last build's record for the same parent (or the same step
//! slot: stage and position) is compared with this build's inputs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xbuild_oci::{BlobStore, Descriptor, Digest, Platform};

/// Version of the key derivation; bump to invalidate every record.
const KEY_VERSION: u32 = 1;

/// Errors of the cache store.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A key input could not be encoded.
    #[error("encoding a cache key: {0}")]
    Encode(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Everything a step's key is made of.
#[derive(Debug, Serialize)]
pub struct KeyInput<'a> {
    /// Key derivation version.
    pub version: u32,
    /// The previous step's key (`None` for FROM).
    pub parent: Option<&'a str>,
    /// The platform (`linux/arm64`).
    pub platform: String,
    /// The instruction text after expansion.
    pub text: &'a str,
    /// Build args the step uses, with their values.
    pub build_args: &'a BTreeMap<String, String>,
    /// What the step reads, op-specific.
    pub op: serde_json::Value,
}

impl<'a> KeyInput<'a> {
    /// A key input for `text` on `platform` after `parent`.
    pub fn new(
        parent: Option<&'a Digest>,
        platform: &Platform,
        text: &'a str,
        build_args: &'a BTreeMap<String, String>,
        op: serde_json::Value,
    ) -> Self {
        KeyInput {
            version: KEY_VERSION,
            parent: parent.map(Digest::as_str),
            platform: platform.to_string(),
            text,
            build_args,
            op,
        }
    }

    /// The key.
    pub fn key(&self) -> Result<Digest, CacheError> {
        let bytes = serde_json::to_vec(self).map_err(|e| CacheError::Encode(e.to_string()))?;
        Ok(Digest::sha256_of(&bytes))
    }
}

/// The member of a record file holding the checksum of the rest.
const CHECK_FIELD: &str = "check";

/// A record as written: its JSON plus a `check` member, the sha256 of the
/// JSON of every other member (in serde_json's canonical key order), so a
/// flipped byte anywhere is found when the record is read.
fn encode_record(rec: &CacheRecord) -> Result<Vec<u8>, CacheError> {
    let enc = |e: serde_json::Error| CacheError::Encode(e.to_string());
    let mut v = serde_json::to_value(rec).map_err(enc)?;
    let sum = Digest::sha256_of(&serde_json::to_vec(&v).map_err(enc)?);
    if let serde_json::Value::Object(m) = &mut v {
        m.insert(
            CHECK_FIELD.into(),
            serde_json::Value::String(sum.to_string()),
        );
    }
    serde_json::to_vec_pretty(&v).map_err(enc)
}

/// The record in `bytes`, or `None` when it is not one or fails its
/// checksum (records written before the checksum existed have none).
pub fn decode_record(bytes: &[u8]) -> Option<CacheRecord> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let check = match &mut v {
        serde_json::Value::Object(m) => m.remove(CHECK_FIELD),
        _ => return None,
    };
    if let Some(check) = check {
        let sum = Digest::sha256_of(&serde_json::to_vec(&v).ok()?);
        if check.as_str() != Some(sum.as_str()) {
            return None;
        }
    }
    serde_json::from_value(v).ok()
}

/// What the cache remembers about one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The step's key.
    pub key: Digest,
    /// The parent's key.
    pub parent: Option<Digest>,
    /// The platform.
    pub platform: String,
    /// The instruction text (for `xbuild cache du` and debugging).
    pub text: String,
    /// The layer the step produced, `None` for an empty diff or a metadata step.
    pub layer: Option<Descriptor>,
    /// The layer's diffID.
    pub diff_id: Option<Digest>,
    /// When the record was written (RFC 3339).
    pub created: String,
    /// What the key was made of, to explain later misses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<StepTrace>,
}

/// The inputs of a step's key, kept to explain misses. No secret and no
/// build-arg value is stored: args are kept as short hashes of their values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTrace {
    /// The step slot: `<stage> <position>`.
    pub slot: String,
    /// Build args the step uses: name -> short sha256 of the value.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// The stage's base (image digest or stage key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<InputTrace>,
    /// What the step reads (COPY sources, RUN bind mounts), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<InputTrace>,
    /// A RUN step's keyed options besides its text, as flags
    /// (`--ulimit nofile=1024:2048 --add-host a=10.0.0.1 --shm-size 64m`);
    /// `None` when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_options: Option<String>,
}

/// One input of a key: what it is and its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTrace {
    /// `context`, `stage build`, `image alpine:3`.
    pub label: String,
    /// Checksum, key or digest.
    pub id: String,
    /// For context sources: the listing (see [`CacheStore::put_listing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<Digest>,
}

/// Short hash of a build-arg value (what traces keep instead of the value).
pub fn arg_hash(value: &str) -> String {
    Digest::sha256_of(value.as_bytes()).hex()[..16].to_string()
}

/// The cache records of one engine root.
#[derive(Debug, Clone)]
pub struct CacheStore {
    dir: PathBuf,
}

/// A file-name-safe form of a platform (`linux-arm-v7`).
pub fn platform_dir_name(p: &Platform) -> String {
    p.to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl CacheStore {
    /// The cache under `dir`.
    pub fn open(dir: &Path) -> Result<CacheStore, CacheError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        Ok(CacheStore {
            dir: dir.to_path_buf(),
        })
    }

    fn platform_dir(&self, p: &Platform) -> PathBuf {
        self.dir.join(platform_dir_name(p))
    }

    fn record_path(&self, p: &Platform, key: &Digest) -> PathBuf {
        self.platform_dir(p).join(format!("{}.json", key.hex()))
    }

    /// Marks the record of `key` as used now (its file's mtime), which is
    /// what `cache prune --filter until=` and `--keep-storage` go by.
    /// Best effort: a record that cannot be touched is merely pruned earlier.
    pub fn touch(&self, p: &Platform, key: &Digest) {
        if let Ok(f) = fs::OpenOptions::new()
            .write(true)
            .open(self.record_path(p, key))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// The record of `key`, when there is a usable one (its layer blob present).
    pub fn get(&self, p: &Platform, key: &Digest, store: &BlobStore) -> Option<CacheRecord> {
        let rec = self.get_raw(p, key)?;
        if rec.key != *key {
            return None;
        }
        match (&rec.layer, &rec.diff_id) {
            (Some(l), Some(_)) if store.exists(&l.digest) => Some(rec),
            (None, None) => Some(rec),
            _ => None,
        }
    }

    /// The record of `key` as stored, whether or not its layer blob is present.
    ///
    /// A damaged record (not JSON, truncated, or failing its checksum: a
    /// flipped byte) is not returned -- a cache miss, and the step is built
    /// again and its record rewritten -- and is removed.
    pub fn get_raw(&self, p: &Platform, key: &Digest) -> Option<CacheRecord> {
        let path = self.record_path(p, key);
        let bytes = fs::read(&path).ok()?;
        match decode_record(&bytes) {
            Some(rec) => (rec.key == *key).then_some(rec),
            None => {
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Every record of platform `p` (unreadable files are skipped), by key.
    pub fn list(&self, p: &Platform) -> Result<Vec<CacheRecord>, CacheError> {
        let dir = self.platform_dir(p);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        let mut out = Vec::new();
        for f in rd.flatten() {
            let name = f.file_name();
            let Some(hex) = name
                .to_string_lossy()
                .strip_suffix(".json")
                .map(String::from)
            else {
                continue;
            };
            let Ok(key) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            if let Some(rec) = self.get_raw(p, &key) {
                out.push(rec);
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn write_atomic(&self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CacheError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let tmp = dir.join(format!(".tmp-{}", crate::snapshot::unique_name()));
        let dest = dir.join(name);
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write cache record", &tmp)(e));
        }
        fs::rename(&tmp, &dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("rename cache record into place", &dest)(e)
        })
    }

    /// Writes (or replaces) a record.
    pub fn put(&self, p: &Platform, rec: &CacheRecord) -> Result<(), CacheError> {
        let bytes = encode_record(rec)?;
        self.write_atomic(
            &self.platform_dir(p),
            &format!("{}.json", rec.key.hex()),
            &bytes,
        )
    }

    /// Indexes `rec` under its parent and its slot, for [`previous`](Self::previous).
    pub fn index(&self, p: &Platform, rec: &CacheRecord) -> Result<(), CacheError> {
        let pd = self.platform_dir(p);
        if let Some(parent) = &rec.parent {
            let dir = pd.join("children");
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
            let file = dir.join(parent.hex());
            let known = fs::read_to_string(&file).unwrap_or_default();
            if !known.lines().any(|l| l == rec.key.hex()) {
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&file)
                    .map_err(io_err("open", &file))?;
                f.write_all(format!("{}\n", rec.key.hex()).as_bytes())
                    .map_err(io_err("append to", &file))?;
            }
        }
        if let Some(t) = &rec.trace {
            let name = Digest::sha256_of(t.slot.as_bytes()).hex().to_string();
            self.write_atomic(&pd.join("slots"), &name, rec.key.as_str().as_bytes())?;
        }
        Ok(())
    }

    /// The last build's record to compare a missing step with: the newest
    /// record under `parent` in the same slot, else the last record built
    /// in `slot` (under another parent).
    pub fn previous(&self, p: &Platform, parent: &Digest, slot: &str) -> Option<CacheRecord> {
        let pd = self.platform_dir(p);
        let children =
            fs::read_to_string(pd.join("children").join(parent.hex())).unwrap_or_default();
        let recs: Vec<CacheRecord> = children
            .lines()
            .rev()
            .filter_map(|h| Digest::parse(&format!("sha256:{h}")).ok())
            .filter_map(|k| self.get_raw(p, &k))
            .collect();
        let same_slot = recs
            .into_iter()
            .find(|r| r.trace.as_ref().is_some_and(|t| t.slot == slot));
        if let Some(r) = same_slot {
            return Some(r);
        }
        let name = Digest::sha256_of(slot.as_bytes()).hex().to_string();
        let key = fs::read_to_string(pd.join("slots").join(name)).ok()?;
        self.get_raw(p, &Digest::parse(key.trim()).ok()?)
    }

    fn listings_dir(&self) -> PathBuf {
        self.dir.join("_listings")
    }

    /// Stores a context listing (path, entry hash), returning its name.
    pub fn put_listing(&self, listing: &[(String, String)]) -> Result<Digest, CacheError> {
        let bytes = serde_json::to_vec(listing).map_err(|e| CacheError::Encode(e.to_string()))?;
        let d = Digest::sha256_of(&bytes);
        let dir = self.listings_dir();
        if !dir.join(format!("{}.json", d.hex())).exists() {
            self.write_atomic(&dir, &format!("{}.json", d.hex()), &bytes)?;
        }
        Ok(d)
    }

    /// A listing stored by [`put_listing`](Self::put_listing).
    pub fn get_listing(&self, d: &Digest) -> Option<Vec<(String, String)>> {
        let bytes = fs::read(self.listings_dir().join(format!("{}.json", d.hex()))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Drops what only explained removed records: listings no remaining
    /// record names, parent and slot indexes whose keys are all gone.
    /// Returns the number of files removed. Run after records are pruned.
    pub fn gc_indexes(&self) -> Result<usize, CacheError> {
        let mut removed = 0;
        let mut listed: std::collections::BTreeSet<String> = Default::default();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("read directory", &self.dir)(e)),
        };
        let mut remove = |p: &Path| {
            if fs::remove_file(p).is_ok() {
                removed += 1;
            }
        };
        for pd in rd.flatten() {
            let pdir = pd.path();
            if pd.file_name() == "_listings" || !pdir.is_dir() {
                continue;
            }
            let exists = |hex: &str| pdir.join(format!("{hex}.json")).exists();
            let Ok(files) = fs::read_dir(&pdir) else {
                continue;
            };
            for f in files.flatten() {
                let Some(rec) = fs::read(f.path()).ok().and_then(|b| decode_record(&b)) else {
                    continue;
                };
                for src in rec.trace.iter().flat_map(|t| &t.sources) {
                    if let Some(l) = &src.listing {
                        listed.insert(l.hex().to_string());
                    }
                }
            }
            for f in fs::read_dir(pdir.join("children"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let keys = fs::read_to_string(f.path()).unwrap_or_default();
                if !keys.lines().any(exists) {
                    remove(&f.path());
                }
            }
            for f in fs::read_dir(pdir.join("slots"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let key = fs::read_to_string(f.path()).unwrap_or_default();
                let hex = key.trim().rsplit(':').next().unwrap_or("");
                if !exists(hex) {
                    remove(&f.path());
                }
            }
        }
        for f in fs::read_dir(self.listings_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().to_string();
            let hex = name.trim_end_matches(".json");
            if !name.starts_with(".tmp-") && !listed.contains(hex) {
                remove(&f.path());
            }
        }
        Ok(removed)
    }

    /// Every record of platform `p` (for cache export).
    pub fn records(&self, p: &Platform) -> Vec<CacheRecord> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.platform_dir(p)) else {
            return out;
        };
        for f in rd.flatten() {
            if !f.file_name().to_string_lossy().ends_with(".json") {
                continue;
            }
            if let Some(rec) = fs::read(f.path()).ok().and_then(|b| decode_record(&b)) {
                out.push(rec);
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Every layer blob referenced by a record (GC roots).
    pub fn roots(&self) -> Result<Vec<Digest>, CacheError> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("read directory", &self.dir)(e)),
        };
        for pd in rd.flatten() {
            let Ok(files) = fs::read_dir(pd.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                if !name.to_string_lossy().ends_with(".json") {
                    continue;
                }
                let Ok(bytes) = fs::read(f.path()) else {
                    continue;
                };
                if let Some(rec) = decode_record(&bytes) {
                    if let Some(l) = rec.layer {
                        out.push(l.digest);
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with a flipped byte (still valid JSON) or cut short is a
    /// miss and is removed, never used with the damaged values.
    #[test]
    fn damaged_records_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheStore::open(dir.path()).unwrap();
        let p = Platform::parse("linux/amd64").unwrap();
        let rec = CacheRecord {
            key: Digest::sha256_of(b"k"),
            parent: None,
            platform: p.to_string(),
            text: "RUN echo hello".into(),
            layer: None,
            diff_id: None,
            created: "2020-01-01T00:00:00Z".into(),
            trace: None,
        };
        for damage in ["flip", "truncate"] {
            cache.put(&p, &rec).unwrap();
            assert_eq!(cache.get_raw(&p, &rec.key), Some(rec.clone()));
            let path = cache.record_path(&p, &rec.key);
            let mut bytes = fs::read(&path).unwrap();
            match damage {
                "flip" => {
                    let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
                    bytes[at] = b'j';
                }
                _ => bytes.truncate(bytes.len() / 2),
            }
            fs::write(&path, &bytes).unwrap();
            assert_eq!(cache.get_raw(&p, &rec.key), None, "{damage}");
            assert!(!path.exists(), "{damage}: the damaged record stays");
        }
    }

    #[test]
    fn keys_are_stable_and_sensitive() {
        let p = Platform::parse("linux/amd64").unwrap();
        let args = BTreeMap::new();
        let k1 = KeyInput::new(None, &p, "RUN x", &args, serde_json::json!({"a": 1}))
            .key()
            .unwrap();
        let k2 = KeyInput::new(None, &p, "RUN x", &args, serde_json::json!({"a": 1}))
            .key()
            .unwrap();
        assert_eq!(k1, k2);
        let k3 = KeyInput::new(Some(&k1), &p, "RUN x", &args, serde_json::json!({"a": 1}))
            .key()
            .unwrap();
        assert_ne!(k1, k3);
        let arm = Platform::parse("linux/arm64").unwrap();
        let k4 = KeyInput::new(None, &arm, "RUN x", &args, serde_json::json!({"a": 1}))
            .key()
            .unwrap();
        assert_ne!(k1, k4);
        assert_eq!(
            platform_dir_name(&Platform::parse("linux/arm/v7").unwrap()),
            "linux-arm-v7"
        );
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("content")).unwrap();
        let cache = CacheStore::open(&dir.path().join("cache")).unwrap();
        let p = Platform::parse("linux/amd64").unwrap();
        let key = Digest::sha256_of(b"k");
        let rec = CacheRecord {
            key: key.clone(),
            parent: None,
            platform: p.to_string(),
            text: "ENV A=1".into(),
            layer: None,
            diff_id: None,
            created: "2024-01-01T00:00:00Z".into(),
            trace: None,
        };
        cache.put(&p, &rec).unwrap();
        assert_eq!(cache.get(&p, &key, &store), Some(rec.clone()));
        // A record whose layer blob is gone is not usable.
        let key2 = Digest::sha256_of(b"k2");
        let rec2 = CacheRecord {
            key: key2.clone(),
            parent: None,
            platform: p.to_string(),
            text: "RUN x".into(),
            layer: Some(Descriptor::new("x", Digest::sha256_of(b"blob"), 4)),
            diff_id: Some(Digest::sha256_of(b"d")),
            created: "2024-01-01T00:00:00Z".into(),
            trace: None,
        };
        cache.put(&p, &rec2).unwrap();
        assert_eq!(cache.get(&p, &key2, &store), None);
        assert_eq!(cache.get_raw(&p, &key2), Some(rec2.clone()));
        assert_eq!(cache.roots().unwrap(), vec![Digest::sha256_of(b"blob")]);
        // Listing and raw reads see records whose blob is missing, too.
        assert_eq!(cache.get_raw(&p, &key2), Some(rec2.clone()));
        let mut want = vec![rec, rec2];
        want.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(cache.list(&p).unwrap(), want);
        assert!(cache
            .list(&Platform::parse("linux/s390x").unwrap())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn previous_records_and_index_gc() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheStore::open(&dir.path().join("cache")).unwrap();
        let p = Platform::parse("linux/amd64").unwrap();
        let parent = Digest::sha256_of(b"parent");
        let listing = cache
            .put_listing(&[("a.txt".into(), "0123".into())])
            .unwrap();
        let rec = |key: &[u8], slot: &str, text: &str, parent: &Digest| CacheRecord {
            key: Digest::sha256_of(key),
            parent: Some(parent.clone()),
            platform: p.to_string(),
            text: text.into(),
            layer: None,
            diff_id: None,
            created: "2024-01-01T00:00:00Z".into(),
            trace: Some(StepTrace {
                slot: slot.into(),
                sources: vec![InputTrace {
                    label: "context".into(),
                    id: "x".into(),
                    listing: Some(listing.clone()),
                }],
                ..Default::default()
            }),
        };
        let a = rec(b"a", "s 2", "RUN a", &parent);
        let b = rec(b"b", "t 2", "RUN b", &parent);
        for r in [&a, &b] {
            cache.put(&p, r).unwrap();
            cache.index(&p, r).unwrap();
        }
        // Same parent, same slot; another slot is never compared.
        assert_eq!(cache.previous(&p, &parent, "s 2"), Some(a.clone()));
        // Another parent: the slot's last record.
        let other = Digest::sha256_of(b"other");
        assert_eq!(cache.previous(&p, &other, "t 2"), Some(b.clone()));
        assert_eq!(cache.previous(&p, &other, "u 2"), None);
        assert_eq!(cache.get_listing(&listing).unwrap().len(), 1);
        // Nothing is collected while records use it.
        assert_eq!(cache.gc_indexes().unwrap(), 0);
        fs::remove_file(cache.record_path(&p, &a.key)).unwrap();
        fs::remove_file(cache.record_path(&p, &b.key)).unwrap();
        // The children file, both slots and the listing go.
        assert_eq!(cache.gc_indexes().unwrap(), 4);
        assert!(cache.get_listing(&listing).is_none());
    }
}
