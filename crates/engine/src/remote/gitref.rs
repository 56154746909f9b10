//! Git URLs as BuildKit reads them in a build context, `--build-context`
//! and `ADD`:
//!
//! - `https://host/org/repo.git`, `http://…` (must end in `.git`),
//!   `ssh://[user@]host[:port]/path`, `git://host/path`, and the scp form
//!   `user@host:org/repo.git`;
//! - a fragment `#REF[:SUBDIR]` (REF a branch, tag, full ref or commit);
//! - or query parameters `?ref=…&tag=…&branch=…&subdir=…&checksum=…`
//!   (alias `commit`), `keep-git-dir[=BOOL]`, `submodules[=BOOL]`,
//!   `mtime=checkout|commit`, `fetch-by-commit[=BOOL]`: the newer form.
//!
//! Parsing never touches the network; [`super::git`] fetches.

/// Errors from parsing a git URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitRefError {
    /// A query parameter is unknown, repeated, empty or has a bad value.
    #[error("git URL {url:?}: {reason}")]
    Query {
        /// The URL (without credentials).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The fragment and the query disagree.
    #[error("git URL {url:?}: {what} conflicts: {a:?} vs {b:?}")]
    Conflict {
        /// The URL.
        url: String,
        /// `ref` or `subdir`.
        what: &'static str,
        /// One value.
        a: String,
        /// The other.
        b: String,
    },
    /// The sub-directory leaves the repository.
    #[error("git URL {url:?}: subdir {subdir:?} leaves the repository")]
    BadSubdir {
        /// The URL.
        url: String,
        /// The sub-directory.
        subdir: String,
    },
}

/// How file modification times are set in a checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MtimePolicy {
    /// Every file gets the commit's committer time, so the same commit
    /// always gives the same files (xbuild's default: reproducible).
    #[default]
    Commit,
    /// Leave the times of the checkout (`mtime=checkout`, BuildKit's default).
    Checkout,
}

/// A parsed git URL. Its `Debug` output hides credentials in the remote.
#[derive(Clone, PartialEq, Eq)]
pub struct GitRef {
    /// What is handed to `git` (no fragment, no query).
    pub remote: String,
    /// The URL scheme: `https`, `http`, `ssh`, `git`.
    pub scheme: String,
    /// The repository's directory name (`repo` for `…/repo.git`).
    pub short_name: String,
    /// Branch, tag, full ref or commit; `None` = the remote's HEAD.
    pub reference: Option<String>,
    /// A commit the checkout must resolve to (prefix allowed).
    pub checksum: Option<String>,
    /// Sub-directory to use as the root (cleaned, relative).
    pub subdir: Option<String>,
    /// `keep-git-dir` from the query.
    pub keep_git_dir: Option<bool>,
    /// `submodules` from the query (default: fetch them).
    pub submodules: Option<bool>,
    /// `mtime` from the query.
    pub mtime: Option<MtimePolicy>,
    /// `fetch-by-commit`: fetch the checksum commit directly.
    pub fetch_by_commit: bool,
}

fn scheme_of(s: &str) -> Option<(&str, &str)> {
    let i = s.find("://")?;
    let scheme = &s[..i];
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((scheme, &s[i + 3..]))
}

/// The scp-like form `user@host:path` (user and host restricted as git does).
fn scp_form(s: &str) -> Option<(&str, &str, &str)> {
    let (user, rest) = s.split_once('@')?;
    let (host, path) = rest.split_once(':')?;
    let user_ok = !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (user_ok && host_ok).then_some((user, host, path))
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Clean a sub-directory like `path.Join("/", s)` and strip the leading `/`;
/// `..` that would leave the root is refused.
fn clean_subdir(url: &str, s: &str) -> Result<Option<String>, GitRefError> {
    let mut parts: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(GitRefError::BadSubdir {
                        url: url.to_string(),
                        subdir: s.to_string(),
                    });
                }
            }
            other => parts.push(other),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

fn parse_bool(url: &str, key: &str, v: Option<&str>) -> Result<bool, GitRefError> {
    match v {
        None | Some("") => Ok(true),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(GitRefError::Query {
            url: url.to_string(),
            reason: format!("invalid {key} value: {other:?}"),
        }),
    }
}

/// Strip `user:password@` from a URL for messages.
pub fn redact_url(s: &str) -> String {
    if let Some((scheme, rest)) = scheme_of(s) {
        let end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            let user = &rest[..at];
            let user = user.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}@{}", &rest[at + 1..]);
        }
    }
    s.to_string()
}

impl std::fmt::Debug for GitRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitRef")
            .field("remote", &self.display_remote())
            .field("reference", &self.reference)
            .field("checksum", &self.checksum)
            .field("subdir", &self.subdir)
            .field("keep_git_dir", &self.keep_git_dir)
            .field("submodules", &self.submodules)
            .field("mtime", &self.mtime)
            .finish_non_exhaustive()
    }
}

impl GitRef {
    /// Parse `s` as a git URL. `Ok(None)` when `s` is not a git URL (a local
    /// path, an `https://` URL not ending in `.git`, `docker-image://…`).
    pub fn parse(s: &str) -> Result<Option<GitRef>, GitRefError> {
        let s = s.trim();
        if s.starts_with("./") || s.starts_with("../") || s.starts_with('/') {
            return Ok(None);
        }
        // Split off the fragment, then the query.
        let (no_frag, fragment) = match s.split_once('#') {
            Some((a, f)) => (a, Some(f)),
            None => (s, None),
        };
        let (base, query) = match no_frag.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (no_frag, None),
        };
        let scheme = match scheme_of(base) {
            Some((sch, rest)) => {
                let sch = sch.to_ascii_lowercase();
                match sch.as_str() {
                    "http" | "https" => {
                        let path = rest.find('/').map_or("", |i| &rest[i..]);
                        if !path.ends_with(".git") {
                            return Ok(None);
                        }
                    }
                    "ssh" | "git" => {}
                    _ => return Ok(None),
                }
                sch
            }
            None => {
                if scp_form(base).is_none() {
                    return Ok(None);
                }
                "ssh".to_string()
            }
        };
        let url = redact_url(base);
        let remote = base.to_string();
        let short_name = remote
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()
            .unwrap_or("")
            .trim_end_matches(".git")
            .to_string();
        let mut g = GitRef {
            remote,
            scheme,
            short_name,
            reference: None,
            checksum: None,
            subdir: None,
            keep_git_dir: None,
            submodules: None,
            mtime: None,
            fetch_by_commit: false,
        };
        if let Some(f) = fragment.filter(|f| !f.is_empty()) {
            let (r, sub) = match f.split_once(':') {
                Some((r, sub)) => (r, Some(sub)),
                None => (f, None),
            };
            g.reference = (!r.is_empty()).then(|| r.to_string());
            g.subdir = match sub {
                Some(sub) => clean_subdir(&url, sub)?,
                None => None,
            };
        }
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            g.load_query(&url, q)?;
        }
        Ok(Some(g))
    }

    fn load_query(&mut self, url: &str, q: &str) -> Result<(), GitRefError> {
        let qerr = |reason: String| GitRefError::Query {
            url: url.to_string(),
            reason,
        };
        let mut seen = std::collections::HashSet::new();
        let (mut tag, mut branch) = (None::<String>, None::<String>);
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = match pair.split_once('=') {
                Some((k, v)) => (percent_decode(k), Some(percent_decode(v))),
                None => (percent_decode(pair), None),
            };
            if !seen.insert(k.clone()) {
                return Err(qerr(format!("query {k:?} has multiple values")));
            }
            let value = || -> Result<String, GitRefError> {
                match &v {
                    Some(v) if !v.is_empty() => Ok(v.clone()),
                    _ => Err(qerr(format!("query {k:?} has no value"))),
                }
            };
            match k.as_str() {
                "ref" => {
                    let v = value()?;
                    self.set_ref(url, v)?;
                }
                "tag" => tag = Some(value()?),
                "branch" => branch = Some(value()?),
                "subdir" => {
                    let v = clean_subdir(url, &value()?)?;
                    if self.subdir.is_some() && self.subdir != v {
                        return Err(GitRefError::Conflict {
                            url: url.to_string(),
                            what: "subdir",
                            a: self.subdir.clone().unwrap_or_default(),
                            b: v.unwrap_or_default(),
                        });
                    }
                    self.subdir = v;
                }
                "checksum" | "commit" => self.checksum = Some(value()?.to_ascii_lowercase()),
                "keep-git-dir" => self.keep_git_dir = Some(parse_bool(url, &k, v.as_deref())?),
                "submodules" => self.submodules = Some(parse_bool(url, &k, v.as_deref())?),
                "fetch-by-commit" => self.fetch_by_commit = parse_bool(url, &k, v.as_deref())?,
                "mtime" => {
                    self.mtime = Some(match value()?.as_str() {
                        "checkout" => MtimePolicy::Checkout,
                        "commit" => MtimePolicy::Commit,
                        other => {
                            return Err(qerr(format!(
                                "invalid mtime value {other:?} (must be \"checkout\" or \"commit\")"
                            )))
                        }
                    })
                }
                other => return Err(qerr(format!("unexpected query {other:?}"))),
            }
        }
        if let Some(t) = &tag {
            let full = if t.starts_with("refs/tags/") {
                t.clone()
            } else {
                format!("refs/tags/{t}")
            };
            self.set_ref(url, full)?;
        }
        if let Some(b) = branch {
            if tag.is_some() {
                return Err(qerr("branch conflicts with tag".into()));
            }
            let full = if b.starts_with("refs/heads/") {
                b
            } else {
                format!("refs/heads/{b}")
            };
            self.set_ref(url, full)?;
        }
        Ok(())
    }

    fn set_ref(&mut self, url: &str, v: String) -> Result<(), GitRefError> {
        if let Some(old) = &self.reference {
            if *old != v {
                return Err(GitRefError::Conflict {
                    url: url.to_string(),
                    what: "ref",
                    a: old.clone(),
                    b: v,
                });
            }
        }
        self.reference = Some(v);
        Ok(())
    }

    /// True when the transport is unencrypted (`http://`, `git://`).
    pub fn unencrypted(&self) -> bool {
        matches!(self.scheme.as_str(), "http" | "git")
    }

    /// The remote without credentials, for messages.
    pub fn display_remote(&self) -> String {
        redact_url(&self.remote)
    }
}

/// True for a full 40- or 64-hex-digit commit id.
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> GitRef {
        GitRef::parse(s)
            .unwrap()
            .unwrap_or_else(|| panic!("{s} is git"))
    }

    #[test]
    fn fragment_forms() {
        let g = p("https://github.com/foo/bar.git#baz/qux:quux/quuz");
        assert_eq!(g.remote, "https://github.com/foo/bar.git");
        assert_eq!(g.short_name, "bar");
        assert_eq!(g.reference.as_deref(), Some("baz/qux"));
        assert_eq!(g.subdir.as_deref(), Some("quux/quuz"));
        let g = p("https://h/r.git#:sub/../dir/");
        assert_eq!(g.reference, None);
        assert_eq!(g.subdir.as_deref(), Some("dir"));
        let g = p("https://h/r.git#v1.0");
        assert_eq!(g.reference.as_deref(), Some("v1.0"));
        assert_eq!(g.subdir, None);
        let g = p("git@github.com:moby/buildkit.git#main:frontend");
        assert_eq!(g.remote, "git@github.com:moby/buildkit.git");
        assert_eq!(g.scheme, "ssh");
        assert_eq!(g.short_name, "buildkit");
        assert_eq!(g.subdir.as_deref(), Some("frontend"));
        let g = p("ssh://git@127.0.0.1:2222/srv/repo.git");
        assert_eq!(g.remote, "ssh://git@127.0.0.1:2222/srv/repo.git");
        assert_eq!(g.short_name, "repo");
        let g = p("git://127.0.0.1:9418/repo");
        assert!(g.unencrypted());
        assert_eq!(g.short_name, "repo");
    }

    #[test]
    fn not_git() {
        for s in [
            ".",
            "./dir",
            "../x",
            "/abs/path",
            "dir/sub",
            "https://example.com/ctx.tar.gz",
            "http://127.0.0.1:8080/Dockerfile",
            "docker-image://alpine",
            "oci-layout:///x",
            "ftp://h/r.git",
        ] {
            assert_eq!(GitRef::parse(s).unwrap(), None, "{s}");
        }
    }

    #[test]
    fn query_forms() {
        let g = p(
            "https://h/o/r.git?ref=refs/heads/main&checksum=ABCDEF1&subdir=docs&keep-git-dir=true",
        );
        assert_eq!(g.reference.as_deref(), Some("refs/heads/main"));
        assert_eq!(g.checksum.as_deref(), Some("abcdef1"));
        assert_eq!(g.subdir.as_deref(), Some("docs"));
        assert_eq!(g.keep_git_dir, Some(true));
        let g = p("https://h/o/r.git?tag=v1&submodules=false&mtime=checkout");
        assert_eq!(g.reference.as_deref(), Some("refs/tags/v1"));
        assert_eq!(g.submodules, Some(false));
        assert_eq!(g.mtime, Some(MtimePolicy::Checkout));
        let g = p("https://h/o/r.git?branch=dev&keep-git-dir");
        assert_eq!(g.reference.as_deref(), Some("refs/heads/dev"));
        assert_eq!(g.keep_git_dir, Some(true));
        let g = p("git@h:o/r.git?ref=main&commit=0123456789abcdef0123456789abcdef01234567");
        assert_eq!(g.remote, "git@h:o/r.git");
        assert!(is_commit_id(g.checksum.as_deref().unwrap()));
        // Fragment and query agreeing is fine.
        let g = p("https://h/o/r.git?ref=main#main");
        assert_eq!(g.reference.as_deref(), Some("main"));
    }

    #[test]
    fn query_errors() {
        for bad in [
            "https://h/r.git?ref=a#b",
            "https://h/r.git?subdir=a#:b",
            "https://h/r.git?tag=a&branch=b",
            "https://h/r.git?ref=a&ref=b",
            "https://h/r.git?bogus=1",
            "https://h/r.git?ref=",
            "https://h/r.git?keep-git-dir=maybe",
            "https://h/r.git?mtime=now",
            "https://h/r.git#main:../../etc",
        ] {
            assert!(GitRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("https://user:secret@h/r.git"),
            "https://user@h/r.git"
        );
        let g = p("https://user:secret@h/r.git#main");
        assert!(!g.display_remote().contains("secret"));
        assert!(!format!("{g:?}").contains("secret"));
        assert_eq!(percent_decode("a%2Fb+c%zz%4"), "a/b c%zz%4");
    }
}
