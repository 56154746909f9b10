//! Size caps on what network peers send (#16): a registry whose token
//! service answers an endless body makes `FROM` and `--push` fail at the
//! cap (1 MiB), naming the registry and the token service, with the xbuild
//! process's memory bounded.

use xbuild_e2e::testbed::{self, Content, TokenMode, TokenRegistry};
use xbuild_e2e::{context, s, Xbuild};

/// Peak resident memory of the children this test waited for, in MiB.
fn children_peak_rss_mib() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0);
    ru.ru_maxrss / 1024
}

#[test]
fn an_endless_token_answer_fails_from_and_push_at_the_cap() {
    if testbed::require_root().is_none() {
        return;
    }
    let fake = TokenRegistry::start(TokenMode::Endless, Content::default()).unwrap();
    let xb = Xbuild::new();
    let host = fake.host();
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {host}/app/endless:1\nRUN true\n"),
    )]);
    let run = xb
        .run(&["build", "--progress", "plain", s(ctx.path())])
        .failed();
    eprintln!("FROM:\n{}", run.stderr);
    assert!(run.stderr.contains(&host), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "the token service http://{host} answered more than 1048576 bytes"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);

    let scratch = context(&[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")]);
    let tag = format!("{host}/app/pushed:1");
    let push = xb
        .run(&[
            "build",
            "--progress",
            "plain",
            "-t",
            &tag,
            "--push",
            s(scratch.path()),
        ])
        .failed();
    assert!(
        push.stderr.contains("answered more than 1048576 bytes"),
        "{}",
        push.stderr
    );
    let rss = children_peak_rss_mib();
    eprintln!(
        "peak RSS of xbuild: {rss} MiB; token bytes the server could write: {}",
        fake.token_bytes_sent()
    );
    assert!(rss < 100, "peak RSS {rss} MiB");
    assert_eq!(fake.unauthorized(), 0, "nothing went out without a token");
}

#[test]
fn a_node_whose_info_command_prints_endlessly_is_refused_at_the_cap() {
    let Some(sshd) = testbed::Sshd::start_or_skip("127.0.0.7") else {
        return;
    };
    let xb = Xbuild::new();
    let home = tempfile::tempdir().unwrap();
    let env = [("HOME", s(home.path())), ("SSH_AUTH_SOCK", "")];
    sshd.write_known_hosts(&home.path().join(".ssh/known_hosts"))
        .unwrap();
    let key = sshd.client_key();
    let url = sshd.url();
    // `yes` prints `y` lines until it is stopped (`--stdio` becomes
    // `--info` for the probe: here sh's $0).
    let run = xb
        .run_with(
            &[
                "node",
                "add",
                "chatty",
                &url,
                "--platform",
                "linux/amd64",
                "--identity",
                s(&key),
                "--agent-command",
                "sh -c yes --stdio",
            ],
            &env,
            None,
        )
        .failed();
    assert!(
        run.stderr.contains("printed more than 1048576 bytes"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("127.0.0.7"), "{}", run.stderr);
    let rss = children_peak_rss_mib();
    eprintln!("{}peak RSS of xbuild: {rss} MiB", run.stderr);
    assert!(rss < 100, "peak RSS {rss} MiB");
}
