//! Shared helpers: a busybox root filesystem in a temporary directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use xbuild_sandbox::{Executor, LinuxExecutor, OutputStream, ProcessSpec, RunResult, SandboxError};

pub const BUSYBOX: &str = "/bin/busybox";

/// Why root tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".to_string());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!(
            "{BUSYBOX} is missing (apt-get install busybox-static)"
        ));
    }
    None
}

/// Returns a fresh root filesystem, or prints why the test is skipped.
#[macro_export]
macro_rules! rootfs_or_skip {
    ($tag:expr) => {
        match common::skip_reason() {
            Some(reason) => {
                eprintln!("SKIPPED: {reason}");
                return;
            }
            None => common::TestRoot::new($tag),
        }
    };
}

/// A busybox root filesystem, removed on drop (after lazily unmounting
/// anything a failed test might have left under it).
pub struct TestRoot {
    pub dir: PathBuf,
}

impl TestRoot {
    pub fn new(tag: &str) -> TestRoot {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xbuild-sandbox-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["bin", "etc", "root", "home/app"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
            }
        }
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
        )
        .unwrap();
        std::os::unix::fs::chown(dir.join("home/app"), Some(1000), Some(1000)).unwrap();
        TestRoot { dir }
    }

    /// Mount points of this process's namespace under the root filesystem.
    pub fn mounts_below(&self) -> Vec<String> {
        let dir = self.dir.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|mp| mp.starts_with(&dir))
            .collect()
    }

    pub fn assert_no_mounts(&self) {
        let left = self.mounts_below();
        assert!(left.is_empty(), "mounts left behind: {left:?}");
    }
}

impl AsRef<Path> for TestRoot {
    fn as_ref(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        for mp in self.mounts_below().into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes a host file on drop.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn executor() -> LinuxExecutor {
    LinuxExecutor::new(env!("CARGO_BIN_EXE_xbuild-sandbox-init"), Vec::new())
}

pub fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
        ..ProcessSpec::default()
    }
}

pub fn sh(script: &str) -> ProcessSpec {
    spec(&["sh", "-c", script])
}

/// What one run produced.
pub struct Output {
    pub result: Result<RunResult, SandboxError>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> &RunResult {
        match &self.result {
            Ok(r) => r,
            Err(e) => panic!("run failed: {e} (stderr: {})", self.stderr),
        }
    }
}

pub fn run_with(exec: &LinuxExecutor, root: impl AsRef<Path>, spec: &ProcessSpec) -> Output {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let result = exec.run(root.as_ref(), spec, &mut |stream, bytes| match stream {
        OutputStream::Stdout => stdout.extend_from_slice(bytes),
        OutputStream::Stderr => stderr.extend_from_slice(bytes),
    });
    Output {
        result,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

pub fn run(root: impl AsRef<Path>, spec: &ProcessSpec) -> Output {
    run_with(&executor(), root, spec)
}
