//! Remote build contexts: a git repository ([`gitref`] parses BuildKit's URL
//! forms, [`git`] fetches with the `git` command) or an HTTP(S) URL
//! ([`http`]: a tarball, or a lone Dockerfile). Used for the PATH of a build,
//! `--build-context NAME=URL` and `ADD <git URL>`.

pub mod git;
pub mod gitref;
pub mod http;

pub use git::{FetchOptions, Fetched, GitError};
pub use gitref::{GitRef, GitRefError, MtimePolicy};
pub use http::{HttpContext, HttpContextError, HttpContextKind};

/// What a context string names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteSpec {
    /// A git repository.
    Git(GitRef),
    /// An HTTP(S) URL that is not a git repository.
    Http(String),
}

/// Classify a context string: `Ok(None)` for a local path.
pub fn classify(s: &str) -> Result<Option<RemoteSpec>, GitRefError> {
    if let Some(g) = GitRef::parse(s)? {
        return Ok(Some(RemoteSpec::Git(g)));
    }
    if http::is_http_url(s) {
        return Ok(Some(RemoteSpec::Http(s.to_string())));
    }
    Ok(None)
}

/// `BUILDKIT_CONTEXT_KEEP_GIT_DIR` as a build arg value: true for `1`,
/// `true` (any case); anything else false.
pub fn keep_git_dir_arg(v: Option<&str>) -> bool {
    v.is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(matches!(
            classify("https://h/o/r.git#main").unwrap(),
            Some(RemoteSpec::Git(_))
        ));
        assert!(matches!(
            classify("git@h:o/r.git").unwrap(),
            Some(RemoteSpec::Git(_))
        ));
        assert_eq!(
            classify("https://h/ctx.tar.gz").unwrap(),
            Some(RemoteSpec::Http("https://h/ctx.tar.gz".into()))
        );
        assert_eq!(classify(".").unwrap(), None);
        assert_eq!(classify("some/dir").unwrap(), None);
        assert!(keep_git_dir_arg(Some("1")));
        assert!(keep_git_dir_arg(Some("TRUE")));
        assert!(!keep_git_dir_arg(Some("0")));
        assert!(!keep_git_dir_arg(None));
    }
}
