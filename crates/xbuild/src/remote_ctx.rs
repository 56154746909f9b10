//! PATH as a git URL or an HTTP(S) URL: fetched into a temporary directory
//! that then is the build context, for as long as the build runs. A
//! `--file` that names an existing local file is used as is; otherwise it
//! is a path inside the fetched context, as with buildx.

use crate::cli::BuildArgs;
use anyhow::{Context, Result};
use xbuild_engine::remote::{self, RemoteSpec};

/// Keeps a fetched context alive (its directory goes when this drops).
pub struct Fetched {
    _git: Option<remote::Fetched>,
    _http: Option<remote::HttpContext>,
}

impl Fetched {
    /// The context's time for `SOURCE_DATE_EPOCH=context`: an HTTP
    /// context's `Last-Modified`, else its archive's newest file.
    pub fn epoch(&self) -> Option<i64> {
        self._http.as_ref().and_then(|h| h.epoch)
    }
}

/// Fetch `value` when it is a git or HTTP(S) URL: the directory to use and
/// the guard that keeps it. `None` for a local path.
pub fn fetch(
    value: &str,
    keep_git_dir: bool,
    quiet: bool,
) -> Result<Option<(std::path::PathBuf, Fetched)>> {
    let Some(spec) = remote::classify(value)? else {
        return Ok(None);
    };
    let tmp = crate::paths::xbuild_root()?.join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(Some(match spec {
        RemoteSpec::Git(r) => {
            if !quiet {
                eprintln!("fetching git context {}", r.display_remote());
            }
            let f = remote::git::fetch(
                &r,
                &tmp,
                &remote::FetchOptions {
                    keep_git_dir,
                    ssh_auth_sock: None,
                },
            )
            .with_context(|| format!("fetching the build context {}", r.display_remote()))?;
            if !quiet {
                eprintln!("git context at commit {}", f.commit);
            }
            (
                f.root.clone(),
                Fetched {
                    _git: Some(f),
                    _http: None,
                },
            )
        }
        RemoteSpec::Http(url) => {
            if !quiet {
                eprintln!("fetching build context {url}");
            }
            let c = remote::http::fetch(&url, &tmp)?;
            (
                c.root.clone(),
                Fetched {
                    _git: None,
                    _http: Some(c),
                },
            )
        }
    }))
}

/// When `args.context` is remote, fetch it and point `args.context` (and a
/// relative `--file`) into the fetched directory. Progress goes to stderr
/// unless `quiet`.
pub fn materialize(args: &mut BuildArgs, quiet: bool) -> Result<Option<Fetched>> {
    if args.context == "-" {
        return stdin_context(args);
    }
    let build_args = crate::build::parse_build_args(&args.build_args)?;
    let keep = remote::keep_git_dir_arg(
        build_args
            .get("BUILDKIT_CONTEXT_KEEP_GIT_DIR")
            .map(String::as_str),
    );
    let Some((root, kept)) = fetch(&args.context, keep, quiet)? else {
        return Ok(None);
    };
    // A URL holding a plain Dockerfile: that file is the Dockerfile, whatever
    // `--file` names inside the (empty) context (BuildKit testHTTPDockerfile).
    let plain = kept
        ._http
        .as_ref()
        .is_some_and(|c| c.kind == remote::HttpContextKind::Dockerfile);
    if let Some(f) = &args.file {
        if f.as_os_str() != "-" && !f.is_file() {
            args.file = Some(if plain {
                root.join("Dockerfile")
            } else {
                root.join(f)
            });
        }
    }
    args.context = root.to_string_lossy().into_owned();
    Ok(Some(kept))
}

/// What standard input held when it was not a context archive: the
/// Dockerfile text, read once (see [`stdin_dockerfile`]).
static STDIN_DOCKERFILE: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(None);

/// The Dockerfile given on standard input, when `materialize` read it.
pub fn stdin_dockerfile() -> Option<Vec<u8>> {
    STDIN_DOCKERFILE.lock().ok().and_then(|mut g| g.take())
}

/// PATH `-`: as with buildx, a tar archive (possibly compressed) on
/// standard input is the build context; anything else is the Dockerfile,
/// kept for `load_dockerfile`. A `--file` then names a local file or a
/// path inside the archive.
fn stdin_context(args: &mut BuildArgs) -> Result<Option<Fetched>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading standard input")?;
    let tmp = crate::paths::xbuild_root()?.join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    match remote::http::from_stdin_bytes(&bytes, &tmp)? {
        Some(c) => {
            if let Some(f) = &args.file {
                if f.as_os_str() != "-" && !f.is_file() {
                    args.file = Some(c.root.join(f));
                }
            }
            args.context = c.root.to_string_lossy().into_owned();
            Ok(Some(Fetched {
                _git: None,
                _http: Some(c),
            }))
        }
        None => {
            if let Ok(mut g) = STDIN_DOCKERFILE.lock() {
                *g = Some(bytes);
            }
            Ok(None)
        }
    }
}
