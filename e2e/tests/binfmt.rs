//! Without a QEMU handler for arm64 a multi-platform build stops before any
//! step with an error that names the platform and the fix; after
//! `xbuild binfmt install linux/arm64` the same build works.
//!
//! This test removes the machine's arm64 handler for a moment; nextest runs
//! it in the `binfmt-handlers` group (`.config/nextest.toml`), one at a time
//! with every other test that needs QEMU.

use xbuild_e2e::testbed::Registry;
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Xbuild};

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// Puts the handler back however the test ends.
struct Reinstall;

impl Drop for Reinstall {
    fn drop(&mut self) {
        let _ = Xbuild::new().run(&["binfmt", "install", "linux/arm64"]);
    }
}

fn arm64_row(xb: &Xbuild) -> String {
    let out = xb.run(&["binfmt", "status"]).ok().stdout;
    out.lines()
        .find(|l| l.starts_with("linux/arm64 "))
        .unwrap_or_else(|| panic!("no linux/arm64 row in:\n{out}"))
        .to_string()
}

#[test]
fn a_missing_arm64_handler_stops_the_build_and_install_fixes_it() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN uname -m > /arch\n"),
    )]);
    let args = [
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "-o",
        "type=oci,dest=/dev/null",
        s(ctx.path()),
    ];

    // Remove whichever handler emulates arm64 now.
    let row = arm64_row(&xb);
    assert!(row.contains("emulated"), "{row}");
    let handler = row.split_whitespace().nth(2).unwrap().to_string();
    let _guard = Reinstall;
    std::fs::write(format!("{BINFMT}/{handler}"), "-1").unwrap();
    assert!(arm64_row(&xb).contains("missing"));

    let run = xb.run(&args).failed();
    assert!(
        run.stderr
            .contains("cannot run linux/arm64 binaries on this machine"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("xbuild binfmt install linux/arm64"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.lines().any(|l| l.starts_with('#')),
        "a step started: {}",
        run.stderr
    );

    let installed = xb.run(&["binfmt", "install", "linux/arm64"]).ok();
    assert!(
        installed.stdout.contains("linux/arm64: registered"),
        "{}",
        installed.stdout
    );
    let row = arm64_row(&xb);
    assert!(row.contains("emulated") && row.contains("F"), "{row}");
    let again = xb.run(&["binfmt", "install", "linux/arm64"]).ok();
    assert!(
        again.stdout.contains("already emulated"),
        "{}",
        again.stdout
    );

    let ok = xb.run(&args).ok();
    assert!(
        ok.stderr
            .contains("[linux/arm64 stage-0 2/2] RUN uname -m > /arch"),
        "{}",
        ok.stderr
    );
    // The archive went to the device; the device itself must still be one
    // (an earlier version renamed a temp file over /dev/null).
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(meta.file_type().is_char_device(), "/dev/null was replaced");
}
