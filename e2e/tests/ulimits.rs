//! `--ulimit TYPE=SOFT[:HARD]`: the limits every RUN step's process gets
//! (setrlimit in the sandbox, no cgroup), natively, under QEMU and on an SSH
//! build node; part of the step's cache key as in BuildKit (where they are
//! in the exec op's meta); refused values fail before any work, a limit the
//! worker's kernel refuses fails the step with a clear error.

use std::path::Path;
use xbuild_e2e::testbed::{self, Registry, Sshd};
use xbuild_e2e::{
    context, image_files_for, publish_base, require_multiplatform, s, xbuild_bin, Run, Xbuild,
};

/// What the RUN step prints: soft and hard open files, soft processes.
const DOCKERFILE: &str =
    "ARG BASE\nFROM $BASE\nRUN sh -c 'ulimit -n; ulimit -Hn; ulimit -u' > /out\n";

fn out_of(reference: &str, arch: &str) -> String {
    let files = image_files_for(reference, Some(arch));
    let out = files
        .get("out")
        .unwrap_or_else(|| panic!("no /out in the {arch} image: {:?}", files.keys()));
    String::from_utf8_lossy(out).into_owned()
}

fn build(xb: &Xbuild, env: &[(&str, &str)], args: &[&str], ctx: &Path) -> Run {
    let mut v = vec!["build", "--progress", "plain"];
    v.extend_from_slice(args);
    v.push(s(ctx));
    xb.run_with(&v, env, None)
}

#[test]
fn ulimits_reach_run_steps_natively_and_under_qemu_and_key_the_cache() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let base_arg = format!("BASE={base}");
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let tag = reg.reference("ulimits/app:1");
    let with = |limits: &[&str]| {
        let mut a = vec![
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &base_arg,
            "-t",
            &tag,
            "--push",
        ];
        for l in limits {
            a.extend_from_slice(&["--ulimit", l]);
        }
        build(&xb, &[], &a, ctx.path()).ok()
    };
    // A repeated type keeps the last value, as buildx.
    let first = with(&["nofile=1:2", "nofile=1024:2048", "nproc=512"]);
    assert_eq!(first.missed_steps(), 2, "{}", first.stderr);
    for arch in ["amd64", "arm64"] {
        assert_eq!(out_of(&tag, arch), "1024\n2048\n512\n", "{arch}");
    }

    // The same limits: both RUN steps are cached.
    let again = with(&["nproc=512", "nofile=1024:2048"]);
    assert_eq!(again.missed_steps(), 0, "{}", again.stderr);
    assert_eq!(again.cached_steps(), 2, "{}", again.stderr);

    // A changed value is a different step.
    let changed = with(&["nofile=1024:4096", "nproc=512"]);
    assert_eq!(changed.missed_steps(), 2, "{}", changed.stderr);
    assert_eq!(changed.cached_steps(), 0, "{}", changed.stderr);
    let why = "cache miss: RUN options changed: \"--ulimit nofile=1024:2048 --ulimit \
               nproc=512:512\" -> \"--ulimit nofile=1024:4096 --ulimit nproc=512:512\"";
    let explained = changed.stderr.lines().filter(|l| l.ends_with(why)).count();
    assert_eq!(explained, 2, "{}", changed.stderr);
    for arch in ["amd64", "arm64"] {
        assert_eq!(out_of(&tag, arch), "1024\n4096\n512\n", "{arch}");
    }

    // No --ulimit: the step of a build without the flag (the worker's own
    // limits), a miss again, not the limited one.
    let none = with(&[]);
    assert_eq!(none.missed_steps(), 2, "{}", none.stderr);
    assert!(
        none.stderr.contains(
            "RUN options changed: \"--ulimit nofile=1024:4096 --ulimit nproc=512:512\" -> none"
        ),
        "{}",
        none.stderr
    );
    assert_ne!(out_of(&tag, "amd64"), "1024\n4096\n512\n");
}

#[test]
fn bad_ulimits_are_refused_before_any_work_and_a_refused_limit_fails_the_step() {
    if testbed::require_root().is_none() {
        return;
    }
    let xb = Xbuild::new();
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")]);
    for (value, why) in [
        (
            "nofile=2048:1024",
            "soft limit (2048) is greater than the hard limit (1024)",
        ),
        ("bogus=1", "unknown limit type \"bogus\""),
        ("nofile", "expected TYPE=SOFT[:HARD]"),
        ("nofile=1:x", "is not a number"),
    ] {
        let run = build(&xb, &[], &["--ulimit", value], ctx.path()).failed();
        assert!(
            run.stderr.contains(&format!("invalid --ulimit {value:?}")),
            "{value}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(why), "{value}: {}", run.stderr);
        assert!(!run.stderr.contains("#1 "), "{value}: {}", run.stderr);
    }

    // A hard limit above what the kernel allows (nofile past fs.nr_open)
    // fails the RUN step naming the limit, not a panic.
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let base = xbuild_e2e::publish_host_base(&xb, &reg);
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let value = format!("nofile=1024:{}", nr_open + 1);
    let base_arg = format!("BASE={base}");
    let run = build(
        &xb,
        &[],
        &["--build-arg", &base_arg, "--ulimit", &value],
        ctx.path(),
    )
    .failed();
    assert!(
        run.stderr
            .contains(&format!("ulimit nofile=1024:{}: setrlimit", nr_open + 1)),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("fs.nr_open"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn ulimits_travel_to_an_ssh_build_node() {
    if xbuild_e2e::require_multiplatform().is_none() {
        return;
    }
    if testbed::host_arch() != "amd64" {
        testbed::skip("the node is an amd64 node: the host must be amd64");
        return;
    }
    let Some(sshd) = Sshd::start_or_skip("127.0.0.6") else {
        return;
    };
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let home = tempfile::tempdir().unwrap();
    let env = [("HOME", s(home.path())), ("SSH_AUTH_SOCK", "")];
    let base = publish_base(&xb, &reg);
    let known = home.path().join(".ssh/known_hosts");
    sshd.write_known_hosts(&known).unwrap();
    let key = sshd.client_key();
    let agent = format!(
        "{} agent --stdio --root {}",
        xbuild_bin().display(),
        home.path().join("node1").display()
    );
    let url = sshd.url();
    xb.run_with(
        &[
            "node",
            "add",
            "node1",
            &url,
            "--platform",
            "linux/amd64",
            "--identity",
            s(&key),
            "--agent-command",
            &agent,
        ],
        &env,
        None,
    )
    .ok();
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let tag = reg.reference("ulimits/node:1");
    let base_arg = format!("BASE={base}");
    let run = build(
        &xb,
        &env,
        &[
            "--platform",
            "linux/amd64",
            "--build-arg",
            &base_arg,
            "--ulimit",
            "nofile=1024:2048",
            "--ulimit",
            "nproc=512",
            "-t",
            &tag,
            "--push",
        ],
        ctx.path(),
    )
    .ok();
    assert!(
        run.stderr.contains("linux/amd64 → node node1"),
        "{}",
        run.stderr
    );
    assert!(
        home.path().join("node1").join("content").is_dir(),
        "the step did not run on the node"
    );
    assert_eq!(out_of(&tag, "amd64"), "1024\n2048\n512\n");
}
