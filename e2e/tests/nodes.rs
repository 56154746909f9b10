//! Remote nodes through real OpenSSH servers on 127.0.0.2 and 127.0.0.3:
//! host-key checks, `node add|ls|inspect|rm`, authentication errors, the
//! scheduling plan a build prints, and raw bytes through the SSH transport.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xbuild_e2e::testbed::{self, Sshd};
use xbuild_e2e::{context, s, xbuild_bin, Run, Xbuild};
use xbuild_remote::inventory::NodeSpec;
use xbuild_remote::ssh::{ConnectOptions, SshPool};

/// An xbuild installation with its own `HOME` (so `~/.ssh/known_hosts` is
/// private to the test) and no ssh-agent.
struct Env {
    xb: Xbuild,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            xb: Xbuild::new(),
            home: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.xb.run_with(
            args,
            &[("HOME", s(self.home.path())), ("SSH_AUTH_SOCK", "")],
            None,
        )
    }

    fn known_hosts(&self) -> PathBuf {
        self.home.path().join(".ssh/known_hosts")
    }

    /// The agent command for a node whose state lives in `HOME/name`.
    fn agent_command(&self, name: &str) -> String {
        format!(
            "{} agent --stdio --root {}",
            xbuild_bin().display(),
            self.home.path().join(name).display()
        )
    }

    fn add(&self, name: &str, sshd: &Sshd, extra: &[&str]) -> Run {
        let key = sshd.client_key();
        let agent = self.agent_command(name);
        let url = sshd.url();
        let mut args = vec![
            "node",
            "add",
            name,
            &url,
            "--platform",
            "linux/amd64",
            "--identity",
            s(&key),
            "--agent-command",
            &agent,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn ls_json(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["node", "ls", "--format", "json"]).ok();
        serde_json::from_str(&out.stdout).expect("node ls JSON")
    }
}

fn host_arch_platform() -> String {
    format!("linux/{}", testbed::host_arch())
}

#[test]
fn unknown_host_key_is_refused_then_accepted_new_and_a_changed_key_is_refused() {
    let Some(mut sshd) = Sshd::start_or_skip("127.0.0.2") else {
        return;
    };
    let env = Env::new();
    let fp = sshd.host_fingerprint().unwrap();

    let r = env.add("amd1", &sshd, &[]).failed();
    assert!(r.stderr.contains("is not known"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&fp),
        "fingerprint {fp} missing: {}",
        r.stderr
    );
    assert!(r.stderr.contains("--accept-new-host-key"), "{}", r.stderr);
    let hp = format!("127.0.0.2:{}", sshd.port());
    assert!(r.stderr.contains(&hp), "{}", r.stderr);
    assert!(!env.known_hosts().exists(), "nothing may be recorded");
    assert!(env.ls_json().is_empty(), "the node must not be saved");

    let r = env.add("amd1", &sshd, &["--accept-new-host-key"]).ok();
    assert!(r.stdout.contains("added node amd1"), "{}", r.stdout);
    let recorded = std::fs::read_to_string(env.known_hosts()).unwrap();
    assert_eq!(
        recorded.trim(),
        sshd.known_hosts_line().unwrap(),
        "known_hosts must hold exactly the server's key"
    );
    let nodes = env.ls_json();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["health"]["status"], "reachable", "{nodes:?}");

    // The node is reinstalled: same address, new host key.
    sshd.restart_with_new_host_key().unwrap();
    let new_fp = sshd.host_fingerprint().unwrap();
    assert_ne!(new_fp, fp);
    let nodes = env.ls_json();
    let reason = nodes[0]["health"]["reason"].as_str().unwrap_or_default();
    assert_eq!(nodes[0]["health"]["status"], "unreachable", "{nodes:?}");
    assert!(reason.contains("HOST KEY CHANGED"), "{reason}");
    assert!(reason.contains(&new_fp) && reason.contains(&fp), "{reason}");
    // accept-new never replaces a changed key.
    let r = env.add("amd2", &sshd, &["--accept-new-host-key"]).failed();
    assert!(r.stderr.contains("HOST KEY CHANGED"), "{}", r.stderr);
    assert!(r.stderr.contains("ssh-keygen -R"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(env.known_hosts()).unwrap(),
        recorded,
        "known_hosts must not change"
    );
    assert_eq!(env.ls_json().len(), 1, "amd2 must not be saved");
}

#[test]
fn node_ls_shows_what_nodes_report_and_marks_a_stopped_node_unreachable() {
    let Some(a) = Sshd::start_or_skip("127.0.0.2") else {
        return;
    };
    let mut b = Sshd::start("127.0.0.3").expect("second sshd");
    let env = Env::new();
    for sshd in [&a, &b] {
        sshd.write_known_hosts(&env.known_hosts()).unwrap();
    }
    env.add("amd1", &a, &["--max-parallel", "2"]).ok();
    env.add("amd2", &b, &[]).ok();
    let version = env.run(&["--version"]).ok().stdout;
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;

    let nodes = env.ls_json();
    assert_eq!(nodes.len(), 2);
    for n in &nodes {
        let h = &n["health"];
        assert_eq!(h["status"], "reachable", "{n}");
        assert_eq!(h["info"]["native"], host_arch_platform().as_str(), "{n}");
        let v = h["info"]["version"].as_str().unwrap();
        assert!(version.contains(v), "{version:?} vs {v}");
        assert_eq!(h["info"]["cpus"].as_u64(), Some(cpus), "{n}");
        let load = h["info"]["load"].as_array().unwrap();
        assert_eq!(load.len(), 3);
        assert!(load.iter().all(|l| l.as_f64().is_some_and(|l| l >= 0.0)));
    }
    assert_eq!(nodes[0]["max_parallel"], 2);

    let table = env.run(&["node", "ls"]).ok().stdout;
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {table}"))
            .to_string()
    };
    assert!(line("amd1").contains(&a.url()), "{table}");
    assert!(
        line("amd1").contains(&format!("{} (native)", host_arch_platform())),
        "{table}"
    );
    assert!(line("amd2").contains(" ok ("), "{table}");

    b.stop();
    let table = env.run(&["node", "ls"]).ok().stdout;
    assert!(line_of(&table, "amd1").contains(" ok ("), "{table}");
    let down = line_of(&table, "amd2");
    assert!(down.contains("unreachable"), "{table}");
    assert!(
        down.contains(&format!("127.0.0.3:{}", b.port())) && down.contains("refused"),
        "{table}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&env.run(&["node", "inspect", "amd2"]).ok().stdout).unwrap();
    assert_eq!(inspect["health"]["status"], "unreachable");
    assert_eq!(inspect["address"], b.url());

    env.run(&["node", "rm", "amd2"]).ok();
    let names: Vec<String> = env
        .ls_json()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["amd1"]);
    let r = env.run(&["node", "rm", "amd2"]).failed();
    assert!(r.stderr.contains("no node named \"amd2\""), "{}", r.stderr);
}

fn line_of(table: &str, name: &str) -> String {
    table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {table}"))
        .to_string()
}

#[test]
fn wrong_or_encrypted_keys_are_clear_errors_naming_the_host() {
    let Some(sshd) = Sshd::start_or_skip("127.0.0.2") else {
        return;
    };
    let env = Env::new();
    sshd.write_known_hosts(&env.known_hosts()).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let wrong = keys.path().join("wrong");
    testbed::keygen(&wrong, "ed25519").unwrap();
    let url = sshd.url();
    let r = env
        .run(&[
            "node",
            "add",
            "amd1",
            &url,
            "--platform",
            "linux/amd64",
            "--identity",
            s(&wrong),
        ])
        .failed();
    let who = format!("authentication failed for root@127.0.0.2:{}", sshd.port());
    assert!(r.stderr.contains(&who), "{}", r.stderr);
    assert!(r.stderr.contains(s(&wrong)), "{}", r.stderr);
    // sshd writes its log line after the client has gone: wait for it.
    assert!(
        wait_for_log(&sshd, "Connection closed by authenticating user root"),
        "{}",
        sshd.log()
    );

    // A key with a passphrase: refused before connecting, with the fix.
    let locked = keys.path().join("locked");
    testbed::run(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "secret-pass", "-f"])
            .arg(&locked),
    )
    .unwrap();
    let r = env
        .run(&[
            "node",
            "add",
            "amd1",
            &url,
            "--platform",
            "linux/amd64",
            "--identity",
            s(&locked),
        ])
        .failed();
    assert!(r.stderr.contains("passphrase"), "{}", r.stderr);
    assert!(r.stderr.contains("ssh-add"), "{}", r.stderr);
    assert!(!r.stderr.contains("secret-pass"));

    // Logged in, but no xbuild at the agent command's path.
    let key = sshd.client_key();
    let r = env
        .run(&[
            "node",
            "add",
            "amd1",
            &url,
            "--platform",
            "linux/amd64",
            "--identity",
            s(&key),
            "--agent-command",
            "/nonexistent/xbuild agent --stdio",
        ])
        .failed();
    assert!(
        r.stderr
            .contains("`/nonexistent/xbuild agent --info` failed (exit status 127)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("is xbuild installed on the node?"),
        "{}",
        r.stderr
    );
    assert!(env.ls_json().is_empty());

    // Nothing listens: refused, naming the address.
    let closed = format!("ssh://root@127.0.0.2:{}", testbed::closed_port());
    let r = env
        .run(&["node", "add", "x", &closed, "--platform", "linux/amd64"])
        .failed();
    assert!(
        r.stderr.contains("cannot connect to 127.0.0.2:"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_build_prints_the_scheduling_plan_with_pins_and_skips_a_stopped_node() {
    let Some(mut sshd) = Sshd::start_or_skip("127.0.0.2") else {
        return;
    };
    if testbed::host_arch() != "amd64" {
        testbed::skip("the plan assertions assume an amd64 host");
        return;
    }
    let env = Env::new();
    // The arm64 QEMU handler makes linux/arm64 a local-QEMU platform.
    env.run(&["binfmt", "install", "linux/arm64"]).ok();
    sshd.write_known_hosts(&env.known_hosts()).unwrap();
    env.add("amd1", &sshd, &[]).ok();
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "x")]);
    let outline = |extra: &[&str]| {
        let mut args = vec![
            "build",
            "--call",
            "outline",
            "--platform",
            "linux/amd64,linux/arm64",
        ];
        args.extend_from_slice(extra);
        args.push(s(ctx.path()));
        env.run(&args)
    };
    let r = outline(&[]).ok();
    assert!(
        r.stderr.contains("linux/amd64 → node amd1 (native)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("linux/arm64 → local qemu (no arm64 node)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("[linux/amd64 stage-0 2/2] COPY a /a"),
        "{}",
        r.stdout
    );

    let r = outline(&["--node", "linux/amd64=local"]).ok();
    assert!(
        r.stderr
            .contains("linux/amd64 → local (pinned by --node, native)"),
        "{}",
        r.stderr
    );
    let r = outline(&["--node", "linux/arm64=amd1"]).ok();
    assert!(
        r.stderr
            .contains("linux/arm64 → node amd1 (pinned by --node, emulated on the node)"),
        "{}",
        r.stderr
    );
    let r = outline(&["--node", "linux/amd64=nope"]).failed();
    assert!(r.stderr.contains("no node named \"nope\""), "{}", r.stderr);

    // A real local build with the node pinned away still builds.
    let r = env
        .run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64",
            "--node",
            "linux/amd64=local",
            "-t",
            "app:1",
            s(ctx.path()),
        ])
        .ok();
    assert!(r.stderr.contains("scheduling:"), "{}", r.stderr);
    assert!(env.run(&["images", "app"]).ok().stdout.contains("app"));
    // --quiet prints only the digest: no plan on stderr.
    let r = env
        .run(&[
            "build",
            "-q",
            "--platform",
            "linux/amd64",
            "--node",
            "linux/amd64=local",
            s(ctx.path()),
        ])
        .ok();
    assert!(r.stdout.trim().starts_with("sha256:"), "{}", r.stdout);
    assert!(!r.stderr.contains("scheduling:"), "{}", r.stderr);

    sshd.stop();
    let r = outline(&[]).ok();
    assert!(
        r.stderr.contains(
            "warning: node amd1 is unreachable and is skipped: cannot connect to 127.0.0.2:"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("linux/amd64 → local (native; amd64 node(s) unreachable: amd1)"),
        "{}",
        r.stderr
    );
    let r = outline(&["--node", "linux/amd64=amd1"]).failed();
    assert!(
        r.stderr
            .contains("linux/amd64 is pinned to node amd1, which is unreachable"),
        "{}",
        r.stderr
    );
}

fn node(sshd: &Sshd, command: &str, identity: Option<PathBuf>, known_hosts: &Path) -> NodeSpec {
    NodeSpec {
        name: "n1".into(),
        address: sshd.url().parse().unwrap(),
        platforms: vec!["linux/amd64".parse().unwrap()],
        identity,
        max_parallel: None,
        agent_command: Some(command.into()),
        known_hosts: Some(known_hosts.to_path_buf()),
    }
}

fn accepted_logins(sshd: &Sshd) -> usize {
    sshd.log().matches("Accepted publickey").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_echo_through_agent_streams_on_one_reused_connection() {
    let Some(sshd) = Sshd::start_or_skip("127.0.0.2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    sshd.write_known_hosts(&kh).unwrap();
    let spec = node(&sshd, "cat", Some(sshd.client_key()), &kh);
    let pool = SshPool::new(ConnectOptions::default());

    // 1 MiB of non-repeating bytes, larger than the SSH window.
    let payload: Vec<u8> = (0u32..262_144)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let stream = pool.connect_agent(&spec).await.expect("agent stream");
        assert!(stream.label.contains("node n1"), "{}", stream.label);
        let data = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = stream.writer;
            let mut r = stream.reader;
            let writer = tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap(); // EOF: cat exits
            });
            let mut back = Vec::new();
            tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
                .await
                .expect("echo within 60 s")
                .unwrap();
            writer.await.unwrap();
            back
        }));
    }
    for t in tasks {
        let back = t.await.unwrap();
        assert_eq!(back.len(), payload.len());
        assert!(back == payload, "echoed bytes differ");
    }
    assert_eq!(pool.open_connections().await, 1);
    assert_eq!(
        accepted_logins(&sshd),
        1,
        "one connection for both channels"
    );

    // A command that fails to start reports the host; `run` sees the status.
    let conn = pool.connection(&spec).await.unwrap();
    let out = conn
        .run("echo out; echo err >&2; exit 3", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    pool.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_keys_and_the_ssh_agent_log_in() {
    let Some(sshd) = Sshd::start_or_skip("127.0.0.2") else {
        return;
    };
    let Some(_) = testbed::require_cmd("ssh-agent") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    sshd.write_known_hosts(&kh).unwrap();
    for kind in ["rsa", "ecdsa"] {
        let key = dir.path().join(format!("id_{kind}"));
        testbed::keygen(&key, kind).unwrap();
        sshd.authorize(&key.with_extension("pub")).unwrap();
        let spec = node(&sshd, "cat", Some(key), &kh);
        let pool = SshPool::new(ConnectOptions {
            use_agent: false,
            ..Default::default()
        });
        let out = pool
            .connection(&spec)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"))
            .run("echo $((6*7))", Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.stdout, b"42\n", "{kind}");
        pool.close_all().await;
    }

    // The ssh-agent: a key that exists only in the agent.
    let sock = dir.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let only_in_agent = dir.path().join("agent_key");
    testbed::keygen(&only_in_agent, "ed25519").unwrap();
    sshd.authorize(&only_in_agent.with_extension("pub"))
        .unwrap();
    testbed::run(
        std::process::Command::new("ssh-add")
            .arg(&only_in_agent)
            .env("SSH_AUTH_SOCK", &sock),
    )
    .unwrap();
    std::fs::remove_file(&only_in_agent).unwrap();
    // Set before any connection reads them; nextest runs each test in its
    // own process, so no other test sees them.
    std::env::set_var("SSH_AUTH_SOCK", &sock);
    std::env::set_var("HOME", dir.path()); // no ~/.ssh/id_* to fall back on
    let spec = node(&sshd, "cat", None, &kh);
    let pool = SshPool::new(ConnectOptions::default());
    let result = pool.connection(&spec).await;
    let _ = agent.kill();
    let _ = agent.wait();
    let out = result
        .expect("login with the agent's key")
        .run("echo agent", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"agent\n");
    pool.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_and_nodes_are_probed_concurrently() {
    let Some(()) = testbed::require_root() else {
        return;
    };
    // Accept TCP connections and never say anything: no SSH banner.
    let mut holes = Vec::new();
    let mut specs = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    for (i, ip) in ["127.0.0.2", "127.0.0.3"].iter().enumerate() {
        let l = std::net::TcpListener::bind((*ip, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        holes.push(l);
        specs.push(NodeSpec {
            name: format!("hole{i}"),
            address: format!("ssh://root@{ip}:{port}").parse().unwrap(),
            platforms: vec!["linux/amd64".parse().unwrap()],
            identity: None,
            max_parallel: None,
            agent_command: Some("cat".into()),
            known_hosts: Some(dir.path().join("kh")),
        });
    }
    let pool = SshPool::new(ConnectOptions {
        connect_timeout: Duration::from_millis(1500),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let results = futures_join(&pool, &specs).await;
    let took = started.elapsed();
    for (spec, r) in specs.iter().zip(&results) {
        let e = r.as_ref().expect_err("a silent server cannot log us in");
        let host = spec.address.host_port();
        assert!(
            e.contains(&format!(
                "{host}: timed out after 1.5s while exchanging keys"
            )),
            "{e}"
        );
    }
    // Both waited 1.5 s at the same time, not one after the other.
    assert!(took < Duration::from_millis(2800), "took {took:?}");
    assert!(took >= Duration::from_millis(1400), "took {took:?}");
    drop(holes);
}

async fn futures_join(pool: &SshPool, specs: &[NodeSpec]) -> Vec<Result<(), String>> {
    let (a, b) = tokio::join!(pool.connection(&specs[0]), pool.connection(&specs[1]));
    [a, b]
        .into_iter()
        .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        .collect()
}

/// The headline of issue #6 through a real OpenSSH server: amd64 goes to
/// the node (its agent started over SSH, its own state directory), arm64
/// builds here through QEMU; the pushed index is right as skopeo sees it;
/// a rebuild on a fresh node state is all cache hits; the agent leaves no
/// process behind.
#[test]
fn a_build_sends_amd64_to_an_ssh_node_and_arm64_to_qemu_and_pushes_one_index() {
    if xbuild_e2e::require_multiplatform().is_none() {
        return;
    }
    let Some(sshd) = Sshd::start_or_skip("127.0.0.3") else {
        return;
    };
    if testbed::host_arch() != "amd64" {
        testbed::skip("the node is an amd64 node: the host must be amd64");
        return;
    }
    let Some(reg) = testbed::Registry::start_or_skip() else {
        return;
    };
    let env = Env::new();
    let base = xbuild_e2e::publish_base(&env.xb, &reg);
    sshd.write_known_hosts(&env.known_hosts()).unwrap();
    env.add("amd1", &sshd, &[]).ok();
    let ctx = context(&[
        (
            "Dockerfile",
            "ARG BASE\nFROM $BASE\nCOPY hello.txt /hello.txt\nRUN uname -m > /arch\n",
        ),
        ("hello.txt", "hello over ssh\n"),
    ]);
    let tag = reg.reference("nodes/app:1");
    let meta = env.xb.root().join("meta.json");
    let base_arg = format!("BASE={base}");
    let build = || {
        env.run(&[
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &base_arg,
            "-t",
            &tag,
            "--push",
            "--metadata-file",
            s(&meta),
            s(ctx.path()),
        ])
        .ok()
    };
    let first = build();
    assert!(
        first.stderr.contains("linux/amd64 → node amd1 (native)"),
        "{}",
        first.stderr
    );
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(
        m["xbuild.platforms"]["linux/amd64"]["worker"], "node amd1",
        "{m}"
    );
    assert_eq!(
        m["xbuild.platforms"]["linux/arm64"]["worker"], "qemu",
        "{m}"
    );
    // The node's own state directory holds the amd64 work.
    assert!(
        env.home.path().join("amd1").join("content").is_dir(),
        "the agent kept no state on the node"
    );
    let raw = testbed::skopeo_inspect_raw(&tag).unwrap();
    assert_eq!(
        xbuild_e2e::index_platforms(&raw),
        ["linux/amd64", "linux/arm64"]
    );
    if testbed::require_cmd("buildah").is_some() {
        let out = xbuild_e2e::buildah_run(&tag, "amd64", "cat /arch /hello.txt");
        assert_eq!(out, "x86_64\nhello over ssh\n");
        let out = xbuild_e2e::buildah_run(&tag, "arm64", "cat /arch");
        assert_eq!(out, "aarch64\n");
    }

    // A fresh node state (the node was reinstalled): the coordinator's
    // cache follows the platform, nothing runs on the node.
    std::fs::remove_dir_all(env.home.path().join("amd1")).unwrap();
    let second = build();
    assert_eq!(second.missed_steps(), 0, "{}", second.stderr);
    let m2: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m2["containerimage.digest"], m["containerimage.digest"]);
    assert_eq!(m2["xbuild.platforms"]["linux/amd64"]["worker"], "node amd1");

    // No agent is left running on the node.
    let agent_root = env.home.path().join("amd1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new("pgrep")
            .args([
                "-f",
                &format!("agent --stdio --root {}", agent_root.display()),
            ])
            .output()
            .unwrap();
        if out.stdout.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "orphan agent processes: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether `sshd`'s log shows `needle` within a few seconds (the server
/// logs a closed connection asynchronously, after the client exited).
fn wait_for_log(sshd: &testbed::Sshd, needle: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if sshd.log().contains(needle) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
