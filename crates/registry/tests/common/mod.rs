//! Shared helpers: build tiny images by hand in a blob store, count
//! progress events.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use xbuild_oci::digest::Algorithm;
use xbuild_oci::layer::{write_layer, WriteOptions};
use xbuild_oci::{BlobStore, Descriptor, ImageConfig, ImageIndex, ImageManifest, Platform};
use xbuild_registry::{Direction, Progress, Registry, RegistryConfig};

/// A registry client whose docker config lives in `dir` (never the
/// user's), with quick retries.
pub fn client(dir: &std::path::Path) -> Registry {
    Registry::new(RegistryConfig {
        docker_config: Some(dir.join("config.json")),
        retries: 2,
        ..RegistryConfig::default()
    })
}

/// Build a one-layer image for `platform` whose only file holds `content`;
/// returns the manifest's descriptor (with platform).
pub fn build_image(store: &BlobStore, platform: &Platform, content: &str) -> Descriptor {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("hello.txt"), content).unwrap();
    std::fs::create_dir(src.path().join("etc")).unwrap();
    std::fs::write(src.path().join("etc/arch"), platform.to_string()).unwrap();
    let w = store.writer(Algorithm::Sha256).unwrap();
    let opts = WriteOptions {
        source_date_epoch: Some(0),
        ..WriteOptions::default()
    };
    let (out, w) = write_layer(src.path(), w, &opts).unwrap();
    w.commit(Some(&out.digest)).unwrap();
    let mut cfg = ImageConfig::for_platform(platform);
    cfg.rootfs.diff_ids = vec![out.diff_id.clone()];
    cfg.config.cmd = Some(vec!["/bin/sh".into()]);
    let cfg = cfg.encode().unwrap();
    store.put_bytes(&cfg.bytes).unwrap();
    let m = ImageManifest::new_oci(cfg.descriptor, vec![out.descriptor()])
        .encode()
        .unwrap();
    store.put_bytes(&m.bytes).unwrap();
    m.descriptor.with_platform(platform)
}

/// Store an OCI index of `children`; returns its descriptor.
pub fn build_index(store: &BlobStore, children: Vec<Descriptor>) -> Descriptor {
    let enc = ImageIndex::new_oci(children).encode().unwrap();
    store.put_bytes(&enc.bytes).unwrap();
    enc.descriptor
}

/// Counts progress events by direction, and the blobs that moved.
#[derive(Default)]
pub struct Counter {
    pub pull: AtomicUsize,
    pub push: AtomicUsize,
    pub blobs: Mutex<Vec<String>>,
}

impl Counter {
    pub fn record(&self, p: Progress) {
        match p.kind {
            Direction::Pull => self.pull.fetch_add(1, Ordering::SeqCst),
            Direction::Push => self.push.fetch_add(1, Ordering::SeqCst),
        };
        assert!(p.current <= p.total, "{p:?}");
        let mut b = self.blobs.lock().unwrap();
        if !b.contains(&p.digest.to_string()) {
            b.push(p.digest.to_string());
        }
    }
    pub fn pushes(&self) -> usize {
        self.push.load(Ordering::SeqCst)
    }
    pub fn pulls(&self) -> usize {
        self.pull.load(Ordering::SeqCst)
    }
}

pub fn platform(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}
