//! Layer application on arbitrary bytes (plain or gzip tar): it never
//! panics and never touches anything outside the root. Each input is
//! applied into `<tmp>/root`, next to `<tmp>/outside/canary`, which the
//! archive can aim at with `../outside/canary`, absolute paths, symlinks
//! or hard links; afterwards the parent holds only `root` and `outside`,
//! and the canary is unchanged with one link.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use xbuild_oci::layer::apply::{apply_layer, ApplyFormat, ApplyOptions};

static N: AtomicU64 = AtomicU64::new(0);
const CANARY: &[u8] = b"canary\n";

fn run(data: &[u8], format: ApplyFormat) {
    let base: PathBuf = std::env::temp_dir().join(format!(
        "xbuild-fuzz-apply-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("canary"), CANARY).unwrap();
    let opts = ApplyOptions {
        chown: false,
        xattrs: false,
        format,
        // Device entries take the same path checks as files (as before
        // this option existed).
        devices: true,
    };
    let _ = apply_layer(data, &root, &opts);
    let mut names: Vec<_> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["outside", "root"], "something was created next to the root");
    let outs: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert_eq!(outs.len(), 1, "something was created in the outside directory");
    let md = std::fs::symlink_metadata(outside.join("canary")).unwrap();
    assert!(md.is_file() && md.nlink() == 1, "the canary was replaced or linked");
    assert_eq!(std::fs::read(outside.join("canary")).unwrap(), CANARY);
    // Make everything removable (the archive may have left 000 dirs).
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+rwx"])
        .arg(&base)
        .status();
    std::fs::remove_dir_all(&base).unwrap();
}

fuzz_target!(|data: &[u8]| {
    run(data, ApplyFormat::Merged);
    run(data, ApplyFormat::Overlay);
});
