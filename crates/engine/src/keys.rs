//! Cache keys of FROM and of every step, shared by the solver and by
//! `--call explain`, and the explanation of a miss: the step's inputs
//! compared with the last build's record in the same place.

use std::collections::{BTreeSet, HashMap};

use serde_json::json;
use xbuild_dockerfile::instructions::MountType;
use xbuild_oci::{Digest, Platform};
use xbuild_plan::{Base, ConfigOp, FileSource, ImageRef, Location, Op, Stage, Step, PROXY_ARGS};

use crate::cache::{arg_hash, InputTrace, KeyInput, StepTrace};
use crate::context;
use crate::engine::{Engine, EngineError};
use crate::events::MissReason;
use crate::solve::Shared;

/// Context paths named in a miss reason at most.
const MAX_PATHS: usize = 5;

/// A computed key and what it was made of.
#[derive(Debug, Clone)]
pub(crate) struct StepKey {
    pub(crate) key: Digest,
    /// The platform that executes the step (the stage's platform, which is
    /// the build platform for `FROM --platform=$BUILDPLATFORM` stages): the
    /// key holds it and the cache record is filed under it.
    pub(crate) platform: Platform,
    /// The text the key holds (the step's, but `ARG NAME...` without values).
    pub(crate) text: String,
    pub(crate) trace: StepTrace,
}

/// The step slot of `stage`'s vertex at 1-based `index` in `project`
/// (records of other projects never share a slot, so explanations never
/// compare with, or quote, another project's steps).
pub(crate) fn slot(project: &str, stage: &Stage, index: usize) -> String {
    if project.is_empty() {
        format!("{} {index}", stage.display_name())
    } else {
        format!("{project} {} {index}", stage.display_name())
    }
}

/// `[build 2/5] RUN make`: the step at 1-based vertex `index` (FROM is 1),
/// numbered the way progress output numbers it.
pub(crate) fn step_label(stage: &Stage, index: usize) -> String {
    stage.step_label(index.saturating_sub(1))
}

/// The key under which the content checksum of a `COPY --from=STAGE`'s
/// sources is passed to [`Engine::step_key`].
pub(crate) fn copy_sum_key(c: &xbuild_plan::CopyOp) -> String {
    format!(
        "copy\0{}\0{}\0{}",
        c.sources.join("\0"),
        c.exclude.join("\0"),
        c.parents
    )
}

impl Engine {
    /// The manifest digest of `r`: the one planning pinned, else pulled.
    pub(crate) async fn image_digest(
        &self,
        shared: &Shared<'_, '_>,
        r: &ImageRef,
        location: &Location,
    ) -> Result<Digest, EngineError> {
        if let Some(d) = r.digest.as_deref().and_then(|d| Digest::parse(d).ok()) {
            return Ok(d);
        }
        Ok(self
            .image_chain(shared, r, location)
            .await?
            .0
            .manifest
            .digest
            .clone())
    }

    /// The key of a stage's FROM and what its base is.
    pub(crate) async fn stage_base_key(
        &self,
        shared: &Shared<'_, '_>,
        stage: &Stage,
        dep_keys: &HashMap<usize, Digest>,
        dep_names: &HashMap<usize, String>,
    ) -> Result<(Digest, Option<InputTrace>), EngineError> {
        // Keyed by the platform that executes the stage, not by the target
        // it serves: a build-platform stage has one key for every target.
        let platform = &stage.platform;
        let no_args = Default::default();
        Ok(match &stage.base {
            Base::Scratch => (
                KeyInput::new(None, platform, "FROM", &no_args, json!({"from": "scratch"}))
                    .key()?,
                None,
            ),
            Base::Image(r) => {
                let d = self.image_digest(shared, r, &stage.location).await?;
                let key = KeyInput::new(
                    None,
                    platform,
                    "FROM",
                    &no_args,
                    json!({"from": d.as_str()}),
                )
                .key()?;
                let trace = InputTrace {
                    label: format!("image {}", r.reference),
                    id: d.to_string(),
                    listing: None,
                };
                (key, Some(trace))
            }
            Base::Stage(i) => {
                let d = dep_keys
                    .get(i)
                    .ok_or_else(|| EngineError::Graph(format!("stage {i} not built")))?;
                let key = KeyInput::new(
                    Some(d),
                    platform,
                    "FROM",
                    &no_args,
                    json!({"from": "stage"}),
                )
                .key()?;
                let trace = InputTrace {
                    label: format!("stage {}", dep_names.get(i).cloned().unwrap_or_default()),
                    id: d.to_string(),
                    listing: None,
                };
                (key, Some(trace))
            }
        })
    }

    /// The key of `step` (at 1-based `index` of `stage`) after `parent`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn step_key(
        &self,
        shared: &Shared<'_, '_>,
        stage: &Stage,
        index: usize,
        step: &Step,
        parent: &Digest,
        base: Option<&InputTrace>,
        dep_keys: &HashMap<usize, Digest>,
        dep_names: &HashMap<usize, String>,
        bind_sums: &HashMap<(usize, String), Digest>,
    ) -> Result<StepKey, EngineError> {
        let mut sources = Vec::new();
        let mut key_text = step.text.as_str();
        let arg_text;
        let git_text;
        let op_json = match &step.op {
            // Docker: declaring an ARG never misses; the steps that use its
            // value do (their keys hold it). Keyed on the names only.
            Op::Config(ConfigOp::Arg(decls)) => {
                let names: Vec<&str> = decls.iter().map(|(k, _)| k.as_str()).collect();
                arg_text = format!("ARG {}", names.join(" "));
                key_text = &arg_text;
                // A target arg whose value the executing platform does not
                // imply (`ARG TARGETARCH` in a build-platform stage): the
                // step is the target's, keyed by its value. Elsewhere the
                // platform in the key says it all (keys as they always were).
                let implied = xbuild_plan::platform_args(&stage.platform, &stage.platform);
                let target: serde_json::Map<String, serde_json::Value> = decls
                    .iter()
                    .filter(|(k, _)| k.starts_with("TARGET"))
                    .filter_map(|(k, v)| {
                        let v = v.as_ref()?;
                        (implied.get(k).is_some_and(|i| i != v)).then(|| (k.clone(), json!(v)))
                    })
                    .collect();
                if target.is_empty() {
                    json!({ "config": { "Arg": names } })
                } else {
                    json!({ "config": { "Arg": names }, "target_args": target })
                }
            }
            Op::Config(c) => json!({ "config": c }),
            Op::Exec(e) => {
                let mut e = e.clone();
                e.env.retain(|kv| {
                    let k = kv.split('=').next().unwrap_or("");
                    !PROXY_ARGS.contains(&k)
                });
                let mut binds = Vec::new();
                for m in &e.mounts {
                    if m.kind != MountType::Bind {
                        continue;
                    }
                    let src = m.source.clone().unwrap_or_else(|| ".".into());
                    let from = m.from.clone().unwrap_or(FileSource::Context);
                    // A stage's files are keyed by what is mounted, not by
                    // how the stage was built (testMountRWCache).
                    if let FileSource::Stage(i) = &from {
                        if let Some(sum) = bind_sums.get(&(*i, src.clone())) {
                            binds.push(json!({ "stage_content": sum.as_str(), "source": src }));
                            sources.push(InputTrace {
                                label: format!(
                                    "stage {}",
                                    dep_names.get(i).cloned().unwrap_or_default()
                                ),
                                id: sum.to_string(),
                                listing: None,
                            });
                            continue;
                        }
                    }
                    let (j, t) = self
                        .source_key(
                            shared,
                            &from,
                            std::slice::from_ref(&src),
                            &[],
                            false,
                            (dep_keys, dep_names),
                            step,
                        )
                        .await?;
                    binds.push(j);
                    sources.push(t);
                }
                json!({ "exec": e, "binds": binds })
            }
            Op::Copy(c) => {
                let remote = |s: &str| {
                    let l = s.to_ascii_lowercase();
                    c.add
                        && (l.starts_with("http://")
                            || l.starts_with("https://")
                            || crate::copy::is_git(s))
                };
                let local: Vec<String> = c.sources.iter().filter(|s| !remote(s)).cloned().collect();
                // A git source is keyed by the commit its ref names now, so a
                // moved branch misses and an unchanged one hits.
                let mut commits = serde_json::Map::new();
                if c.add {
                    for s in c.sources.iter().filter(|s| crate::copy::is_git(s)) {
                        if let Ok(Some(r)) = crate::remote::GitRef::parse(s) {
                            let o = crate::remote::FetchOptions {
                                keep_git_dir: false,
                                ssh_auth_sock: shared
                                    .req
                                    .secrets
                                    .ssh_socket("default")
                                    .map(std::path::Path::to_path_buf),
                            };
                            // One short `git ls-remote`; run inline.
                            let commit = crate::remote::git::resolve_commit(&r, &o).ok().flatten();
                            commits.insert(s.clone(), json!(commit));
                        }
                    }
                }
                let content = match &c.from {
                    FileSource::Stage(i) => bind_sums.get(&(*i, copy_sum_key(c))),
                    _ => None,
                };
                let src = if local.is_empty() {
                    serde_json::Value::Null
                } else if let (Some(sum), FileSource::Stage(i)) = (content, &c.from) {
                    // Keyed by the files read, as BuildKit.
                    sources.push(InputTrace {
                        label: format!("stage {}", dep_names.get(i).cloned().unwrap_or_default()),
                        id: sum.to_string(),
                        listing: None,
                    });
                    json!({ "stage_content": sum.as_str() })
                } else {
                    let (j, t) = self
                        .source_key(
                            shared,
                            &c.from,
                            &local,
                            &c.exclude,
                            c.parents,
                            (dep_keys, dep_names),
                            step,
                        )
                        .await?;
                    sources.push(t);
                    j
                };
                if commits.is_empty() {
                    json!({ "copy": c, "src": src })
                } else if let Some((text, keyed)) = git_only_key(&step.text, c, &commits) {
                    git_text = text;
                    key_text = &git_text;
                    json!({ "copy": keyed, "src": src, "git": commits })
                } else {
                    json!({ "copy": c, "src": src, "git": commits })
                }
            }
        };
        let key = KeyInput::new(
            Some(parent),
            &stage.platform,
            key_text,
            &step.build_args,
            op_json,
        )
        .key()?;
        let trace = StepTrace {
            slot: slot(&shared.req.graph.project, stage, index),
            args: step
                .build_args
                .iter()
                .map(|(k, v)| (k.clone(), arg_hash(v)))
                .collect(),
            base: base.cloned(),
            sources,
            run_options: match &step.op {
                Op::Exec(e) => run_options(e),
                _ => None,
            },
        };
        Ok(StepKey {
            key,
            platform: stage.platform.clone(),
            text: key_text.to_string(),
            trace,
        })
    }

    /// What identifies the files a step reads from `from`.
    #[allow(clippy::too_many_arguments)]
    async fn source_key(
        &self,
        shared: &Shared<'_, '_>,
        from: &FileSource,
        sources: &[String],
        exclude: &[String],
        parents: bool,
        (dep_keys, dep_names): (&HashMap<usize, Digest>, &HashMap<usize, String>),
        step: &Step,
    ) -> Result<(serde_json::Value, InputTrace), EngineError> {
        Ok(match from {
            FileSource::Context => {
                let (sum, listing) = match (&shared.index, &shared.context_dir) {
                    (Some(ix), _) => {
                        let sum = context::checksum(ix, sources, exclude, parents)?;
                        let listing = context::listing(ix, sources, exclude, parents)?;
                        let name = self.inner.cache.put_listing(&listing)?;
                        (sum, Some(name))
                    }
                    (None, Some(dir)) => {
                        let (dir, sources, exclude) =
                            (dir.clone(), sources.to_vec(), exclude.to_vec());
                        let sum = tokio::task::spawn_blocking(move || {
                            context::checksum_dir(&dir, &sources, &exclude, parents)
                        })
                        .await
                        .map_err(|e| EngineError::Task(e.to_string()))??;
                        (sum, None)
                    }
                    (None, None) => return Err(EngineError::NoContext),
                };
                (
                    json!({ "context": sum.as_str() }),
                    InputTrace {
                        label: "context".into(),
                        id: sum.to_string(),
                        listing,
                    },
                )
            }
            FileSource::Stage(i) => {
                let d = dep_keys
                    .get(i)
                    .ok_or_else(|| EngineError::Graph(format!("stage {i} not built")))?;
                (
                    json!({ "stage": d.as_str(), "sources": sources, "exclude": exclude }),
                    InputTrace {
                        label: format!("stage {}", dep_names.get(i).cloned().unwrap_or_default()),
                        id: d.to_string(),
                        listing: None,
                    },
                )
            }
            FileSource::Image(r) => {
                let d = self.image_digest(shared, r, &step.location).await?;
                (
                    json!({ "image": d.as_str(), "sources": sources, "exclude": exclude }),
                    InputTrace {
                        label: format!("image {}", r.reference),
                        id: d.to_string(),
                        listing: None,
                    },
                )
            }
        })
    }

    /// Why a step whose parent hit has no usable record for `sk`.
    pub(crate) fn miss_causes(
        &self,
        platform: &Platform,
        parent: &Digest,
        sk: &StepKey,
    ) -> Vec<MissReason> {
        let cache = &self.inner.cache;
        let text = sk.text.as_str();
        if cache.get_raw(platform, &sk.key).is_some() {
            return vec![MissReason::LayerMissing];
        }
        let Some(prev) = cache.previous(platform, parent, &sk.trace.slot) else {
            return vec![MissReason::NoRecord];
        };
        let Some(old) = prev.trace.as_ref() else {
            return if prev.text != text {
                vec![MissReason::InstructionChanged {
                    old: prev.text,
                    new: text.to_string(),
                }]
            } else {
                vec![MissReason::NoRecord]
            };
        };
        let new = &sk.trace;
        let mut out = Vec::new();
        if prev.parent.as_ref() != Some(parent) {
            // The slot's last record, under another parent: it explains the
            // miss only when the same base reference now has another digest
            // (or the same base stage another key). Anything else (another
            // project's stage, an earlier step that hit an older variant)
            // is not compared.
            return match (&old.base, &new.base) {
                (Some(ob), Some(nb)) if ob.label == nb.label && ob.id != nb.id => {
                    vec![MissReason::BaseChanged {
                        base: nb.label.clone(),
                        old: ob.id.clone(),
                        new: nb.id.clone(),
                    }]
                }
                _ => vec![MissReason::NoRecord],
            };
        }
        if prev.text != text {
            out.push(MissReason::InstructionChanged {
                old: prev.text.clone(),
                new: text.to_string(),
            });
        }
        if old.run_options != new.run_options {
            out.push(MissReason::RunOptionsChanged {
                old: old.run_options.clone().unwrap_or_default(),
                new: new.run_options.clone().unwrap_or_default(),
            });
        }
        let names: BTreeSet<&String> = old.args.keys().chain(new.args.keys()).collect();
        let changed: Vec<String> = names
            .into_iter()
            .filter(|n| old.args.get(*n) != new.args.get(*n))
            .cloned()
            .collect();
        if !changed.is_empty() {
            out.push(MissReason::BuildArgsChanged { names: changed });
        }
        for (o, n) in old.sources.iter().zip(&new.sources) {
            if o.id == n.id {
                continue;
            }
            let lists = o
                .listing
                .as_ref()
                .zip(n.listing.as_ref())
                .and_then(|(a, b)| Some((cache.get_listing(a)?, cache.get_listing(b)?)));
            match lists {
                Some((a, b)) => {
                    let paths = listing_diff(&a, &b);
                    let more = paths.len().saturating_sub(MAX_PATHS);
                    out.push(MissReason::ContextFilesChanged {
                        // Shown to people: never raw bytes or escapes.
                        paths: paths
                            .iter()
                            .take(MAX_PATHS)
                            .map(|p| context::names::lossy(p))
                            .collect(),
                        more,
                    });
                }
                None => out.push(MissReason::SourceChanged {
                    from: n.label.clone(),
                }),
            }
        }
        if old.sources.len() != new.sources.len() && out.is_empty() {
            out.push(MissReason::SourceChanged {
                from: "the step's sources".into(),
            });
        }
        if out.is_empty() {
            out.push(MissReason::NoRecord);
        }
        out
    }
}

/// Paths added, removed or changed between two sorted listings.
fn listing_diff(old: &[(String, String)], new: &[(String, String)]) -> Vec<String> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                if a.1 != b.1 {
                    out.push(a.0.clone());
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                out.push(format!("-{}", a.0));
                i += 1;
            }
            (Some(_), Some(b)) => {
                out.push(format!("+{}", b.0));
                j += 1;
            }
            (Some(a), None) => {
                out.push(format!("-{}", a.0));
                i += 1;
            }
            (None, Some(b)) => {
                out.push(format!("+{}", b.0));
                j += 1;
            }
            (None, None) => break,
        }
    }
    // A changed directory entry (mode, owner) is listed, but files first.
    out
}

/// The options of a RUN step that are in its key besides its text, written
/// as the flags that set them; `None` when there are none.
fn run_options(e: &xbuild_plan::ExecOp) -> Option<String> {
    let mut parts = Vec::new();
    for u in &e.ulimits {
        parts.push(format!("--ulimit {u}"));
    }
    for (host, ip) in &e.extra_hosts {
        parts.push(format!("--add-host {host}={ip}"));
    }
    if let Some(size) = e.shm_size {
        parts.push(format!("--shm-size {size}"));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// An ADD of git sources only, every one resolved to a commit that its
/// `--checksum` (if any) matches: the key holds the commits, not the
/// checksum (BuildKit: adding `--checksum` keeps the cache,
/// testAddGitChecksumCache). Returns the instruction text without the
/// `--checksum=` flag and the copy op without it. `None` otherwise (a
/// mismatching checksum stays in the key, so the fetch reports it).
fn git_only_key(
    text: &str,
    c: &xbuild_plan::graph::CopyOp,
    commits: &serde_json::Map<String, serde_json::Value>,
) -> Option<(String, xbuild_plan::graph::CopyOp)> {
    if c.sources.len() != commits.len() {
        return None;
    }
    for commit in commits.values() {
        let commit = commit.as_str()?;
        if let Some(sum) = &c.checksum {
            let hex = sum.trim().trim_start_matches("sha1:").to_ascii_lowercase();
            if !commit.starts_with(&hex) {
                return None;
            }
        }
    }
    let words: Vec<&str> = text
        .split_whitespace()
        .filter(|w| !w.starts_with("--checksum="))
        .collect();
    let mut keyed = c.clone();
    keyed.checksum = None;
    Some((words.join(" "), keyed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_diff_names_changed_added_and_removed_paths() {
        let l = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let old = l(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let new = l(&[("a", "1"), ("b", "9"), ("d", "4")]);
        assert_eq!(listing_diff(&old, &new), vec!["b", "-c", "+d"]);
        assert!(listing_diff(&old, &old).is_empty());
    }

    #[test]
    fn reasons_render_on_one_line() {
        let r = MissReason::InstructionChanged {
            old: "RUN echo a".into(),
            new: "RUN echo b".into(),
        };
        assert_eq!(
            r.to_string(),
            "instruction changed: \"RUN echo a\" -> \"RUN echo b\""
        );
        let r = MissReason::BuildArgsChanged {
            names: vec!["V".into()],
        };
        assert_eq!(r.to_string(), "build arg V changed");
        let r = MissReason::ContextFilesChanged {
            paths: vec!["a.txt".into()],
            more: 2,
        };
        assert_eq!(r.to_string(), "context files changed: a.txt (+2 more)");
        let r = MissReason::RunOptionsChanged {
            old: String::new(),
            new: "--ulimit nofile=1:2".into(),
        };
        assert_eq!(
            r.to_string(),
            "RUN options changed: none -> \"--ulimit nofile=1:2\""
        );
    }
}
