//! COPY and ADD semantics.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use xbuild_engine::context::{scan, ContextIndex, ScanOptions};
use xbuild_engine::copy::{copy_into, mkdir_p, AddOptions, CopyError, CopyRequest, CopyStats};
use xbuild_plan::InlineFile;

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

struct Fx {
    ctx: tempfile::TempDir,
    dst: tempfile::TempDir,
    index: Option<ContextIndex>,
}

impl Fx {
    fn new() -> Fx {
        let ctx = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        write(ctx.path(), "file.txt", "file");
        write(ctx.path(), "dir/a.txt", "a");
        write(ctx.path(), "dir/sub/b.txt", "b");
        write(ctx.path(), "dir/skip.md", "md");
        write(ctx.path(), "x1.go", "1");
        write(ctx.path(), "x2.go", "2");
        fs::set_permissions(ctx.path().join("x2.go"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("a.txt", ctx.path().join("dir/link")).unwrap();
        fs::hard_link(ctx.path().join("dir/a.txt"), ctx.path().join("dir/hard")).unwrap();
        std::os::unix::fs::lchown(ctx.path().join("file.txt"), Some(1234), Some(4321)).unwrap();
        write(
            dst.path(),
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n",
        );
        write(
            dst.path(),
            "etc/group",
            "root:x:0:\nstaff:x:50:app\napp:x:1001:\n",
        );
        Fx {
            ctx,
            dst,
            index: None,
        }
    }

    fn index(&mut self) -> &ContextIndex {
        if self.index.is_none() {
            self.index = Some(scan(self.ctx.path(), None, &ScanOptions::default(), None).unwrap());
        }
        self.index.as_ref().unwrap()
    }

    fn copy(&mut self, sources: &[&str], dest: &str) -> Result<CopyStats, CopyError> {
        self.copy_with(sources, dest, |_| {})
    }

    fn copy_with(
        &mut self,
        sources: &[&str],
        dest: &str,
        f: impl FnOnce(&mut CopyRequest),
    ) -> Result<CopyStats, CopyError> {
        self.index();
        let sources = s(sources);
        let mut req = CopyRequest {
            src_root: self.ctx.path(),
            src_filter: self.index.as_ref(),
            sources: &sources,
            inline: &[],
            dest_root: self.dst.path(),
            dest,
            chown: None,
            chmod: None,
            exclude: &[],
            parents: false,
            add: None,
        };
        f(&mut req);
        copy_into(&req)
    }

    fn copy_ex(
        &mut self,
        sources: &[&str],
        dest: &str,
        exclude: &[String],
    ) -> Result<CopyStats, CopyError> {
        self.index();
        let sources = s(sources);
        copy_into(&CopyRequest {
            src_root: self.ctx.path(),
            src_filter: self.index.as_ref(),
            sources: &sources,
            inline: &[],
            dest_root: self.dst.path(),
            dest,
            chown: None,
            chmod: None,
            exclude,
            parents: false,
            add: None,
        })
    }

    fn read(&self, p: &str) -> String {
        fs::read_to_string(self.dst.path().join(p)).unwrap()
    }

    fn meta(&self, p: &str) -> fs::Metadata {
        fs::symlink_metadata(self.dst.path().join(p)).unwrap()
    }

    fn exists(&self, p: &str) -> bool {
        fs::symlink_metadata(self.dst.path().join(p)).is_ok()
    }
}

#[test]
fn trailing_slash_rules() {
    let mut fx = Fx::new();
    fx.copy(&["file.txt"], "/out/").unwrap();
    assert_eq!(fx.read("out/file.txt"), "file");
    fx.copy(&["file.txt"], "/renamed").unwrap();
    assert_eq!(fx.read("renamed"), "file");
    assert!(fx.meta("renamed").is_file());
    // Existing directory without slash: goes inside.
    fx.copy(&["file.txt"], "/out").unwrap();
    assert_eq!(fx.read("out/file.txt"), "file");
    // Missing parents are created 0755 root-owned.
    fx.copy(&["file.txt"], "/deep/er/name.txt").unwrap();
    let m = fx.meta("deep/er");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, 0, 0));
    // Context owners are not preserved.
    let m = fx.meta("deep/er/name.txt");
    assert_eq!((m.uid(), m.gid()), (0, 0));
    // Multiple sources need a slash.
    let e = fx.copy(&["file.txt", "x1.go"], "/multi").unwrap_err();
    assert!(matches!(e, CopyError::DestNotDir { .. }), "{e}");
    fx.copy(&["file.txt", "x1.go"], "/multi/").unwrap();
    assert!(fx.exists("multi/file.txt") && fx.exists("multi/x1.go"));
}

#[test]
fn dir_contents_globs_links_and_modes() {
    let mut fx = Fx::new();
    let st = fx.copy(&["dir"], "/app").unwrap();
    assert_eq!(fx.read("app/a.txt"), "a");
    assert_eq!(fx.read("app/sub/b.txt"), "b");
    assert!(!fx.exists("app/dir"));
    assert_eq!(
        fs::read_link(fx.dst.path().join("app/link"))
            .unwrap()
            .to_str(),
        Some("a.txt")
    );
    assert_eq!(fx.meta("app/a.txt").ino(), fx.meta("app/hard").ino());
    assert_eq!(st.hardlinks, 1);
    // Globs: two matches to a directory, mode kept.
    fx.copy(&["x*.go"], "/go/").unwrap();
    assert_eq!(fx.read("go/x1.go"), "1");
    assert_eq!(fx.meta("go/x2.go").mode() & 0o7777, 0o750);
    // A glob matching two files with no slash: destination is a directory.
    fx.copy(&["x?.go"], "/go2").unwrap();
    assert!(fx.meta("go2").is_dir() && fx.exists("go2/x2.go"));
    // Globs in directories.
    fx.copy(&["dir/*/b.txt"], "/g/").unwrap();
    assert_eq!(fx.read("g/b.txt"), "b");
    // Missing sources.
    let e = fx.copy(&["nope"], "/n/").unwrap_err();
    assert!(e.to_string().contains("\"nope\""), "{e}");
    // A wildcard matching nothing copies nothing and creates no
    // destination (BuildKit's AllowEmptyWildcard, testEmptyWildcard).
    let st = fx.copy(&["*.nope"], "/n/").unwrap();
    assert_eq!((st.files, st.dirs), (0, 0));
    assert!(!fx.exists("n"));
    fx.copy(&["file.txt", "*.nope"], "/n2/").unwrap();
    assert_eq!(fx.read("n2/file.txt"), "file");
}

#[test]
fn chown_chmod_exclude_parents() {
    let mut fx = Fx::new();
    fx.copy_with(&["dir"], "/by-name/x/", |r| r.chown = Some("app"))
        .unwrap();
    let m = fx.meta("by-name/x/a.txt");
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    // Newly created parents take the --chown owner.
    let m = fx.meta("by-name");
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    fx.copy_with(&["file.txt"], "/by-id", |r| r.chown = Some("42:staff"))
        .unwrap();
    let m = fx.meta("by-id");
    assert_eq!((m.uid(), m.gid()), (42, 50));
    let e = fx
        .copy_with(&["file.txt"], "/x", |r| r.chown = Some("nobody-here"))
        .unwrap_err();
    assert!(matches!(e, CopyError::Chown { .. }), "{e}");

    fx.copy_with(&["dir"], "/m/", |r| r.chmod = Some("640"))
        .unwrap();
    assert_eq!(fx.meta("m/a.txt").mode() & 0o7777, 0o640);
    assert_eq!(fx.meta("m/sub").mode() & 0o7777, 0o640);
    fx.copy_with(&["x1.go"], "/sym", |r| r.chmod = Some("u+x,go-rwx"))
        .unwrap();
    assert_eq!(fx.meta("sym").mode() & 0o7777, 0o700);

    let ex = s(&["*.md", "sub"]);
    fx.copy_ex(&["dir"], "/ex/", &ex).unwrap();
    assert!(fx.exists("ex/a.txt"));
    assert!(!fx.exists("ex/skip.md"));
    assert!(!fx.exists("ex/sub"));

    fx.copy_with(&["dir/sub/b.txt", "x1.go"], "/p/", |r| r.parents = true)
        .unwrap();
    assert_eq!(fx.read("p/dir/sub/b.txt"), "b");
    assert_eq!(fx.read("p/x1.go"), "1");
    fx.copy_with(&["dir/./sub/b.txt"], "/q/", |r| r.parents = true)
        .unwrap();
    assert_eq!(fx.read("q/sub/b.txt"), "b");
    // A wildcard matching nothing still makes the destination
    // (dockerfile_parents_test.go testCopyParentsMissingDirectory).
    fx.copy_with(&["dir/./nope*"], "/w/", |r| r.parents = true)
        .unwrap();
    assert!(fx.meta("w").is_dir());
    assert!(!fx.exists("w/nope"));
}

#[test]
fn created_parents_take_an_octal_chmod() {
    // dockerfile_copy_test.go testCopyChmod
    let mut fx = Fx::new();
    fx.copy_with(&["file.txt"], "/parent/foo", |r| r.chmod = Some("777"))
        .unwrap();
    fx.copy_with(&["file.txt"], "/parent/sub/foo", |r| r.chmod = Some("770"))
        .unwrap();
    assert_eq!(fx.meta("parent").mode() & 0o7777, 0o777);
    assert_eq!(fx.meta("parent/sub").mode() & 0o7777, 0o770);
    assert_eq!(fx.meta("parent/sub/foo").mode() & 0o7777, 0o770);
    // A symbolic mode leaves created parents at 0755.
    fx.copy_with(&["file.txt"], "/sym/dir/foo", |r| r.chmod = Some("u+x"))
        .unwrap();
    assert_eq!(fx.meta("sym/dir").mode() & 0o7777, 0o755);
}

#[test]
fn a_created_directory_destination_is_owned_like_a_parent() {
    // dockerfile_copy_test.go testCopyChownExistingDir: copying a stage's
    // directory to a new path makes that path root's (or --chown's); the
    // entries below keep their owners; an existing directory keeps its own.
    let fx = Fx::new();
    let src = fx.ctx.path();
    std::os::unix::fs::lchown(src.join("dir"), Some(100), Some(200)).unwrap();
    std::os::unix::fs::lchown(src.join("dir/sub"), Some(101), Some(201)).unwrap();
    fs::create_dir(fx.dst.path().join("existing")).unwrap();
    std::os::unix::fs::lchown(fx.dst.path().join("existing"), Some(500), Some(600)).unwrap();
    let copy = |dest: &str, chown: Option<&str>| {
        let sources = s(&["/dir"]);
        let req = CopyRequest {
            src_root: src,
            src_filter: None,
            sources: &sources,
            inline: &[],
            dest_root: fx.dst.path(),
            dest,
            chown,
            chmod: None,
            exclude: &[],
            parents: false,
            add: None,
        };
        copy_into(&req).unwrap();
    };
    copy("/new", None);
    let owner = |p: &str| {
        let m = fx.meta(p);
        (m.uid(), m.gid())
    };
    assert_eq!(owner("new"), (0, 0));
    assert_eq!(owner("new/sub"), (101, 201));
    copy("/existing", None);
    assert_eq!(owner("existing"), (500, 600));
    assert_eq!(owner("existing/sub"), (101, 201));
    copy("/chowned", Some("300:400"));
    assert_eq!(owner("chowned"), (300, 400));
    assert_eq!(owner("chowned/sub"), (300, 400));
}

#[test]
fn from_stage_preserves_owner() {
    let mut fx = Fx::new();
    let sources = s(&["/file.txt"]);
    let req = CopyRequest {
        src_root: fx.ctx.path(),
        src_filter: None,
        sources: &sources,
        inline: &[],
        dest_root: fx.dst.path(),
        dest: "/kept",
        chown: None,
        chmod: None,
        exclude: &[],
        parents: false,
        add: None,
    };
    copy_into(&req).unwrap();
    let m = fx.meta("kept");
    assert_eq!((m.uid(), m.gid()), (1234, 4321));
    let _ = fx.index();
}

#[test]
fn symlinks_in_dest_stay_inside_root() {
    let mut fx = Fx::new();
    let outside = tempfile::tempdir().unwrap();
    // An absolute link that climbs: read inside the root it is /tmp/x.
    symlink("/../../tmp/x", fx.dst.path().join("app")).unwrap();
    fs::create_dir_all(fx.dst.path().join("tmp/x")).unwrap();
    fx.copy(&["file.txt"], "/app/").unwrap();
    assert_eq!(fx.read("tmp/x/file.txt"), "file");
    // A link to a host directory by absolute path also resolves inside.
    symlink(outside.path(), fx.dst.path().join("evil")).unwrap();
    fx.copy(&["dir"], "/evil/").unwrap();
    assert!(
        fs::read_dir(outside.path()).unwrap().next().is_none(),
        "escaped"
    );
    let inside = fx
        .dst
        .path()
        .join(outside.path().strip_prefix("/").unwrap());
    assert!(inside.join("a.txt").exists());
    // A relative climbing link.
    symlink("../../../../../../..", fx.dst.path().join("up")).unwrap();
    fx.copy(&["file.txt"], "/up/tmp/escape.txt").unwrap();
    assert!(fx.dst.path().join("tmp/escape.txt").exists());
    // The last component of a file destination is replaced, not followed.
    symlink("/etc/passwd", fx.dst.path().join("victim")).unwrap();
    fx.copy(&["x1.go"], "/victim").unwrap();
    assert!(fx.meta("victim").is_file());
    assert!(fx.read("etc/passwd").contains("root:x:0:0"));
    // WORKDIR.
    let h = mkdir_p(fx.dst.path(), "/app/w/d", 7, 8).unwrap();
    assert!(h.starts_with(fx.dst.path()));
    let m = fx.meta("tmp/x/w/d");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (7, 8, 0o755));
}

fn tar_gz(entries: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(55);
        h.set_gid(66);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the raw name so that hostile names survive.
        let nb = name.as_bytes();
        h.as_old_mut().name[..nb.len()].copy_from_slice(nb);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let raw = b.into_inner().unwrap();
    if !gzip {
        return raw;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

#[test]
fn add_archives() {
    let mut fx = Fx::new();
    fs::write(
        fx.ctx.path().join("weird-name.bin"),
        tar_gz(&[("pkg/one.txt", b"1"), ("pkg/two.txt", b"22")], true),
    )
    .unwrap();
    fs::write(
        fx.ctx.path().join("evil.tar"),
        tar_gz(&[("../../../escape.txt", b"x"), ("ok.txt", b"ok")], false),
    )
    .unwrap();
    fx.index = None;
    let st = fx
        .copy_with(&["weird-name.bin"], "/opt", |r| {
            r.add = Some(AddOptions::default())
        })
        .unwrap();
    assert_eq!(st.archives, 1);
    assert_eq!(fx.read("opt/pkg/two.txt"), "22");
    let m = fx.meta("opt/pkg/one.txt");
    assert_eq!((m.uid(), m.gid()), (55, 66));
    // --unpack=false copies the archive as a file.
    fx.copy_with(&["weird-name.bin"], "/raw/", |r| {
        r.add = Some(AddOptions {
            unpack: Some(false),
            ..Default::default()
        })
    })
    .unwrap();
    assert!(fx.meta("raw/weird-name.bin").is_file());
    // COPY never unpacks.
    fx.copy(&["weird-name.bin"], "/copied").unwrap();
    assert!(fx.meta("copied").is_file());
    // Hostile names stay inside the destination.
    let parent = fx.dst.path().parent().unwrap().to_path_buf();
    fx.copy_with(&["evil.tar"], "/in/here/", |r| {
        r.add = Some(AddOptions::default())
    })
    .unwrap();
    assert_eq!(fx.read("in/here/ok.txt"), "ok");
    assert!(!parent.join("escape.txt").exists());
    assert!(!Path::new("/escape.txt").exists());
}

/// Serves `body` for every request; returns the base URL.
fn serve(body: &'static [u8], requests: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..requests {
            let Ok((mut c, _)) = l.accept() else { return };
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(head.as_bytes());
            let _ = c.write_all(body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn context_socket_is_copied_as_an_empty_file() {
    // testCopySocket: BuildKit's context transfer turns a socket into a
    // regular file.
    let mut fx = Fx::new();
    let sock = fx.ctx.path().join("socket.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    fx.index = None;
    let idx = fx.index();
    let e = idx
        .entries
        .iter()
        .find(|e| e.path == "socket.sock")
        .unwrap();
    assert_eq!(e.size, 0);
    fx.copy(&["."], "/all/").unwrap();
    let m = fx.meta("all/socket.sock");
    assert!(m.is_file());
    assert_eq!(m.len(), 0);
    assert_eq!(fx.read("all/file.txt"), "file");
}

#[test]
fn add_url_unpack_true_extracts() {
    // testDockerfileAddArchive: a downloaded archive is a file, unless
    // --unpack=true, which extracts it into the destination directory.
    let mut fx = Fx::new();
    let body: &'static [u8] = Box::leak(tar_gz(&[("foo", b"content0")], true).into_boxed_slice());
    let base = serve(body, 2);
    let url = format!("{base}/t.tar.gz");
    fx.copy_with(&[url.as_str()], "/dest/", |r| {
        r.add = Some(AddOptions {
            unpack: Some(true),
            ..Default::default()
        })
    })
    .unwrap();
    assert_eq!(fx.read("dest/foo"), "content0");
    assert!(!fx.exists("dest/t.tar.gz"));
    fx.copy_with(&[url.as_str()], "/plain/", |r| {
        r.add = Some(AddOptions::default())
    })
    .unwrap();
    assert!(fx.meta("plain/t.tar.gz").is_file());
    assert!(!fx.exists("plain/foo"));
}

#[test]
fn add_urls_with_checksums() {
    let mut fx = Fx::new();
    let body: &'static [u8] = b"downloaded content\n";
    let base = serve(body, 3);
    let good = xbuild_oci::Digest::sha256_of(body).to_string();
    let url = format!("{base}/files/tool.tar.gz?x=1");
    let st = fx
        .copy_with(&[url.as_str()], "/dl/", |r| {
            r.add = Some(AddOptions {
                checksum: Some(good.clone()),
                ..Default::default()
            })
        })
        .unwrap();
    assert_eq!(st.downloads, 1);
    // Never unpacked, mode 0600, mtime from Last-Modified.
    assert_eq!(fx.read("dl/tool.tar.gz"), "downloaded content\n");
    let m = fx.meta("dl/tool.tar.gz");
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!(m.mtime(), 784111777);
    // No slash: the destination is the file.
    fx.copy_with(&[url.as_str()], "/dl2", |r| {
        r.add = Some(AddOptions::default())
    })
    .unwrap();
    assert_eq!(fx.read("dl2"), "downloaded content\n");
    let bad = xbuild_oci::Digest::sha256_of(b"other").to_string();
    let e = fx
        .copy_with(&[url.as_str()], "/dl3/", |r| {
            r.add = Some(AddOptions {
                checksum: Some(bad.clone()),
                ..Default::default()
            })
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&bad) && msg.contains(&good), "{msg}");
    assert!(!fx.exists("dl3/tool.tar.gz"));
    // COPY refuses URLs.
    let e = fx.copy(&[url.as_str()], "/x/").unwrap_err();
    assert!(matches!(e, CopyError::UrlInCopy { .. }));
}

#[test]
fn add_url_without_a_name_and_unpack() {
    // dockerfile_add_test.go testDockerfileADDFromURL: no file name in the
    // URL path gives `__unnamed__`.
    let mut fx = Fx::new();
    let base = serve(b"content2", 1);
    fx.copy_with(&[format!("{base}/").as_str()], "/dest/", |r| {
        r.add = Some(AddOptions::default())
    })
    .unwrap();
    assert_eq!(fx.read("dest/__unnamed__"), "content2");
    // testDockerfileAddArchive: a URL archive is unpacked only with
    // --unpack=true.
    let tgz: &'static [u8] = Box::leak(tar_gz(&[("foo", b"content0")], true).into_boxed_slice());
    let base = serve(tgz, 2);
    let url = format!("{base}/t.tar.gz");
    fx.copy_with(&[url.as_str()], "/unpacked/", |r| {
        r.add = Some(AddOptions {
            unpack: Some(true),
            ..Default::default()
        })
    })
    .unwrap();
    assert_eq!(fx.read("unpacked/foo"), "content0");
    assert!(!fx.exists("unpacked/t.tar.gz"));
    fx.copy_with(&[url.as_str()], "/kept/", |r| {
        r.add = Some(AddOptions::default())
    })
    .unwrap();
    assert!(fx.exists("kept/t.tar.gz") && !fx.exists("kept/foo"));
}

#[test]
fn a_socket_in_the_context_is_copied_as_an_empty_file() {
    // dockerfile_copy_test.go testCopySocket
    let mut fx = Fx::new();
    let _l = std::os::unix::net::UnixListener::bind(fx.ctx.path().join("socket.sock")).unwrap();
    fx.copy(&["."], "/all/").unwrap();
    let m = fx.meta("all/socket.sock");
    assert!(m.is_file(), "{m:?}");
    assert_eq!(m.len(), 0);
    assert_eq!(fx.read("all/file.txt"), "file");
}

#[test]
fn heredoc_inline_files() {
    let mut fx = Fx::new();
    fx.index();
    let inline = vec![
        InlineFile {
            name: "script.sh".into(),
            content: "#!/bin/sh\necho hi\n".into(),
            mode: 0o644,
        },
        InlineFile {
            name: "conf".into(),
            content: "k=v\n".into(),
            mode: 0o644,
        },
    ];
    let req = CopyRequest {
        src_root: fx.ctx.path(),
        src_filter: fx.index.as_ref(),
        sources: &[],
        inline: &inline,
        dest_root: fx.dst.path(),
        dest: "/etc/app/",
        chown: Some("app:app"),
        chmod: Some("755"),
        exclude: &[],
        parents: false,
        add: None,
    };
    copy_into(&req).unwrap();
    assert_eq!(fx.read("etc/app/script.sh"), "#!/bin/sh\necho hi\n");
    let m = fx.meta("etc/app/conf");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o755));
    let one = &inline[..1];
    let req = CopyRequest {
        inline: one,
        dest: "/single",
        chown: None,
        chmod: None,
        ..req
    };
    copy_into(&req).unwrap();
    assert!(fx.meta("single").is_file());
}

/// Non-UTF-8 names (BuildKit copies them as bytes): `COPY . /dst/`, `COPY
/// <dir>`, a wildcard, a symlink whose target is not UTF-8, and `ADD` of an
/// archive holding such names all land byte for byte; a file's name is
/// matched by `?` as one character per invalid byte, as in Go.
#[test]
fn non_utf8_names_are_copied_byte_for_byte() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let os = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
    let mut fx = Fx::new();
    let c = fx.ctx.path().to_path_buf();
    fs::write(c.join(os(b"caf\xe9.txt")), "latin-1").unwrap();
    fs::create_dir(c.join(os(b"d\xff"))).unwrap();
    fs::write(c.join(os(b"d\xff")).join(os(b"in\xfe")), "in").unwrap();
    symlink(os(b"caf\xe9.txt"), c.join(os(b"l\xe9"))).unwrap();
    // An archive with such names, for ADD.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.as_old_mut().name[..6].copy_from_slice(b"t\xe9/\xe9.x");
    h.set_cksum();
    b.append(&h, &b"tar"[..]).unwrap();
    fs::write(c.join("names.tar"), b.into_inner().unwrap()).unwrap();
    fx.index = None;

    fx.copy(&["."], "/all/").unwrap();
    let d = fx.dst.path().to_path_buf();
    assert_eq!(
        fs::read(d.join("all").join(os(b"caf\xe9.txt"))).unwrap(),
        b"latin-1"
    );
    assert_eq!(
        fs::read(d.join("all").join(os(b"d\xff")).join(os(b"in\xfe"))).unwrap(),
        b"in"
    );
    assert_eq!(
        fs::read_link(d.join("all").join(os(b"l\xe9")))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"caf\xe9.txt"
    );
    // A directory named with invalid bytes: its contents.
    fx.copy(&[std::str::from_utf8(b"d?").unwrap()], "/dir/")
        .unwrap();
    assert_eq!(fs::read(d.join("dir").join(os(b"in\xfe"))).unwrap(), b"in");
    // A wildcard to a new file name taken from the Dockerfile.
    fx.copy(&["caf?.txt"], "/renamed.txt").unwrap();
    assert_eq!(fs::read(d.join("renamed.txt")).unwrap(), b"latin-1");
    // ADD unpacks the archive's names as they are.
    fx.copy_with(&["names.tar"], "/x/", |r| {
        r.add = Some(AddOptions::default())
    })
    .unwrap();
    assert_eq!(
        fs::read(d.join("x").join(os(b"t\xe9")).join(os(b"\xe9.x"))).unwrap(),
        b"tar"
    );
    // A destination holding a real character of the escape range is that
    // character, not a raw byte.
    fx.copy(&["file.txt"], "/u\u{F7E9}").unwrap();
    assert_eq!(fx.read("u\u{F7E9}"), "file");
}
