//! Image assembly: the config, layers and history of one stage, built the
//! way Docker/BuildKit write them, and written to the content store as an
//! OCI image (config + manifest).

use std::io::BufReader;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use xbuild_oci::config::{Healthcheck, History, ImageConfig};
use xbuild_oci::digest::Digest;
use xbuild_oci::layer::{apply_layer, ApplyOptions};
use xbuild_oci::manifest::{ImageIndex, ImageManifest};
use xbuild_oci::media_types as mt;
use xbuild_oci::store::BlobStore;
use xbuild_oci::{Descriptor, Platform};
use xbuild_plan::{ConfigOp, DEFAULT_PATH};

/// Errors from assembling, writing or exporting an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The content store failed.
    #[error("content store: {0}")]
    Store(#[from] xbuild_oci::store::StoreError),
    /// Encoding a config or manifest failed.
    #[error("encoding {what}: {message}")]
    Encode {
        /// Config or manifest.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A blob the image needs is not in the store.
    #[error("blob {0} is missing from the content store")]
    MissingBlob(Digest),
    /// A stored manifest or config does not parse.
    #[error("stored {what} {digest} is invalid: {message}")]
    Invalid {
        /// Manifest, index or config.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// Why.
        message: String,
    },
    /// Applying a layer to the export directory failed.
    #[error("exporting layer {digest} to {path}: {message}")]
    Export {
        /// Layer digest.
        digest: Digest,
        /// Destination directory.
        path: String,
        /// Why.
        message: String,
    },
}

/// The config, layers and history of a stage being built.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    config: ImageConfig,
    layers: Vec<Descriptor>,
    platform: Platform,
    /// Set by ENTRYPOINT so a CMD inherited from the base is dropped, as Docker does.
    cmd_set_in_stage: bool,
}

/// Format seconds since the epoch as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The time to stamp on configs and history: `SOURCE_DATE_EPOCH` when
/// given (whole seconds), else now with its nanoseconds (trailing zeros
/// dropped), as BuildKit writes it: two builds in the same second still
/// get distinct, ordered times.
pub fn timestamp(source_date_epoch: Option<i64>) -> String {
    match source_date_epoch {
        Some(secs) => rfc3339(secs),
        None => {
            let d = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            rfc3339_nanos(d.as_secs() as i64, d.subsec_nanos())
        }
    }
}

/// [`rfc3339`] with a fraction of a second (`…:05.12Z`; none when zero).
pub fn rfc3339_nanos(secs: i64, nanos: u32) -> String {
    let whole = rfc3339(secs);
    if nanos == 0 {
        return whole;
    }
    let frac = format!("{:09}", nanos.min(999_999_999));
    let frac = frac.trim_end_matches('0');
    format!("{}.{frac}Z", whole.trim_end_matches('Z'))
}

/// An order of RFC 3339 UTC times that is right with and without a
/// fraction (text order puts `…:05.5Z` before `…:05Z`).
fn time_order(t: &str) -> (&str, u32) {
    let (head, rest) = t.split_at(t.len().min(19));
    let nanos = rest
        .strip_prefix('.')
        .map(|r| {
            let digits: String = r.chars().take_while(char::is_ascii_digit).take(9).collect();
            format!("{digits:0<9}").parse::<u32>().unwrap_or(0)
        })
        .unwrap_or(0);
    (head, nanos)
}

/// OCI media type for a layer descriptor, converting Docker's spellings.
fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        mt::DOCKER_LAYER_TAR_GZIP => mt::OCI_LAYER_TAR_GZIP,
        mt::DOCKER_LAYER_TAR => mt::OCI_LAYER_TAR,
        mt::DOCKER_LAYER_FOREIGN_TAR_GZIP => mt::OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP,
        other => other,
    }
}

impl ImageBuilder {
    /// An empty image (`FROM scratch`): no layers, `PATH` set as BuildKit does.
    pub fn scratch(platform: &Platform) -> Self {
        let mut config = ImageConfig::for_platform(platform);
        config.rootfs.kind = "layers".into();
        config.config.env = vec![format!("PATH={DEFAULT_PATH}")];
        // BuildKit's empty image has WorkingDir "/" (testDockerfileScratchConfig).
        config.config.working_dir = "/".into();
        ImageBuilder {
            config,
            layers: Vec::new(),
            platform: platform.clone(),
            cmd_set_in_stage: false,
        }
    }

    /// Start from a base image: its layers, config and history are kept;
    /// its ONBUILD triggers were run by the plan and are not inherited.
    pub fn from_base(manifest: &ImageManifest, config: &ImageConfig, platform: &Platform) -> Self {
        let mut config = config.clone();
        config.config.on_build.clear();
        config.set_platform(platform);
        if config.rootfs.kind.is_empty() {
            config.rootfs.kind = "layers".into();
        }
        if config.config.env_get("PATH").is_none() {
            config.config.env_set("PATH", DEFAULT_PATH);
        }
        let layers = manifest
            .layers
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.media_type = oci_layer_type(&l.media_type).to_string();
                l
            })
            .collect();
        ImageBuilder {
            config,
            layers,
            platform: platform.clone(),
            cmd_set_in_stage: false,
        }
    }

    /// The start of a stage built `FROM` this one: same layers and config,
    /// but no ONBUILD triggers (the plan ran them) and no CMD set in the
    /// new stage yet, so its ENTRYPOINT resets the inherited CMD as it
    /// would over an image.
    pub fn for_child_stage(&self) -> Self {
        let mut b = self.clone();
        b.config.config.on_build.clear();
        b.cmd_set_in_stage = false;
        b
    }

    /// Apply one metadata instruction to the config.
    pub fn apply_config(&mut self, op: &ConfigOp) {
        let c = &mut self.config.config;
        match op {
            ConfigOp::Env(pairs) => {
                for (k, v) in pairs {
                    c.env_set(k, v);
                }
            }
            ConfigOp::Label(pairs) => {
                for (k, v) in pairs {
                    c.labels.insert(k.clone(), v.clone());
                }
            }
            ConfigOp::Workdir(w) => c.working_dir = w.clone(),
            ConfigOp::User(u) => c.user = u.clone(),
            ConfigOp::Expose(ports) => {
                for p in ports {
                    c.exposed_ports.insert(p.clone(), Default::default());
                }
            }
            ConfigOp::Volume(vols) => {
                for v in vols {
                    c.volumes.insert(v.clone(), Default::default());
                }
            }
            ConfigOp::Entrypoint(argv) => {
                c.entrypoint = Some(argv.clone());
                // Docker: a CMD inherited from the base is reset by ENTRYPOINT.
                if !self.cmd_set_in_stage {
                    c.cmd = None;
                }
            }
            ConfigOp::Cmd(argv) => {
                c.cmd = Some(argv.clone());
                self.cmd_set_in_stage = true;
            }
            ConfigOp::Shell(sh) => c.shell = sh.clone(),
            ConfigOp::StopSignal(s) => c.stop_signal = s.clone(),
            ConfigOp::Healthcheck(h) => {
                c.healthcheck = Some(Healthcheck {
                    test: h.test.clone(),
                    interval: h.interval.unwrap_or(0),
                    timeout: h.timeout.unwrap_or(0),
                    start_period: h.start_period.unwrap_or(0),
                    start_interval: h.start_interval.unwrap_or(0),
                    retries: h.retries.unwrap_or(0).clamp(0, i32::MAX as i64) as i32,
                });
            }
            ConfigOp::Onbuild(t) => c.on_build.push(t.clone()),
            ConfigOp::Maintainer(m) => self.config.author = Some(m.clone()),
            ConfigOp::Arg(_) => {}
        }
    }

    /// Add a layer produced by a step at time `created` (RFC 3339; `None`
    /// stamps the time the image is written).
    pub fn add_layer(
        &mut self,
        layer: Descriptor,
        diff_id: Digest,
        created_by: &str,
        created: Option<String>,
    ) {
        self.layers.push(layer);
        self.config.rootfs.diff_ids.push(diff_id);
        self.config.history.push(History {
            created,
            created_by: Some(created_by.to_string()),
            comment: Some("buildkit.dockerfile.v0".into()),
            ..Default::default()
        });
    }

    /// Record a step that changed no files, run at time `created`.
    pub fn add_empty_history(&mut self, created_by: &str, created: Option<String>) {
        self.config.history.push(History {
            created,
            created_by: Some(created_by.to_string()),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: true,
            ..Default::default()
        });
    }

    /// Layers so far.
    pub fn layers(&self) -> &[Descriptor] {
        &self.layers
    }

    /// Diff IDs so far.
    pub fn diff_ids(&self) -> &[Digest] {
        &self.config.rootfs.diff_ids
    }

    /// The config so far.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// The platform of the image.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Write config and manifest to the store. History entries without a
    /// time get `created` (SOURCE_DATE_EPOCH or now). The config's `created`
    /// is the latest history time, so a rebuild where every step is cached
    /// (each keeps the time it first ran) gives the same image digest.
    pub fn write(
        &self,
        store: &BlobStore,
        source_date_epoch: Option<i64>,
    ) -> Result<(Descriptor, ImageConfig), ImageError> {
        self.write_with(store, source_date_epoch, &|_| false)
    }

    /// [`write`](Self::write), accepting layers absent from `store` for
    /// which `elsewhere` is true (a remote agent's layers that its
    /// coordinator holds and the agent never needed to fetch).
    pub fn write_with(
        &self,
        store: &BlobStore,
        source_date_epoch: Option<i64>,
        elsewhere: &(dyn Fn(&Descriptor) -> bool + Send + Sync),
    ) -> Result<(Descriptor, ImageConfig), ImageError> {
        let now = timestamp(source_date_epoch);
        let mut config = self.config.clone();
        for h in config.history.iter_mut() {
            if h.created.is_none() {
                h.created = Some(now.clone());
            }
        }
        if let Some(epoch) = source_date_epoch {
            // Reproducible builds: no time after the epoch anywhere in the config.
            let limit = rfc3339(epoch);
            for h in config.history.iter_mut() {
                if h.created
                    .as_deref()
                    .is_some_and(|c| time_order(c) > time_order(&limit))
                {
                    h.created = Some(limit.clone());
                }
            }
        }
        config.created = config
            .history
            .iter()
            .filter_map(|h| h.created.clone())
            .max_by(|a, b| time_order(a).cmp(&time_order(b)))
            .or(Some(now));
        if let Some(epoch) = source_date_epoch {
            config.created = Some(rfc3339(epoch));
        }
        for l in &self.layers {
            if !store.exists(&l.digest) && !elsewhere(l) {
                return Err(ImageError::MissingBlob(l.digest.clone()));
            }
        }
        let enc = config.encode().map_err(|e| ImageError::Encode {
            what: "image config",
            message: e.to_string(),
        })?;
        store.put_bytes(&enc.bytes)?;
        let manifest = ImageManifest::new_oci(enc.descriptor.clone(), self.layers.clone());
        let m = manifest.encode().map_err(|e| ImageError::Encode {
            what: "manifest",
            message: e.to_string(),
        })?;
        store.put_bytes(&m.bytes)?;
        Ok((m.descriptor.with_platform(&self.platform), config))
    }
}

/// Write an OCI index over single-platform manifests (already in the store).
pub fn write_index(store: &BlobStore, manifests: &[Descriptor]) -> Result<Descriptor, ImageError> {
    let index = ImageIndex::new_oci(manifests.to_vec());
    let enc = index.encode().map_err(|e| ImageError::Encode {
        what: "index",
        message: e.to_string(),
    })?;
    store.put_bytes(&enc.bytes)?;
    Ok(enc.descriptor)
}

/// Docker media types for an image (`--output type=image,oci-mediatypes=false`):
/// each manifest of `manifests` is rewritten as a Docker v2 schema 2
/// manifest (config and gzip layers relabelled; the blobs themselves are
/// unchanged) and stored, and the returned descriptors keep their platform.
/// A zstd layer has no Docker media type and is refused.
pub fn to_docker_manifests(
    store: &BlobStore,
    manifests: &[Descriptor],
) -> Result<Vec<Descriptor>, ImageError> {
    let mut out = Vec::with_capacity(manifests.len());
    for desc in manifests {
        let m = read_manifest(store, &desc.digest)?;
        let mut config = m.config.clone();
        config.media_type = mt::DOCKER_CONFIG.to_string();
        let mut layers = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            let media_type = match l.media_type.as_str() {
                mt::OCI_LAYER_TAR_GZIP | mt::DOCKER_LAYER_TAR_GZIP => mt::DOCKER_LAYER_TAR_GZIP,
                mt::OCI_LAYER_TAR | mt::DOCKER_LAYER_TAR => mt::DOCKER_LAYER_TAR,
                other => {
                    return Err(ImageError::Invalid {
                        what: "manifest",
                        digest: desc.digest.clone(),
                        message: format!(
                            "layer {} has media type {other}, which Docker media types \
                             cannot express; use oci-mediatypes=true",
                            l.digest
                        ),
                    })
                }
            };
            let mut l2 = Descriptor::new(media_type, l.digest.clone(), l.size);
            l2.urls = l.urls.clone();
            layers.push(l2);
        }
        let docker = ImageManifest::new_docker(
            Descriptor::new(mt::DOCKER_CONFIG, config.digest, config.size),
            layers,
        );
        let enc = docker.encode().map_err(|e| ImageError::Encode {
            what: "manifest",
            message: e.to_string(),
        })?;
        store.put_bytes(&enc.bytes)?;
        let mut d = enc.descriptor;
        d.platform = desc.platform.clone();
        out.push(d);
    }
    Ok(out)
}

/// Write a Docker manifest list over `manifests` (Docker manifests from
/// [`to_docker_manifests`]).
pub fn write_docker_index(
    store: &BlobStore,
    manifests: &[Descriptor],
) -> Result<Descriptor, ImageError> {
    let index = ImageIndex::new_docker(manifests.to_vec());
    let enc = index.encode().map_err(|e| ImageError::Encode {
        what: "manifest list",
        message: e.to_string(),
    })?;
    store.put_bytes(&enc.bytes)?;
    Ok(enc.descriptor)
}

/// Read a stored manifest.
pub fn read_manifest(store: &BlobStore, digest: &Digest) -> Result<ImageManifest, ImageError> {
    if !store.exists(digest) {
        return Err(ImageError::MissingBlob(digest.clone()));
    }
    let bytes = store.read_to_vec(digest)?;
    ImageManifest::from_slice(&bytes).map_err(|e| ImageError::Invalid {
        what: "manifest",
        digest: digest.clone(),
        message: e.to_string(),
    })
}

/// Read a stored image config.
pub fn read_config(store: &BlobStore, digest: &Digest) -> Result<ImageConfig, ImageError> {
    if !store.exists(digest) {
        return Err(ImageError::MissingBlob(digest.clone()));
    }
    let bytes = store.read_to_vec(digest)?;
    ImageConfig::from_slice(&bytes).map_err(|e| ImageError::Invalid {
        what: "config",
        digest: digest.clone(),
        message: e.to_string(),
    })
}

/// Write the final filesystem of a single-platform image into `dest`
/// (`-o type=local`): its layers applied in order, whiteouts honoured.
pub fn export_rootfs(
    store: &BlobStore,
    manifest: &Descriptor,
    dest: &Path,
) -> Result<(), ImageError> {
    let m = read_manifest(store, &manifest.digest)?;
    std::fs::create_dir_all(dest).map_err(|e| ImageError::Export {
        digest: manifest.digest.clone(),
        path: dest.display().to_string(),
        message: e.to_string(),
    })?;
    let opts = ApplyOptions::default();
    for layer in &m.layers {
        let mut f = store
            .open_verified(&layer.digest, Some(layer.size))
            .map_err(|e| match e {
                xbuild_oci::store::StoreError::NotFound(_) => {
                    ImageError::MissingBlob(layer.digest.clone())
                }
                other => ImageError::Export {
                    digest: layer.digest.clone(),
                    path: dest.display().to_string(),
                    message: other.to_string(),
                },
            })?;
        let applied = apply_layer(BufReader::new(&mut f), dest, &opts);
        let checked = f.finish();
        let export_err = |message: String| ImageError::Export {
            digest: layer.digest.clone(),
            path: dest.display().to_string(),
            message,
        };
        checked.map_err(|e| export_err(e.to_string()))?;
        applied.map_err(|e| export_err(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xbuild_plan::HealthcheckSpec;

    #[test]
    fn fractions_of_a_second() {
        assert_eq!(rfc3339_nanos(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nanos(0, 120_000_000), "1970-01-01T00:00:00.12Z");
        assert_eq!(rfc3339_nanos(0, 1), "1970-01-01T00:00:00.000000001Z");
        assert!(time_order("2024-01-01T00:00:05.5Z") > time_order("2024-01-01T00:00:05Z"));
        assert!(time_order("2024-01-01T00:00:05.5Z") < time_order("2024-01-01T00:00:06Z"));
        assert!(time_order("2024-01-01T00:00:05.05Z") < time_order("2024-01-01T00:00:05.5Z"));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn scratch_has_workdir_root() {
        let p = Platform::parse("linux/amd64").unwrap();
        assert_eq!(ImageBuilder::scratch(&p).config().config.working_dir, "/");
    }

    #[test]
    fn a_child_stage_resets_the_cmd_of_its_parent_stage_on_entrypoint() {
        let p = Platform::parse("linux/amd64").unwrap();
        let mut parent = ImageBuilder::scratch(&p);
        parent.apply_config(&ConfigOp::Cmd(vec!["serve".into()]));
        parent.apply_config(&ConfigOp::Onbuild("RUN x".into()));
        let mut child = parent.for_child_stage();
        assert!(child.config().config.on_build.is_empty());
        assert_eq!(child.config().config.cmd, Some(vec!["serve".to_string()]));
        child.apply_config(&ConfigOp::Entrypoint(vec!["/app".into()]));
        assert_eq!(child.config().config.cmd, None);
    }

    #[test]
    fn config_ops_follow_docker() {
        let p = Platform::parse("linux/arm64").unwrap();
        let mut base = ImageConfig::for_platform(&p);
        base.config.cmd = Some(vec!["sh".into()]);
        base.config.on_build = vec!["RUN x".into()];
        base.config.env = vec!["PATH=/bin".into(), "A=1".into()];
        let manifest = ImageManifest::new_oci(Descriptor::of_bytes(mt::OCI_CONFIG, b"{}"), vec![]);
        let mut b = ImageBuilder::from_base(&manifest, &base, &p);
        assert!(
            b.config().config.on_build.is_empty(),
            "triggers are not inherited"
        );
        b.apply_config(&ConfigOp::Env(vec![
            ("A".into(), "2".into()),
            ("B".into(), "3".into()),
        ]));
        assert_eq!(b.config().config.env, ["PATH=/bin", "A=2", "B=3"]);
        b.apply_config(&ConfigOp::Entrypoint(vec!["/app".into()]));
        assert_eq!(
            b.config().config.cmd,
            None,
            "inherited CMD reset by ENTRYPOINT"
        );
        b.apply_config(&ConfigOp::Cmd(vec!["--help".into()]));
        b.apply_config(&ConfigOp::Entrypoint(vec!["/app2".into()]));
        assert_eq!(
            b.config().config.cmd,
            Some(vec!["--help".to_string()]),
            "CMD of this stage kept"
        );
        b.apply_config(&ConfigOp::Expose(vec!["80/tcp".into()]));
        b.apply_config(&ConfigOp::Volume(vec!["/data".into()]));
        b.apply_config(&ConfigOp::Healthcheck(HealthcheckSpec {
            test: vec!["NONE".into()],
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
        }));
        b.apply_config(&ConfigOp::Maintainer("me".into()));
        let c = b.config();
        assert!(c.config.exposed_ports.contains_key("80/tcp"));
        assert!(c.config.volumes.contains_key("/data"));
        assert_eq!(c.config.healthcheck.as_ref().unwrap().test, ["NONE"]);
        assert_eq!(c.author.as_deref(), Some("me"));
        assert_eq!(c.platform(), p);
    }

    #[test]
    fn write_is_reproducible_with_source_date_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let p = Platform::parse("linux/amd64").unwrap();
        let mut b = ImageBuilder::scratch(&p);
        b.add_empty_history("WORKDIR /x", None);
        let (d1, c1) = b.write(&store, Some(1_700_000_000)).unwrap();
        let (d2, _) = b.write(&store, Some(1_700_000_000)).unwrap();
        assert_eq!(d1, d2);
        assert_eq!(c1.created.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(d1.platform(), Some(p));
        let idx = write_index(&store, std::slice::from_ref(&d1)).unwrap();
        assert!(store.exists(&idx.digest));
        assert_eq!(read_manifest(&store, &d1.digest).unwrap().layers.len(), 0);
    }
}
