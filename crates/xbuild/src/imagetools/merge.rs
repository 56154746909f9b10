//! The pure part of `imagetools create`: parse the sources, and combine the
//! resolved manifests into one index the way `docker buildx imagetools
//! create` does.
//!
//! The rules, re-expressed from buildx's behaviour:
//! - a source is a reference, a bare digest (in the one repository the
//!   command names) or an OCI descriptor as JSON (what `-f FILE` holds);
//! - the entries of index sources and the image-manifest sources are listed
//!   in order; two entries with the same digest are one entry (the later
//!   one's platform and annotations are merged in); two different manifests
//!   that carry the same platform are both kept, as buildx keeps them;
//! - a single index source without annotations is copied byte for byte; a
//!   single image manifest becomes a one-entry index (buildx's
//!   `--prefer-index`, the default);
//! - a Docker manifest list results when every entry is a Docker manifest,
//!   else an OCI index; annotations (`index:` and `manifest-descriptor:`)
//!   apply to OCI indexes only, and `manifest:`/`index-descriptor:` ones are
//!   refused because `create` writes no image manifest and no layout.

use anyhow::{anyhow, bail, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use xbuild_oci::annotation::{AnnotationTarget, Annotations};
use xbuild_oci::manifest::ImageIndex;
use xbuild_oci::media_types as mt;
use xbuild_oci::{Descriptor, Digest, Platform, Reference};

/// One source as given on the command line or in a `-f` file.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// `registry/repo:tag` or `registry/repo@sha256:…`.
    Ref(Reference),
    /// `sha256:…`: a manifest in the command's one repository.
    Digest(Digest),
    /// A JSON OCI descriptor; fetched by digest from the command's one
    /// repository, its platform and annotations kept.
    Desc(Descriptor),
}

/// Parse one source string.
pub fn parse_source(s: &str) -> Result<SourceSpec> {
    let t = s.trim();
    if t.starts_with("sha256:") || t.starts_with("sha512:") {
        let d = Digest::parse(t).map_err(|e| anyhow!("invalid source digest {t:?}: {e}"))?;
        return Ok(SourceSpec::Digest(d));
    }
    if t.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(t)
            .map_err(|e| anyhow!("source {t:?} is not a JSON descriptor: {e}"))?;
        if let Some(sv) = v.get("schemaVersion").and_then(|x| x.as_u64()) {
            if sv != 0 {
                bail!(
                    "source is a manifest or index (schemaVersion {sv}), not a descriptor; \
                     give its reference or a descriptor instead"
                );
            }
        }
        let digest = v
            .get("digest")
            .and_then(|x| x.as_str())
            .ok_or_else(|| anyhow!("invalid descriptor source: \"digest\" is required"))?;
        let digest = Digest::parse(digest)
            .map_err(|e| anyhow!("invalid descriptor digest {digest:?}: {e}"))?;
        let get_str = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let mut d = Descriptor::new(
            get_str("mediaType").unwrap_or_default(),
            digest,
            v.get("size").and_then(|x| x.as_u64()).unwrap_or(0),
        );
        if let Some(p) = v.get("platform") {
            d.platform = Some(
                serde_json::from_value(p.clone())
                    .map_err(|e| anyhow!("invalid descriptor platform: {e}"))?,
            );
        }
        if let Some(a) = v.get("annotations") {
            d.annotations = serde_json::from_value(a.clone())
                .map_err(|e| anyhow!("invalid descriptor annotations: {e}"))?;
        }
        return Ok(SourceSpec::Desc(d));
    }
    let r = t.parse::<Reference>().map_err(|e| {
        anyhow!("invalid source {t:?}: expected a reference, a digest or a descriptor: {e}")
    })?;
    Ok(SourceSpec::Ref(r))
}

/// Where each source is fetched from: the reference itself, or the one
/// repository named by the tags and reference sources (buildx refuses to
/// guess when there are several).
pub fn locate(specs: &[SourceSpec], tags: &[Reference]) -> Result<Vec<Reference>> {
    let mut repos: Vec<String> = Vec::new();
    let mut add = |n: String| {
        if !repos.contains(&n) {
            repos.push(n);
        }
    };
    for t in tags {
        add(t.name());
    }
    for s in specs {
        if let SourceSpec::Ref(r) = s {
            add(r.name());
        }
    }
    if repos.is_empty() {
        bail!("no repositories specified, please set a reference in a tag or a source");
    }
    let default_repo = if repos.len() == 1 {
        specs
            .iter()
            .find_map(|s| match s {
                SourceSpec::Ref(r) => Some(r.clone()),
                _ => None,
            })
            .or_else(|| tags.first().cloned())
    } else {
        None
    };
    specs
        .iter()
        .map(|s| match s {
            SourceSpec::Ref(r) => Ok(r.clone()),
            SourceSpec::Digest(d) => default_repo
                .as_ref()
                .map(|r| r.with_digest(d.clone()))
                .ok_or_else(|| {
                    anyhow!("multiple repositories specified, cannot infer the repository for {d}")
                }),
            SourceSpec::Desc(d) => default_repo
                .as_ref()
                .map(|r| r.with_digest(d.digest.clone()))
                .ok_or_else(|| {
                    anyhow!(
                        "multiple repositories specified, cannot infer the repository for {}",
                        d.digest
                    )
                }),
        })
        .collect()
}

/// A source after fetching: its descriptor (media type, digest, size and,
/// for an image manifest, its platform) and content.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where the source and its children can be read from.
    pub origin: Reference,
    /// Its descriptor.
    pub desc: Descriptor,
    /// The manifest or index bytes.
    pub bytes: Vec<u8>,
}

/// Merge what the user's descriptor says into the one the registry gave:
/// sizes must agree; the user's media type, platform and annotations win.
pub fn merge_desc(fetched: &Descriptor, given: &Descriptor) -> Result<Descriptor> {
    if given.size != 0 && given.size != fetched.size {
        bail!(
            "size mismatch for {}: the descriptor says {} bytes, the registry has {}",
            fetched.digest,
            given.size,
            fetched.size
        );
    }
    let mut d = fetched.clone();
    if !given.media_type.is_empty() {
        d.media_type = given.media_type.clone();
    }
    if given.platform.is_some() {
        d.platform = given.platform.clone();
    }
    d.annotations.extend(given.annotations.clone());
    Ok(d)
}

/// The result of [`combine`].
#[derive(Debug, Clone)]
pub struct Combined {
    /// The bytes to push.
    pub bytes: Vec<u8>,
    /// Their descriptor.
    pub descriptor: Descriptor,
    /// Each manifest the result lists, with the index of the source it is
    /// read from (to be copied next to the result before it is pushed).
    pub children: Vec<(Descriptor, usize)>,
    /// Things the user should know (annotations dropped, …).
    pub warnings: Vec<String>,
}

const REF_TYPE: &str = "vnd.docker.reference.type";
const REF_DIGEST: &str = "vnd.docker.reference.digest";

fn is_index_type(m: &str) -> bool {
    mt::is_index(m)
}

/// Combine resolved sources into one index (see the module docs).
/// `platforms`, when not empty, keeps only the manifests of those platforms
/// (and the attestation manifests that describe them).
pub fn combine(srcs: &[Resolved], ann: &Annotations, platforms: &[Platform]) -> Result<Combined> {
    if srcs.is_empty() {
        bail!("no sources specified");
    }
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut from: Vec<usize> = Vec::new();
    let mut at: HashMap<Digest, usize> = HashMap::new();
    let single_index = srcs.len() == 1 && is_index_type(&srcs[0].desc.media_type);
    for (i, s) in srcs.iter().enumerate() {
        let items: Vec<Descriptor> = if is_index_type(&s.desc.media_type) {
            ImageIndex::from_slice(&s.bytes)
                .map_err(|e| anyhow!("{}: unreadable index: {e}", s.origin.familiar()))?
                .manifests
        } else if mt::is_manifest(&s.desc.media_type) {
            vec![s.desc.clone()]
        } else {
            bail!(
                "{}: media type {:?} cannot go into an index",
                s.origin.familiar(),
                s.desc.media_type
            );
        };
        for d in items {
            match at.get(&d.digest) {
                Some(&k) => {
                    let old = &mut descs[k];
                    if old.media_type.is_empty() {
                        old.media_type = d.media_type.clone();
                    }
                    if d.platform.is_some() {
                        old.platform = d.platform.clone();
                    }
                    old.annotations.extend(d.annotations.clone());
                    from[k] = i;
                }
                None => {
                    at.insert(d.digest.clone(), descs.len());
                    descs.push(d);
                    from.push(i);
                }
            }
        }
    }

    // Platform filter: keep the chosen platforms and their attestations.
    if !platforms.is_empty() {
        let kept: HashSet<Digest> = descs
            .iter()
            .filter(|d| d.platform().is_some_and(|p| platforms.contains(&p)))
            .map(|d| d.digest.clone())
            .collect();
        if kept.is_empty() {
            bail!(
                "no manifest matches the requested platforms ({})",
                platforms
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let keep = |d: &Descriptor| {
            kept.contains(&d.digest)
                || (d.annotations.get(REF_TYPE).map(String::as_str) == Some("attestation-manifest")
                    && d.annotations
                        .get(REF_DIGEST)
                        .and_then(|x| Digest::parse(x).ok())
                        .is_some_and(|x| kept.contains(&x)))
        };
        let mut nd = Vec::new();
        let mut nf = Vec::new();
        for (d, f) in descs.into_iter().zip(from) {
            if keep(&d) {
                nd.push(d);
                nf.push(f);
            }
        }
        descs = nd;
        from = nf;
    }

    // A single index, unchanged: carbon copy.
    if single_index && ann.is_empty() && platforms.is_empty() {
        let s = &srcs[0];
        return Ok(Combined {
            bytes: s.bytes.clone(),
            descriptor: Descriptor::new(
                s.desc.media_type.clone(),
                s.desc.digest.clone(),
                s.bytes.len() as u64,
            ),
            children: descs.into_iter().map(|d| (d, 0)).collect(),
            warnings: Vec::new(),
        });
    }

    let all_docker = descs
        .iter()
        .all(|d| d.media_type.starts_with("application/vnd.docker."));
    let mut warnings = Vec::new();
    let mut index_ann: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in ann.iter() {
        match k.target {
            AnnotationTarget::Manifest => bail!(
                "manifest annotations ({}) cannot be set by imagetools create: it writes an \
                 index, not image manifests; use index: or manifest-descriptor:",
                k.key
            ),
            AnnotationTarget::IndexDescriptor => bail!(
                "index-descriptor annotations ({}) are invalid while creating an image",
                k.key
            ),
            _ if all_docker => warnings.push(format!(
                "annotation {} dropped: a Docker manifest list carries no annotations \
                 (the sources are all Docker manifests)",
                k.key
            )),
            AnnotationTarget::Index => {
                index_ann.insert(k.key.clone(), v.clone());
            }
            AnnotationTarget::ManifestDescriptor => {
                for d in descs.iter_mut() {
                    let applies = match &k.platform {
                        None => true,
                        Some(p) => d.platform().as_ref() == Some(p),
                    };
                    if applies {
                        d.annotations.insert(k.key.clone(), v.clone());
                    }
                }
            }
        }
    }
    let mut index = if all_docker {
        ImageIndex::new_docker(descs.clone())
    } else {
        ImageIndex::new_oci(descs.clone())
    };
    index.annotations = index_ann;
    let enc = index
        .encode()
        .map_err(|e| anyhow!("encoding the index: {e}"))?;
    Ok(Combined {
        bytes: enc.bytes,
        descriptor: enc.descriptor,
        children: descs.into_iter().zip(from).collect(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    fn image(platform: &str, seed: &[u8], docker: bool) -> Descriptor {
        let m = if docker {
            mt::DOCKER_MANIFEST
        } else {
            mt::OCI_MANIFEST
        };
        Descriptor::of_bytes(m, seed).with_platform(&Platform::parse(platform).unwrap())
    }

    fn resolved_image(d: &Descriptor) -> Resolved {
        Resolved {
            origin: r("localhost:5000/app@sha256:0000000000000000000000000000000000000000000000000000000000000000"),
            desc: d.clone(),
            bytes: b"{}".to_vec(),
        }
    }

    fn resolved_index(ms: Vec<Descriptor>) -> Resolved {
        let enc = ImageIndex::new_oci(ms).encode().unwrap();
        Resolved {
            origin: r("localhost:5000/app:idx"),
            desc: enc.descriptor.clone(),
            bytes: enc.bytes,
        }
    }

    fn platforms(c: &Combined) -> Vec<String> {
        c.children
            .iter()
            .map(|(d, _)| d.platform().map(|p| p.to_string()).unwrap_or_default())
            .collect()
    }

    #[test]
    fn push_by_digest_sources_become_one_index() {
        let a = image("linux/amd64", b"a", false);
        let b = image("linux/arm64", b"b", false);
        let c = combine(
            &[resolved_image(&a), resolved_image(&b)],
            &Annotations::new(),
            &[],
        )
        .unwrap();
        let idx = ImageIndex::from_slice(&c.bytes).unwrap();
        assert_eq!(idx.effective_media_type(), mt::OCI_INDEX);
        assert_eq!(idx.manifests, vec![a, b]);
        assert_eq!(c.descriptor.digest, Digest::sha256_of(&c.bytes));
        assert_eq!(platforms(&c), ["linux/amd64", "linux/arm64"]);
    }

    #[test]
    fn same_platform_twice_is_kept_like_buildx_and_same_digest_merged() {
        let a1 = image("linux/amd64", b"a1", false);
        let a2 = image("linux/amd64", b"a2", false);
        let a1_again = a1.clone().with_annotation("k", "v");
        let c = combine(
            &[
                resolved_index(vec![a1.clone()]),
                resolved_image(&a2),
                resolved_image(&a1_again),
            ],
            &Annotations::new(),
            &[],
        )
        .unwrap();
        let idx = ImageIndex::from_slice(&c.bytes).unwrap();
        assert_eq!(
            idx.manifests.len(),
            2,
            "same digest is one entry; same platform twice stays"
        );
        assert_eq!(idx.manifests[0].digest, a1.digest);
        assert_eq!(idx.manifests[0].annotations["k"], "v");
        assert_eq!(idx.manifests[1].digest, a2.digest);
        // The merged entry is read from the last source that named it.
        assert_eq!(c.children[0].1, 2);
    }

    #[test]
    fn append_keeps_existing_entries_first() {
        let old = resolved_index(vec![image("linux/amd64", b"a", false)]);
        let newer = image("linux/arm64", b"b", false);
        let c = combine(&[old, resolved_image(&newer)], &Annotations::new(), &[]).unwrap();
        assert_eq!(platforms(&c), ["linux/amd64", "linux/arm64"]);
    }

    #[test]
    fn single_index_is_copied_byte_for_byte() {
        let src = resolved_index(vec![image("linux/amd64", b"a", false)]);
        let c = combine(std::slice::from_ref(&src), &Annotations::new(), &[]).unwrap();
        assert_eq!(c.bytes, src.bytes);
        assert_eq!(c.descriptor.digest, src.desc.digest);
        // With an annotation it is rewritten.
        let mut ann = Annotations::new();
        ann.add_flag("index:org.opencontainers.image.version=2")
            .unwrap();
        let c = combine(&[src], &ann, &[]).unwrap();
        let idx = ImageIndex::from_slice(&c.bytes).unwrap();
        assert_eq!(idx.annotations["org.opencontainers.image.version"], "2");
    }

    #[test]
    fn annotations() {
        let a = image("linux/amd64", b"a", false);
        let b = image("linux/arm64", b"b", false);
        let mut ann = Annotations::new();
        ann.add_flag("index:org.opencontainers.image.title=t")
            .unwrap();
        ann.add_flag("manifest-descriptor:all=1").unwrap();
        ann.add_flag("manifest-descriptor[linux/arm64]:arm=1")
            .unwrap();
        let c = combine(&[resolved_image(&a), resolved_image(&b)], &ann, &[]).unwrap();
        let idx = ImageIndex::from_slice(&c.bytes).unwrap();
        assert_eq!(idx.annotations["org.opencontainers.image.title"], "t");
        assert_eq!(
            idx.manifests[0].annotations.get("all").map(String::as_str),
            Some("1")
        );
        assert!(!idx.manifests[0].annotations.contains_key("arm"));
        assert_eq!(idx.manifests[1].annotations["arm"], "1");

        let mut bad = Annotations::new();
        bad.add_flag("k=v").unwrap();
        let e = combine(&[resolved_image(&a)], &bad, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("manifest annotations"), "{e}");
        let mut bad = Annotations::new();
        bad.add_flag("index-descriptor:k=v").unwrap();
        assert!(combine(&[resolved_image(&a)], &bad, &[]).is_err());
    }

    #[test]
    fn docker_sources_give_a_docker_list_without_annotations() {
        let a = image("linux/amd64", b"a", true);
        let b = image("linux/arm64", b"b", true);
        let mut ann = Annotations::new();
        ann.add_flag("index:k=v").unwrap();
        let c = combine(&[resolved_image(&a), resolved_image(&b)], &ann, &[]).unwrap();
        let idx = ImageIndex::from_slice(&c.bytes).unwrap();
        assert_eq!(idx.effective_media_type(), mt::DOCKER_MANIFEST_LIST);
        assert!(idx.annotations.is_empty());
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn platform_filter_keeps_attestations_of_kept_manifests() {
        let a = image("linux/amd64", b"a", false);
        let b = image("linux/arm64", b"b", false);
        let att = |of: &Descriptor, seed: &[u8]| {
            Descriptor::of_bytes(mt::OCI_MANIFEST, seed)
                .with_platform(&Platform::new("unknown", "unknown", None))
                .with_annotation(REF_TYPE, "attestation-manifest")
                .with_annotation(REF_DIGEST, of.digest.to_string())
        };
        let src = resolved_index(vec![a.clone(), b.clone(), att(&a, b"x"), att(&b, b"y")]);
        let c = combine(
            &[src],
            &Annotations::new(),
            &[Platform::parse("linux/arm64").unwrap()],
        )
        .unwrap();
        let idx = ImageIndex::from_slice(&c.bytes).unwrap();
        assert_eq!(idx.manifests.len(), 2);
        assert_eq!(idx.manifests[0].digest, b.digest);
        assert_eq!(
            idx.manifests[1].annotations[REF_DIGEST],
            b.digest.to_string()
        );
        assert!(combine(
            &[resolved_image(&a)],
            &Annotations::new(),
            &[Platform::parse("linux/s390x").unwrap()]
        )
        .is_err());
    }

    #[test]
    fn sources_and_locations() {
        let d = Digest::sha256_of(b"m");
        assert_eq!(
            parse_source(d.as_str()).unwrap(),
            SourceSpec::Digest(d.clone())
        );
        let json = format!(
            r#"{{"mediaType":"{}","digest":"{}","size":12,"platform":{{"architecture":"arm64","os":"linux"}}}}"#,
            mt::OCI_MANIFEST,
            d
        );
        let SourceSpec::Desc(desc) = parse_source(&json).unwrap() else {
            panic!("descriptor expected")
        };
        assert_eq!(desc.size, 12);
        assert_eq!(desc.platform().unwrap().to_string(), "linux/arm64");
        assert!(parse_source(r#"{"schemaVersion":2,"manifests":[]}"#).is_err());
        assert!(parse_source(r#"{"mediaType":"x"}"#).is_err());
        assert!(parse_source("sha256:nothex").is_err());

        let tags = [r("localhost:5000/app:1.0")];
        let specs = vec![
            SourceSpec::Digest(d.clone()),
            SourceSpec::Desc(desc.clone()),
        ];
        let locs = locate(&specs, &tags).unwrap();
        assert_eq!(locs[0].digest(), Some(&d));
        assert_eq!(locs[0].name(), "localhost:5000/app");
        // Two repositories: a bare digest is ambiguous.
        let specs = vec![
            SourceSpec::Ref(r("localhost:5000/other:1")),
            SourceSpec::Digest(d.clone()),
        ];
        assert!(locate(&specs, &tags).is_err());
        assert!(locate(&[SourceSpec::Digest(d)], &[]).is_err());
    }

    #[test]
    fn descriptor_merge() {
        let fetched = Descriptor::of_bytes(mt::OCI_MANIFEST, b"abc");
        let mut given = fetched
            .clone()
            .with_platform(&Platform::parse("linux/arm64").unwrap());
        given.annotations.insert("a".into(), "b".into());
        let m = merge_desc(&fetched, &given).unwrap();
        assert_eq!(m.platform().unwrap().to_string(), "linux/arm64");
        assert_eq!(m.annotations["a"], "b");
        given.size = 99;
        assert!(merge_desc(&fetched, &given).is_err());
    }
}
