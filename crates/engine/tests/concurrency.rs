//! Concurrent solves on one engine and on two engines over one root, and
//! recovery from what a killed process leaves behind.

mod common;

use common::*;
use xbuild_engine::image::export_rootfs;

const A: &str =
    "FROM busybox:test\nCOPY a.txt /a.txt\nRUN cat /a.txt > /a2 && sleep 0.2\nRUN echo a > /done\n";
const B: &str = "FROM busybox:test AS x\nRUN echo x > /x\nFROM busybox:test\nCOPY b.txt /b.txt\nCOPY --from=x /x /x\nRUN cat /b.txt /x > /b2\n";

fn ctx() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.txt"), "A\n").unwrap();
    std::fs::write(d.path().join("b.txt"), "B\n").unwrap();
    d
}

fn check(store: &xbuild_oci::BlobStore, r: &xbuild_engine::SolveResult, file: &str, want: &str) {
    let out = tempfile::tempdir().unwrap();
    export_rootfs(store, &r.manifest, out.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join(file)).unwrap(),
        want
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_solves_on_one_and_two_engines() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let e1 = engine(root.path());
    let p = native();
    if make_base(e1.store(), p.architecture(), &p, BASE).is_none() {
        return;
    }
    let c = ctx();
    let ga = plan(e1.store(), A, &p);
    let gb = plan(e1.store(), B, &p);

    // One engine, two graphs at once.
    let (ra, rb) = tokio::join!(
        solve(&e1, &ga, Some(c.path()), Opts::default()),
        solve(&e1, &gb, Some(c.path()), Opts::default())
    );
    let ra = ra.0.unwrap();
    let rb = rb.0.unwrap();
    check(e1.store(), &ra, "a2", "A\n");
    check(e1.store(), &rb, "b2", "B\nx\n");

    // Two engines on the same root, with --no-cache so that both really
    // build (and commit the same snapshots) at the same time.
    let e2 = engine(root.path());
    let nc = || Opts {
        no_cache: true,
        ..Default::default()
    };
    let (ra, rb, ra2) = tokio::join!(
        solve(&e1, &ga, Some(c.path()), nc()),
        solve(&e2, &gb, Some(c.path()), nc()),
        solve(&e2, &ga, Some(c.path()), nc())
    );
    check(e1.store(), &ra.0.unwrap(), "a2", "A\n");
    check(e2.store(), &rb.0.unwrap(), "b2", "B\nx\n");
    check(e2.store(), &ra2.0.unwrap(), "done", "a\n");

    // Afterwards, everything is cached for either engine.
    let (r, _) = solve(&e2, &gb, Some(c.path()), Opts::default()).await;
    let r = r.unwrap();
    assert_eq!(r.cached, r.steps);
    assert!(std::fs::read_dir(root.path().join("tmp"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(root.path().join("mounts"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn open_cleans_up_after_a_killed_process() {
    if !is_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    drop(engine(root.path()));
    // A scratch dir and a mount point with a lock nobody holds, a mount still on it.
    let stale = root.path().join("tmp/999999-1-0");
    std::fs::create_dir_all(stale.join("fs/x")).unwrap();
    std::fs::write(stale.join(".lock"), b"").unwrap();
    let mp = root.path().join("mounts/999999-1-1");
    std::fs::create_dir_all(mp.join("m")).unwrap();
    std::fs::write(mp.join(".lock"), b"").unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mp.join("m"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(mp.join("m/file"), b"x").unwrap();
    // A half-made snapshot never has its final name, so nothing else to check.
    let _e = engine(root.path());
    assert!(!stale.exists());
    assert!(!mp.exists());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains("999999-1-1"));
}
