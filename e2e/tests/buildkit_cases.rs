//! BuildKit conformance: every case of `e2e/buildkit/cases/<group>/<name>.yaml`
//! (BuildKit's Dockerfile frontend tests re-expressed as data; the format
//! is described in `e2e/buildkit/README.md`) built with the real binary and
//! compared with BuildKit's result. Prints one line per case and
//! `buildkit-cases: N/M`; fails when a case that is not a documented known
//! difference does not match.
//!
//! `XBUILD_CASES=GLOB[,GLOB]` runs a subset; `XBUILD_CASES_THREADS=N` sets how
//! many cases run at once (default 2); `XBUILD_CASES_VERBOSE=1` prints every
//! build's command line and progress.

#[path = "buildkit_cases/call.rs"]
mod call;
#[path = "buildkit_cases/case.rs"]
mod case;
#[path = "buildkit_cases/sources.rs"]
mod fixtures;
#[path = "buildkit_cases/http.rs"]
mod http;
#[path = "buildkit_cases/lint.rs"]
mod lint;

use case::{arg_value, parse_mode, write_context, Case, Expect, FileExpect, FileSpec, Step};
use http::{HttpServer, Served};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{publish_base, s, Xbuild};

/// How long one build may take before it is killed and the case fails.
const BUILD_DEADLINE: Duration = Duration::from_secs(600);

/// What the whole run shares.
struct Env {
    base: String,
    registry: String,
    http: HttpServer,
    arm64: bool,
}

/// The result of one case.
enum Outcome {
    Ok,
    Fail(String),
    Known(String),
    Skip(String),
}

#[test]
fn buildkit_cases() {
    if testbed::require_root().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("buildkit/cases");
    let filter: Vec<String> = std::env::var("XBUILD_CASES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(String::from)
        .collect();
    let cases = load_cases(&dir, &filter);
    assert!(
        !cases.is_empty() || !filter.is_empty(),
        "no case under {}",
        dir.display()
    );
    let xb = Xbuild::new();
    let base = publish_cases_base(&xb, &reg, &publish_base(&xb, &reg));
    let arm64 = cases
        .iter()
        .any(|(_, c)| c.needs.iter().any(|n| n == "arm64"))
        && arm64_available(&xb);
    let env = Env {
        base,
        registry: reg.host(),
        http: HttpServer::start().expect("start the HTTP server"),
        arm64,
    };
    let threads = std::env::var("XBUILD_CASES_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, Outcome)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((name, case)) = cases.get(i) else {
                    break;
                };
                let t = Instant::now();
                let outcome = run_case(name, case, &env);
                let secs = t.elapsed().as_secs_f32();
                match &outcome {
                    Outcome::Ok => println!("ok {name} ({secs:.1}s)"),
                    Outcome::Fail(why) => println!("FAIL {name}: {why}"),
                    Outcome::Known(why) => println!("known {name}: {why}"),
                    Outcome::Skip(why) => println!("skip {name}: {why}"),
                }
                results
                    .lock()
                    .expect("results lock")
                    .push((name.clone(), outcome));
            });
        }
    });
    let results = results.into_inner().expect("results lock");
    let run: Vec<_> = results
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Skip(_)))
        .collect();
    let matching = run
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Ok | Outcome::Known(_)))
        .count();
    let mut failed: Vec<&str> = run
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Fail(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    failed.sort();
    println!(
        "buildkit-cases: {matching}/{} ({} skipped, {:.0}s)",
        run.len(),
        results.len() - run.len(),
        started.elapsed().as_secs_f32()
    );
    assert!(failed.is_empty(), "cases not matching BuildKit: {failed:?}");
}

/// Docker Hub's `busybox` user database (`daemon`, `bin`, `nobody`
/// groups...) and every applet of the test bed's busybox linked in `/bin`,
/// on top of the test bed's base image: BuildKit's tests rely on both
/// (`COPY --chown=daemon`, `adduser`, `stat -c %G` printing `nobody`).
/// Pushed for linux/amd64 and linux/arm64 as `xbuild/busybox-cases:latest`.
fn publish_cases_base(xb: &Xbuild, reg: &Registry, base: &str) -> String {
    let ctx = tempfile::tempdir().expect("temp dir");
    let root = ctx.path().join("root");
    for d in [
        "etc",
        "bin",
        "home",
        "var/www",
        "var/spool/mail",
        "usr/sbin",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(root.join("etc/passwd"), PASSWD).expect("write passwd");
    std::fs::write(root.join("etc/group"), GROUP).expect("write group");
    std::fs::write(root.join("etc/shadow"), SHADOW).expect("write shadow");
    let adduser = root.join("usr/sbin/adduser");
    std::fs::write(&adduser, ADDUSER).expect("write adduser");
    std::fs::set_permissions(
        &adduser,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .expect("chmod adduser");
    let busybox = testbed::busybox_binary(testbed::host_arch()).expect("busybox binary");
    let list = testbed::run(Command::new(&busybox).arg("--list")).expect("busybox --list");
    for applet in String::from_utf8_lossy(&list).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY root/ /\n"),
    )
    .expect("write Dockerfile");
    let reference = reg.reference("xbuild/busybox-cases:latest");
    xb.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        &reference,
        "--push",
        s(ctx.path()),
    ])
    .ok();
    reference
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
";

const GROUP: &str = "root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nobody:x:65534:
";

/// `adduser -D NAME` as Docker Hub's busybox has it (Debian's busybox
/// lacks the applet): the next free uid from 1000, a group of that id, a
/// home directory.
const ADDUSER: &str = r#"#!/bin/sh
[ "$1" = "-D" ] && shift
name=$1
uid=1000
while grep -q "^[^:]*:[^:]*:$uid:" /etc/passwd /etc/group; do uid=$((uid+1)); done
echo "$name:x:$uid:$uid:Linux User,,,:/home/$name:/bin/sh" >> /etc/passwd
echo "$name:x:$uid:" >> /etc/group
mkdir -p "/home/$name" && chown "$uid:$uid" "/home/$name"
"#;

const SHADOW: &str = "root::10933:0:99999:7:::
daemon:*:10933:0:99999:7:::
bin:*:10933:0:99999:7:::
sys:*:10933:0:99999:7:::
sync:*:10933:0:99999:7:::
mail:*:10933:0:99999:7:::
www-data:*:10933:0:99999:7:::
operator:*:10933:0:99999:7:::
nobody:*:10933:0:99999:7:::
";

/// Whether linux/arm64 binaries can run (QEMU registered through
/// `xbuild binfmt install`).
fn arm64_available(xb: &Xbuild) -> bool {
    if testbed::host_arch() == "arm64" {
        return true;
    }
    if !Path::new("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists()
        && testbed::which("qemu-aarch64-static").is_none()
    {
        return false;
    }
    xb.run(&["binfmt", "install", "linux/arm64"]).code == 0
}

/// Every case file under `dir` whose `GROUP/NAME` matches one of `filter`
/// (all when empty), sorted by name. Panics on a file that does not parse.
fn load_cases(dir: &Path, filter: &[String]) -> Vec<(String, Case)> {
    let mut out = Vec::new();
    let Ok(groups) = std::fs::read_dir(dir) else {
        return out;
    };
    for group in groups.flatten() {
        let gname = group.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(group.path()) else {
            continue;
        };
        for f in files.flatten() {
            let fname = f.file_name().to_string_lossy().into_owned();
            let Some(stem) = fname.strip_suffix(".yaml") else {
                continue;
            };
            let name = format!("{gname}/{stem}");
            if !filter.is_empty() && !filter.iter().any(|g| glob(g, &name)) {
                continue;
            }
            let text = std::fs::read_to_string(f.path()).expect("read case");
            let case: Case = serde_yaml::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.path().display()));
            assert!(
                case.source.contains("_test.go ") || case.source.starts_with("reference.md"),
                "{}: `source` must name the BuildKit test (FILE FUNCTION) or reference.md",
                f.path().display()
            );
            out.push((name, case));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `*` (any run of characters) and `?` (one character) matching.
fn glob(pattern: &str, name: &str) -> bool {
    fn m(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| m(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && m(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && m(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    m(&p, &n)
}

fn run_case(name: &str, case: &Case, env: &Env) -> Outcome {
    if let Some(why) = fixtures::missing_tool(case) {
        return Outcome::Skip(why);
    }
    if case.needs.iter().any(|n| n == "arm64") && !env.arm64 {
        return Outcome::Skip("QEMU for linux/arm64 is not available".into());
    }
    if case.needs.iter().any(|n| n == "all_caps") && !lint::all_caps() {
        return Outcome::Skip(
            "this host's capability bounding set lacks some of capabilities 0-37 \
             (RUN --security=insecure can only pass on what the host has)"
                .into(),
        );
    }
    let result = try_case(name, case, env);
    match (result, &case.known_difference) {
        (Ok(()), _) => Outcome::Ok,
        (Err(_), Some(reason)) => Outcome::Known(reason.clone()),
        (Err(why), None) => Outcome::Fail(why),
    }
}

fn try_case(name: &str, case: &Case, env: &Env) -> Result<(), String> {
    let tmp = tempfile::Builder::new()
        .prefix("bkcase-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).map_err(|e| e.to_string())?;
    let http_base = format!("{}/{name}", env.http.base());
    let image = format!("{}/cases/{}", env.registry, name.replace('/', "-"));
    let base_subst = |t: &str| {
        t.replace("{{busybox}}", &env.base)
            .replace(
                "{{busybox_repo}}",
                env.base.strip_suffix(":latest").unwrap_or(&env.base),
            )
            .replace("{{registry}}", &env.registry)
            .replace("{{image}}", &image)
            .replace("{{http}}", &http_base)
            .replace("{{tmp}}", s(tmp.path()))
    };
    let repos = tmp.path().join("git");
    fixtures::make_git_repos(
        &repos,
        &case.git_repos,
        &env.http,
        &format!("/{name}"),
        &base_subst,
    )?;
    let subst = |t: &str| {
        let t = base_subst(t);
        let t = fixtures::expand_layout_digests(&t).unwrap_or_else(|e| format!("<{e}>"));
        if case.git_repos.is_empty() {
            return t;
        }
        fixtures::expand_revs(&t, &repos).unwrap_or_else(|e| format!("<{e}>"))
    };
    for (dname, entries) in &case.dirs {
        let d = tmp.path().join(dname);
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        write_context(&d, entries, &subst)?;
    }
    let _agent = if case.ssh_agent || case.ssh_agent_log {
        Some(fixtures::Agent::start(tmp.path(), case.ssh_agent_log)?)
    } else {
        None
    };
    // Every build of the case sees the agent as SSH_AUTH_SOCK.
    let with_agent;
    let case = match &_agent {
        Some(a) => {
            with_agent = fixtures::with_env(case, "SSH_AUTH_SOCK", s(&a.sock));
            &with_agent
        }
        None => case,
    };
    if !case.host_binaries.is_empty() {
        fixtures::copy_host_binaries(&ctx.join("host"), &case.host_binaries)?;
    }
    for (path, entry) in &case.http {
        env.http
            .add(&format!("/{name}{path}"), served(entry, &subst));
    }
    if let Some(df) = &case.dockerfile {
        let p = ctx.join(case.dockerfile_path.as_deref().unwrap_or("Dockerfile"));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, subst(df)).map_err(|e| e.to_string())?;
    }
    if let Some(ignore) = &case.dockerignore {
        std::fs::write(ctx.join(".dockerignore"), ignore).map_err(|e| e.to_string())?;
    }
    write_context(&ctx, &case.context, &subst)?;
    let steps = if case.steps.is_empty() {
        vec![Step {
            expect: case.expect.clone().unwrap_or_default(),
            ..Step::default()
        }]
    } else {
        if case.expect.is_some() {
            return Err("a case with `steps` gives `expect` per step".into());
        }
        case.steps.clone()
    };
    let mut xb = Xbuild::new();
    for (i, step) in steps.iter().enumerate() {
        if step.fresh_state {
            xb = Xbuild::new();
        }
        let which = if steps.len() > 1 {
            format!("step {}: ", i + 1)
        } else {
            String::new()
        };
        if let Some(df) = &step.dockerfile {
            let p = ctx.join(case.dockerfile_path.as_deref().unwrap_or("Dockerfile"));
            std::fs::write(&p, subst(df)).map_err(|e| e.to_string())?;
        }
        write_context(&ctx, &step.context, &subst)?;
        if let Some(u) = &step.untar {
            fixtures::untar(u, &subst)?;
        }
        build_and_check(&xb, case, step, &ctx, tmp.path(), i, &subst)
            .map_err(|e| format!("{which}{e}"))?;
    }
    Ok(())
}

fn served(entry: &case::HttpEntry, subst: &dyn Fn(&str) -> String) -> Served {
    match entry {
        case::HttpEntry::Text(t) => Served {
            status: 200,
            body: subst(t).into_bytes(),
            headers: Vec::new(),
        },
        case::HttpEntry::Spec(spec) => {
            let mut headers = Vec::new();
            if let Some(lm) = &spec.last_modified {
                headers.push(("Last-Modified".to_string(), lm.clone()));
            }
            if let Some(cd) = &spec.content_disposition {
                headers.push(("Content-Disposition".to_string(), cd.clone()));
            }
            let body = match &spec.archive {
                Some(entries) => {
                    let mut entries = entries.clone();
                    for e in &mut entries {
                        e.content = e.content.as_deref().map(subst);
                    }
                    case::archive_bytes(&entries, spec.gzip).expect("archive")
                }
                None => subst(&spec.content).into_bytes(),
            };
            Served {
                status: spec.status.unwrap_or(200),
                body,
                headers,
            }
        }
    }
}

fn build_and_check(
    xb: &Xbuild,
    case: &Case,
    step: &Step,
    ctx: &Path,
    tmp: &Path,
    index: usize,
    subst: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let expect = &step.expect;
    let mut args: Vec<String> = vec!["build".into(), "--progress".into(), "plain".into()];
    let platforms = step.platforms.as_ref().unwrap_or(&case.platforms);
    if !platforms.is_empty() {
        args.push("--platform".into());
        args.push(platforms.join(","));
    }
    let build_args: &BTreeMap<String, Value> = step.build_args.as_ref().unwrap_or(&case.build_args);
    for (k, v) in build_args {
        args.push("--build-arg".into());
        args.push(match arg_value(v) {
            Some(v) => format!("{k}={}", subst(&v)),
            None => k.clone(),
        });
    }
    if let Some(t) = step.target.as_ref().or(case.target.as_ref()) {
        args.push("--target".into());
        args.push(t.clone());
    }
    args.extend(fixtures::build_context_args(
        step.build_contexts.as_ref().unwrap_or(&case.build_contexts),
        subst,
    ));
    let secrets = step.secrets.as_ref().unwrap_or(&case.secrets);
    for (id, value) in secrets {
        let p = tmp.join(format!("secret-{id}"));
        std::fs::write(&p, value).map_err(|e| e.to_string())?;
        args.push("--secret".into());
        args.push(format!("id={id},src={}", s(&p)));
    }
    for f in step.flags.as_ref().unwrap_or(&case.flags) {
        args.push(subst(f));
    }
    // `--call check` takes the build's flags, not its outputs.
    let check_args = args.clone();
    if let Some(want) = &expect.call {
        let env = step.env.as_ref().unwrap_or(&case.env);
        return call::check(xb, ctx, &check_args, env, want, subst);
    }
    let out_dir = tmp.join(format!("out{index}"));
    let oci = tmp.join(format!("image{index}.tar"));
    if expect.error.is_none() {
        args.push("-o".into());
        args.push(match &case.local_output_attrs {
            Some(a) => format!("type=local,dest={},{a}", s(&out_dir)),
            None => format!("type=local,dest={}", s(&out_dir)),
        });
        if expect.needs_image() {
            args.push("-o".into());
            args.push(format!("type=oci,dest={}", s(&oci)));
        }
    }
    let stdin = match &case.stdin_context {
        Some(entries) => {
            let p = tmp.join("stdin-context.tar");
            std::fs::write(&p, case::archive_bytes(entries, false)?).map_err(|e| e.to_string())?;
            args.push("-".into());
            Some(p)
        }
        None => {
            args.push(
                case.remote_context
                    .as_deref()
                    .or(case.context_arg.as_deref())
                    .map_or(".".into(), subst),
            );
            None
        }
    };
    let env = step.env.as_ref().unwrap_or(&case.env);
    let (code, stderr) = run_xbuild(xb, ctx, &args, env, stdin.as_deref())?;
    if std::env::var_os("XBUILD_CASES_VERBOSE").is_some() {
        println!("--- xbuild {}\n{stderr}", args.join(" "));
    }
    let tail = || {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n    ")
    };
    if let Some(err) = &expect.error {
        if code == 0 {
            return Err(format!("succeeded, BuildKit fails with {:?}", err.all()));
        }
        for want in err.all().iter().map(|w| subst(w)) {
            if !stderr.contains(&want) {
                return Err(format!("error lacks {want:?}:\n    {}", tail()));
            }
        }
    } else if code != 0 {
        return Err(format!("failed (exit {code}):\n    {}", tail()));
    }
    lint::check_summary(&stderr, expect, subst)?;
    lint::check_call(xb, ctx, &check_args, env, expect, subst)?;
    for w in &expect.warnings {
        if !stderr.contains(w.as_str()) {
            return Err(format!("no warning {w:?}:\n    {}", tail()));
        }
    }
    if expect.no_warnings {
        if let Some(l) = stderr.lines().find(|l| l.contains("WARNING")) {
            return Err(format!("unexpected warning: {l}"));
        }
    }
    for want in &expect.stderr_contains {
        if !stderr.contains(want.as_str()) {
            return Err(format!("output lacks {want:?}:\n    {}", tail()));
        }
    }
    for bad in &expect.stderr_not_contains {
        if stderr.contains(bad.as_str()) {
            return Err(format!("output has {bad:?}"));
        }
    }
    if let Some(n) = expect.cached {
        let got = stderr
            .lines()
            .filter(|l| l.starts_with('#') && l.ends_with(" CACHED"))
            .count();
        if got != n {
            let cached: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with('#') && (l.ends_with(" CACHED") || l.contains("] ")))
                .collect();
            return Err(format!(
                "{got} steps CACHED, BuildKit {n}:\n    {}",
                cached.join("\n    ")
            ));
        }
    }
    for (path, want) in &expect.tmp_files {
        let want = fixtures::subst_file_expect(want, subst);
        check_file(tmp, path, &want, &|_| tmp.to_path_buf(), ctx)?;
    }
    if expect.error.is_some() {
        return Ok(());
    }
    lint::check_tars(expect, subst)?;
    for (path, want) in &expect.files {
        check_file(
            &out_dir,
            path,
            &fixtures::subst_file_expect(want, subst),
            &|n| tmp.join(format!("out{}", n.saturating_sub(1))),
            ctx,
        )?;
    }
    if expect.needs_image() {
        if let Some(n) = expect.same_image_as_step {
            let before = tmp.join(format!("image{}.tar", n.saturating_sub(1)));
            let a = index_digest(&before)?;
            let b = index_digest(&oci)?;
            if a != b {
                return Err(format!("image {b} differs from step {n}'s {a}"));
            }
        }
        let (config, manifests) = read_oci_config(&oci)?;
        if let Some(n) = expect.created_after_step {
            let (before, _) =
                read_oci_config(&tmp.join(format!("image{}.tar", n.saturating_sub(1))))?;
            fixtures::check_created_after(&before, &config, n)?;
        }
        if let Some(n) = expect.manifests {
            if manifests != n {
                return Err(format!("{manifests} image manifests, BuildKit {n}"));
            }
        }
        check_image(&config, expect)?;
    }
    Ok(())
}

/// Runs xbuild in `ctx` with `args`; returns its exit code and stderr.
fn run_xbuild(
    xb: &Xbuild,
    ctx: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    stdin: Option<&Path>,
) -> Result<(i32, String), String> {
    let mut cmd: Command = xb.command();
    let input = match stdin {
        Some(p) => Stdio::from(std::fs::File::open(p).map_err(|e| e.to_string())?),
        None => Stdio::null(),
    };
    // BuildKit's tests solve through its client API, which adds no
    // attestation; buildx's default provenance would be extra manifests.
    cmd.current_dir(ctx)
        .env("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")
        .args(args)
        .envs(env)
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn xbuild: {e}"))?;
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + BUILD_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("build still running after {BUILD_DEADLINE:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("wait for xbuild: {e}")),
        }
    };
    let _ = t_out.join();
    let err = t_err.join().unwrap_or_default();
    Ok((
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&err).into_owned(),
    ))
}

fn check_file(
    root: &Path,
    path: &str,
    want: &FileExpect,
    step_out: &dyn Fn(usize) -> PathBuf,
    ctx: &Path,
) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let spec = match want {
        FileExpect::Text(t) => FileSpec {
            content: Some(t.clone()),
            ..FileSpec::default()
        },
        FileExpect::Spec(s) => (**s).clone(),
    };
    let p: PathBuf = root.join(path.trim_start_matches('/'));
    let meta = std::fs::symlink_metadata(&p);
    if spec.absent {
        return match meta {
            Ok(_) => Err(format!("{path} exists, BuildKit has none")),
            Err(_) => Ok(()),
        };
    }
    let meta = meta.map_err(|_| format!("{path} is missing"))?;
    if let Some(target) = &spec.symlink {
        let got = std::fs::read_link(&p).map_err(|_| format!("{path} is not a symlink"))?;
        if got != Path::new(target) {
            return Err(format!(
                "{path} links to {}, BuildKit to {target}",
                got.display()
            ));
        }
    }
    if spec.dir && !meta.is_dir() {
        return Err(format!("{path} is not a directory"));
    }
    if spec.regular && !meta.is_file() {
        return Err(format!(
            "{path} is not a regular file ({:?})",
            meta.file_type()
        ));
    }
    if let Some(u) = spec.uid {
        if meta.uid() != u {
            return Err(format!(
                "{path} is owned by uid {}, BuildKit {u}",
                meta.uid()
            ));
        }
    }
    if let Some(g) = spec.gid {
        if meta.gid() != g {
            return Err(format!("{path} has gid {}, BuildKit {g}", meta.gid()));
        }
    }
    if let Some(m) = spec.mtime {
        if meta.mtime() != m {
            return Err(format!("{path} has mtime {}, BuildKit {m}", meta.mtime()));
        }
    }
    if let Some(other) = &spec.hardlink_of {
        let o = std::fs::symlink_metadata(root.join(other.trim_start_matches('/')))
            .map_err(|_| format!("{other} is missing"))?;
        if (o.dev(), o.ino()) != (meta.dev(), meta.ino()) {
            return Err(format!("{path} is not a hard link of {other}"));
        }
    }
    if let Some(c) = &spec.same_as_context {
        let want = std::fs::read(ctx.join(c)).map_err(|e| format!("read context {c}: {e}"))?;
        let got = std::fs::read(&p).map_err(|e| format!("read {path}: {e}"))?;
        if want != got {
            return Err(format!("{path} differs from the context's {c}"));
        }
    }
    let rel = path.trim_start_matches('/');
    if let Some(n) = spec.same_as_step {
        let before = std::fs::read(step_out(n).join(rel))
            .map_err(|_| format!("{path} missing in step {n}"))?;
        let now = std::fs::read(&p).map_err(|e| format!("read {path}: {e}"))?;
        if before != now {
            return Err(format!(
                "{path} changed since step {n}; BuildKit keeps it (cached)"
            ));
        }
    }
    if let Some(n) = spec.differs_from_step {
        let before = std::fs::read(step_out(n).join(rel))
            .map_err(|_| format!("{path} missing in step {n}"))?;
        let now = std::fs::read(&p).map_err(|e| format!("read {path}: {e}"))?;
        if before == now {
            return Err(format!(
                "{path} is the same as in step {n}; BuildKit rebuilds it"
            ));
        }
    }
    if let Some(mode) = &spec.mode {
        let want = parse_mode(mode)?;
        let got = meta.permissions().mode() & 0o7777;
        if got != want {
            return Err(format!("{path} has mode {got:04o}, BuildKit {want:04o}"));
        }
    }
    let needs_content =
        spec.content.is_some() || spec.contains.is_some() || spec.not_contains.is_some();
    if needs_content {
        let data = std::fs::read(&p).map_err(|e| format!("read {path}: {e}"))?;
        let text = String::from_utf8_lossy(&data);
        if let Some(c) = &spec.content {
            if text != *c {
                return Err(format!("{path} holds {text:?}, BuildKit {c:?}"));
            }
        }
        if let Some(c) = &spec.contains {
            for want in c.all() {
                if !text.contains(&want) {
                    return Err(format!("{path} ({text:?}) lacks {want:?}"));
                }
            }
        }
        if let Some(c) = &spec.not_contains {
            for bad in c.all() {
                if text.contains(&bad) {
                    return Err(format!("{path} ({text:?}) has {bad:?}"));
                }
            }
        }
    }
    if !spec.json.is_empty() || !spec.json_len.is_empty() {
        let data = std::fs::read(&p).map_err(|e| format!("read {path}: {e}"))?;
        let got: Value =
            serde_json::from_slice(&data).map_err(|e| format!("{path} is not JSON: {e}"))?;
        call::check_json(path, &got, &spec.json, &spec.json_len, &|s| s.to_string())?;
    }
    Ok(())
}

/// The digest of the (first) descriptor of an OCI layout tarball's index.json.
fn index_digest(tar_path: &Path) -> Result<String, String> {
    let f = std::fs::File::open(tar_path).map_err(|e| format!("open {}: {e}", s(tar_path)))?;
    let mut ar = tar::Archive::new(f);
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        let name = e
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        if name.trim_start_matches("./") == "index.json" {
            let mut v = Vec::new();
            e.read_to_end(&mut v).map_err(|e| e.to_string())?;
            let idx: Value = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
            return idx["manifests"][0]["digest"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| "index.json without manifests".to_string());
        }
    }
    Err(format!("no index.json in {}", s(tar_path)))
}

/// The image config of an OCI layout tarball: the host platform's when the
/// index lists several.
fn read_oci_config(tar_path: &Path) -> Result<(Value, usize), String> {
    let f = std::fs::File::open(tar_path).map_err(|e| format!("open {}: {e}", s(tar_path)))?;
    let mut ar = tar::Archive::new(f);
    let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        let name = e
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        if name == "index.json" || e.header().size().unwrap_or(0) < 4 << 20 {
            let mut v = Vec::new();
            e.read_to_end(&mut v).map_err(|e| e.to_string())?;
            blobs.insert(name.trim_start_matches("./").to_string(), v);
        }
    }
    let json = |name: &str| -> Result<Value, String> {
        let b = blobs
            .get(name)
            .ok_or(format!("{name} missing in the OCI tar"))?;
        serde_json::from_slice(b).map_err(|e| format!("{name}: {e}"))
    };
    let blob = |digest: &str| format!("blobs/{}", digest.replace(':', "/"));
    let mut doc = json("index.json")?;
    let mut count = 1;
    for _ in 0..4 {
        if let Some(ms) = doc["manifests"].as_array() {
            // Attestation manifests carry the platform unknown/unknown.
            count = ms
                .iter()
                .filter(|m| m["platform"]["architecture"] != "unknown")
                .count();
            let host = testbed::host_arch();
            let pick = ms
                .iter()
                .find(|m| m["platform"]["architecture"] == host)
                .or_else(|| {
                    ms.iter()
                        .find(|m| m["platform"]["architecture"] != "unknown")
                })
                .ok_or("an index without manifests")?;
            let d = pick["digest"].as_str().ok_or("manifest without digest")?;
            doc = json(&blob(d))?;
            continue;
        }
        let d = doc["config"]["digest"]
            .as_str()
            .ok_or("manifest without config")?;
        return Ok((json(&blob(d))?, count));
    }
    Err("index nesting too deep".into())
}

fn check_image(config: &Value, expect: &Expect) -> Result<(), String> {
    let cfg = &config["config"];
    for (k, want) in &expect.config {
        let got = cfg.get(k).unwrap_or(&Value::Null);
        if got != want {
            return Err(format!("config {k} is {got}, BuildKit {want}"));
        }
    }
    for (k, want) in &expect.image {
        let got = config.get(k).unwrap_or(&Value::Null);
        if got != want {
            return Err(format!("image {k} is {got}, BuildKit {want}"));
        }
    }
    if let Some(n) = expect.layers {
        let got = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
        if got != n {
            return Err(format!("{got} layers, BuildKit {n}"));
        }
    }
    let history = config["history"].as_array().cloned().unwrap_or_default();
    if let Some(t) = &expect.history_created {
        if let Some(h) = history.iter().find(|h| h["created"] != t.as_str()) {
            return Err(format!(
                "history entry created {}, BuildKit {t}",
                h["created"]
            ));
        }
    }
    if let Some(n) = expect.history_len {
        if history.len() != n {
            return Err(format!(
                "{} history entries, BuildKit {n}: {}",
                history.len(),
                Value::Array(history.clone())
            ));
        }
    }
    if !expect.history.is_empty() {
        if history.len() < expect.history.len() {
            return Err(format!("only {} history entries", history.len()));
        }
        let tail = &history[history.len() - expect.history.len()..];
        for (got, want) in tail.iter().zip(&expect.history) {
            let cb = got["created_by"].as_str().unwrap_or("");
            if let Some(c) = &want.created_by {
                if cb != c {
                    return Err(format!("history created_by {cb:?}, BuildKit {c:?}"));
                }
            }
            for c in want.created_by_contains.iter().flat_map(|c| c.all()) {
                if !cb.contains(c.as_str()) {
                    return Err(format!("history created_by {cb:?} lacks {c:?}"));
                }
            }
            if let Some(e) = want.empty_layer {
                let g = got["empty_layer"].as_bool().unwrap_or(false);
                if g != e {
                    return Err(format!("history {cb:?}: empty_layer {g}, BuildKit {e}"));
                }
            }
            if let Some(c) = &want.comment {
                let g = got["comment"].as_str().unwrap_or("");
                if g != c {
                    return Err(format!("history {cb:?}: comment {g:?}, BuildKit {c:?}"));
                }
            }
        }
    }
    Ok(())
}
