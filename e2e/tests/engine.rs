//! The local engine end to end, checked against what Docker's Dockerfile
//! reference documents: a Dockerfile using every instruction (its
//! filesystem through `-o type=local`, its config through skopeo), an image
//! run by buildah, an OCI archive read by skopeo, `login`/`logout` against
//! an htpasswd registry (password on stdin, typed at a terminal, or kept by
//! a credential helper), and reproducible digests with `SOURCE_DATE_EPOCH`.
//! Also: `.dockerignore` applied to bind mounts of the context, ADD of
//! bzip2/xz tarballs, and EXPOSE port ranges (once engine bugs, now fixed).

use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{buildah_run, context, publish_base, require_multiplatform, s, Xbuild};

/// A value no file, layer, log or history entry may ever contain.
const SECRET: &str = "xb-s3cr3t-7f3a9c41-do-not-leak";

/// The Dockerfile of the all-instructions test: the base comes in as
/// `--build-arg BASE=...`.
const EVERY_INSTRUCTION: &str = r#"# syntax=docker/dockerfile:1
ARG BASE
ARG GLOBAL_ONLY=g1
FROM ${BASE} AS builder
RUN mkdir -p /out/sub && echo built > /out/artifact.txt && echo deep > /out/sub/deep.txt

# BuildKit refuses a variable in COPY --from: an alias stage instead.
FROM ${BASE} AS base-image

FROM ${BASE} AS entrypoint-only
ENTRYPOINT ["/bin/echo"]

# Only the stages the target needs are built.
FROM ${BASE} AS never-built
RUN echo "an unused stage ran" && exit 1

FROM ${BASE} AS final
MAINTAINER Jane Doe <jane@example.com>
ARG GREETING=hello
ARG FROM_CLI=default
ARG DERIVED=${GREETING}-derived
ARG OVERRIDDEN
ENV OVERRIDDEN=from-env
ENV APP_HOME=/srv/app \
    MESSAGE="two words"
ENV LEGACY legacy form value
ENV abc=hello
ENV abc=bye def=$abc
ENV ghi=$abc withdef=${UNSET_VAR:-fallback} withalt=${APP_HOME:+set} literal=\$APP_HOME empty=""
LABEL org.example.title="every instruction" org.example.greeting=$GREETING
LABEL "org.example.multi word"="yes"
RUN echo "[$GLOBAL_ONLY] [$TARGETARCH] [$UNDECLARED]" > /args-undeclared.txt
ARG GLOBAL_ONLY
ARG TARGETARCH
ARG TARGETPLATFORM
RUN echo "[$GLOBAL_ONLY] [$TARGETARCH] [$TARGETPLATFORM] [$FROM_CLI] [$OVERRIDDEN] [$DERIVED]" > /args-declared.txt
RUN echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group
WORKDIR /empty-workdir
WORKDIR /srv
WORKDIR app
WORKDIR $APP_HOME
COPY a.txt .
COPY a.txt rel/
COPY a.txt /files/renamed.txt
COPY a.txt /files/noslash
COPY dir /files/dir-noslash
COPY dir/ /files/dir-slash/
COPY *.md /files/md/
COPY d?r/nested/*.txt /files/glob/
COPY --chown=app:app a.txt /files/owned-by-name.txt
COPY --chown=1234:5678 a.txt /files/owned-by-id.txt
COPY --chown=1234 a.txt /files/owned-by-uid.txt
COPY --chown=1234:5678 dir /files/owned-dir
COPY --chmod=0640 a.txt /files/mode640.txt
COPY --chmod=755 script.sh /usr/local/bin/script.sh
COPY --chmod=755 script.sh /opt/tools/mytool
ENV PATH=/opt/tools:$PATH
COPY --from=builder /out/artifact.txt /files/
COPY --from=builder /out/ /files/from-builder/
COPY --from=0 /out/sub/deep.txt /files/by-index.txt
ARG BASE
COPY --from=base-image /etc/hostname /files/from-image-hostname
COPY --link a.txt /linked/
COPY . /ctx/
ADD archive.tar /opt/unpacked/
ADD archive.tar.gz /opt/unpacked-gz/
COPY archive.tar /files/
ADD tarball-without-extension /opt/by-content/
ADD not-really.tar.gz /opt/plain/
COPY <<EOF /files/inline.txt
inline ${GREETING}
EOF
COPY <<"EOF" /files/inline-quoted.txt
inline ${GREETING}
EOF
COPY <<robots.txt <<humans.txt /files/multi/
robots content
robots.txt
humans content
humans.txt
RUN echo "shell $GREETING $MESSAGE" > shell.txt
RUN mytool from-path > path-lookup.txt
RUN ["/bin/sh", "-c", "echo exec $GREETING > exec.txt"]
RUN ["/bin/busybox", "touch", "exec-direct", "$GREETING"]
RUN <<EOF
echo "heredoc line 1" > heredoc.txt
echo "greeting=$GREETING" >> heredoc.txt
EOF
RUN <<EOF
#!/bin/sh
echo from-shebang-script > shebang.txt
EOF
RUN cat <<EOT > heredoc-cat.txt
cat line $GREETING
EOT
RUN --mount=type=cache,target=/var/cache/app,id=appcache echo run1 >> /var/cache/app/log && cp /var/cache/app/log cache-seen.txt
RUN --mount=type=tmpfs,target=/scratch echo tmp > /scratch/t && cat /scratch/t > tmpfs.txt
RUN --mount=type=cache,target=/var/cache/owned,uid=1000,gid=1000,mode=0750 stat -c '%u:%g %a' /var/cache/owned > cache-owner.txt
RUN --mount=type=bind,source=bindsrc,target=/mnt/rw,rw echo changed > /mnt/rw/data.txt && touch /mnt/rw/new && cat /mnt/rw/data.txt > bind-rw.txt
RUN --network=none cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' > netdevs.txt
RUN --mount=type=bind,source=bindsrc,target=/mnt/bind cat /mnt/bind/data.txt > bind.txt && if touch /mnt/bind/new 2>/dev/null; then echo rw >> bind.txt; else echo ro >> bind.txt; fi
RUN --mount=type=bind,from=builder,source=/out,target=/mnt/b cat /mnt/b/sub/deep.txt > bind-from.txt
RUN --mount=type=secret,id=token sha256sum /run/secrets/token | cut -d' ' -f1 > secret.sha
RUN --mount=type=secret,id=token,target=/etc/app-token sha256sum /etc/app-token | cut -d' ' -f1 > secret-target.sha
RUN --mount=type=secret,id=token stat -c '%u:%g %a' /run/secrets/token > secret-mode.txt
RUN --mount=type=secret,id=token,uid=1000,mode=0440 stat -c '%u:%g %a' /run/secrets/token > secret-mode-set.txt
RUN --mount=type=secret,id=token,env=TOKEN printf %s "$TOKEN" | sha256sum | cut -d' ' -f1 > secret-env.sha
RUN --mount=type=secret,id=not-given if [ -e /run/secrets/not-given ]; then echo present; else echo absent; fi > secret-optional.txt
RUN rm /bin/vi && rm -r /var/tmp
USER 4242
RUN id -u > /tmp/numeric-user.txt && id -g >> /tmp/numeric-user.txt
USER app
RUN id -u > /tmp/run-as.txt && id -g >> /tmp/run-as.txt && touch /tmp/made-by-app
COPY a.txt /files/after-user.txt
ENV PORT=9090
EXPOSE 8080 8443/tcp 53/udp $PORT
VOLUME /data
VOLUME ["/logs", "/cache"]
VOLUME $APP_HOME/vol
SHELL ["/usr/bin/env", "X_SHELL=custom", "/bin/sh", "-c"]
RUN echo "shell=$X_SHELL" > /tmp/shell.txt
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=4 CMD test -f /tmp/shell.txt || exit 1
ONBUILD RUN echo triggered > /tmp/onbuild.txt
CMD ["replaced"]
ENTRYPOINT ["/usr/local/bin/script.sh"]
CMD ["arg1"]
"#;

/// The build context of [`EVERY_INSTRUCTION`]; the secret lives outside it.
struct EveryInstruction {
    ctx: tempfile::TempDir,
    secret_file: tempfile::NamedTempFile,
}

fn every_instruction_context() -> EveryInstruction {
    let ctx = context(&[
        ("Dockerfile", EVERY_INSTRUCTION),
        (
            ".dockerignore",
            "# not sent\nignored.txt\n*.tmp\n!keep.tmp\n**/*.log\n",
        ),
        ("a.txt", "alpha\n"),
        ("b.md", "bee\n"),
        ("c.md", "sea\n"),
        ("dir/one.txt", "one\n"),
        ("dir/nested/two.txt", "two\n"),
        ("dir/nested/debug.log", "excluded by **/*.log\n"),
        ("script.sh", "#!/bin/sh\necho \"script $*\"\n"),
        ("ignored.txt", "must not be copied\n"),
        ("x.tmp", "must not be copied\n"),
        ("keep.tmp", "kept by the exception\n"),
        ("bindsrc/data.txt", "bound\n"),
    ]);
    let dir = ctx.path();
    for f in ["a.txt", "b.md", "c.md", "script.sh"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // A tarball for ADD to unpack (and COPY to leave alone), plain and gzipped.
    let stage = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(stage.path().join("tarred")).unwrap();
    std::fs::write(stage.path().join("tarred/hello.txt"), "from the tarball\n").unwrap();
    std::fs::write(stage.path().join("tarred/run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        stage.path().join("tarred/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for (name, flag) in [
        ("archive.tar", "-cf"),
        ("archive.tar.gz", "-czf"),
        ("tarball-without-extension", "-cf"),
    ] {
        testbed::run(
            Command::new("tar")
                .arg(flag)
                .arg(dir.join(name))
                .arg("-C")
                .arg(stage.path())
                .arg("tarred"),
        )
        .unwrap();
    }
    std::fs::write(dir.join("not-really.tar.gz"), "plain text\n").unwrap();
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), SECRET).unwrap();
    EveryInstruction { ctx, secret_file }
}

/// The image config's exact JSON (`skopeo inspect --config --raw`; without
/// `--raw` skopeo converts it to the OCI schema, which has no `Healthcheck`,
/// `OnBuild` or `Shell`).
fn raw_config(reference: &str) -> Value {
    let out = testbed::run(Command::new("skopeo").args([
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]))
    .unwrap();
    serde_json::from_slice(&out).unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (mode & 0o7777, uid, gid) of `p` (not following symlinks).
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

/// Every regular file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let b = std::fs::read(e.path()).unwrap();
                if b.windows(needle.len()).any(|w| w == needle) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

fn sha256_hex(bytes: &[u8]) -> String {
    testbed::sha256_digest(bytes)
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string()
}

/// Build [`EVERY_INSTRUCTION`] for linux/amd64: the root filesystem into
/// `out` and the image pushed to `tag`. Returns the run.
fn build_every_instruction(
    xb: &Xbuild,
    base: &str,
    c: &EveryInstruction,
    out: &Path,
    tag: &str,
    target: Option<&str>,
) -> xbuild_e2e::Run {
    let mut args = vec![
        "build".to_string(),
        "--progress".into(),
        "plain".into(),
        "--platform".into(),
        "linux/amd64".into(),
        "--build-arg".into(),
        format!("BASE={base}"),
        "--build-arg".into(),
        "FROM_CLI=cli".into(),
        "--build-arg".into(),
        "OVERRIDDEN=from-cli".into(),
        "--build-arg".into(),
        "UNDECLARED=zzz".into(),
        "--secret".into(),
        format!("id=token,src={}", s(c.secret_file.path())),
        "-o".into(),
        format!("type=local,dest={}", s(out)),
        "-t".into(),
        tag.into(),
        "--push".into(),
    ];
    if let Some(t) = target {
        args.extend(["--target".into(), t.into()]);
    }
    args.push(s(c.ctx.path()).into());
    xb.run(&args)
}

/// The filesystem of the image, as the Dockerfile reference documents COPY,
/// ADD, RUN (forms, heredocs, mounts), WORKDIR, USER and SHELL.
fn check_filesystem(root: &Path, c: &EveryInstruction) {
    let p = |rel: &str| root.join(rel);
    // WORKDIR: created even if unused; relative paths resolve against the
    // previous WORKDIR; relative COPY destinations resolve against WORKDIR.
    assert!(p("empty-workdir").is_dir(), "WORKDIR creates its directory");
    assert_eq!(read(&p("srv/app/a.txt")), "alpha\n", "COPY a.txt .");
    assert_eq!(read(&p("srv/app/rel/a.txt")), "alpha\n", "COPY a.txt rel/");
    // Trailing slash rules.
    assert_eq!(read(&p("files/renamed.txt")), "alpha\n");
    assert!(p("files/noslash").is_file(), "no trailing slash: a file");
    assert_eq!(read(&p("files/noslash")), "alpha\n");
    // A directory source copies its contents, not the directory itself.
    for d in ["files/dir-noslash", "files/dir-slash"] {
        assert_eq!(read(&p(&format!("{d}/one.txt"))), "one\n", "{d}");
        assert_eq!(read(&p(&format!("{d}/nested/two.txt"))), "two\n", "{d}");
        assert!(!p(&format!("{d}/dir")).exists(), "{d}: the dir itself");
    }
    // Globs.
    assert_eq!(read(&p("files/md/b.md")), "bee\n");
    assert_eq!(read(&p("files/md/c.md")), "sea\n");
    assert_eq!(
        std::fs::read_dir(p("files/md")).unwrap().count(),
        2,
        "*.md matches exactly b.md and c.md"
    );
    assert_eq!(read(&p("files/glob/two.txt")), "two\n");
    assert_eq!(read(&p("linked/a.txt")), "alpha\n", "COPY --link");
    // Owners: root unless --chown; a user without group means GID = UID;
    // a name is looked up in the image's /etc/passwd and /etc/group.
    assert_eq!(owner_mode(&p("srv/app/a.txt")), (0o644, 0, 0));
    assert_eq!(owner_mode(&p("files/owned-by-name.txt")).1, 1000);
    assert_eq!(owner_mode(&p("files/owned-by-name.txt")).2, 1000);
    assert_eq!(owner_mode(&p("files/owned-by-id.txt")), (0o644, 1234, 5678));
    assert_eq!(
        owner_mode(&p("files/owned-by-uid.txt")),
        (0o644, 1234, 1234)
    );
    // --chown applies to every new file and directory of a copied tree.
    for f in [
        "files/owned-dir",
        "files/owned-dir/one.txt",
        "files/owned-dir/nested",
        "files/owned-dir/nested/two.txt",
    ] {
        let (_, uid, gid) = owner_mode(&p(f));
        assert_eq!((uid, gid), (1234, 5678), "{f}");
    }
    assert_eq!(
        owner_mode(&p("files/after-user.txt")),
        (0o644, 0, 0),
        "COPY ignores USER"
    );
    // --chmod.
    assert_eq!(owner_mode(&p("files/mode640.txt")), (0o640, 0, 0));
    assert_eq!(owner_mode(&p("usr/local/bin/script.sh")), (0o755, 0, 0));
    // --from=stage.
    assert_eq!(read(&p("files/artifact.txt")), "built\n");
    assert_eq!(read(&p("files/from-builder/artifact.txt")), "built\n");
    assert_eq!(read(&p("files/from-builder/sub/deep.txt")), "deep\n");
    assert_eq!(read(&p("files/by-index.txt")), "deep\n", "--from=0");
    assert_eq!(
        read(&p("files/from-image-hostname")),
        "xbuild\n",
        "--from=IMAGE"
    );
    // .dockerignore: excluded files never reach the image; `!` re-includes.
    assert_eq!(read(&p("ctx/a.txt")), "alpha\n");
    assert_eq!(read(&p("ctx/keep.tmp")), "kept by the exception\n");
    assert!(!p("ctx/ignored.txt").exists(), "ignored.txt was copied");
    assert!(!p("ctx/x.tmp").exists(), "x.tmp was copied");
    for d in ["ctx/dir", "files/dir-slash", "files/dir-noslash"] {
        let f = p(&format!("{d}/nested/debug.log"));
        assert!(!f.exists(), "**/*.log: {} was copied", f.display());
    }
    // Not excluded, so copied like any other file.
    assert!(p("ctx/Dockerfile").is_file() && p("ctx/.dockerignore").is_file());
    // (What a bind mount of the context shows is checked, and found wrong,
    // in `bind_mount_of_the_context_honours_dockerignore`.)
    // ADD unpacks local tarballs (plain and gzip); COPY does not.
    assert_eq!(
        read(&p("opt/unpacked/tarred/hello.txt")),
        "from the tarball\n"
    );
    assert_eq!(owner_mode(&p("opt/unpacked/tarred/run.sh")).0, 0o755);
    assert_eq!(
        read(&p("opt/unpacked-gz/tarred/hello.txt")),
        "from the tarball\n"
    );
    assert_eq!(
        std::fs::read(p("files/archive.tar")).unwrap(),
        std::fs::read(c.ctx.path().join("archive.tar")).unwrap(),
        "COPY keeps a tarball as it is"
    );
    // ADD recognises archives by their contents, not their names.
    assert_eq!(
        read(&p("opt/by-content/tarred/hello.txt")),
        "from the tarball\n"
    );
    assert_eq!(read(&p("opt/plain/not-really.tar.gz")), "plain text\n");
    // COPY heredocs: expanded unless the delimiter is quoted; several at once.
    assert_eq!(read(&p("files/inline.txt")), "inline hello\n");
    assert_eq!(read(&p("files/inline-quoted.txt")), "inline ${GREETING}\n");
    assert_eq!(read(&p("files/multi/robots.txt")), "robots content\n");
    assert_eq!(read(&p("files/multi/humans.txt")), "humans content\n");
    // RUN: shell form (ARG and ENV in the environment), exec form with and
    // without a shell, heredocs (plain, with a shebang, fed to a command).
    let app = |f: &str| p(&format!("srv/app/{f}"));
    assert_eq!(read(&app("shell.txt")), "shell hello two words\n");
    assert_eq!(
        read(&app("path-lookup.txt")),
        "script from-path\n",
        "RUN finds commands on the ENV PATH"
    );
    assert_eq!(read(&app("exec.txt")), "exec hello\n");
    assert!(app("exec-direct").is_file(), "exec form runs in WORKDIR");
    assert!(
        app("$GREETING").is_file() && !app("hello").exists(),
        "the exec form does no variable substitution"
    );
    // ARG scoping: a global ARG and the automatic platform ARGs are only
    // visible in a stage after being declared there; --build-arg overrides
    // a default; ENV overrides an ARG of the same name.
    assert_eq!(read(&p("args-undeclared.txt")), "[] [] []\n");
    assert_eq!(
        read(&p("args-declared.txt")),
        "[g1] [amd64] [linux/amd64] [cli] [from-env] [hello-derived]\n"
    );
    assert_eq!(
        read(&app("heredoc.txt")),
        "heredoc line 1\ngreeting=hello\n"
    );
    assert_eq!(read(&app("shebang.txt")), "from-shebang-script\n");
    assert_eq!(read(&app("heredoc-cat.txt")), "cat line hello\n");
    // Mounts: their contents are not part of the image.
    assert_eq!(read(&app("cache-seen.txt")), "run1\n");
    assert!(!p("var/cache/app/log").exists(), "cache mount leaked");
    assert_eq!(read(&app("tmpfs.txt")), "tmp\n");
    assert!(!p("scratch/t").exists(), "tmpfs mount leaked");
    assert_eq!(
        read(&app("bind.txt")),
        "bound\nro\n",
        "bind mounts are read-only"
    );
    assert!(!p("mnt/bind/data.txt").exists(), "bind mount leaked");
    // rw bind mounts: writable, but the writes are thrown away.
    assert_eq!(read(&app("bind-rw.txt")), "changed\n");
    assert!(!p("mnt/rw/new").exists() && !p("mnt/rw/data.txt").exists());
    assert_eq!(read(&c.ctx.path().join("bindsrc/data.txt")), "bound\n");
    assert!(
        !c.ctx.path().join("bindsrc/new").exists(),
        "rw bind wrote to the context"
    );
    // Cache mount uid, gid, mode.
    assert_eq!(read(&app("cache-owner.txt")), "1000:1000 750\n");
    // --network=none: only the loopback interface.
    assert_eq!(read(&app("netdevs.txt")), "lo\n");
    assert_eq!(read(&app("bind-from.txt")), "deep\n");
    // Secrets: mounted (the RUN saw the right bytes), never stored.
    let want = sha256_hex(SECRET.as_bytes());
    assert_eq!(read(&app("secret.sha")).trim(), want);
    assert_eq!(read(&app("secret-target.sha")).trim(), want);
    assert_eq!(read(&app("secret-env.sha")).trim(), want, "secret as env");
    assert_eq!(
        read(&app("secret-mode.txt")),
        "0:0 400\n",
        "secret files default to root, mode 0400"
    );
    assert_eq!(read(&app("secret-mode-set.txt")), "1000:0 440\n");
    assert_eq!(
        read(&app("secret-optional.txt")),
        "absent\n",
        "a secret that was not given is not required by default"
    );
    assert!(
        !p("run/secrets/token").is_file() || read(&p("run/secrets/token")).is_empty(),
        "the secret file is in the image"
    );
    assert!(
        !p("etc/app-token").is_file() || read(&p("etc/app-token")).is_empty(),
        "the secret file is in the image"
    );
    assert_eq!(
        files_containing(root, SECRET.as_bytes()),
        Vec::<PathBuf>::new(),
        "the secret's value is in the output"
    );
    // Deleting base files: whiteouts in the layer.
    assert!(
        p("bin/less").is_symlink() && !p("bin/vi").is_symlink(),
        "RUN rm of a base file"
    );
    assert!(!p("var/tmp").exists(), "RUN rm -r of a base directory");
    assert!(p("var").is_dir());
    // A user with no primary group runs with the root group.
    assert_eq!(read(&p("tmp/numeric-user.txt")), "4242\n0\n");
    // USER: later RUNs run as that user (name looked up in /etc/passwd).
    assert_eq!(read(&p("tmp/run-as.txt")), "1000\n1000\n");
    let (_, uid, gid) = owner_mode(&p("tmp/made-by-app"));
    assert_eq!((uid, gid), (1000, 1000));
    // SHELL: the shell form of RUN runs through it.
    assert_eq!(read(&p("tmp/shell.txt")), "shell=custom\n");
    // ONBUILD does not run in the image that declares it.
    assert!(!p("tmp/onbuild.txt").exists());
}

/// The history entry whose `created_by` starts with `prefix`.
fn history_entry<'a>(history: &'a [Value], prefix: &str) -> &'a Value {
    history
        .iter()
        .find(|h| {
            h["created_by"]
                .as_str()
                .is_some_and(|c| c.starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no history entry starting with {prefix:?}: {history:#?}"))
}

fn is_empty_layer(h: &Value) -> bool {
    h["empty_layer"].as_bool().unwrap_or(false)
}

/// The image config, as the Dockerfile reference documents ENV, ARG, LABEL,
/// WORKDIR, USER, EXPOSE, VOLUME, ENTRYPOINT, CMD, SHELL, STOPSIGNAL,
/// HEALTHCHECK, ONBUILD and MAINTAINER, and the history.
fn check_config(cfg: &Value, raw_manifest: &Value) {
    assert_eq!(cfg["architecture"], "amd64");
    assert_eq!(cfg["os"], "linux");
    let c = &cfg["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in [
        "APP_HOME=/srv/app",
        "MESSAGE=two words",
        "LEGACY=legacy form value",
        "OVERRIDDEN=from-env",
        // One ENV sees the values from before it: def gets the old abc.
        "abc=bye",
        "def=hello",
        "ghi=bye",
        "withdef=fallback",
        "withalt=set",
        "literal=$APP_HOME",
        "empty=",
    ] {
        assert!(env.contains(&want), "Env lacks {want:?}: {env:?}");
    }
    let paths: Vec<&&str> = env.iter().filter(|e| e.starts_with("PATH=")).collect();
    assert_eq!(
        paths,
        [&"PATH=/opt/tools:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "{env:?}"
    );
    // ARG values are not persisted in the image.
    for arg in [
        "GREETING=",
        "FROM_CLI=",
        "GLOBAL_ONLY=",
        "TARGETARCH=",
        "BASE=",
    ] {
        assert!(
            !env.iter().any(|e| e.starts_with(arg)),
            "ARG {arg} leaked into Env: {env:?}"
        );
    }
    assert_eq!(
        c["Labels"],
        json!({
            "org.example.title": "every instruction",
            "org.example.greeting": "hello",
            "org.example.multi word": "yes",
        })
    );
    assert_eq!(c["WorkingDir"], "/srv/app");
    assert_eq!(c["User"], "app");
    assert_eq!(
        c["ExposedPorts"],
        json!({"8080/tcp": {}, "8443/tcp": {}, "53/udp": {}, "9090/tcp": {}})
    );
    assert_eq!(
        c["Volumes"],
        json!({"/data": {}, "/logs": {}, "/cache": {}, "/srv/app/vol": {}})
    );
    assert_eq!(c["Entrypoint"], json!(["/usr/local/bin/script.sh"]));
    assert_eq!(c["Cmd"], json!(["arg1"]));
    assert_eq!(c["StopSignal"], "SIGQUIT");
    assert_eq!(
        c["Shell"],
        json!(["/usr/bin/env", "X_SHELL=custom", "/bin/sh", "-c"])
    );
    assert_eq!(
        c["Healthcheck"],
        json!({
            "Test": ["CMD-SHELL", "test -f /tmp/shell.txt || exit 1"],
            "Interval": 30_000_000_000u64,
            "Timeout": 5_000_000_000u64,
            "StartPeriod": 10_000_000_000u64,
            "Retries": 4,
        })
    );
    assert_eq!(
        c["OnBuild"],
        json!(["RUN echo triggered > /tmp/onbuild.txt"])
    );
    // MAINTAINER sets the Author field.
    assert_eq!(cfg["author"], "Jane Doe <jane@example.com>");

    // History: one entry per instruction; those that only change the config
    // are empty layers; the others correspond one to one to the layers.
    let history = cfg["history"].as_array().expect("history");
    let layers = raw_manifest["layers"].as_array().expect("layers").len();
    let diff_ids = cfg["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .len();
    assert_eq!(diff_ids, layers, "rootfs.diff_ids vs manifest layers");
    let non_empty = history.iter().filter(|h| !is_empty_layer(h)).count();
    assert_eq!(
        non_empty, layers,
        "history entries without empty_layer must match the layers: {history:#?}"
    );
    for prefix in [
        "MAINTAINER Jane Doe",
        "ENV APP_HOME=/srv/app",
        "ENV LEGACY=legacy form value",
        "LABEL ",
        "USER app",
        "EXPOSE ",
        "VOLUME ",
        "SHELL ",
        "STOPSIGNAL SIGQUIT",
        "HEALTHCHECK ",
        "ENTRYPOINT ",
        "CMD ",
    ] {
        let h = history_entry(history, prefix);
        assert!(is_empty_layer(h), "{prefix}: should be an empty layer: {h}");
    }
    // BuildKit commits no history for ONBUILD.
    assert!(
        !history.iter().any(|h| h["created_by"]
            .as_str()
            .is_some_and(|c| c.starts_with("ONBUILD"))),
        "{history:#?}"
    );
    for prefix in ["COPY a.txt .", "COPY --chown=app:app", "ADD archive.tar "] {
        let h = history_entry(history, prefix);
        assert!(!is_empty_layer(h), "{prefix}: should have a layer: {h}");
    }
    let runs: Vec<&str> = history
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .filter(|c| c.starts_with("RUN "))
        .collect();
    for needle in [
        "echo \"shell $GREETING $MESSAGE\" > shell.txt",
        "sha256sum /run/secrets/token",
        "id -u > /tmp/run-as.txt",
    ] {
        assert!(
            runs.iter().any(|r| r.contains(needle)),
            "no RUN history entry with {needle:?}: {runs:#?}"
        );
    }
    for h in history {
        assert!(
            !h.to_string().contains(SECRET),
            "the secret is in the history: {h}"
        );
    }
}

#[test]
fn every_instruction_builds_as_docker_documents() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let c = every_instruction_context();
    let out = tempfile::tempdir().unwrap();
    let tag = reg.reference("e2e/every:1");
    let run = build_every_instruction(&xb, &base, &c, out.path(), &tag, None).ok();
    assert!(!run.stderr.contains(SECRET), "secret in the log");
    assert!(!run.stdout.contains(SECRET), "secret on stdout");

    check_filesystem(out.path(), &c);
    // Nor is it left in xbuild's state: snapshots, cache, temp files.
    assert_eq!(
        files_containing(xb.root(), SECRET.as_bytes()),
        Vec::<PathBuf>::new(),
        "the secret's value is in xbuild's state directory"
    );
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    let cfg = raw_config(&tag);
    check_config(&cfg, &raw);

    // A child image runs the ONBUILD trigger; grandchildren do not inherit it.
    let child = context(&[("Dockerfile", &format!("FROM {tag}\nRUN true\n"))]);
    let child_out = tempfile::tempdir().unwrap();
    let child_tag = reg.reference("e2e/every-child:1");
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-o",
        &format!("type=local,dest={}", s(child_out.path())),
        "-t",
        &child_tag,
        "--push",
        s(child.path()),
    ])
    .ok();
    assert_eq!(
        read(&child_out.path().join("tmp/onbuild.txt")),
        "triggered\n"
    );
    let child_cfg = raw_config(&child_tag);
    assert!(
        child_cfg["config"]["OnBuild"].is_null(),
        "ONBUILD triggers are not inherited by grandchildren: {}",
        child_cfg["config"]
    );
}

/// Docker: "If CMD is defined from the base image, setting ENTRYPOINT will
/// reset CMD to an empty value."
#[test]
fn entrypoint_resets_the_inherited_cmd() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let base_cfg = testbed::skopeo_inspect_config(&base).unwrap();
    assert_eq!(base_cfg["config"]["Cmd"], json!(["/bin/sh"]));
    let c = every_instruction_context();
    let out = tempfile::tempdir().unwrap();
    let tag = reg.reference("e2e/entrypoint-only:1");
    build_every_instruction(&xb, &base, &c, out.path(), &tag, Some("entrypoint-only")).ok();
    let cfg = raw_config(&tag);
    assert_eq!(cfg["config"]["Entrypoint"], json!(["/bin/echo"]));
    assert!(
        cfg["config"]["Cmd"].is_null(),
        "the base's CMD must be reset by ENTRYPOINT: {}",
        cfg["config"]
    );
}

/// Quote `args` for `sh -c`.
fn shell_line(args: &[Value]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.as_str().unwrap().replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn buildah_runs_the_pushed_image_cmd() {
    if require_multiplatform().is_none() {
        return;
    }
    if testbed::require_cmd("buildah").is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\nENV WHO=world\nWORKDIR /app\n\
             RUN echo \"built on $(uname -m)\" > greeting\n\
             CMD [\"sh\", \"-c\", \"cat greeting; echo \\\"hello $WHO from $(pwd)\\\"\"]\n"
        ),
    )]);
    let tag = reg.reference("e2e/cmd:1");
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &tag,
        "--push",
        s(ctx.path()),
    ])
    .ok();
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    for (arch, uname) in [("amd64", "x86_64"), ("arm64", "aarch64")] {
        let entry = raw["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap_or_else(|| panic!("no {arch} manifest: {raw}"));
        let by_digest = format!(
            "{}/e2e/cmd@{}",
            reg.host(),
            entry["digest"].as_str().unwrap()
        );
        let cfg = testbed::skopeo_inspect_config(&by_digest).unwrap();
        let cmd = cfg["config"]["Cmd"].as_array().expect("Cmd").clone();
        assert!(cfg["config"]["Entrypoint"].is_null());
        // buildah run takes the command line; run the image's CMD with the
        // image's WORKDIR and ENV.
        let out = buildah_run(&tag, arch, &shell_line(&cmd));
        assert_eq!(
            out,
            format!("built on {uname}\nhello world from /app\n"),
            "{arch}"
        );
    }
}

#[test]
fn oci_archive_is_read_by_skopeo() {
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
        &format!(
            "FROM {base}\nRUN echo archived > /archived.txt\nCMD [\"cat\", \"/archived.txt\"]\n"
        ),
    )]);
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("image.tar");
    let meta = work.path().join("meta.json");
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "-o",
        &format!("type=oci,dest={}", s(&tar)),
        "--metadata-file",
        s(&meta),
        s(ctx.path()),
    ])
    .ok();
    let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let built = meta["containerimage.digest"]
        .as_str()
        .expect("digest")
        .to_string();

    // The archive's own top-level index names the image; skopeo copies it
    // (all platforms) into a registry, keeping the digest.
    let dest = reg.reference("e2e/from-archive:1");
    let oci = format!("oci-archive:{}", s(&tar));
    testbed::run(Command::new("skopeo").args([
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &oci,
        &format!("docker://{dest}"),
    ]))
    .unwrap();
    let pushed = testbed::skopeo_inspect_raw_bytes(&dest, None).unwrap();
    let pushed_digest = testbed::sha256_digest(&pushed).unwrap();
    let archived = skopeo_raw_manifest(&oci);
    assert_eq!(
        testbed::sha256_digest(&archived).unwrap(),
        pushed_digest,
        "the copied manifest digest differs from the archive's"
    );
    assert_eq!(pushed_digest, built, "xbuild's digest vs the copied one");
    let index: Value = serde_json::from_slice(&pushed).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");

    // One platform into a dir: the manifest skopeo writes is the archive's.
    let dir = work.path().join("dir");
    testbed::run(Command::new("skopeo").args([
        "copy",
        "--override-arch",
        "amd64",
        "--preserve-digests",
        &oci,
        &format!("dir:{}", s(&dir)),
    ]))
    .unwrap();
    let copied = std::fs::read(dir.join("manifest.json")).unwrap();
    let amd64 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap();
    assert_eq!(
        testbed::sha256_digest(&copied).unwrap(),
        amd64["digest"].as_str().unwrap()
    );
    if testbed::require_cmd("buildah").is_some() {
        assert_eq!(
            buildah_run(&dest, "arm64", "cat /archived.txt"),
            "archived\n"
        );
    }
}

fn skopeo_raw_manifest(src: &str) -> Vec<u8> {
    testbed::run(Command::new("skopeo").args(["inspect", "--raw", src])).unwrap()
}

/// A registry that wants user `builder` with `password`, holding the busybox
/// base image (published to an open registry, then copied with skopeo).
fn protected_registry_with_base(password: &str) -> Option<(Registry, String)> {
    let open = Registry::start_or_skip()?;
    let auth = Registry::start_with_htpasswd_or_skip("builder", password)?;
    let open_base = publish_base(&Xbuild::new(), &open);
    let base = auth.reference("private/busybox:1");
    testbed::run(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("builder:{password}"),
        &format!("docker://{open_base}"),
        &format!("docker://{base}"),
    ]))
    .unwrap();
    Some((auth, base))
}

#[test]
fn login_lets_builds_pull_from_a_protected_registry_and_logout_stops_it() {
    if require_multiplatform().is_none() {
        return;
    }
    let password = "s3cret:pw with space";
    let Some((auth, base)) = protected_registry_with_base(password) else {
        return;
    };
    let host = auth.host();

    let xb = Xbuild::new();
    let docker_config = xb.root().join("docker/config.json");
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo private > /private.txt\n"),
    )]);
    let tag = auth.reference("private/app:1");
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--progress", "plain", "--platform", "linux/amd64"];
        args.extend_from_slice(extra);
        args.push(s(ctx.path()));
        xb.run(&args)
    };
    let no_secret = |r: &xbuild_e2e::Run| {
        assert!(
            !r.stdout.contains(password) && !r.stderr.contains(password),
            "the password was printed:\n{}\n{}",
            r.stdout,
            r.stderr
        );
    };

    // Before login: a clear 401 that names the registry and says what to do.
    let denied = build(&[]).failed();
    assert!(denied.stderr.contains(&host), "{}", denied.stderr);
    assert!(
        denied.stderr.contains("HTTP 401") && denied.stderr.contains("access denied"),
        "{}",
        denied.stderr
    );
    assert!(
        denied.stderr.contains(&format!("xbuild login {host}")),
        "{}",
        denied.stderr
    );

    // Wrong password: refused, named, nothing stored.
    let wrong = xb
        .run_with(
            &["login", &host, "-u", "builder", "--password-stdin"],
            &[],
            Some(b"not-the-password\n"),
        )
        .failed();
    assert!(wrong.stderr.contains(&host), "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("401 Unauthorized"),
        "{}",
        wrong.stderr
    );
    assert!(
        !wrong.stderr.contains("not-the-password"),
        "{}",
        wrong.stderr
    );
    assert!(!docker_config.exists(), "a refused login stored something");

    // Interactive login needs a terminal; without one the error says what to use.
    let no_tty = xb
        .run_with(&["login", &host, "-u", "builder"], &[], None)
        .failed();
    assert!(
        no_tty.stderr.contains("--password-stdin"),
        "{}",
        no_tty.stderr
    );
    let no_user = xb
        .run_with(
            &["login", &host, "--password-stdin"],
            &[],
            Some(password.as_bytes()),
        )
        .failed();
    assert!(no_user.stderr.contains("--username"), "{}", no_user.stderr);

    // Login: verified, stored as docker does (base64 user:password, 0600).
    let login = xb
        .run_with(
            &["login", &host, "-u", "builder", "--password-stdin"],
            &[],
            Some(format!("{password}\n").as_bytes()),
        )
        .ok();
    no_secret(&login);
    assert!(login.stdout.contains("Login Succeeded"), "{}", login.stdout);
    let cfg: Value = serde_json::from_slice(&std::fs::read(&docker_config).unwrap()).unwrap();
    let auth_b64 = cfg["auths"][host.as_str()]["auth"].as_str().unwrap();
    let decoded = testbed::run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s '{auth_b64}' | base64 -d")),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        format!("builder:{password}")
    );
    assert_eq!(
        std::fs::metadata(&docker_config)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Logged in: the pull works, and so does a push to the same registry.
    let ok = build(&["-t", &tag, "--push"]).ok();
    no_secret(&ok);
    let pushed = testbed::skopeo_inspect_raw_bytes(&tag, Some(&format!("builder:{password}")));
    assert!(pushed.is_ok(), "{pushed:?}");

    // Logout: forgotten; the next pull is refused again.
    let out = xb.run(&["logout", &host]).ok();
    assert!(
        out.stdout
            .contains(&format!("Removing login credentials for {host}")),
        "{}",
        out.stdout
    );
    let cfg: Value = serde_json::from_slice(&std::fs::read(&docker_config).unwrap()).unwrap();
    assert!(cfg["auths"].get(host.as_str()).is_none(), "{cfg}");
    let denied = build(&["--pull"]).failed();
    assert!(denied.stderr.contains(&host), "{}", denied.stderr);
    assert!(denied.stderr.contains("HTTP 401"), "{}", denied.stderr);
    assert!(
        denied.stderr.contains(&format!("xbuild login {host}")),
        "{}",
        denied.stderr
    );
    let again = xb.run(&["logout", &host]).ok();
    assert!(
        again.stdout.contains(&format!("Not logged in to {host}")),
        "{}",
        again.stdout
    );
}

#[test]
fn source_date_epoch_gives_the_same_digest_in_fresh_state_dirs() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let base = publish_base(&Xbuild::new(), &reg);
    let ctx = context(&[
        (
            "Dockerfile",
            &format!(
                "FROM {base}\nCOPY data.txt /data/\nRUN echo made > /made.txt && mkdir /newdir\n\
                 ENV A=1\nCMD [\"cat\", \"/made.txt\"]\n"
            ),
        ),
        ("data.txt", "some data\n"),
    ]);
    const EPOCH: &str = "1700000000";
    const EPOCH_TIME: &str = "2023-11-14T22:13:20Z";
    let mut digests = Vec::new();
    for i in 0..2 {
        // Different context mtimes and wall-clock times for each build.
        let f = ctx.path().join("data.txt");
        std::fs::write(&f, "some data\n").unwrap();
        if i == 1 {
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let xb = Xbuild::new();
        let tag = reg.reference(&format!("e2e/repro:{i}"));
        let run = xb
            .run_with(
                &[
                    "build",
                    "-q",
                    "--platform",
                    "linux/amd64",
                    "-t",
                    &tag,
                    "--push",
                    s(ctx.path()),
                ],
                &[("SOURCE_DATE_EPOCH", EPOCH)],
                None,
            )
            .ok();
        let printed = run.stdout.trim().to_string();
        assert!(printed.starts_with("sha256:"), "-q printed {printed:?}");
        // What -q printed is what the registry serves for the tag.
        let raw = testbed::skopeo_inspect_raw_bytes(&tag, None).unwrap();
        assert_eq!(testbed::sha256_digest(&raw).unwrap(), printed, "{tag}");
        let cfg = raw_config(&tag);
        assert_eq!(cfg["created"], EPOCH_TIME, "config created");
        // The steps of this build (COPY, RUN, ENV, CMD) are stamped with it too.
        let history = cfg["history"].as_array().unwrap();
        for h in &history[history.len() - 4..] {
            assert_eq!(h["created"], EPOCH_TIME, "{h}");
        }
        digests.push(printed);
    }
    assert_eq!(
        digests[0], digests[1],
        "same SOURCE_DATE_EPOCH, different digests"
    );
}

/// Build `ctx` for linux/amd64 with plain progress into a local directory.
fn build_local(xb: &Xbuild, ctx: &Path, out: &Path, extra: &[&str]) -> xbuild_e2e::Run {
    let dest = format!("type=local,dest={}", s(out));
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-o",
        &dest,
    ];
    args.extend_from_slice(extra);
    args.push(s(ctx));
    xb.run(&args).ok()
}

/// Docker: files matched by `.dockerignore` "are removed from the build
/// context before it's sent to the builder", so no ADD, COPY or bind mount
/// can see them.
#[test]
fn bind_mount_of_the_context_honours_dockerignore() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[
        (
            "Dockerfile",
            &format!(
                "FROM {base}\n\
                 RUN --mount=type=bind,target=/mnt/ctx ls -A /mnt/ctx > /listing.txt\n\
                 RUN --mount=type=bind,source=sub,target=/mnt/sub ls -A /mnt/sub > /sub-listing.txt\n"
            ),
        ),
        (".dockerignore", "ignored.txt\n**/*.log\n"),
        ("a.txt", "kept\n"),
        ("ignored.txt", "must not be visible\n"),
        ("sub/kept.txt", "kept\n"),
        ("sub/hidden.log", "must not be visible\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    build_local(&xb, ctx.path(), out.path(), &[]);
    let listing = read(&out.path().join("listing.txt"));
    assert!(listing.lines().any(|l| l == "a.txt"), "{listing}");
    assert!(
        !listing.lines().any(|l| l == "ignored.txt"),
        "a bind mount of the context shows ignored.txt, excluded by .dockerignore:\n{listing}"
    );
    let sub = read(&out.path().join("sub-listing.txt"));
    assert!(sub.lines().any(|l| l == "kept.txt"), "{sub}");
    assert!(
        !sub.lines().any(|l| l == "hidden.log"),
        "a bind mount of a context directory shows hidden.log, excluded by **/*.log:\n{sub}"
    );
}

/// Docker: files excluded by `.dockerignore` are not part of the context,
/// so changing them invalidates no step; changing a file a step reads does.
#[test]
fn ignored_files_do_not_invalidate_the_cache() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[
        (
            "Dockerfile",
            &format!(
                "FROM {base}\n\
                 COPY . /ctx/\n\
                 RUN --mount=type=bind,target=/mnt/ctx cat /mnt/ctx/a.txt > /a-copy.txt\n"
            ),
        ),
        (".dockerignore", "ignored.txt\n"),
        ("a.txt", "one\n"),
        ("ignored.txt", "v1\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let first = build_local(&xb, ctx.path(), out.path(), &[]);
    assert_eq!(first.cached_steps(), 0, "{}", first.stderr);
    std::fs::write(ctx.path().join("ignored.txt"), "v2\n").unwrap();
    let second = build_local(&xb, ctx.path(), out.path(), &[]);
    assert_eq!(
        second.missed_steps(),
        0,
        "changing an ignored file invalidated steps:\n{}",
        second.stderr
    );
    assert_eq!(second.cached_steps(), 2, "{}", second.stderr);
    std::fs::write(ctx.path().join("a.txt"), "two\n").unwrap();
    let third = build_local(&xb, ctx.path(), out.path(), &[]);
    assert_eq!(third.missed_steps(), 2, "{}", third.stderr);
    assert_eq!(read(&out.path().join("a-copy.txt")), "two\n");
}

/// Docker: a cache mount's contents persist between builds (and are never
/// part of the image).
#[test]
fn cache_mounts_persist_between_builds() {
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
        &format!(
            "FROM {base}\nARG N\n\
             RUN --mount=type=cache,target=/var/cache/x echo \"$N\" >> /var/cache/x/log && cp /var/cache/x/log /seen\n"
        ),
    )]);
    for (n, want) in [("1", "1\n"), ("2", "1\n2\n")] {
        let out = tempfile::tempdir().unwrap();
        build_local(
            &xb,
            ctx.path(),
            out.path(),
            &["--build-arg", &format!("N={n}")],
        );
        assert_eq!(read(&out.path().join("seen")), want, "build {n}");
        assert!(!out.path().join("var/cache/x/log").exists());
    }
}

/// A fake `docker-credential-<name>` that keeps what `store` gets in
/// `DIR/stored.json`, answers `get` from it and records `erase`.
fn fake_credential_helper(dir: &Path, name: &str) {
    let script = format!(
        r#"#!/bin/sh
d='{d}'
echo "$1" >> "$d/calls"
case "$1" in
store) cat > "$d/stored.json" ;;
get) read -r server; echo "$server" > "$d/get-server"
     if [ -f "$d/stored.json" ]; then cat "$d/stored.json"; else echo "credentials not found in native keychain"; exit 1; fi ;;
erase) read -r server; echo "$server" > "$d/erased"
     if [ -f "$d/stored.json" ]; then rm "$d/stored.json"; else echo "credentials not found in native keychain"; exit 1; fi ;;
*) exit 1 ;;
esac
"#,
        d = s(dir)
    );
    let bin = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&bin, script).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// With `credsStore` set, `login` stores through the helper (the password
/// never lands in config.json), builds get the credentials from it, and
/// `logout` erases them, as docker does.
#[test]
fn login_and_logout_go_through_the_credential_helper() {
    if require_multiplatform().is_none() {
        return;
    }
    let password = "helper-pw-2718";
    let Some((auth, base)) = protected_registry_with_base(password) else {
        return;
    };
    let host = auth.host();
    let xb = Xbuild::new();
    let helper_dir = tempfile::tempdir().unwrap();
    fake_credential_helper(helper_dir.path(), "xbtest");
    let path = format!(
        "{}:{}",
        s(helper_dir.path()),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [("PATH", path.as_str())];
    let docker_config = xb.root().join("docker/config.json");
    std::fs::create_dir_all(docker_config.parent().unwrap()).unwrap();
    std::fs::write(
        &docker_config,
        r#"{"credsStore": "xbtest", "psFormat": "table {{.ID}}"}"#,
    )
    .unwrap();

    let login = xb
        .run_with(
            &["login", &host, "-u", "builder", "--password-stdin"],
            &env,
            Some(password.as_bytes()),
        )
        .ok();
    assert!(login.stdout.contains("Login Succeeded"), "{}", login.stdout);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(helper_dir.path().join("stored.json")).unwrap())
            .unwrap();
    assert_eq!(
        stored,
        json!({"ServerURL": host, "Username": "builder", "Secret": password})
    );
    let cfg = read(&docker_config);
    assert!(!cfg.contains(password), "password in config.json: {cfg}");
    let cfg: Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["credsStore"], "xbtest");
    assert_eq!(cfg["psFormat"], "table {{.ID}}");

    // A build pulls with the helper's credentials.
    let ctx = context(&[("Dockerfile", &format!("FROM {base}\nRUN true\n"))]);
    let args = [
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        s(ctx.path()),
    ];
    xb.run_with(&args, &env, None).ok();
    assert_eq!(read(&helper_dir.path().join("get-server")).trim(), host);

    let out = xb.run_with(&["logout", &host], &env, None).ok();
    assert!(
        out.stdout.contains("Removing login credentials"),
        "{}",
        out.stdout
    );
    assert_eq!(read(&helper_dir.path().join("erased")).trim(), host);
    assert!(!helper_dir.path().join("stored.json").exists());
    let again = xb.run_with(&["logout", &host], &env, None).ok();
    assert!(
        again.stdout.contains(&format!("Not logged in to {host}")),
        "{}",
        again.stdout
    );
    // Without credentials the pull is refused again.
    let denied = xb
        .run_with(
            &[
                "build",
                "--progress",
                "plain",
                "--pull",
                "--platform",
                "linux/amd64",
                s(ctx.path()),
            ],
            &env,
            None,
        )
        .failed();
    assert!(denied.stderr.contains(&host), "{}", denied.stderr);
}

/// A private tmux server with one 120x20 session running `command`; killed
/// on drop. The server runs in the foreground as our child (tmux's daemon
/// mode needs a character device at /dev/null, which sandboxes may lack)
/// and reads an empty config file of its own (a /dev/null that is not a
/// device may hold anything, and tmux shows config errors in the pane).
struct Terminal {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    config: PathBuf,
    server: std::process::Child,
}

impl Terminal {
    fn start(command: &str) -> Terminal {
        let dir = tempfile::Builder::new()
            .prefix("xbuild-login-tty-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("tmux.sock");
        let config = dir.path().join("tmux.conf");
        std::fs::write(&config, "").unwrap();
        let server = Command::new("tmux")
            .arg("-D")
            .arg("-S")
            .arg(&socket)
            .arg("-f")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the tmux server");
        let t = Terminal {
            _dir: dir,
            socket,
            config,
            server,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !t.socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the tmux server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let status = t
            .tmux()
            .args(["new-session", "-d", "-s", "login", "-x", "120", "-y", "20"])
            .arg(command)
            .status()
            .unwrap();
        assert!(status.success(), "tmux new-session: {status}");
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).arg("-f").arg(&self.config);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "login"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {text:?}; the screen:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Type `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        let ok = self
            .tmux()
            .args(["send-keys", "-t", "login", "-l", text])
            .status()
            .unwrap()
            .success()
            && self
                .tmux()
                .args(["send-keys", "-t", "login", "Enter"])
                .status()
                .unwrap()
                .success();
        assert!(ok, "tmux send-keys failed");
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// In a terminal, `xbuild login REGISTRY` asks for the user name and for
/// the password without echoing it.
#[test]
fn interactive_login_reads_the_password_without_echo() {
    if testbed::require_cmd("tmux").is_none() {
        return;
    }
    let password = "typed-pw-31415";
    let Some(auth) = Registry::start_with_htpasswd_or_skip("builder", password) else {
        return;
    };
    let host = auth.host();
    let xb = Xbuild::new();
    let docker_config = xb.root().join("docker");
    let quote = |v: &str| format!("'{}'", v.replace('\'', r"'\''"));
    let term = Terminal::start(&format!(
        "env XBUILD_ROOT={} DOCKER_CONFIG={} {} login {}; echo \"EXIT=$?\"; sleep 60",
        quote(s(xb.root())),
        quote(s(&docker_config)),
        quote(s(&xbuild_e2e::xbuild_bin())),
        host
    ));
    term.wait_for("Username:");
    term.type_line("builder");
    term.wait_for("Password:");
    term.type_line(password);
    let screen = term.wait_for("EXIT=");
    assert!(screen.contains("Login Succeeded"), "{screen}");
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(
        !screen.contains(password),
        "the password was echoed:\n{screen}"
    );
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(docker_config.join("config.json")).unwrap()).unwrap();
    assert!(cfg["auths"][host.as_str()]["auth"].is_string(), "{cfg}");
}

/// Docker: "When using a local tar archive as the source for ADD, and if the
/// archive is in a recognized compression format (gzip, bzip2 or xz, or
/// uncompressed), the archive is decompressed and extracted into the
/// specified destination."
#[test]
fn add_extracts_bzip2_and_xz_tarballs() {
    if require_multiplatform().is_none() {
        return;
    }
    for tool in ["bzip2", "xz"] {
        if testbed::require_cmd(tool).is_none() {
            return;
        }
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {base}\nADD archive.tar.bz2 /opt/bz/\nADD archive.tar.xz /opt/xz/\n"),
    )]);
    let stage = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(stage.path().join("tarred")).unwrap();
    std::fs::write(stage.path().join("tarred/hello.txt"), "from the tarball\n").unwrap();
    for (name, flag) in [("archive.tar.bz2", "-cjf"), ("archive.tar.xz", "-cJf")] {
        testbed::run(
            Command::new("tar")
                .arg(flag)
                .arg(ctx.path().join(name))
                .arg("-C")
                .arg(stage.path())
                .arg("tarred"),
        )
        .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    build_local(&xb, ctx.path(), out.path(), &[]);
    for (dir, name) in [("opt/bz", "archive.tar.bz2"), ("opt/xz", "archive.tar.xz")] {
        let d = out.path().join(dir);
        assert!(
            !d.join(name).exists(),
            "ADD copied {name} as a file instead of extracting it"
        );
        assert_eq!(
            read(&d.join("tarred/hello.txt")),
            "from the tarball\n",
            "{name}"
        );
    }
}

/// BuildKit (and the classic builder) read EXPOSE through Docker's port-spec
/// parser, which expands a range into one entry per port.
#[test]
fn expose_expands_port_ranges() {
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
        &format!("FROM {base}\nEXPOSE 80-82 9000-9001/udp\n"),
    )]);
    let tag = reg.reference("e2e/expose-range:1");
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &tag,
        "--push",
        s(ctx.path()),
    ])
    .ok();
    let cfg = raw_config(&tag);
    assert_eq!(
        cfg["config"]["ExposedPorts"],
        json!({
            "80/tcp": {}, "81/tcp": {}, "82/tcp": {},
            "9000/udp": {}, "9001/udp": {},
        })
    );
}
