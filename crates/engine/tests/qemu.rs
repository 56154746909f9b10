//! A foreign-architecture build through QEMU user emulation, when an arm64
//! binfmt_misc handler with the `F` flag is registered
//! (`xbuild binfmt install linux/arm64`).

mod common;

use common::*;
use xbuild_engine::image::{export_rootfs, read_config, read_manifest};
use xbuild_sandbox::binfmt::{can_run, Support};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_build_through_qemu() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let arm = xbuild_oci::Platform::parse("linux/arm64").unwrap();
    match can_run("arm64") {
        Support::Emulated { .. } => {}
        Support::Native => {
            eprintln!("SKIPPED: arm64 is native here; nothing to emulate");
            return;
        }
        Support::Missing => {
            eprintln!(
                "SKIPPED: no arm64 binfmt_misc handler with the F flag is registered \
                 (run `xbuild binfmt install linux/arm64`)"
            );
            return;
        }
    }
    let root = tempfile::tempdir().unwrap();
    let eng = engine(root.path());
    if make_base(eng.store(), "arm64", &arm, "busybox:arm64").is_none() {
        return;
    }
    let src = "FROM busybox:arm64\nRUN uname -m > /arch && cat /arch\nRUN --mount=type=cache,target=/c echo hi > /c/x && cp /c/x /copied\n";
    let graph = plan(eng.store(), src, &arm);
    let (r, ev) = solve(&eng, &graph, None, Opts::default()).await;
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", logs(&ev)));
    assert!(logs(&ev).contains("aarch64"), "{}", logs(&ev));
    let out = tempfile::tempdir().unwrap();
    export_rootfs(eng.store(), &r.manifest, out.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("arch")).unwrap(),
        "aarch64\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("copied")).unwrap(),
        "hi\n"
    );
    let m = read_manifest(eng.store(), &r.manifest.digest).unwrap();
    let cfg = read_config(eng.store(), &m.config.digest).unwrap();
    assert_eq!(cfg.architecture, "arm64");
    assert_eq!(r.manifest.platform(), Some(arm.clone()));
    // Cache mounts are per platform.
    assert!(root.path().join("cachemounts/linux-arm64").is_dir());
}
