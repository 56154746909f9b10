//! `cancel_all` (Ctrl-C): a running sandbox is killed, the caller gets
//! `Cancelled`, nothing is left running or mounted, and later runs are
//! refused. Its own test binary: cancelling is for the whole process.

mod common;

use std::time::{Duration, Instant};

use common::sh;
use xbuild_sandbox::{cancel_all, is_cancelled, Executor, SandboxError};

/// Pids whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(marker) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn cancel_all_kills_running_sandboxes_and_refuses_new_ones() {
    let root = rootfs_or_skip!("cancel");
    // A number no other process on the machine sleeps for.
    let marker = format!("{}", 40_000 + std::process::id() % 9_000);
    let dir = root.dir.clone();
    let script = format!("echo started; exec sleep {marker}");
    let runner = std::thread::spawn(move || {
        let exec = common::executor();
        exec.run(&dir, &sh(&script), &mut |_, _| {})
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_with(&format!("sleep\0{marker}")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the sandboxed sleep never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_cancelled());
    assert_eq!(cancel_all(), 1);
    assert!(is_cancelled());
    let result = runner.join().expect("runner thread");
    assert!(matches!(result, Err(SandboxError::Cancelled)), "{result:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_with(&format!("sleep\0{marker}")).is_empty() {
        assert!(Instant::now() < deadline, "the sandboxed sleep survived");
        std::thread::sleep(Duration::from_millis(50));
    }
    root.assert_no_mounts();
    // Nothing new starts.
    let later = common::executor().run(&root.dir, &sh("true"), &mut |_, _| {});
    assert!(matches!(later, Err(SandboxError::Cancelled)), "{later:?}");
}
