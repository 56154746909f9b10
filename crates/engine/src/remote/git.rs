//! Fetching a [`GitRef`] with the `git` command: a shallow fetch of the one
//! commit wanted (a full fetch only when the server refuses to serve a
//! commit by id), a detached checkout, submodules, then the `.git`
//! directory removed unless kept, and every file's modification time set to
//! the commit's time, so that the same commit always gives the same files.
//!
//! Credentials come from the user's own git setup (credential helpers,
//! `SSH_AUTH_SOCK`, `GIT_SSH_COMMAND`); `git` never prompts.

use super::gitref::{is_commit_id, GitRef, MtimePolicy};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors from fetching a git repository.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started.
    #[error("running git: {0} (is git installed?)")]
    Spawn(#[source] io::Error),
    /// A git command failed.
    #[error("git {op} for {remote} failed: {stderr}")]
    Command {
        /// What was being done.
        op: &'static str,
        /// The remote (without credentials).
        remote: String,
        /// git's message.
        stderr: String,
    },
    /// The commit does not match the expected checksum (BuildKit's words).
    #[error("{remote}: expected checksum to match {expected}, got {actual} (the commit {reference} names)")]
    Checksum {
        /// The remote.
        remote: String,
        /// The ref asked for.
        reference: String,
        /// The checksum given.
        expected: String,
        /// The commit found.
        actual: String,
    },
    /// The remote has no branch or tag of that name (BuildKit's words).
    #[error("{remote}: repository does not contain ref {reference}")]
    NoRef {
        /// The remote.
        remote: String,
        /// The ref asked for.
        reference: String,
    },
    /// The sub-directory does not exist in the commit.
    #[error("{remote}: no directory {subdir:?} in commit {commit}")]
    NoSubdir {
        /// The remote.
        remote: String,
        /// The sub-directory.
        subdir: String,
        /// The commit.
        commit: String,
    },
    /// A local file operation failed.
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
}

/// Options of [`fetch`].
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Keep the `.git` directory (`--keep-git-dir`,
    /// `BUILDKIT_CONTEXT_KEEP_GIT_DIR`); the URL's `keep-git-dir` wins.
    pub keep_git_dir: bool,
    /// The ssh-agent socket to use for `ssh` remotes (default: inherited).
    pub ssh_auth_sock: Option<PathBuf>,
}

/// A checked-out repository.
#[derive(Debug)]
pub struct Fetched {
    /// The directory to use (the sub-directory when one was asked for).
    pub root: PathBuf,
    /// The full commit id.
    pub commit: String,
    /// The commit's committer time (seconds since the epoch).
    pub commit_time: i64,
    _dir: tempfile::TempDir,
}

struct Git<'a> {
    dir: &'a Path,
    remote: String,
    opts: &'a FetchOptions,
}

impl Git<'_> {
    fn cmd(&self) -> Command {
        let mut c = Command::new("git");
        c.arg("-C")
            .arg(self.dir)
            .args([
                "-c",
                "advice.detachedHead=false",
                "-c",
                "core.autocrlf=false",
                "-c",
                "core.symlinks=true",
                "-c",
                "init.defaultBranch=main",
            ])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .stdin(Stdio::null());
        if let Some(sock) = &self.opts.ssh_auth_sock {
            c.env("SSH_AUTH_SOCK", sock);
        }
        if std::env::var_os("GIT_SSH_COMMAND").is_none() {
            // Never wait for a password or a host-key question.
            c.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        c
    }

    fn run<I, S>(&self, op: &'static str, args: I) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut out = self.cmd().args(&args).output().map_err(GitError::Spawn)?;
        // A server that cannot serve shallow history (git's "dumb" HTTP
        // transport, a plain file server): the same command without
        // `--depth`, as BuildKit retries it.
        let depth = OsStr::new("--depth=1");
        if !out.status.success() && args.iter().any(|a| a == depth) {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("shallow") || err.contains("--depth") {
                let deep: Vec<_> = args.iter().filter(|a| *a != depth).collect();
                out = self.cmd().args(deep).output().map_err(GitError::Spawn)?;
            }
        }
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(GitError::Command {
                op,
                remote: self.remote.clone(),
                stderr: super::gitref::redact_url(&stderr),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// Fetch `r` into a new temporary directory under `tmp_parent`.
pub fn fetch(r: &GitRef, tmp_parent: &Path, opts: &FetchOptions) -> Result<Fetched, GitError> {
    let dir = tempfile::Builder::new()
        .prefix("xbuild-git-")
        .tempdir_in(tmp_parent)
        .map_err(|source| GitError::Io {
            op: "create directory in",
            path: tmp_parent.to_path_buf(),
            source,
        })?;
    let work = dir.path().join("checkout");
    std::fs::create_dir(&work).map_err(|source| GitError::Io {
        op: "create",
        path: work.clone(),
        source,
    })?;
    let g = Git {
        dir: &work,
        remote: r.display_remote(),
        opts,
    };

    let wanted = r.reference.clone().unwrap_or_else(|| "HEAD".to_string());
    let by_commit = r.fetch_by_commit && r.checksum.as_deref().is_some_and(is_commit_id);
    // A name (not a full commit id) must be a branch or tag of the remote
    // (BuildKit looks it up with ls-remote first: an abbreviated commit is
    // not a ref), and the commit it names must match the checksum.
    let (mut local_ref, mut resolved) = (None, None);
    if !by_commit && !is_commit_id(&wanted) {
        let (commit, name) = resolve_ref(r, opts)?.ok_or_else(|| GitError::NoRef {
            remote: r.display_remote(),
            reference: wanted.clone(),
        })?;
        check_checksum(r, &wanted, &commit)?;
        local_ref = Some(name);
        resolved = Some(commit);
    }
    // A SHA-256 repository needs a SHA-256 local repository.
    let sha256 = [
        Some(&wanted),
        resolved.as_ref(),
        r.checksum.as_ref().filter(|_| by_commit),
    ]
    .into_iter()
    .flatten()
    .any(|c| c.len() == 64 && is_commit_id(c));
    if sha256 {
        g.run("init", ["init", "-q", "--object-format=sha256"])?;
    } else {
        g.run("init", ["init", "-q"])?;
    }
    g.run("remote add", ["remote", "add", "origin", r.remote.as_str()])?;
    // The full ref the name resolved to (a branch and a tag may share it).
    let target = if by_commit {
        r.checksum.clone().unwrap_or_default()
    } else if let Some(full) = local_ref.as_ref().filter(|n| n.starts_with("refs/")) {
        full.clone()
    } else {
        wanted.clone()
    };
    let shallow = g.run(
        "fetch",
        [
            "fetch",
            "-q",
            "--depth=1",
            "--no-tags",
            "origin",
            target.as_str(),
        ],
    );
    let commit = match shallow {
        Ok(_) => g.run(
            "rev-parse",
            ["rev-parse", "--verify", "FETCH_HEAD^{commit}"],
        )?,
        Err(first) => {
            // A server that does not serve commits by id, or an abbreviated
            // commit: fetch every branch and tag, then resolve locally.
            let full = g.run(
                "fetch",
                [
                    "fetch",
                    "-q",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
            );
            if full.is_err() {
                return Err(first);
            }
            let spec = format!("{target}^{{commit}}");
            g.run(
                "rev-parse",
                ["rev-parse", "--verify", "--quiet", spec.as_str()],
            )
            .map_err(|_| first)?
        }
    };
    check_checksum(r, &wanted, &commit)?;
    g.run("checkout", ["checkout", "-q", "--detach", commit.as_str()])?;
    if work.join(".gitmodules").exists() && r.submodules != Some(false) {
        g.run(
            "submodule update",
            [
                "submodule",
                "update",
                "-q",
                "--init",
                "--recursive",
                "--depth=1",
            ],
        )?;
    }
    let commit_time: i64 = g
        .run("show", ["show", "-s", "--format=%ct", commit.as_str()])?
        .parse()
        .unwrap_or(0);
    let keep = r.keep_git_dir.unwrap_or(opts.keep_git_dir);
    if keep {
        // A detached HEAD at the commit, with the ref it was fetched by
        // recorded locally, as BuildKit leaves the kept `.git`.
        if let Some(name) = local_ref.filter(|n| n.starts_with("refs/")) {
            let _ = g.run("update-ref", ["update-ref", name.as_str(), commit.as_str()]);
        }
    } else {
        remove_git_dirs(&work)?;
    }
    let root = match &r.subdir {
        Some(sub) => {
            let p = work.join(sub);
            let ok = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            if !ok {
                return Err(GitError::NoSubdir {
                    remote: r.display_remote(),
                    subdir: sub.clone(),
                    commit,
                });
            }
            p
        }
        None => work.clone(),
    };
    if r.mtime.unwrap_or_default() == MtimePolicy::Commit {
        set_times(&root, commit_time)?;
    }
    Ok(Fetched {
        root,
        commit,
        commit_time,
        _dir: dir,
    })
}

/// The commit `r` names on its remote right now (`git ls-remote`), without
/// fetching: a full commit id is returned as is; a branch or tag is looked
/// up (an annotated tag peeled to its commit); no ref means the remote's
/// HEAD. This is what a cache key holds for a git source, so a moved
/// branch misses and an unchanged one hits. `None` when the name is not a
/// ref (an abbreviated commit), which only a fetch can resolve.
pub fn resolve_commit(r: &GitRef, opts: &FetchOptions) -> Result<Option<String>, GitError> {
    if let Some(c) = r.reference.as_deref().filter(|c| is_commit_id(c)) {
        return Ok(Some(c.to_ascii_lowercase()));
    }
    if r.fetch_by_commit {
        if let Some(c) = r.checksum.as_deref().filter(|c| is_commit_id(c)) {
            return Ok(Some(c.to_string()));
        }
    }
    Ok(resolve_ref(r, opts)?.map(|(c, _)| c))
}

/// The commit and the full ref name (`refs/heads/…`, `refs/tags/…`, or
/// `HEAD`) the name of `r` has on its remote (`git ls-remote`).
/// `commit` against the URL's `--checksum` (a prefix of the commit id), if any.
fn check_checksum(r: &GitRef, wanted: &str, commit: &str) -> Result<(), GitError> {
    match &r.checksum {
        Some(sum) if !commit.starts_with(sum.as_str()) => Err(GitError::Checksum {
            remote: r.display_remote(),
            reference: wanted.to_string(),
            expected: sum.clone(),
            actual: commit.to_string(),
        }),
        _ => Ok(()),
    }
}

fn resolve_ref(r: &GitRef, opts: &FetchOptions) -> Result<Option<(String, String)>, GitError> {
    let tmp = std::env::temp_dir();
    let g = Git {
        dir: &tmp,
        remote: r.display_remote(),
        opts,
    };
    let wanted = r.reference.clone().unwrap_or_else(|| "HEAD".to_string());
    let peeled = format!("{wanted}^{{}}");
    let out = g.run(
        "ls-remote",
        [
            "ls-remote",
            r.remote.as_str(),
            wanted.as_str(),
            peeled.as_str(),
        ],
    )?;
    let mut lines: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('\t')).collect();
    let rank = |name: &str| -> Option<u8> {
        // A full ref as written, then a branch, then a tag (peeled): a
        // branch wins over a tag of the same name, as in BuildKit.
        let candidates = [
            format!("{wanted}^{{}}"),
            wanted.clone(),
            format!("refs/heads/{wanted}"),
            format!("refs/tags/{wanted}^{{}}"),
            format!("refs/tags/{wanted}"),
        ];
        candidates.iter().position(|c| c == name).map(|i| i as u8)
    };
    lines.retain(|(_, n)| rank(n).is_some());
    lines.sort_by_key(|(_, n)| rank(n));
    Ok(lines
        .first()
        .map(|(c, n)| (c.to_string(), n.trim_end_matches("^{}").to_string())))
}

/// Remove `.git` (directory or submodule gitfile) everywhere in the tree.
fn remove_git_dirs(dir: &Path) -> Result<(), GitError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| GitError::Io { op, path, source }
    };
    for e in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let e = e.map_err(io("read", dir))?;
        let p = e.path();
        let ft = e.file_type().map_err(io("stat", &p))?;
        if e.file_name() == ".git" {
            if ft.is_dir() {
                std::fs::remove_dir_all(&p).map_err(io("remove", &p))?;
            } else {
                std::fs::remove_file(&p).map_err(io("remove", &p))?;
            }
        } else if ft.is_dir() {
            remove_git_dirs(&p)?;
        }
    }
    Ok(())
}

/// Set the modification and access time of everything under `dir` (links
/// themselves, not their targets) to `secs`.
pub fn set_times(dir: &Path, secs: i64) -> Result<(), GitError> {
    fn one(p: &Path, secs: i64) -> Result<(), GitError> {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| GitError::Io {
            op: "set times of",
            path: p.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
        })?;
        let ts = libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        };
        let times = [ts, ts];
        // SAFETY: c is NUL-terminated; times has two entries.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(GitError::Io {
                op: "set times of",
                path: p.to_path_buf(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|source| GitError::Io {
        op: "stat",
        path: dir.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        let rd = std::fs::read_dir(dir).map_err(|source| GitError::Io {
            op: "read",
            path: dir.to_path_buf(),
            source,
        })?;
        for e in rd {
            let e = e.map_err(|source| GitError::Io {
                op: "read",
                path: dir.to_path_buf(),
                source,
            })?;
            set_times(&e.path(), secs)?;
        }
    }
    one(dir, secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .env("GIT_COMMITTER_DATE", "2001-02-03T04:05:06Z")
            .env("GIT_AUTHOR_DATE", "2001-02-03T04:05:06Z")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A repository with two commits on `main`, a tag and a branch `dev`.
    fn repo() -> Option<(tempfile::TempDir, String, String)> {
        if Command::new("git").arg("--version").output().is_err() {
            eprintln!("skipping: git is not installed");
            return None;
        }
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        git(d, &["init", "-q", "-b", "main"]);
        fs::create_dir(d.join("app")).unwrap();
        fs::write(d.join("app/Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
        fs::write(d.join("README"), "one\n").unwrap();
        git(d, &["add", "-A"]);
        git(d, &["commit", "-q", "-m", "one"]);
        let first = git(d, &["rev-parse", "HEAD"]);
        git(d, &["tag", "-a", "v1", "-m", "v1"]);
        fs::write(d.join("README"), "two\n").unwrap();
        git(d, &["commit", "-q", "-am", "two"]);
        let second = git(d, &["rev-parse", "HEAD"]);
        git(d, &["branch", "dev", &first]);
        Some((t, first, second))
    }

    fn local(dir: &Path, fragment: &str) -> GitRef {
        let mut g = GitRef::parse(&format!("https://example.invalid/r.git{fragment}"))
            .unwrap()
            .unwrap();
        g.remote = dir.to_string_lossy().into_owned();
        g
    }

    #[test]
    fn fetches_refs_tags_commits_and_subdirs() {
        let Some((src, first, second)) = repo() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let o = FetchOptions::default();

        let f = fetch(&local(src.path(), ""), tmp.path(), &o).unwrap();
        assert_eq!(f.commit, second);
        assert_eq!(fs::read_to_string(f.root.join("README")).unwrap(), "two\n");
        assert!(!f.root.join(".git").exists());
        // Reproducible: every file carries the commit time.
        assert_eq!(f.commit_time, 981173106);
        assert_eq!(
            fs::metadata(f.root.join("README")).unwrap().mtime(),
            981173106
        );

        let f = fetch(&local(src.path(), "#v1"), tmp.path(), &o).unwrap();
        assert_eq!(f.commit, first, "annotated tag peeled to its commit");
        let f = fetch(&local(src.path(), "#dev:app"), tmp.path(), &o).unwrap();
        assert_eq!(f.commit, first);
        assert!(f.root.join("Dockerfile").exists());
        assert!(!f.root.join("README").exists());
        let f = fetch(&local(src.path(), &format!("#{first}")), tmp.path(), &o).unwrap();
        assert_eq!(fs::read_to_string(f.root.join("README")).unwrap(), "one\n");
        // An abbreviated commit is not a ref (BuildKit: "repository does
        // not contain ref").
        let e = fetch(
            &local(src.path(), &format!("#{}", &first[..10])),
            tmp.path(),
            &o,
        )
        .unwrap_err();
        assert!(matches!(e, GitError::NoRef { .. }), "{e}");
    }

    #[test]
    fn resolves_refs_without_fetching() {
        let Some((src, first, second)) = repo() else {
            return;
        };
        let o = FetchOptions::default();
        let c = |frag: &str| resolve_commit(&local(src.path(), frag), &o).unwrap();
        assert_eq!(c("").as_deref(), Some(second.as_str()));
        assert_eq!(c("#main").as_deref(), Some(second.as_str()));
        assert_eq!(c("#refs/heads/dev").as_deref(), Some(first.as_str()));
        assert_eq!(
            c("#v1").as_deref(),
            Some(first.as_str()),
            "annotated tag peeled"
        );
        assert_eq!(c(&format!("#{first}")).as_deref(), Some(first.as_str()));
        assert_eq!(c("#nope"), None);
        // A tag named like a branch: the branch wins.
        git(src.path(), &["tag", "dev", &second]);
        assert_eq!(c("#dev").as_deref(), Some(first.as_str()));
        assert_eq!(c("#refs/tags/dev").as_deref(), Some(second.as_str()));
    }

    #[test]
    fn checksum_keep_git_dir_and_errors() {
        let Some((src, first, second)) = repo() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let o = FetchOptions::default();
        let mut r = local(src.path(), "#main");
        r.checksum = Some(second[..12].to_string());
        assert_eq!(fetch(&r, tmp.path(), &o).unwrap().commit, second);
        r.checksum = Some(first.clone());
        let e = fetch(&r, tmp.path(), &o).unwrap_err();
        assert!(matches!(e, GitError::Checksum { .. }), "{e}");

        let mut r = local(src.path(), "#main");
        r.keep_git_dir = Some(true);
        let f = fetch(&r, tmp.path(), &o).unwrap();
        assert!(f.root.join(".git").is_dir());
        let f = fetch(
            &local(src.path(), ""),
            tmp.path(),
            &FetchOptions {
                keep_git_dir: true,
                ..o.clone()
            },
        )
        .unwrap();
        assert!(f.root.join(".git").is_dir());

        let e = fetch(&local(src.path(), "#nope"), tmp.path(), &o).unwrap_err();
        assert!(matches!(e, GitError::NoRef { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("repository does not contain ref nope"),
            "{e}"
        );
        let e = fetch(&local(src.path(), "#main:missing"), tmp.path(), &o).unwrap_err();
        assert!(matches!(e, GitError::NoSubdir { .. }), "{e}");
    }
}
