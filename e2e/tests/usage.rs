//! Usage errors and `xbuild version`, as a user meets them.

use xbuild_e2e::Xbuild;

#[test]
fn unknown_flags_are_named_with_the_closest_known_one() {
    let xb = Xbuild::new();
    let r = xb.run(&["--platfrom", "linux/amd64", "."]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("error: unknown flag --platfrom\n"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("did you mean --platform?"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("-- --"), "{}", r.stderr);

    // A buildx flag xbuild deliberately lacks says why (`--load` used to be
    // one; it is a flag now).
    let r = xb.run(&["build", "--cgroup-parent", "x", "."]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("error: unknown flag --cgroup-parent\n"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("to pass '--cgroup-parent' as a value"),
        "{}",
        r.stderr
    );

    let r = xb.run(&["images", "--no-trunk"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("did you mean --no-trunc?"),
        "{}",
        r.stderr
    );
}

#[test]
fn version_is_a_subcommand_not_a_context() {
    let r = Xbuild::new().run(&["version"]).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("xbuild "), "{}", r.stdout);
    for key in ["commit:", "rustc:", "platform:"] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(key)),
            "{key} missing:\n{}",
            r.stdout
        );
    }
    assert!(!r.stderr.contains("context"), "{}", r.stderr);
}
