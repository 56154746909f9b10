//! OCI 1.1 referrers: manifests that point at another one through their
//! `subject` (signatures, SBOMs, provenance). Listed through the registry's
//! referrers API, or — on registries without it, such as distribution 2.x
//! — through the tag schema: an image index tagged `<alg>-<hex>` of the
//! subject's digest that the pushing client keeps up to date.

use crate::{ctx, ProgressFn, Registry, RegistryError, MAX_MANIFEST_SIZE};
use xbuild_oci::media_types as mt;
use xbuild_oci::{BlobStore, Descriptor, Digest, ImageIndex, ImageManifest, Reference};

/// The tag of the referrers tag schema for `subject`: `sha256-<hex>`.
pub fn referrers_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm().as_str(), subject.hex())
}

/// How a pushed referrer was made discoverable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferrerIndexing {
    /// The registry's referrers API lists it.
    Api,
    /// It was added to the tag schema index under this tag.
    TagSchema {
        /// `sha256-<hex>` of the subject.
        tag: String,
    },
}

impl Registry {
    /// The referrers of `subject` in `r`'s repository: the referrers API's
    /// answer, or the tag schema index when the registry has no API (an
    /// empty index when neither exists). Entries carry digest, media type
    /// and annotations; read each manifest for its `artifactType`.
    pub async fn referrers(
        &self,
        r: &Reference,
        subject: &Digest,
    ) -> Result<ImageIndex, RegistryError> {
        let hc = self.host(r.registry()).await?;
        let c = ctx(r, format!("referrers of {subject}"));
        let scheme = if self.is_plain_http(r.registry()) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{}/v2/{}/referrers/{subject}",
            r.api_registry(),
            r.repository()
        );
        let http = self.http().map_err(|e| c.reqwest(&e))?;
        // The API's answer, read up to the manifest cap; None: no API (404).
        let api = self
            .retry(|| async {
                let token = self
                    .prime_token(&hc, r, oci_client::RegistryOperation::Pull, &c)
                    .await?;
                let mut req = http
                    .get(&url)
                    .header(reqwest::header::ACCEPT, mt::OCI_INDEX);
                req = match (&token, &hc.auth) {
                    (Some(t), _) => req.bearer_auth(t),
                    (None, oci_client::secrets::RegistryAuth::Basic(u, p)) => {
                        req.basic_auth(u, Some(p))
                    }
                    _ => req,
                };
                let mut res = req.send().await.map_err(|e| c.reqwest(&e))?;
                match res.status().as_u16() {
                    404 => Ok(None),
                    200 => match crate::token::read_capped(&mut res, MAX_MANIFEST_SIZE)
                        .await
                        .map_err(|e| c.reqwest(&e))?
                    {
                        Ok(body) => Ok(Some(body)),
                        Err(n) => Err(c.protocol(
                            None,
                            format!(
                                "the referrers index is larger than {MAX_MANIFEST_SIZE} bytes \
                                 ({n} bytes seen); refusing it"
                            ),
                        )),
                    },
                    _ => Err(crate::blob_get::error_of(res, &url, &c).await),
                }
            })
            .await?;
        let bytes = match api {
            Some(body) => body,
            // No referrers API: the tag schema, or no referrers at all.
            None => {
                let tag_ref = r
                    .without_digest()
                    .with_tag(&referrers_tag(subject))
                    .map_err(|e| RegistryError::Invalid {
                        reference: r.to_string(),
                        what: "referrers tag",
                        detail: e.to_string(),
                    })?;
                match self.fetch_manifest(&tag_ref).await {
                    Ok((_, media_type, _)) if mt::is_manifest(&media_type) => {
                        return Err(c.protocol(
                            None,
                            format!(
                                "referrers tag schema: tag {} holds an image manifest, not an index",
                                referrers_tag(subject)
                            ),
                        ));
                    }
                    Ok((bytes, _, _)) => bytes,
                    Err(e) if e.is_not_found() => return Ok(ImageIndex::new_oci(Vec::new())),
                    Err(e) => return Err(e),
                }
            }
        };
        ImageIndex::from_slice(&bytes)
            .map_err(|e| c.protocol(None, format!("invalid referrers index: {e}")))
    }

    /// Push the artifact manifest `artifact` (in `store`, with a `subject`
    /// pointing at `subject`) and its blobs to `r`'s repository, then make
    /// sure the referrers of `subject` list it: when the registry's
    /// referrers API does not, add it to the tag schema index (created if
    /// missing, other entries kept).
    pub async fn push_referrer(
        &self,
        r: &Reference,
        store: &BlobStore,
        artifact: &Descriptor,
        subject: &Digest,
        progress: ProgressFn<'_>,
    ) -> Result<ReferrerIndexing, RegistryError> {
        let pushed = self
            .push_image_untagged(r, store, artifact, progress)
            .await?;
        let tag = referrers_tag(subject);
        let tag_ref = r
            .without_digest()
            .with_tag(&tag)
            .map_err(|e| RegistryError::Invalid {
                reference: r.to_string(),
                what: "referrers tag",
                detail: e.to_string(),
            })?;
        let existing = match self.fetch_manifest(&tag_ref).await {
            Ok((bytes, _, _)) => {
                Some(
                    ImageIndex::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
                        reference: tag_ref.to_string(),
                        what: "referrers index",
                        detail: e.to_string(),
                    })?,
                )
            }
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let in_tag = existing
            .as_ref()
            .is_some_and(|i| i.manifests.iter().any(|d| d.digest == pushed.digest));
        if in_tag {
            return Ok(ReferrerIndexing::TagSchema { tag });
        }
        let listed = self.referrers(r, subject).await?;
        if listed.manifests.iter().any(|d| d.digest == pushed.digest) {
            return Ok(ReferrerIndexing::Api);
        }
        // The entry as the referrers API would list it: the manifest's
        // descriptor with its artifactType and annotations.
        let m = ImageManifest::from_slice(&store.read_to_vec(&artifact.digest)?).map_err(|e| {
            RegistryError::Invalid {
                reference: r.to_string(),
                what: "referrer manifest",
                detail: e.to_string(),
            }
        })?;
        let mut entry = Descriptor::new(
            pushed.media_type.clone(),
            pushed.digest.clone(),
            pushed.size,
        );
        entry.artifact_type = m
            .artifact_type
            .clone()
            .or_else(|| Some(m.config.media_type.clone()));
        entry.annotations = m.annotations.clone();
        let mut idx = existing.unwrap_or_else(|| ImageIndex::new_oci(Vec::new()));
        idx.manifests.push(entry);
        let enc = idx.encode().map_err(|e| RegistryError::Invalid {
            reference: tag_ref.to_string(),
            what: "referrers index",
            detail: e.to_string(),
        })?;
        self.push_manifest_bytes(&tag_ref, &enc.bytes, mt::OCI_INDEX)
            .await?;
        self.tag_manifest(&tag_ref, &enc.bytes, mt::OCI_INDEX)
            .await?;
        Ok(ReferrerIndexing::TagSchema { tag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_schema_name() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(referrers_tag(&d), format!("sha256-{}", d.hex()));
    }
}
