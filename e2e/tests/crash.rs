//! Crash and concurrency (issue #9): `kill -9` at seeded random points of
//! small builds, then the next build succeeds, `xbuild cache du` works, and
//! every blob in the content store matches its digest (no half-written blob
//! under a digest name). Two builds of different projects and two of the
//! same project at once, against one state directory: both succeed and give
//! the digests a serial build gives.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Xbuild};

/// A small deterministic generator (xorshift), so failures can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn dockerfile(base: &str) -> String {
    format!(
        "FROM {base}\n\
         ARG N=0\n\
         RUN sleep 0.6 && echo \"run $N\" > /a\n\
         COPY data.bin /data.bin\n\
         RUN sleep 0.6 && head -c 300000 /dev/urandom > /b && cat /data.bin >> /b\n\
         RUN sleep 0.3 && echo done > /c\n"
    )
}

fn build_args<'a>(tag: &'a str, n: &'a str, ctx: &'a Path) -> Vec<&'a str> {
    vec![
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "--build-arg",
        n,
        "-t",
        tag,
        s(ctx),
    ]
}

/// Every blob under `content/blobs/sha256` hashes to its name; nothing is
/// left in the ingest directory's place of a blob.
fn check_blobs(root: &Path) -> usize {
    let dir = root.join("content/blobs/sha256");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        let digest = testbed::sha256_digest(&bytes).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            digest,
            format!("sha256:{name}"),
            "half-written or corrupt blob {}",
            p.display()
        );
        n += 1;
    }
    n
}

#[test]
fn kill_9_at_random_points_leaves_a_usable_state() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let seed: u64 = std::env::var("XBUILD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_cafe);
    println!("seed {seed} (XBUILD_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let ctx = context(&[("Dockerfile", &dockerfile(&base))]);
    let mut killed_mid_build = 0;
    for i in 0..10 {
        std::fs::write(
            ctx.path().join("data.bin"),
            format!("data {i}\n").repeat(1000),
        )
        .unwrap();
        let n = format!("N={i}");
        let tag = format!("crash:{i}");
        let delay = Duration::from_millis(100 + rng.next() % 1200);
        let mut child = xb
            .command()
            .args(build_args(&tag, &n, ctx.path()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().unwrap().is_none() {
            killed_mid_build += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // The next build (same inputs) succeeds and gives a usable image.
        let r = xb.run(&build_args(&tag, &n, ctx.path()));
        assert_eq!(
            r.code, 0,
            "run {i}: build after kill -9 at {delay:?} failed:\n{}",
            r.stderr
        );
        let du = xb.run(&["cache", "du"]);
        assert_eq!(du.code, 0, "run {i}: cache du failed:\n{}", du.stderr);
        assert!(du.stdout.contains("linux/amd64"), "{}", du.stdout);
        check_blobs(xb.root());
    }
    println!("{killed_mid_build} of 10 builds were killed mid-build");
    assert!(killed_mid_build >= 5, "the delays missed the builds");
    // Everything still works end to end: the last image exports, prune runs.
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", s(out.path()));
    let r = xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "--build-arg",
        "N=9",
        "-o",
        &dest,
        s(ctx.path()),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.missed_steps(), 0, "the cache was lost:\n{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(out.path().join("a")).unwrap(),
        "run 9\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("c")).unwrap(),
        "done\n"
    );
    let pruned = xb.run(&["cache", "prune", "--all"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    check_blobs(xb.root());
}

fn image_digest(r: &xbuild_e2e::Run) -> String {
    r.stderr
        .lines()
        .chain(r.stdout.lines())
        .find_map(|l| l.strip_prefix("image digest: "))
        .unwrap_or_else(|| panic!("no image digest in:\n{}", r.stderr))
        .trim()
        .to_string()
}

fn project(base: &str, name: &str) -> tempfile::TempDir {
    context(&[
        (
            "Dockerfile",
            &format!(
                "FROM {base}\n\
                 COPY app.txt /app.txt\n\
                 RUN sleep 0.3 && sha256sum /app.txt > /app.sum\n\
                 RUN --mount=type=cache,target=/cache echo {name} >> /cache/log && echo {name} > /name\n"
            ),
        ),
        ("app.txt", &format!("the {name} project\n")),
    ])
}

fn build_digest(xb: &Xbuild, ctx: &Path, tag: &str) -> std::process::Child {
    xb.command()
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "-t",
            tag,
            s(ctx),
        ])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: std::process::Child) -> xbuild_e2e::Run {
    let out = c.wait_with_output().unwrap();
    xbuild_e2e::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn concurrent_builds_share_one_state_directory() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let base = publish_base(&Xbuild::new(), &reg);
    let one = project(&base, "one");
    let two = project(&base, "two");
    // Serial builds, each in a fresh state dir: the reference digests.
    let serial = |ctx: &Path| {
        let xb = Xbuild::new();
        let r = finish(build_digest(&xb, ctx, "ref:1"));
        assert_eq!(r.code, 0, "{}", r.stderr);
        image_digest(&r)
    };
    let want_one = serial(one.path());
    let want_two = serial(two.path());
    assert_ne!(want_one, want_two);

    // Different projects at once, then the same project twice at once.
    let xb = Xbuild::new();
    let a = build_digest(&xb, one.path(), "one:1");
    let b = build_digest(&xb, two.path(), "two:1");
    let (a, b) = (finish(a), finish(b));
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(image_digest(&a), want_one);
    assert_eq!(image_digest(&b), want_two);

    std::fs::write(one.path().join("app.txt"), "the one project, changed\n").unwrap();
    let xb2 = Xbuild::new();
    let want_changed = finish(build_digest(&xb2, one.path(), "ref:2"));
    let want_changed = image_digest(&want_changed);
    let c = build_digest(&xb, one.path(), "one:2");
    let d = build_digest(&xb, one.path(), "one:3");
    let (c, d) = (finish(c), finish(d));
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_eq!(image_digest(&c), want_changed);
    assert_eq!(image_digest(&d), want_changed);
    let du = xb.run(&["cache", "du"]);
    assert_eq!(du.code, 0, "{}", du.stderr);
    check_blobs(xb.root());
    let images = xb.run(&["images"]).ok().stdout;
    for t in ["one:1", "two:1", "one:2", "one:3"] {
        let (repo, tag) = t.split_once(':').unwrap();
        assert!(
            images.lines().any(|l| l.contains(repo) && l.contains(tag)),
            "{t} missing from:\n{images}"
        );
    }
}
