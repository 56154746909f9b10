//! Store integrity, crash safety and bounded network waits (issue #16):
//! one test per numbered case of the issue.
//!
//! - 1: kill -9 of `xbuild cache prune` at 20 seeded random points, each
//!   followed by a `--no-cache` build whose output is checked by content;
//! - 2: byte-flipped and truncated blobs (a base layer, a built layer, a
//!   cache record) are reported, quarantined and repaired;
//! - 3: `-o type=local` into a non-empty directory merges like BuildKit;
//! - 4: a registry that accepts connections and never answers fails `FROM`
//!   and `--push` within the deadline, naming the host;
//! - 5: an endless manifest fails at the cap with the process's peak memory
//!   under 100 MiB;
//! - 6: leftovers of killed processes are cleaned by the next command, and
//!   the state directory is private;
//! - 9: cache explanations never quote another project's Dockerfile;
//! - 10: a non-UTF-8 file name excluded by `.dockerignore`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{context, s, Xbuild};

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

/// Root and a registry binary, or `None` after printing why not.
fn require_registry() -> Option<Registry> {
    testbed::require_root()?;
    Registry::start_or_skip()
}

/// Pushes the busybox base for the host's platform only; returns its reference.
fn publish_host_base(xb: &Xbuild, reg: &Registry) -> String {
    let ctx = tempfile::tempdir().unwrap();
    testbed::write_base_context(ctx.path(), &[testbed::host_arch()]).unwrap();
    let reference = reg.reference("integrity/busybox:latest");
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        &host_platform(),
        "-t",
        &reference,
        "--push",
        s(ctx.path()),
    ])
    .ok();
    reference
}

fn host_platform() -> String {
    format!("linux/{}", testbed::host_arch())
}

/// `xbuild build --progress plain --platform <host> ARGS... CTX`.
fn build(xb: &Xbuild, ctx: &Path, args: &[&str]) -> xbuild_e2e::Run {
    let platform = host_platform();
    let mut all = vec!["build", "--progress", "plain", "--platform", &platform];
    all.extend_from_slice(args);
    all.push(s(ctx));
    xb.run(&all)
}

const MANY: usize = 4000;

/// Case 1. Before: a partly deleted snapshot was reused (`ls /many | wc -l`
/// printed a smaller number), or every later build failed with "slot taken
/// ... File exists".
#[test]
fn kill_9_during_cache_prune_never_leaves_a_partial_snapshot_in_use() {
    let Some(reg) = require_registry() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    // A base image whose one layer holds many files: its snapshot takes a
    // while to delete, so kills land inside the deletion.
    let many = reg.reference("integrity/many:1");
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN mkdir /many && cd /many && seq 1 {MANY} | xargs touch\n"),
    )]);
    build(&xb, ctx.path(), &["-t", &many, "--push"]).ok();
    // The count is read back from the RUN step's output (plain progress).
    let check = context(&[(
        "Dockerfile",
        &format!("FROM {many}\nRUN echo \"count=$(ls /many | wc -l)\"\n"),
    )]);
    let want = format!("count={MANY}");
    let count = |xb: &Xbuild, what: &str| {
        let r = build(xb, check.path(), &["--no-cache"]);
        assert_eq!(r.code, 0, "{what}: the build failed:\n{}", r.stderr);
        let got = r
            .stderr
            .lines()
            .find_map(|l| l.split_whitespace().find(|w| w.starts_with("count=")))
            .unwrap_or_else(|| panic!("{what}: no count in:\n{}", r.stderr))
            .to_string();
        assert_eq!(got, want, "{what}: a partial snapshot was used");
    };
    count(&xb, "first build");
    // How long an uninterrupted prune takes, to spread the kills over it.
    let t0 = Instant::now();
    xb.run(&["cache", "prune", "--all"]).ok();
    let full = t0.elapsed().max(Duration::from_millis(50));
    count(&xb, "after a full prune");
    let seed: u64 = std::env::var("XBUILD_PRUNE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x16_5eed);
    println!("seed {seed} (XBUILD_PRUNE_SEED to replay); a full prune takes {full:?}");
    let mut rng = Rng(seed);
    let mut killed = 0;
    for i in 0..20 {
        let delay = Duration::from_micros(rng.next() % (full.as_micros() as u64 * 3 / 2 + 1));
        let mut child = xb
            .command()
            .args(["cache", "prune", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        count(&xb, &format!("kill {i} at {delay:?}"));
    }
    println!("{killed} of 20 prunes were killed before they ended");
    assert!(killed >= 5, "the delays missed the prunes");
    // Nothing stuck: a full prune and a build still work, the trash is empty.
    xb.run(&["cache", "prune", "--all"]).ok();
    count(&xb, "the end");
    let trash = xb.root().join("trash");
    let left = std::fs::read_dir(&trash).map(|r| r.count()).unwrap_or(0);
    assert_eq!(left, 0, "entries left in {}", trash.display());
}

/// Case 3. Before: whiteouts of later layers removed the user's files from
/// the destination, and device nodes were created there.
#[test]
fn local_export_into_a_non_empty_directory_adds_and_overwrites_only() {
    let Some(reg) = require_registry() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\n\
             RUN mkdir -p /out/sub && echo image > /out/shared.txt && echo temp > /out/gone.txt && echo x > /out/sub/a\n\
             RUN rm /out/gone.txt && rm -r /out/sub && mknod /out/null c 1 3\n"
        ),
    )]);
    let dest = tempfile::tempdir().unwrap();
    let out = dest.path();
    std::fs::create_dir_all(out.join("out/sub")).unwrap();
    std::fs::write(out.join("out/gone.txt"), "mine").unwrap();
    std::fs::write(out.join("out/sub/mine"), "mine").unwrap();
    std::fs::write(out.join("out/shared.txt"), "mine").unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let spec = format!("type=local,dest={}", s(out));
    let r = build(&xb, ctx.path(), &["-o", &spec]).ok();
    let read =
        |p: &str| std::fs::read_to_string(out.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("keep.txt"), "mine");
    assert_eq!(
        read("out/gone.txt"),
        "mine",
        "a whiteout was replayed onto the destination"
    );
    assert_eq!(
        read("out/sub/mine"),
        "mine",
        "an opaque/removed directory was replayed"
    );
    assert_eq!(
        read("out/shared.txt"),
        "image\n",
        "the image's file must overwrite"
    );
    assert!(
        out.join("bin/busybox").is_file(),
        "the image's files are there"
    );
    assert!(
        std::fs::symlink_metadata(out.join("out/null")).is_err(),
        "a device node was created in the destination"
    );
    assert!(
        r.stderr.contains("skipped device node") && r.stderr.contains("out/null"),
        "no warning for the skipped device:\n{}",
        r.stderr
    );
    // The error text of a failing local export shows the output as typed.
    let file = out.join("keep.txt");
    let bad = format!("type=local,dest={}", s(&file.join("x")));
    let r = build(&xb, ctx.path(), &["-o", &bad]).failed();
    assert!(
        !r.stderr.contains("Local {"),
        "Debug text in an error:\n{}",
        r.stderr
    );
}

/// A TCP server on loopback that accepts connections and never answers.
struct SilentServer {
    port: u16,
}

impl SilentServer {
    fn start() -> SilentServer {
        let port = testbed::free_port();
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming().flatten() {
                held.push(c); // never read, never written, never closed
            }
        });
        SilentServer { port }
    }
}

/// Case 4. Before: `FROM` and `--push` against such a registry waited past
/// ten minutes printing nothing.
#[test]
fn a_silent_registry_fails_from_and_push_within_the_deadline_naming_the_host() {
    if testbed::require_root().is_none() {
        return;
    }
    let silent = SilentServer::start();
    let host = format!("127.0.0.1:{}", silent.port);
    let xb = Xbuild::new();
    let env = [("XBUILD_REGISTRY_TIMEOUT", "3")];
    // FROM an image on it.
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {host}/some/base:1\nRUN true\n"),
    )]);
    let platform = host_platform();
    let t0 = Instant::now();
    let r = xb.run_with(
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            &platform,
            s(ctx.path()),
        ],
        &env,
        None,
    );
    let took = t0.elapsed();
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&host),
        "the host is not named:\n{}",
        r.stderr
    );
    // The deadline is 3 s and retries stop after 6 s; generous for a loaded machine.
    assert!(
        took < Duration::from_secs(60),
        "FROM took {took:?}:\n{}",
        r.stderr
    );
    // Push to it.
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "data\n")]);
    let tag = format!("{host}/app:1");
    let t0 = Instant::now();
    let r = xb.run_with(
        &[
            "build",
            "--progress",
            "plain",
            "--platform",
            &platform,
            "-t",
            &tag,
            "--push",
            s(ctx.path()),
        ],
        &env,
        None,
    );
    let took = t0.elapsed();
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains(&host),
        "the host is not named:\n{}",
        r.stderr
    );
    assert!(
        took < Duration::from_secs(60),
        "--push took {took:?}:\n{}",
        r.stderr
    );
}

/// Case 4 (continued): a registry that stops answering in the middle of a
/// push (a stopped process: connections stay open, nothing moves) fails the
/// push promptly, naming the host. Before: it waited past 200 s.
#[test]
fn a_registry_stopped_mid_push_fails_promptly() {
    let Some(reg) = require_registry() else {
        return;
    };
    let proxy = testbed::FaultProxy::start(reg.port()).unwrap();
    let xb = Xbuild::new();
    // A layer large enough for the push to be under way when the registry stops.
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY big.bin /big.bin\n")]);
    let mut x = 0x1234_5678_9abc_def0u64;
    let noise: Vec<u8> = (0..(16 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(ctx.path().join("big.bin"), noise).unwrap();
    let host = proxy.host();
    let tag = format!("{host}/integrity/stopped:1");
    let platform = host_platform();
    let mut child = xb
        .command()
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            &platform,
            "-t",
            &tag,
            "--push",
            s(ctx.path()),
        ])
        .env("XBUILD_REGISTRY_TIMEOUT", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // Stop the registry once an upload has started.
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while t0.elapsed() < Duration::from_secs(120) && child.try_wait().unwrap().is_none() {
        seen.extend(proxy.take_seen());
        if seen.iter().any(|r| r.path.contains("/blobs/uploads/")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.set_slow(Some(Duration::from_secs(3600)));
    let stopped = Instant::now();
    let status = child.wait().unwrap();
    let took = stopped.elapsed();
    let stderr = reader.join().unwrap();
    assert!(
        !status.success(),
        "the push succeeded through a stopped registry:\n{stderr}"
    );
    assert!(stderr.contains(&host), "the host is not named:\n{stderr}");
    // Deadline 3 s, retries stop after 6 s; generous for a loaded machine.
    assert!(
        took < Duration::from_secs(60),
        "took {took:?} after the stop:\n{stderr}"
    );
}

/// Case 5. Before: the body was buffered until memory ran out (2.8 GB).
#[test]
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its peak memory
fn an_endless_manifest_fails_at_the_cap_with_bounded_memory() {
    if testbed::require_root().is_none() {
        return;
    }
    let port = testbed::free_port();
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            std::thread::spawn(move || serve_endless(c));
        }
    });
    let host = format!("127.0.0.1:{port}");
    let xb = Xbuild::new();
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {host}/endless/base:1\nRUN true\n"),
    )]);
    let platform = host_platform();
    let child = xb
        .command()
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            &platform,
            s(ctx.path()),
        ])
        .env("XBUILD_REGISTRY_TIMEOUT", "10")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut err = child.stderr.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (code, max_rss_kib) = wait4(pid);
    let stderr = reader.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("larger than 4194304 bytes") && stderr.contains(&host),
        "not failed at the cap:\n{stderr}"
    );
    println!("peak RSS of xbuild: {} KiB", max_rss_kib);
    assert!(max_rss_kib < 100 * 1024, "peak RSS {max_rss_kib} KiB");
}

/// Answers `/v2/` with 200 and any manifest request with an endless body.
fn serve_endless(mut c: std::net::TcpStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    loop {
        let mut req = Vec::new();
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            match c.read(&mut b) {
                Ok(1) => req.push(b[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&req).into_owned();
        if text.contains("/manifests/") {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if c.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, " ".repeat(64 << 10));
            // Endless (stops when the client hangs up, or after 64 GiB).
            for _ in 0..(1 << 20) {
                if c.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
            }
            return;
        }
        let body = "{}";
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if c.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Waits for `pid`; its exit code and peak resident set size (KiB).
fn wait4(pid: libc::pid_t) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: plain syscall with valid out-pointers.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, ru.ru_maxrss)
}

/// The manifest of a single-platform build from its `--metadata-file`.
fn built_manifest(xb: &Xbuild, meta: &Path) -> serde_json::Value {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(meta).unwrap()).unwrap();
    let mut digest = m["containerimage.digest"].as_str().unwrap().to_string();
    loop {
        let v = read_blob_json(xb, &digest);
        match v["manifests"].as_array() {
            Some(list) => digest = list[0]["digest"].as_str().unwrap().to_string(),
            None => return v,
        }
    }
}

fn blob_path(xb: &Xbuild, digest: &str) -> std::path::PathBuf {
    xb.root()
        .join("content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn read_blob_json(xb: &Xbuild, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(blob_path(xb, digest)).unwrap()).unwrap()
}

/// Flips one byte in the middle of a file, or cuts it to a third.
fn damage(path: &Path, how: &str) {
    let mut b = std::fs::read(path).unwrap();
    match how {
        "flip" => {
            let at = b.len() / 2;
            b[at] ^= 0x20;
        }
        _ => b.truncate(b.len() / 3),
    }
    std::fs::write(path, b).unwrap();
}

/// Whether the blob in the store hashes to its name.
fn blob_ok(xb: &Xbuild, digest: &str) -> bool {
    std::fs::read(blob_path(xb, digest))
        .map(|b| testbed::sha256_digest(&b).unwrap() == digest)
        .unwrap_or(false)
}

/// Case 2. Before: a flipped byte in a layer went into `save` and
/// `-o type=oci` archives (exit 0); a truncated base layer broke every later
/// build (`incomplete deflate stream`), and `--pull` did not repair it.
#[test]
fn corrupt_blobs_and_records_are_reported_quarantined_and_repaired() {
    let Some(reg) = require_registry() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\nCOPY data.txt /data.txt\nRUN echo \"size=$(wc -c < /data.txt)\" && wc -c < /data.txt > /size\n"
        ),
    )]);
    std::fs::write(ctx.path().join("data.txt"), "integrity\n".repeat(20_000)).unwrap();
    let meta = ctx.path().join("meta.json");
    let app = |extra: &[&str]| {
        let mut args = vec!["-t", "app:1", "--metadata-file", s(&meta)];
        args.extend_from_slice(extra);
        build(&xb, ctx.path(), &args)
    };
    app(&[]).ok();
    let manifest = built_manifest(&xb, &meta);
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let (base_layer, copy_layer) = (layers[0].clone(), layers[layers.len() - 2].clone());
    let quarantine = xb.root().join("content/quarantine");

    // A built layer, byte-flipped: `save` fails naming it, writes nothing.
    damage(&blob_path(&xb, &copy_layer), "flip");
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("app.tar");
    let r = xb.run(&["save", "-o", s(&tar), "app:1"]).failed();
    assert!(
        r.stderr.contains(&copy_layer) && r.stderr.contains("corrupt"),
        "the corrupt blob is not named:\n{}",
        r.stderr
    );
    assert!(!tar.exists(), "save left a corrupt archive");
    assert!(!blob_path(&xb, &copy_layer).exists(), "not quarantined");
    assert!(std::fs::read_dir(&quarantine).unwrap().count() >= 1);
    // The next build makes the layer again (a miss), and save works.
    app(&[]).ok();
    assert!(blob_ok(&xb, &copy_layer), "the layer was not rebuilt");
    xb.run(&["save", "-o", s(&tar), "app:1"]).ok();

    // A built layer, truncated: `-o type=oci` fails naming it.
    damage(&blob_path(&xb, &copy_layer), "truncate");
    let oci = out.path().join("app-oci.tar");
    let spec = format!("type=oci,dest={}", s(&oci));
    let r = app(&["-o", &spec]).failed();
    assert!(
        r.stderr.contains(&copy_layer) && r.stderr.contains("corrupt"),
        "the corrupt blob is not named:\n{}",
        r.stderr
    );
    assert!(!oci.exists(), "a corrupt OCI archive was written");
    app(&["-o", &spec]).ok();
    assert!(blob_ok(&xb, &copy_layer));

    // A base layer, truncated: `--pull` repairs it.
    xb.run(&["cache", "prune", "--all"]).ok();
    damage(&blob_path(&xb, &base_layer), "truncate");
    let r = app(&["--pull", "--no-cache"]).ok();
    assert!(r.stderr.contains("size=200000"), "{}", r.stderr);
    assert!(
        blob_ok(&xb, &base_layer),
        "--pull left the truncated base layer"
    );

    // A base layer, byte-flipped (same size): found while it is unpacked,
    // fetched again from its registry, the build goes on.
    xb.run(&["cache", "prune", "--all"]).ok();
    damage(&blob_path(&xb, &base_layer), "flip");
    let r = app(&["--no-cache"]).ok();
    assert!(r.stderr.contains("size=200000"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&base_layer) && r.stderr.contains("fetching it again"),
        "no warning about the corrupt base layer:\n{}",
        r.stderr
    );
    assert!(
        blob_ok(&xb, &base_layer),
        "the base layer was not fetched again"
    );

    // A cache record, byte-flipped or truncated: a miss, never a wrong hit.
    for how in ["flip", "truncate"] {
        app(&[]).ok();
        let rec = find_record(&xb, "wc -c").expect("the RUN step's record");
        let mut b = std::fs::read(&rec).unwrap();
        if how == "flip" {
            let at = b.windows(4).position(|w| w == b"wc -").unwrap();
            b[at] = b'x';
        } else {
            b.truncate(b.len() / 2);
        }
        std::fs::write(&rec, b).unwrap();
        let r = app(&[]).ok();
        assert!(
            r.stderr.contains("size=200000"),
            "{how}: the RUN step did not run again:\n{}",
            r.stderr
        );
    }
}

/// `xbuild cache check` finds what is damaged; `--repair` fetches a
/// corrupt base layer again from its registry.
#[test]
fn cache_check_finds_and_repairs_damage() {
    let Some(reg) = require_registry() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo checked > /c\n"),
    )]);
    let meta = ctx.path().join("meta.json");
    build(&xb, ctx.path(), &["--metadata-file", s(&meta)]).ok();
    let manifest = built_manifest(&xb, &meta);
    let base_layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let clean = xb.run(&["cache", "check"]).ok();
    assert!(clean.stdout.contains(" 0 corrupt"), "{}", clean.stdout);
    damage(&blob_path(&xb, &base_layer), "flip");
    let rec = find_record(&xb, "echo checked").unwrap();
    let mut b = std::fs::read(&rec).unwrap();
    let at = b.windows(7).position(|w| w == b"checked").unwrap();
    b[at] = b'C';
    std::fs::write(&rec, b).unwrap();
    let r = xb.run(&["cache", "check"]).failed();
    assert!(
        r.stdout.contains(&format!("corrupt: {base_layer}")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("1 damaged cache records"), "{}", r.stdout);
    assert!(r.stderr.contains("--repair"), "{}", r.stderr);
    assert!(!rec.exists());
    let r = xb.run(&["cache", "check", "--repair"]).ok();
    assert!(
        r.stdout.contains(&format!("repaired: {base_layer}")),
        "{}",
        r.stdout
    );
    assert!(blob_ok(&xb, &base_layer));
}

/// The record file whose step text contains `needle`.
fn find_record(xb: &Xbuild, needle: &str) -> Option<std::path::PathBuf> {
    for pd in std::fs::read_dir(xb.root().join("cache")).ok()?.flatten() {
        for f in std::fs::read_dir(pd.path()).into_iter().flatten().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "json")
                && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(needle))
            {
                return Some(p);
            }
        }
    }
    None
}

/// Mount points (from /proc/self/mountinfo) under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Case 6. Before: the secrets tmpfs (holding the secret) and overlay
/// mounts of a build killed with SIGKILL stayed mounted under the state
/// directory until the next build there; `save` left its temp file.
#[test]
fn leftovers_of_killed_processes_are_cleaned_by_the_next_command() {
    let Some(reg) = require_registry() else {
        return;
    };
    let xb = Xbuild::new();
    // A state directory xbuild creates itself is private.
    let fresh = tempfile::tempdir().unwrap();
    let root = fresh.path().join("state");
    let r = xb
        .command()
        .env("XBUILD_ROOT", &root)
        .args(["cache", "du"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory is {mode:o}");

    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[
        (
            "Dockerfile",
            &format!("FROM {base}\nRUN --mount=type=secret,id=TOKEN,target=/tok sleep 300\n"),
        ),
        ("token", "s3cr3t-leftover\n"),
    ]);
    let platform = host_platform();
    let secret = format!("id=TOKEN,src={}", s(&ctx.path().join("token")));
    let mut child = xb
        .command()
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            &platform,
            "--secret",
            &secret,
            s(ctx.path()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the step runs (its mounts are up), then kill -9.
    let t0 = Instant::now();
    while mounts_under(xb.root()).len() < 2 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    // The sandboxed `sleep` may outlive its killed parent a moment.
    let left = mounts_under(xb.root());
    assert!(
        !left.is_empty(),
        "no mounts to clean: the test did not catch the step"
    );
    // Any next command cleans them (here: one that never builds).
    xb.run(&["images"]).ok();
    let t0 = Instant::now();
    while !mounts_under(xb.root()).is_empty() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        xb.run(&["images"]).ok();
    }
    assert_eq!(
        mounts_under(xb.root()),
        Vec::<String>::new(),
        "mounts left after the next command"
    );

    // A temp file a killed `save` left beside its destination goes with the
    // next save to that destination.
    let out = tempfile::tempdir().unwrap();
    let stale = out.path().join(".app.tar.xbuild-999999999.tmp");
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    let app = context(&[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x\n")]);
    build(&xb, app.path(), &["-t", "small:1"]).ok();
    xb.run(&["save", "-o", s(&out.path().join("app.tar")), "small:1"])
        .ok();
    assert!(
        !stale.exists(),
        "the killed save's temp file is still there"
    );
}

/// Case 9. Before: a fresh project sharing the state directory printed
/// `instruction changed: "RUN echo start" -> ...`, quoting another
/// project's Dockerfile.
#[test]
fn cache_explanations_never_quote_another_project() {
    let Some(reg) = require_registry() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let a = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo secret-plan-alpha\n"),
    )]);
    build(&xb, a.path(), &[]).ok();
    let b = context(&[("Dockerfile", &format!("FROM {base}\nRUN echo beta\n"))]);
    let r = build(&xb, b.path(), &[]).ok();
    assert!(
        !r.stderr.contains("secret-plan-alpha"),
        "another project's Dockerfile was quoted:\n{}",
        r.stderr
    );
    // Within one project, a changed step is still explained.
    std::fs::write(
        a.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo secret-plan-alpha-2\n"),
    )
    .unwrap();
    let r = build(&xb, a.path(), &[]).ok();
    assert!(
        r.stderr.contains("instruction changed") && r.stderr.contains("secret-plan-alpha"),
        "the same project's change is not explained:\n{}",
        r.stderr
    );
}

/// Case 10: a corrupt blob in a `--cache-from` source is a cache miss with
/// a warning (the step is built), not an abort.
#[test]
fn a_corrupt_cache_from_layer_is_a_miss_with_a_warning() {
    let Some(reg) = require_registry() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_host_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\nRUN head -c 50000 /dev/zero | wc -c > /n && echo \"made=$(cat /n)\"\n"
        ),
    )]);
    let cache = tempfile::tempdir().unwrap();
    let to = format!("type=local,dest={},mode=max", s(cache.path()));
    build(&xb, ctx.path(), &["--cache-to", &to]).ok();
    // Damage every layer blob of the exported cache (the small JSON ones stay).
    for e in std::fs::read_dir(cache.path().join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let b = std::fs::read(e.path()).unwrap();
        if b.starts_with(&[0x1f, 0x8b]) {
            damage(&e.path(), "flip");
        }
    }
    let fresh = Xbuild::new();
    fresh.run(&["cache", "du"]).ok();
    let from = format!("type=local,src={}", s(cache.path()));
    // The fresh state pulls the base from the registry the first one pushed to.
    let r = build(&fresh, ctx.path(), &["--cache-from", &from]).ok();
    assert!(
        r.stderr.contains("made=50000"),
        "the step did not run:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("unusable"),
        "no warning about the corrupt cache layer:\n{}",
        r.stderr
    );
}
