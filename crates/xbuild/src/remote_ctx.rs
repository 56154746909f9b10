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

/// When `args.context` is remote, fetch it and point `args.context` (and a
/// relative `--file`) into the fetched directory. Progress goes to stderr
/// unless `quiet`.
pub fn materialize(args: &mut BuildArgs, quiet: bool) -> Result<Option<Fetched>> {
    let Some(spec) = remote::classify(&args.context)? else {
        return Ok(None);
    };
    let tmp = crate::paths::xbuild_root()?.join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let (root, kept) = match spec {
        RemoteSpec::Git(r) => {
            let build_args = crate::build::parse_build_args(&args.build_args)?;
            let keep = remote::keep_git_dir_arg(
                build_args
                    .get("BUILDKIT_CONTEXT_KEEP_GIT_DIR")
                    .map(String::as_str),
            );
            if !quiet {
                eprintln!("fetching git context {}", r.display_remote());
            }
            let f = remote::git::fetch(
                &r,
                &tmp,
                &remote::FetchOptions {
                    keep_git_dir: keep,
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
    };
    if let Some(f) = &args.file {
        if f.as_os_str() != "-" && !f.is_file() {
            args.file = Some(root.join(f));
        }
    }
    args.context = root.to_string_lossy().into_owned();
    Ok(Some(kept))
}
