//! Source selection for COPY/ADD: Go `filepath.Match` globs per path
//! component, symlinks in source paths resolved inside the source root,
//! directories meaning their whole subtree, `--exclude` and `--parents`.
//! Shared by the checksum (over a [`ContextIndex`] or a directory tree) and
//! by the copier.

use super::{
    entry_from_meta, host_path, io_err, names, ContextError, ContextIndex, EntryKind, IndexEntry,
};
use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use xbuild_dockerfile::ignore::PatternMatcher;
use xbuild_oci::digest::{Algorithm, Hasher};
use xbuild_oci::Digest;

/// Symlinks followed at most while resolving one source.
const MAX_LINKS: usize = 40;

/// A read-only view of a tree of files, by relative `/`-separated path.
pub(crate) trait Tree {
    /// `lstat` of `rel` (`""` is the root); `None` when missing.
    fn lstat(&self, rel: &str) -> Result<Option<IndexEntry>, ContextError>;
    /// Names in directory `rel`, sorted.
    fn children(&self, rel: &str) -> Result<Vec<String>, ContextError>;
    /// Every entry strictly below directory `rel`, sorted by path.
    fn walk(&self, rel: &str) -> Result<Vec<IndexEntry>, ContextError>;
}

/// A [`ContextIndex`] as a [`Tree`]: only indexed paths exist.
pub(crate) struct IndexTree<'a>(pub &'a ContextIndex);

fn root_entry() -> IndexEntry {
    IndexEntry {
        path: String::new(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        link_target: None,
        digest: None,
    }
}

impl Tree for IndexTree<'_> {
    fn lstat(&self, rel: &str) -> Result<Option<IndexEntry>, ContextError> {
        if rel.is_empty() {
            return Ok(Some(root_entry()));
        }
        Ok(self.0.get(rel).cloned())
    }

    fn children(&self, rel: &str) -> Result<Vec<String>, ContextError> {
        let skip = if rel.is_empty() { 0 } else { rel.len() + 1 };
        Ok(self
            .0
            .subtree(rel)
            .iter()
            .map(|e| &e.path[skip..])
            .filter(|n| !n.contains('/'))
            .map(String::from)
            .collect())
    }

    fn walk(&self, rel: &str) -> Result<Vec<IndexEntry>, ContextError> {
        Ok(self.0.subtree(rel).to_vec())
    }
}

/// A directory on this host as a [`Tree`].
pub(crate) struct FsTree {
    root: PathBuf,
}

impl FsTree {
    pub(crate) fn new(root: &Path) -> Self {
        FsTree {
            root: root.to_path_buf(),
        }
    }

    fn walk_into(&self, rel: &str, out: &mut Vec<IndexEntry>) -> Result<(), ContextError> {
        for name in self.children(rel)? {
            let child = join(rel, &name);
            if let Some(e) = self.lstat(&child)? {
                let is_dir = e.kind == EntryKind::Dir;
                out.push(e);
                if is_dir {
                    self.walk_into(&child, out)?;
                }
            }
        }
        Ok(())
    }
}

impl Tree for FsTree {
    fn lstat(&self, rel: &str) -> Result<Option<IndexEntry>, ContextError> {
        let hp = host_path(&self.root, rel);
        match fs::symlink_metadata(&hp) {
            Ok(md) => entry_from_meta(rel.to_string(), &md, &hp),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(io_err("stat", &hp)(e)),
        }
    }

    fn children(&self, rel: &str) -> Result<Vec<String>, ContextError> {
        let hp = host_path(&self.root, rel);
        let mut out = Vec::new();
        for ent in fs::read_dir(&hp).map_err(io_err("read directory", &hp))? {
            let ent = ent.map_err(io_err("read directory", &hp))?;
            out.push(names::encode_os(&ent.file_name()));
        }
        out.sort();
        Ok(out)
    }

    fn walk(&self, rel: &str) -> Result<Vec<IndexEntry>, ContextError> {
        let mut out = Vec::new();
        self.walk_into(rel, &mut out)?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// One entry of a selected source.
#[derive(Debug, Clone)]
pub(crate) struct SelectedEntry {
    /// Path relative to the selected source (`""` for the source itself).
    pub rel: String,
    /// The entry; `entry.path` is its real path in the tree.
    pub entry: IndexEntry,
}

/// One source (a literal path or one wildcard match) after resolution.
#[derive(Debug, Clone)]
pub(crate) struct SelectedRoot {
    /// The matched path as written (symlinks not resolved), from the source
    /// root; with `--parents` the part before a `/./` pivot is dropped.
    pub logical: String,
    /// The source itself first (`rel == ""`), then what is below it (for a
    /// directory), excluded entries left out.
    pub entries: Vec<SelectedEntry>,
}

impl SelectedRoot {
    /// Kind of the (resolved) source.
    pub fn kind(&self) -> EntryKind {
        self.entries[0].entry.kind
    }

    /// Last component of the logical path (`""` for the root).
    pub fn base_name(&self) -> &str {
        self.logical.rsplit('/').next().unwrap_or("")
    }
}

/// Go `filepath.Match` on one path component (no `/` on either side).
/// Returns `None` on a syntax error.
pub(crate) fn match_component(pattern: &str, name: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                c => {
                    if si < s.len() {
                        let step = match c {
                            '?' => Some((s[si] != '/', pi + 1)),
                            '[' => class_match(&p, pi, s[si]),
                            '\\' => p.get(pi + 1).map(|&e| (e == s[si], pi + 2)),
                            c => Some((c == s[si], pi + 1)),
                        };
                        let (ok, next) = step?;
                        if ok {
                            pi = next;
                            si += 1;
                            continue;
                        }
                    } else {
                        // Validate the rest of the pattern like Go does.
                        return syntax_ok(&p[pi..]).then_some(false);
                    }
                }
            }
        } else if si == s.len() {
            return Some(true);
        }
        match star {
            Some((sp, ss)) if ss < s.len() && s[ss] != '/' => {
                star = Some((sp, ss + 1));
                pi = sp + 1;
                si = ss + 1;
            }
            _ => return syntax_ok(&p[pi.min(p.len())..]).then_some(false),
        }
    }
}

fn syntax_ok(p: &[char]) -> bool {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return false;
                }
                i += 2;
            }
            '[' => match class_match(p, i, '\0') {
                Some((_, n)) => i = n,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

/// Matches `c` against the class starting at `p[start] == '['`; returns the
/// result and the index after `]`, or `None` on bad syntax.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut n = 0;
    loop {
        if p.get(i) == Some(&']') && n > 0 {
            i += 1;
            break;
        }
        let (lo, next) = class_char(p, i)?;
        i = next;
        let mut hi = lo;
        if p.get(i) == Some(&'-') {
            let (h, next) = class_char(p, i + 1)?;
            hi = h;
            i = next;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
        n += 1;
    }
    Some((matched != negated, i))
}

fn class_char(p: &[char], i: usize) -> Option<(char, usize)> {
    match p.get(i)? {
        '-' | ']' => None,
        '\\' => p.get(i + 1).map(|&c| (c, i + 2)),
        &c => Some((c, i + 1)),
    }
}

fn has_meta(comp: &str) -> bool {
    let mut chars = comp.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' | '[' => return true,
            '\\' => {
                chars.next();
            }
            _ => {}
        }
    }
    false
}

fn unescape(comp: &str) -> String {
    let mut out = String::with_capacity(comp.len());
    let mut chars = comp.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Lexical clean of a relative path into components; `..` stops at the root.
pub(crate) fn clean_components(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

/// Resolves `comps` inside the tree, following symlinks as if the tree root
/// were `/` (the last component too when `follow_last`). Returns the real
/// path and its entry, or `None` when something is missing.
pub(crate) fn resolve<T: Tree + ?Sized>(
    tree: &T,
    comps: &[String],
    follow_last: bool,
    what: &str,
) -> Result<Option<IndexEntry>, ContextError> {
    let mut pending: VecDeque<String> = comps.iter().cloned().collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        resolved.push(c);
        let rel = resolved.join("/");
        let Some(e) = tree.lstat(&rel)? else {
            return Ok(None);
        };
        if e.kind == EntryKind::Symlink && (follow_last || !pending.is_empty()) {
            links += 1;
            if links > MAX_LINKS {
                return Err(ContextError::SymlinkLoop {
                    path: names::lossy(what),
                });
            }
            resolved.pop();
            let target = e.link_target.unwrap_or_default();
            if target.starts_with('/') {
                resolved.clear();
            }
            for t in target.split('/').rev() {
                pending.push_front(t.to_string());
            }
        } else if e.kind != EntryKind::Dir && !pending.is_empty() {
            // A file used as a directory.
            return Ok(None);
        }
    }
    tree.lstat(&resolved.join("/"))
}

/// Expands `sources` in `tree` and gathers what each selects.
///
/// `sources` and `exclude` are text (from the Dockerfile); they are brought
/// into the escaped domain of the tree's names here, once (see
/// [`super::names`]).
pub(crate) fn select<T: Tree + ?Sized>(
    tree: &T,
    sources: &[String],
    exclude: &[String],
    parents: bool,
) -> Result<Vec<SelectedRoot>, ContextError> {
    if sources.is_empty() {
        return Err(ContextError::NoSourceFiles {
            pattern: String::new(),
        });
    }
    let sources: Vec<String> = sources
        .iter()
        .map(|s| names::escape_str(s).into_owned())
        .collect();
    let exclude: Vec<String> = exclude
        .iter()
        .map(|s| names::escape_str(s).into_owned())
        .collect();
    let excl = PatternMatcher::new(&exclude).map_err(ContextError::Exclude)?;
    let excluded = |p: &str| -> Result<bool, ContextError> {
        if exclude.is_empty() || p.is_empty() {
            return Ok(false);
        }
        excl.matches_or_parent_matches(p)
            .map_err(ContextError::Exclude)
    };
    let mut out = Vec::new();
    for src in &sources {
        // `--parents`: a `/./` marks where the kept parent path starts.
        let (before, after) = match src.find("/./") {
            Some(i) if parents => (&src[..i], &src[i + 3..]),
            _ => ("", src.as_str()),
        };
        let strip = clean_components(before).len();
        let mut comps = clean_components(before);
        comps.extend(clean_components(after));
        let wildcard = comps.iter().any(|c| has_meta(c));
        // States: (logical components, real path).
        let mut states: Vec<(Vec<String>, String)> = vec![(Vec::new(), String::new())];
        for (ci, comp) in comps.iter().enumerate() {
            let mut next = Vec::new();
            if parents && comp == "**" {
                // `--parents` patterns: `**` is any number of components,
                // none included (reference.md "COPY --parents"). Last, it
                // adds nothing: a selected directory brings its contents.
                if ci + 1 < comps.len() {
                    states = expand_doublestar(tree, states)?;
                }
                continue;
            }
            for (logical, real) in &states {
                let names: Vec<String> = if has_meta(comp) {
                    match tree.lstat(real)? {
                        Some(e) if e.kind == EntryKind::Dir => {}
                        _ => continue,
                    }
                    let mut v = Vec::new();
                    for n in tree.children(real)? {
                        match match_component(comp, &n) {
                            Some(true) => v.push(n),
                            Some(false) => {}
                            None => {
                                return Err(ContextError::BadPattern {
                                    pattern: names::lossy(src),
                                })
                            }
                        }
                    }
                    v
                } else {
                    vec![unescape(comp)]
                };
                for n in names {
                    let mut rc = clean_components(real);
                    rc.push(n.clone());
                    if let Some(e) = resolve(tree, &rc, true, src)? {
                        let mut l = logical.clone();
                        l.push(n);
                        next.push((l, e.path));
                    }
                }
            }
            states = next;
        }
        if states.is_empty() {
            // BuildKit copies with AllowEmptyWildcard: a wildcard that
            // matches nothing copies nothing (testEmptyWildcard).
            if wildcard {
                continue;
            }
            return Err(ContextError::NotFound {
                path: names::lossy(src),
            });
        }
        for (logical, real) in states {
            let logical_path = logical.join("/");
            if excluded(&logical_path)? {
                continue;
            }
            let Some(top) = tree.lstat(&real)? else {
                continue;
            };
            let mut entries = vec![SelectedEntry {
                rel: String::new(),
                entry: top.clone(),
            }];
            if top.kind == EntryKind::Dir {
                let skip = if real.is_empty() { 0 } else { real.len() + 1 };
                for e in tree.walk(&real)? {
                    let rel = e.path[skip..].to_string();
                    if excluded(&rel)? {
                        continue;
                    }
                    entries.push(SelectedEntry { rel, entry: e });
                }
            }
            out.push(SelectedRoot {
                logical: logical[strip.min(logical.len())..].join("/"),
                entries,
            });
        }
    }
    Ok(out)
}

/// Every state followed by each directory below it (the `**` of a
/// `--parents` pattern: zero or more components), without duplicates.
fn expand_doublestar<T: Tree + ?Sized>(
    tree: &T,
    states: Vec<(Vec<String>, String)>,
) -> Result<Vec<(Vec<String>, String)>, ContextError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (logical, real) in states {
        let below = match tree.lstat(&real)? {
            Some(e) if e.kind == EntryKind::Dir => tree.walk(&real)?,
            _ => Vec::new(),
        };
        if seen.insert(real.clone()) {
            out.push((logical.clone(), real.clone()));
        }
        let skip = if real.is_empty() { 0 } else { real.len() + 1 };
        for e in below {
            if e.kind != EntryKind::Dir || !seen.insert(e.path.clone()) {
                continue;
            }
            let mut l = logical.clone();
            l.extend(e.path[skip..].split('/').map(str::to_string));
            out.push((l, e.path));
        }
    }
    Ok(out)
}

/// The checksum of selected sources: names, kinds, modes, owners, link
/// targets, sizes and content digests, in order. No times, no host paths.
pub(crate) fn digest_roots(roots: &[SelectedRoot], parents: bool) -> Digest {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(b"xbuild-copy-checksum-v1\n");
    for r in roots {
        // What decides where the source lands: its whole path with
        // `--parents`, its name for a file, nothing for a directory (whose
        // contents are copied).
        let name = if parents {
            r.logical.as_str()
        } else if r.kind() == EntryKind::Dir {
            ""
        } else {
            r.base_name()
        };
        h.update(format!("source\0{}\0{}\n", name, r.kind().as_str()).as_bytes());
        for se in &r.entries {
            let e = &se.entry;
            let line = format!(
                "{}\0{}\0{:o}\0{}\0{}\0{}\0{}\0{}\n",
                se.rel,
                e.kind.as_str(),
                e.mode,
                e.uid,
                e.gid,
                e.size,
                e.link_target.as_deref().unwrap_or(""),
                e.digest.as_ref().map_or("", |d| d.as_str()),
            );
            h.update(line.as_bytes());
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_match() {
        let t = |p: &str, s: &str| match_component(p, s);
        assert_eq!(t("*", "abc"), Some(true));
        assert_eq!(t("*", ".hidden"), Some(true));
        assert_eq!(t("a*c", "abbbc"), Some(true));
        assert_eq!(t("a*c", "abbb"), Some(false));
        assert_eq!(t("?b", "ab"), Some(true));
        assert_eq!(t("[a-c]x", "bx"), Some(true));
        assert_eq!(t("[^a-c]x", "bx"), Some(false));
        assert_eq!(t("[^a-c]x", "dx"), Some(true));
        assert_eq!(t("\\*", "*"), Some(true));
        assert_eq!(t("\\*", "a"), Some(false));
        assert_eq!(t("[", "a"), None);
        assert_eq!(t("*.txt", "a.txt"), Some(true));
        assert_eq!(t("*.txt", "a.txt.bak"), Some(false));
        assert_eq!(t("*a*a*a*a*a*a*b", &"a".repeat(200)), Some(false));
    }

    fn tree_with(files: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for f in files {
            let p = t.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f.as_bytes()).unwrap();
        }
        t
    }

    fn selected(t: &tempfile::TempDir, src: &str, parents: bool) -> Vec<String> {
        let tree = FsTree::new(t.path());
        let mut v: Vec<String> = select(&tree, &[src.to_string()], &[], parents)
            .unwrap()
            .into_iter()
            .map(|r| r.logical)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn doublestar_under_parents_is_zero_or_more_components() {
        // reference.md "COPY --parents": ./src/**/*.txt
        let t = tree_with(&["src/a.txt", "src/x/b.txt", "src/x/y/c.txt", "src/x/y/d.md"]);
        assert_eq!(
            selected(&t, "./src/**/*.txt", true),
            vec!["src/a.txt", "src/x/b.txt", "src/x/y/c.txt"]
        );
        assert_eq!(selected(&t, "src/**/y/c.txt", true), vec!["src/x/y/c.txt"]);
        // After the pivot, only the part below it is kept.
        assert_eq!(selected(&t, "src/./**/b.txt", true), vec!["x/b.txt"]);
        // Last, `**` selects the directory (and so everything below it).
        assert_eq!(selected(&t, "src/**", true), vec!["src"]);
        // Without --parents `**` is a plain `*` of one component.
        assert_eq!(selected(&t, "src/**/b.txt", false), vec!["src/x/b.txt"]);
        assert!(selected(&t, "src/**/c.txt", false).is_empty());
    }

    #[test]
    fn an_empty_wildcard_selects_nothing() {
        // dockerfile_copy_test.go testEmptyWildcard: AllowEmptyWildcard.
        let t = tree_with(&["foo"]);
        let tree = FsTree::new(t.path());
        let srcs = vec!["foo".to_string(), "nomatch*".to_string()];
        let roots = select(&tree, &srcs, &[], false).unwrap();
        assert_eq!(roots.len(), 1);
        assert!(select(&tree, &["nomatch*".to_string()], &[], false)
            .unwrap()
            .is_empty());
        // A literal path that is missing is still an error.
        assert!(matches!(
            select(&tree, &["nomatch".to_string()], &[], false),
            Err(ContextError::NotFound { .. })
        ));
    }

    #[test]
    fn meta_and_clean() {
        assert!(has_meta("a*"));
        assert!(!has_meta("a\\*"));
        assert_eq!(unescape("a\\*"), "a*");
        assert_eq!(clean_components("/../a/./b//c/.."), vec!["a", "b"]);
    }
}
