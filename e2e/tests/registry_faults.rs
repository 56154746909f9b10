//! Registry faults (issue #9): pushes of a two-platform index through a
//! fault-injecting proxy (`testbed::FaultProxy`) in front of the real
//! registry. Transient faults (500s, a connection dropped mid-upload, a
//! slow link) are retried and the push succeeds; lasting ones (500 on every
//! upload or on the tag, refused auth) fail with an error naming the
//! registry, the reference and the status. After every push skopeo (talking
//! to the registry directly) sees the tag on the new index or on the old
//! one, never on anything else, and every blob of what it sees exists.

use serde_json::Value;
use std::time::Duration;
use xbuild_e2e::testbed::{self, Action, FaultProxy, Registry, Rule};
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Xbuild};

const REPO: &str = "e2e/faulty";

/// Pseudo-random (incompressible) bytes, different per round.
fn noise(round: u64, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ round.wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Bed {
    reg: Registry,
    proxy: FaultProxy,
    xb: Xbuild,
    ctx: tempfile::TempDir,
}

impl Bed {
    /// Builds round `n` (new layer content) and pushes it through the proxy.
    fn push(&self, round: u64) -> xbuild_e2e::Run {
        std::fs::write(self.ctx.path().join("big.bin"), noise(round, 512 * 1024)).unwrap();
        let tag = format!("{}/{REPO}:1", self.proxy.host());
        self.xb.run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &tag,
            "--push",
            s(self.ctx.path()),
        ])
    }

    /// The digest of what the tag points at (skopeo, directly), and checks
    /// that every manifest and blob it refers to exists.
    fn tag_digest_checked(&self) -> Option<String> {
        let direct = self.reg.reference(&format!("{REPO}:1"));
        let raw = testbed::skopeo_inspect_raw_bytes(&direct, None).ok()?;
        let digest = testbed::sha256_digest(&raw).unwrap();
        let index: Value = serde_json::from_slice(&raw).unwrap();
        let children = index["manifests"].as_array().expect("an index").clone();
        assert_eq!(children.len(), 2, "{index}");
        for child in children {
            let d = child["digest"].as_str().unwrap();
            let m = testbed::skopeo_inspect_raw(&self.reg.reference(&format!("{REPO}@{d}")))
                .unwrap_or_else(|e| panic!("the tag's index names {d}, which is missing: {e}"));
            let blobs = std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap());
            for b in blobs {
                let bd = b["digest"].as_str().unwrap();
                assert_eq!(
                    testbed::http_status(self.reg.port(), &format!("/v2/{REPO}/blobs/{bd}")),
                    Some(200),
                    "blob {bd} of {d} (under the tag) is missing"
                );
            }
        }
        Some(digest)
    }

    fn pushed_digest(r: &xbuild_e2e::Run) -> String {
        r.stderr
            .lines()
            .find_map(|l| l.strip_prefix("image digest: "))
            .unwrap_or_else(|| panic!("no image digest:\n{}", r.stderr))
            .trim()
            .to_string()
    }

    fn expect_success(&self, round: u64, what: &str) -> String {
        let r = self.push(round);
        assert_eq!(r.code, 0, "{what}: the push failed:\n{}", r.stderr);
        let want = Self::pushed_digest(&r);
        assert_eq!(
            self.tag_digest_checked().as_deref(),
            Some(want.as_str()),
            "{what}"
        );
        want
    }

    fn expect_failure(&self, round: u64, what: &str, old: &str, phrases: &[&str]) {
        let r = self.push(round);
        assert_ne!(r.code, 0, "{what}: the push succeeded:\n{}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        let last = r
            .stderr
            .lines()
            .rfind(|l| l.starts_with("error"))
            .unwrap_or("");
        println!("{what}: {last}");
        for p in phrases {
            assert!(
                last.contains(p),
                "{what}: the error does not name {p:?}: {last}\n{}",
                r.stderr
            );
        }
        assert_eq!(
            self.tag_digest_checked().as_deref(),
            Some(old),
            "{what}: the tag moved although the push failed"
        );
    }
}

fn has(seen: &[testbed::Seen], outcome: &str) -> usize {
    seen.iter().filter(|s| s.outcome.contains(outcome)).count()
}

#[test]
fn pushes_survive_transient_faults_and_never_move_the_tag_on_failure() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let proxy = FaultProxy::start(reg.port()).unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nCOPY big.bin /big.bin\n"),
    )]);
    let bed = Bed {
        reg,
        proxy,
        xb,
        ctx,
    };
    let host = bed.proxy.host();

    let d0 = bed.expect_success(0, "no fault");
    let seen = bed.proxy.take_seen();
    let upload_method = seen
        .iter()
        .filter(|s| s.path.contains("/blobs/uploads/") && s.method != "POST")
        .map(|s| s.method.clone())
        .next()
        .expect("a blob upload went through the proxy");

    // 500 twice when starting uploads: retried.
    bed.proxy.set_rules(vec![Rule::new(
        "POST",
        "/blobs/uploads/",
        Action::Status(500),
        2,
    )]);
    let d1 = bed.expect_success(1, "two 500s");
    assert_ne!(d1, d0);
    assert_eq!(has(&bed.proxy.take_seen(), "Status(500)"), 2);

    // The connection dropped after 64 KiB of a layer upload: retried.
    bed.proxy.set_rules(vec![Rule::new(
        &upload_method,
        "/blobs/uploads/",
        Action::DropAfter(64 * 1024),
        1,
    )]);
    let d2 = bed.expect_success(2, "a connection dropped mid-upload");
    assert_eq!(has(&bed.proxy.take_seen(), "DropAfter"), 1);

    // 503 on blob existence checks and a 429 on a manifest: retried.
    bed.proxy.set_rules(vec![
        Rule::new("HEAD", "/blobs/", Action::Status(503), 2),
        Rule::new("PUT", "/manifests/", Action::Status(429), 1),
    ]);
    let d3 = bed.expect_success(3, "503s and a 429");
    assert_ne!(d3, d2);

    // A slow link: still pushed.
    bed.proxy.set_rules(Vec::new());
    bed.proxy.set_slow(Some(Duration::from_millis(2)));
    let d4 = bed.expect_success(4, "a slow registry");
    bed.proxy.set_slow(None);

    // Lasting faults: the push fails clearly, the tag stays on d4.
    bed.proxy.set_rules(vec![Rule::new(
        "PUT",
        "/manifests/1",
        Action::Status(500),
        usize::MAX,
    )]);
    bed.proxy.take_seen();
    bed.expect_failure(5, "500 on the tag", &d4, &[&host, REPO, "500"]);
    // Tried once and retried three times (the default), not forever.
    assert_eq!(has(&bed.proxy.take_seen(), "Status(500)"), 4);

    bed.proxy.set_rules(vec![Rule::new(
        "POST",
        "/blobs/uploads/",
        Action::Status(500),
        usize::MAX,
    )]);
    bed.expect_failure(6, "500 on every upload", &d4, &[&host, REPO, "500"]);

    bed.proxy.set_rules(vec![Rule::new(
        &upload_method,
        "/blobs/uploads/",
        Action::DropAfter(16 * 1024),
        usize::MAX,
    )]);
    bed.expect_failure(7, "every upload dropped", &d4, &[&host, REPO]);

    bed.proxy.set_rules(vec![Rule::new(
        "",
        "/v2/",
        Action::Unauthorized,
        usize::MAX,
    )]);
    bed.expect_failure(8, "auth refused", &d4, &[&host, "401", "xbuild login"]);

    // Healthy again: the next push goes through.
    bed.proxy.set_rules(Vec::new());
    let d9 = bed.expect_success(9, "recovered");
    assert_ne!(d9, d4);
}
