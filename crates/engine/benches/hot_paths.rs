//! Micro-benchmarks of the hot paths of a build (issue #8):
//!
//! - `hash/*`: context scanning and sha256 hashing ([`context::scan`]) with
//!   one thread, with every core, and rescanning with a warm [`HashCache`];
//! - `layer/*`: writing a layer from a directory tree (tar + gzip level 1,
//!   and tar alone) and applying a gzip layer onto an empty root.
//!
//! The data is generated, deterministic: about `XBUILD_BENCH_MB` MB
//! (default 64) in files of 1 KiB to 256 KiB, half log-like text, half
//! pseudo-random bytes, 50 files per directory. It lives in
//! `$XBUILD_BENCH_DATA/tree` when that is set (kept and reused, so that
//! `scripts/bench.sh` can time `sha256sum`, `tar | gzip -1` and `pigz` on the
//! same files), else in a temporary directory.
//!
//! Throughput is in bytes of file content. Sampling is flat with 10 samples
//! so that the whole run takes about a minute.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use std::fs;
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use xbuild_engine::context::{scan, HashCache, ScanOptions};
use xbuild_oci::layer::{apply_layer, write_layer, ApplyOptions, WriteOptions};
use xbuild_oci::media_types::Compression;

/// The generated data set.
struct Data {
    /// Keeps a temporary data directory alive.
    _tmp: Option<tempfile::TempDir>,
    /// Root of the data directory (the tree and scratch directories).
    root: PathBuf,
    /// The tree of files.
    tree: PathBuf,
    /// Number of files.
    files: u64,
    /// Bytes of file content.
    bytes: u64,
}

/// splitmix64: small, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

const WORDS: &[&str] = &[
    "INFO",
    "WARN",
    "request",
    "served",
    "path=/api/v1/items",
    "status=200",
    "status=404",
    "user",
    "cache",
    "hit",
    "miss",
    "layer",
    "digest",
    "sha256",
    "took",
    "ms",
];

fn text_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        line += 1;
        write!(out, "{line:08} ").expect("write to a Vec");
        for _ in 0..(4 + rng.next() % 6) {
            let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
            out.extend_from_slice(w.as_bytes());
            out.push(b' ');
        }
        writeln!(out, "id={}", rng.next() % 100_000).expect("write to a Vec");
    }
    out.truncate(len);
    out
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes the tree under `tree` (which must not exist); returns (files, bytes).
fn generate(tree: &Path, target_bytes: u64) -> (u64, u64) {
    let mut rng = Rng(0x5eed_1234);
    let (mut files, mut bytes) = (0u64, 0u64);
    while bytes < target_bytes {
        let dir = tree.join(format!("d{:03}", files / 50));
        if files % 50 == 0 {
            fs::create_dir_all(&dir).expect("create a data directory");
        }
        // 1 KiB .. 256 KiB, skewed towards small files.
        let shift = 10 + rng.next() % 9;
        let len = ((1u64 << shift) + rng.next() % (1u64 << shift)).min(256 * 1024) as usize;
        let (name, content) = if files % 2 == 0 {
            (format!("f{files:05}.log"), text_bytes(&mut rng, len))
        } else {
            (format!("f{files:05}.bin"), random_bytes(&mut rng, len))
        };
        fs::write(dir.join(name), &content).expect("write a data file");
        files += 1;
        bytes += len as u64;
    }
    (files, bytes)
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let mb: u64 = std::env::var("XBUILD_BENCH_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let (tmp, root) = match std::env::var_os("XBUILD_BENCH_DATA") {
            Some(d) => (None, PathBuf::from(d)),
            None => {
                let t = tempfile::tempdir().expect("create a temporary directory");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let tree = root.join("tree");
        let stamp = root.join(format!("generated-{mb}mb"));
        if !stamp.exists() {
            let _ = fs::remove_dir_all(&tree);
            fs::create_dir_all(&root).expect("create the data directory");
            generate(&tree, mb * 1_000_000);
            fs::write(&stamp, b"").expect("write the data stamp");
        }
        let index = scan(&tree, None, &ScanOptions::default(), None).expect("scan the data");
        let files = index.stats.files_hashed;
        let bytes = index.stats.bytes_hashed;
        Data {
            _tmp: tmp,
            root,
            tree,
            files,
            bytes,
        }
    })
}

fn hash(c: &mut Criterion) {
    let d = data();
    let mut g = c.benchmark_group("hash");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    g.throughput(Throughput::Bytes(d.bytes));
    for (id, threads) in [("scan_1_thread", 1), ("scan_all_threads", 0)] {
        let opts = ScanOptions {
            threads,
            ..ScanOptions::default()
        };
        g.bench_function(id, |b| {
            b.iter(|| {
                let index = scan(&d.tree, None, &opts, None).expect("scan");
                assert_eq!(index.stats.bytes_hashed, d.bytes);
                black_box(index)
            })
        });
    }

    // Rescanning an unchanged tree: only metadata, every digest remembered.
    let opts = ScanOptions {
        threads: 1,
        ..ScanOptions::default()
    };
    let mut cache = HashCache::in_memory();
    for _ in 0..10 {
        let index = scan(&d.tree, None, &opts, Some(&mut cache)).expect("scan");
        if index.stats.cache_hits == d.files {
            break;
        }
        // Files modified within the racy window are not remembered yet.
        std::thread::sleep(Duration::from_millis(100));
    }
    g.throughput(Throughput::Elements(d.files));
    g.bench_function("scan_warm_cache", |b| {
        b.iter(|| {
            let index = scan(&d.tree, None, &opts, Some(&mut cache)).expect("scan");
            assert_eq!(index.stats.bytes_hashed, 0, "the hash cache is warm");
            black_box(index)
        })
    });
    g.finish();
}

fn layer(c: &mut Criterion) {
    let d = data();
    let mut g = c.benchmark_group("layer");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(d.bytes));

    let gzip1 = WriteOptions::default();
    assert_eq!(gzip1.compression, Compression::Gzip);
    assert_eq!(gzip1.compression_level, 1);
    g.bench_function("write_gzip1", |b| {
        b.iter(|| {
            let (out, _) = write_layer(&d.tree, std::io::sink(), &gzip1).expect("write_layer");
            black_box(out)
        })
    });
    let tar = WriteOptions {
        compression: Compression::None,
        ..WriteOptions::default()
    };
    g.bench_function("write_tar", |b| {
        b.iter(|| {
            let (out, _) = write_layer(&d.tree, std::io::sink(), &tar).expect("write_layer");
            black_box(out)
        })
    });

    let (_, blob) = write_layer(&d.tree, Vec::new(), &gzip1).expect("write_layer");
    let apply = ApplyOptions::default();
    g.bench_function("apply_gzip1", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(&d.root).expect("create an apply root"),
            |root| {
                let stats = apply_layer(&blob[..], root.path(), &apply).expect("apply_layer");
                assert_eq!(stats.bytes, d.bytes);
                // Returned, so that removing it is not timed.
                (root, stats)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, hash, layer);
criterion_main!(benches);
