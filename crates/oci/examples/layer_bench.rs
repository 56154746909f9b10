//! Measure layer writing throughput:
//! `cargo run --release -p xbuild-oci --example layer_bench -- DIR [LEVEL]`.
//! With no DIR, a ~200 MB tree (mixed text-like and random content) is
//! generated in a temp dir first.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use xbuild_oci::layer::{write_layer, WriteOptions};

fn generate(root: &std::path::Path) -> u64 {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let words = [
        "fn ", "let ", "return ", "struct ", "impl ", "0x1f ", "{\n", "}\n", "error ", "value ",
    ];
    let mut total = 0u64;
    for d in 0..40 {
        let dir = root.join(format!("dir{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            let size = 20_000 + (rnd() % 160_000) as usize;
            let mut data = Vec::with_capacity(size);
            if f % 2 == 0 {
                while data.len() < size {
                    data.extend_from_slice(words[(rnd() % 10) as usize].as_bytes());
                }
            } else {
                while data.len() < size {
                    data.extend_from_slice(&rnd().to_le_bytes());
                }
            }
            data.truncate(size);
            std::fs::File::create(dir.join(format!("f{f:03}")))
                .unwrap()
                .write_all(&data)
                .unwrap();
            total += size as u64;
        }
    }
    total
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (_keep, dir) = match args.next() {
        Some(d) if d != "-" => (None, PathBuf::from(d)),
        _ => {
            let t = tempfile::tempdir().unwrap();
            let n = generate(t.path());
            eprintln!("generated {} MB", n / 1_000_000);
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let level: u32 = args.next().map(|l| l.parse().unwrap()).unwrap_or(1);
    let opts = WriteOptions {
        compression_level: level,
        source_date_epoch: Some(0),
        ..WriteOptions::default()
    };
    // Warm the page cache, then time.
    let _ = write_layer(&dir, std::io::sink(), &opts).unwrap();
    let t = Instant::now();
    let (out, _) = write_layer(&dir, std::io::sink(), &opts).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "level {level}: {} MB tar -> {} MB gzip in {secs:.2}s = {:.0} MB/s (uncompressed)",
        out.uncompressed_size / 1_000_000,
        out.size / 1_000_000,
        out.uncompressed_size as f64 / 1e6 / secs
    );
}
