//! The case file format of `e2e/buildkit/cases/<group>/<name>.yaml`
//! (described in `e2e/buildkit/README.md`): parsing and the context writer.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// One case file.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The BuildKit test this case re-expresses.
    pub source: String,
    /// What the case checks.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    /// A deliberate difference documented in docs/compatibility.md.
    #[serde(default)]
    pub known_difference: Option<String>,
    /// Facilities needed (`arm64`).
    #[serde(default)]
    pub needs: Vec<String>,
    /// The Dockerfile text.
    #[serde(default)]
    pub dockerfile: Option<String>,
    /// Where the Dockerfile is written in the context.
    #[serde(default)]
    pub dockerfile_path: Option<String>,
    /// The build context.
    #[serde(default)]
    pub context: BTreeMap<String, Entry>,
    /// `.dockerignore` content.
    #[serde(default)]
    pub dockerignore: Option<String>,
    /// `--build-arg` values (`null`: take it from the environment).
    #[serde(default)]
    pub build_args: BTreeMap<String, Value>,
    /// Environment of the xbuild process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `--target`.
    #[serde(default)]
    pub target: Option<String>,
    /// `--platform`.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// `--secret id=K,src=<file holding V>`.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Other flags, as is.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Attributes appended to the runner's `-o type=local,dest=DIR`
    /// (e.g. `platform-split=true`).
    #[serde(default)]
    pub local_output_attrs: Option<String>,
    /// The build context as a tar archive of these entries on standard
    /// input (PATH `-`) instead of the context directory.
    #[serde(default)]
    pub stdin_context: Option<Vec<ArchiveEntry>>,
    /// A URL (placeholders allowed, e.g. `{{http}}/ctx.tar`) given as the
    /// build's PATH instead of the context directory.
    #[serde(default)]
    pub remote_context: Option<String>,
    /// Files served under `{{http}}`.
    #[serde(default)]
    pub http: BTreeMap<String, HttpEntry>,
    /// Expectations of a one-build case.
    #[serde(default)]
    pub expect: Option<Expect>,
    /// Several builds sharing one state directory.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Git repositories served under `{{http}}/NAME/.git`.
    #[serde(default)]
    pub git_repos: Vec<crate::fixtures::GitRepo>,
    /// Extra directories written under `{{tmp}}/NAME` (for
    /// `--build-context NAME={{tmp}}/NAME`).
    #[serde(default)]
    pub dirs: BTreeMap<String, BTreeMap<String, Entry>>,
    /// `--build-context NAME=VALUE`.
    #[serde(default)]
    pub build_contexts: BTreeMap<String, String>,
    /// The build's context argument instead of the written context
    /// directory (a git or HTTP URL).
    #[serde(default)]
    pub context_arg: Option<String>,
    /// Start a private ssh-agent holding a new key; xbuild gets its socket
    /// as `SSH_AUTH_SOCK`, the key file is `{{tmp}}/id_ed25519`.
    #[serde(default)]
    pub ssh_agent: bool,
    /// Run that agent in debug mode, its log in `{{tmp}}/agent.log`
    /// (checked with `tmp_files`).
    #[serde(default)]
    pub ssh_agent_log: bool,
    /// Host binaries (with their shared libraries) copied into the context
    /// under `host/` at their absolute paths.
    #[serde(default)]
    pub host_binaries: Vec<String>,
}

/// One build of a multi-step case: overrides of the case's fields.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Replaces the Dockerfile.
    #[serde(default)]
    pub dockerfile: Option<String>,
    /// Entries added to, replaced in or removed from the context.
    #[serde(default)]
    pub context: BTreeMap<String, Entry>,
    /// Replaces the build args.
    #[serde(default)]
    pub build_args: Option<BTreeMap<String, Value>>,
    /// Replaces the target.
    #[serde(default)]
    pub target: Option<String>,
    /// Replaces the platforms.
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
    /// Replaces the flags.
    #[serde(default)]
    pub flags: Option<Vec<String>>,
    /// Replaces the secrets.
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, String>>,
    /// Replaces the environment.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Before the build, unpack the tar archive `from` (e.g. an earlier
    /// step's `type=oci` export) into the directory `to` (both expanded).
    #[serde(default)]
    pub untar: Option<crate::fixtures::Untar>,
    /// Replaces the `--build-context` values.
    #[serde(default)]
    pub build_contexts: Option<BTreeMap<String, String>>,
    /// Run with a new, empty state directory (no local cache; BuildKit's
    /// tests prune everything between such builds).
    #[serde(default)]
    pub fresh_state: bool,
    /// Expectations of this build.
    #[serde(default)]
    pub expect: Expect,
}

/// A context entry: the content of a file, or a mapping.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Entry {
    /// A regular file with this content.
    Text(String),
    /// Anything else.
    Spec(EntrySpec),
}

/// A context entry given as a mapping.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    /// File content.
    #[serde(default)]
    pub content: Option<String>,
    /// Permission bits, octal.
    #[serde(default)]
    pub mode: Option<String>,
    /// A directory.
    #[serde(default)]
    pub dir: bool,
    /// A symbolic link to this target.
    #[serde(default)]
    pub symlink: Option<String>,
    /// A Unix socket.
    #[serde(default)]
    pub socket: bool,
    /// Remove the entry (steps only).
    #[serde(default)]
    pub absent: bool,
    /// A tar archive (gzip-compressed with `gzip: true`) of these entries.
    #[serde(default)]
    pub archive: Option<Vec<ArchiveEntry>>,
    /// Compress `archive` with gzip.
    #[serde(default)]
    pub gzip: bool,
}

/// One entry of a tar archive written by the runner.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ArchiveEntry {
    /// Name in the archive (`dir/` for a directory).
    pub name: String,
    /// Content of a regular file.
    #[serde(default)]
    pub content: Option<String>,
    /// A directory.
    #[serde(default)]
    pub dir: bool,
    /// A symbolic link to this target.
    #[serde(default)]
    pub symlink: Option<String>,
    /// A hard link to this earlier entry.
    #[serde(default)]
    pub hardlink: Option<String>,
    /// Permission bits, octal (default 0644 files, 0755 dirs).
    #[serde(default)]
    pub mode: Option<String>,
}

/// The bytes of a tar archive of `entries`, gzip-compressed when asked.
pub fn archive_bytes(entries: &[ArchiveEntry], gzip: bool) -> Result<Vec<u8>, String> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let mode = e.mode.as_deref().map(parse_mode).transpose()?;
        let data = e.content.clone().unwrap_or_default().into_bytes();
        h.set_mtime(1_600_000_000);
        let (kind, size, link) = if e.dir {
            (tar::EntryType::Directory, 0, None)
        } else if let Some(l) = &e.symlink {
            (tar::EntryType::Symlink, 0, Some(l))
        } else if let Some(l) = &e.hardlink {
            (tar::EntryType::Link, 0, Some(l))
        } else {
            (tar::EntryType::Regular, data.len() as u64, None)
        };
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode.unwrap_or(if e.dir { 0o755 } else { 0o644 }));
        h.set_path(&e.name)
            .map_err(|err| format!("{}: {err}", e.name))?;
        if let Some(l) = link {
            h.set_link_name(l)
                .map_err(|err| format!("{}: {err}", e.name))?;
        }
        h.set_cksum();
        b.append(&h, data.as_slice())
            .map_err(|err| err.to_string())?;
    }
    let raw = b.into_inner().map_err(|e| e.to_string())?;
    if !gzip {
        return Ok(raw);
    }
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).map_err(|e| e.to_string())?;
    gz.finish().map_err(|e| e.to_string())
}

/// A file served by the HTTP server.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum HttpEntry {
    /// The body.
    Text(String),
    /// Body and headers.
    Spec(HttpSpec),
}

/// A served file given as a mapping.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// The body.
    #[serde(default)]
    pub content: String,
    /// `Last-Modified` header.
    #[serde(default)]
    pub last_modified: Option<String>,
    /// `Content-Disposition` header.
    #[serde(default)]
    pub content_disposition: Option<String>,
    /// HTTP status (default 200).
    #[serde(default)]
    pub status: Option<u16>,
    /// Serve a tar archive of these entries instead of `content`.
    #[serde(default)]
    pub archive: Option<Vec<ArchiveEntry>>,
    /// Compress `archive` with gzip.
    #[serde(default)]
    pub gzip: bool,
}

/// One string or several.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// All the strings.
    pub fn all(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// What one build must give.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Files of the exported root file system.
    #[serde(default)]
    pub files: BTreeMap<String, FileExpect>,
    /// Keys of the image config's `config` object.
    #[serde(default)]
    pub config: BTreeMap<String, Value>,
    /// Top-level keys of the image config.
    #[serde(default)]
    pub image: BTreeMap<String, Value>,
    /// The last entries of the history.
    #[serde(default)]
    pub history: Vec<HistoryExpect>,
    /// Tar files the build wrote (`-o type=tar,dest=...` in `flags`): the
    /// path (placeholders allowed) → member name → exact content.
    #[serde(default)]
    pub tar: BTreeMap<String, BTreeMap<String, String>>,
    /// The `created` time every history entry must have (RFC 3339, as
    /// the config writes it).
    #[serde(default)]
    pub history_created: Option<String>,
    /// Exact history length.
    #[serde(default)]
    pub history_len: Option<usize>,
    /// Exact number of layers (`rootfs.diff_ids`).
    #[serde(default)]
    pub layers: Option<usize>,
    /// Exact number of image manifests in the exported index.
    #[serde(default)]
    pub manifests: Option<usize>,
    /// The exported image (its index.json's descriptor) is byte-identical
    /// to that of step N (1-based).
    #[serde(default)]
    pub same_image_as_step: Option<usize>,
    /// The image config's `created` is later than that of step N's image
    /// (1-based), and less than ten minutes later.
    #[serde(default)]
    pub created_after_step: Option<usize>,
    /// The build fails; substrings of stderr.
    #[serde(default)]
    pub error: Option<OneOrMany>,
    /// Substrings of stderr (warnings).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// No warning at all.
    #[serde(default)]
    pub no_warnings: bool,
    /// Exact number of `#N CACHED` lines.
    #[serde(default)]
    pub cached: Option<usize>,
    /// The exact build-check warnings (BuildKit's short form, `Rule:
    /// detail (line N)`), both in the build's closing summary and from
    /// `--call check` (see `lint.rs`); `[]` means none.
    #[serde(default)]
    pub lint: Option<Vec<String>>,
    /// The warnings `--call check` gives when they differ from `lint`
    /// (BuildKit lints every stage there, only the built ones in a build).
    #[serde(default)]
    pub lint_check: Option<Vec<String>>,
    /// A substring of the error `--call check` reports; without it,
    /// `--call check` must report no error.
    #[serde(default)]
    pub lint_error: Option<String>,
    /// Substrings of stderr.
    #[serde(default)]
    pub stderr_contains: Vec<String>,
    /// Strings stderr must not contain.
    #[serde(default)]
    pub stderr_not_contains: Vec<String>,
    /// Files of the case's `{{tmp}}` directory (e.g. `agent.log`), checked
    /// as `files`.
    #[serde(default)]
    pub tmp_files: BTreeMap<String, FileExpect>,
    /// Instead of the build, a frontend subrequest (`--call METHOD`) and
    /// fields of its JSON answer (see `call.rs`).
    #[serde(default)]
    pub call: Option<CallExpect>,
}

/// `expect.call`: the subrequest and what its answer holds.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CallExpect {
    /// `targets` or `outline`.
    pub method: String,
    /// JSON pointer (`/targets/0/name`) → the exact value; `null` means
    /// absent (BuildKit omits empty fields).
    #[serde(default)]
    pub json: BTreeMap<String, Value>,
    /// JSON pointer → the exact length of the array there.
    #[serde(default)]
    pub json_len: BTreeMap<String, usize>,
    /// The exact text `--call METHOD` prints.
    #[serde(default)]
    pub text: Option<String>,
}

impl Expect {
    /// Whether the image config must be read.
    pub fn needs_image(&self) -> bool {
        !self.config.is_empty()
            || !self.image.is_empty()
            || !self.history.is_empty()
            || self.history_len.is_some()
            || self.history_created.is_some()
            || self.layers.is_some()
            || self.manifests.is_some()
            || self.same_image_as_step.is_some()
            || self.created_after_step.is_some()
    }
}

/// Expectation of one exported file.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum FileExpect {
    /// Exact content.
    Text(String),
    /// Anything else.
    Spec(Box<FileSpec>),
}

/// Expectation of one exported file, as a mapping.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Exact content.
    #[serde(default)]
    pub content: Option<String>,
    /// Substring of the content.
    #[serde(default)]
    pub contains: Option<OneOrMany>,
    /// Strings the content must not contain.
    #[serde(default)]
    pub not_contains: Option<OneOrMany>,
    /// Permission bits, octal.
    #[serde(default)]
    pub mode: Option<String>,
    /// Is a directory.
    #[serde(default)]
    pub dir: bool,
    /// Is a symbolic link to this target.
    #[serde(default)]
    pub symlink: Option<String>,
    /// Does not exist.
    #[serde(default)]
    pub absent: bool,
    /// Is a regular file.
    #[serde(default)]
    pub regular: bool,
    /// Owner uid.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Owner gid.
    #[serde(default)]
    pub gid: Option<u32>,
    /// Modification time, seconds since the epoch.
    #[serde(default)]
    pub mtime: Option<i64>,
    /// The same inode as this other exported path (a hard link).
    #[serde(default)]
    pub hardlink_of: Option<String>,
    /// The file is JSON: pointer (`/predicate/buildDefinition/buildType`)
    /// → exact value; `null` means absent.
    #[serde(default)]
    pub json: BTreeMap<String, Value>,
    /// The file is JSON: pointer → exact length of the array or object
    /// there.
    #[serde(default)]
    pub json_len: BTreeMap<String, usize>,
    /// Same bytes as this context file (e.g. an archive copied as is).
    #[serde(default)]
    pub same_as_context: Option<String>,
    /// Same content as this path in the export of step N (1-based).
    #[serde(default)]
    pub same_as_step: Option<usize>,
    /// Different content from this path in the export of step N (1-based).
    #[serde(default)]
    pub differs_from_step: Option<usize>,
}

/// Expectation of one history entry.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct HistoryExpect {
    /// Exact `created_by`.
    #[serde(default)]
    pub created_by: Option<String>,
    /// Substrings of `created_by`.
    #[serde(default)]
    pub created_by_contains: Option<OneOrMany>,
    /// `empty_layer` (absent means false).
    #[serde(default)]
    pub empty_layer: Option<bool>,
    /// Exact `comment`.
    #[serde(default)]
    pub comment: Option<String>,
}

/// Parses an octal mode such as `"0755"`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("mode {s:?}: {e}"))
}

/// A build-arg value as the command line gives it (`None`: from the environment).
pub fn arg_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Writes (or, for `absent`, removes) context entries under `dir`, with
/// `subst` applied to file contents.
pub fn write_context(
    dir: &Path,
    entries: &BTreeMap<String, Entry>,
    subst: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    // Directories first so that modes given to them are not undone by
    // files created inside later; then files, links and sockets.
    let mut dirs = Vec::new();
    for (name, entry) in entries {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("mkdir", parent, e))?;
        }
        let spec = match entry {
            Entry::Text(t) => EntrySpec {
                content: Some(t.clone()),
                ..EntrySpec::default()
            },
            Entry::Spec(s) => s.clone(),
        };
        if spec.absent {
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                if m.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(|e| io("remove", &path, e))?;
                } else {
                    std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
                }
            }
            continue;
        }
        // A new kind of entry replaces whatever was there (a directory that
        // becomes a file between two builds).
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if !m.is_dir() {
                std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
            } else if !spec.dir {
                std::fs::remove_dir_all(&path).map_err(|e| io("remove", &path, e))?;
            }
        }
        if let Some(target) = &spec.symlink {
            std::os::unix::fs::symlink(target, &path).map_err(|e| io("symlink", &path, e))?;
            continue;
        }
        if spec.socket {
            let l = std::os::unix::net::UnixListener::bind(&path)
                .map_err(|e| io("bind socket", &path, e))?;
            drop(l);
            continue;
        }
        if let Some(entries) = &spec.archive {
            let bytes = archive_bytes(entries, spec.gzip)?;
            std::fs::write(&path, bytes).map_err(|e| io("write", &path, e))?;
            continue;
        }
        if spec.dir {
            std::fs::create_dir_all(&path).map_err(|e| io("mkdir", &path, e))?;
            let mode = spec.mode.as_deref().map(parse_mode).transpose()?;
            dirs.push((path, mode.unwrap_or(0o755)));
            continue;
        }
        let content = subst(spec.content.as_deref().unwrap_or(""));
        std::fs::write(&path, content).map_err(|e| io("write", &path, e))?;
        let mode = spec.mode.as_deref().map(parse_mode).transpose()?;
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(mode.unwrap_or(0o644)),
        )
        .map_err(|e| io("chmod", &path, e))?;
    }
    for (path, mode) in dirs.into_iter().rev() {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io("chmod", &path, e))?;
    }
    Ok(())
}
