//! Registers a real binfmt_misc handler under a temporary name, runs a file
//! through it and removes it again. Needs root and a mountable binfmt_misc.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use xbuild_sandbox::binfmt::{self, Registration};

/// Unregisters the handler, removes the file and unmounts binfmt_misc if the
/// test mounted it, even when an assertion fails.
struct Cleanup {
    handler: Option<String>,
    file: PathBuf,
    mounted: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(name) = &self.handler {
            let _ = binfmt::unregister(name);
        }
        let _ = std::fs::remove_file(&self.file);
        if self.mounted {
            let _ = binfmt::unmount();
        }
    }
}

#[test]
fn register_run_and_unregister_a_handler() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: not running as root");
        return;
    }
    let mounted = match binfmt::ensure_mounted() {
        Ok(mounted) => mounted,
        Err(e) => {
            eprintln!("SKIPPED: binfmt_misc is not available: {e}");
            return;
        }
    };
    let name = format!("xbuild-test-{}", std::process::id());
    let mut cleanup = Cleanup {
        handler: None,
        file: std::env::temp_dir().join(format!("{name}.bin")),
        mounted,
    };
    let magic = b"\x7fXBUILD-TEST".to_vec();
    let reg = Registration {
        name: name.clone(),
        offset: 0,
        mask: vec![0xff; magic.len()],
        magic: magic.clone(),
        interpreter: PathBuf::from("/bin/true"),
        flags: "F".to_string(),
    };
    if let Err(e) = binfmt::register(&reg) {
        eprintln!("SKIPPED: binfmt_misc is not writable: {e}");
        return;
    }
    cleanup.handler = Some(name.clone());

    let handlers = binfmt::list().unwrap();
    let ours = handlers.iter().find(|h| h.name == name).expect("listed");
    assert!(ours.enabled);
    assert_eq!(ours.interpreter, PathBuf::from("/bin/true"));
    assert_eq!(ours.magic, magic);
    assert!(ours.fix_binary(), "{}", ours.flags);

    // The kernel runs a file with our magic through /bin/true.
    let mut contents = magic.clone();
    contents.extend_from_slice(b" not a real program");
    std::fs::write(&cleanup.file, &contents).unwrap();
    std::fs::set_permissions(&cleanup.file, std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = Command::new(&cleanup.file).status().unwrap();
    assert!(status.success(), "{status}");
    assert!(ours.matches(&contents));

    binfmt::unregister(&name).unwrap();
    cleanup.handler = None;
    assert!(binfmt::list().unwrap().iter().all(|h| h.name != name));
    assert!(Command::new(&cleanup.file).status().is_err());
}

#[test]
fn native_architecture_is_native() {
    let native = binfmt::native_arches()[0];
    assert_eq!(binfmt::can_run(native), binfmt::Support::Native);
    assert_eq!(binfmt::can_run("mips64le"), binfmt::Support::Missing);
}
