//! `--ssh` through a node: the coordinator's side of the protocol
//! (`SshAgent` requests answered by its agent, interleaved with context
//! transfers; ids it was not given refused) and a whole solve through a
//! real agent with forwarded ssh ids.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use xbuild_engine::context::{ContextIndex, EntryKind, IndexEntry};
use xbuild_engine::{Engine, EngineConfig, Secrets, Snapshotter, SolveRequest, VertexIds};
use xbuild_oci::{Digest, Platform};
use xbuild_remote::agent::{self, AgentConfig};
use xbuild_remote::client::RemoteWorker;
use xbuild_remote::protocol::{
    AgentBytes, BlobDest, FrameReader, FrameWriter, Message, NodeInfo, ReplyBody, PROTOCOL_VERSION,
};
use xbuild_remote::AgentStream;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn stream(r: impl AsyncRead + Send + 'static, w: impl AsyncWrite + Send + 'static) -> AgentStream {
    AgentStream {
        reader: Box::pin(r),
        writer: Box::pin(w),
        label: "test pipe".into(),
    }
}

/// A fake ssh-agent on `path`: each message is answered with `signed:`
/// and the message; counts the connections it accepted.
fn fake_agent(path: &Path) -> Arc<AtomicUsize> {
    let l = UnixListener::bind(path).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            a.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || loop {
                let mut len = [0u8; 4];
                if c.read_exact(&mut len).is_err() {
                    return;
                }
                let mut m = vec![0u8; u32::from_be_bytes(len) as usize];
                if c.read_exact(&mut m).is_err() {
                    return;
                }
                let mut r = b"signed:".to_vec();
                r.extend_from_slice(&m);
                let mut out = (r.len() as u32).to_be_bytes().to_vec();
                out.extend_from_slice(&r);
                if c.write_all(&out).is_err() {
                    return;
                }
            });
        }
    });
    accepted
}

fn engine(root: &Path) -> Engine {
    Engine::open(EngineConfig {
        root: root.to_path_buf(),
        init_program: "/nonexistent".into(),
        init_args: vec![],
        worker: "local".into(),
        snapshotter: Some(Snapshotter::Copy),
    })
    .unwrap()
}

fn context_of(dir: &Path, name: &str, body: &[u8]) -> ContextIndex {
    std::fs::write(dir.join(name), body).unwrap();
    ContextIndex {
        entries: vec![IndexEntry {
            path: name.into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: body.len() as u64,
            link_target: None,
            digest: Some(Digest::sha256_of(body)),
        }],
        stats: Default::default(),
    }
}

/// A node's steps ask the coordinator's agent while the node is also
/// fetching context files: each request gets its own answer, requests of
/// one step connection share one connection to the agent, an id the user
/// did not pass with `--ssh` is refused, and the job names the ids.
#[test]
fn ssh_agent_requests_are_answered_between_other_requests_and_unknown_ids_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let accepted = fake_agent(&sock);
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let index = context_of(&ctx, "f.txt", b"context file\n");
    let file_digest = index.entries[0].digest.clone().unwrap();
    rt().block_on(async {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(theirs);
        let want = file_digest.clone();
        let node = tokio::spawn(async move {
            let mut r = FrameReader::new(ar, "coordinator");
            let mut w = FrameWriter::new(aw, "coordinator");
            r.expect_message().await.unwrap();
            w.send(&Message::Welcome(NodeInfo {
                protocol: PROTOCOL_VERSION,
                version: "x".into(),
                capabilities: vec![],
                native: Platform::parse("linux/amd64").unwrap(),
                emulated: vec![],
                load: 0.0,
                cpus: 1,
                pid: None,
            }))
            .await
            .unwrap();
            w.flush().await.unwrap();
            let job = match r.expect_message().await.unwrap() {
                Message::Solve(job) => job,
                other => panic!("{other:?}"),
            };
            assert_eq!(
                job.ssh,
                ["default", "gone"],
                "the job names the forwarded ids"
            );
            // Three requests in flight at once: context files, then two
            // agent requests of step connection 5, then one for an id the
            // user never passed.
            w.send(&Message::WantFiles {
                id: 1,
                digests: vec![want.clone()],
            })
            .await
            .unwrap();
            for (id, body) in [(2, &b"\x0blist keys"[..]), (3, b"\x0dsign this")] {
                w.send(&Message::SshAgent {
                    id,
                    ssh_id: "default".into(),
                    conn: 5,
                    request: AgentBytes(body.to_vec()),
                })
                .await
                .unwrap();
            }
            w.send(&Message::SshAgent {
                id: 4,
                ssh_id: "deploy".into(),
                conn: 6,
                request: AgentBytes(b"\x0dsign this".to_vec()),
            })
            .await
            .unwrap();
            w.send(&Message::SshAgent {
                id: 5,
                ssh_id: "gone".into(),
                conn: 7,
                request: AgentBytes(b"\x0b".to_vec()),
            })
            .await
            .unwrap();
            w.send(&Message::SshAgentClose {
                ssh_id: "default".into(),
                conn: 5,
            })
            .await
            .unwrap();
            w.flush().await.unwrap();
            let mut replies = Vec::new();
            let mut got_file = false;
            while replies.len() < 5 {
                match r.expect_message().await.unwrap() {
                    Message::Blob { digest, size, dest } => {
                        assert_eq!((digest, dest), (want.clone(), BlobDest::Context));
                        let mut body = Vec::new();
                        r.read_data(size, |b| {
                            body.extend_from_slice(b);
                            Ok(())
                        })
                        .await
                        .unwrap();
                        assert_eq!(body, b"context file\n");
                        got_file = true;
                    }
                    Message::Reply { id, result } => replies.push((id, result)),
                    other => panic!("{other:?}"),
                }
            }
            assert!(got_file);
            assert_eq!(
                replies.iter().map(|r| r.0).collect::<Vec<_>>(),
                [1, 2, 3, 4, 5]
            );
            assert!(matches!(replies[0].1, Ok(ReplyBody::Fetched)));
            for (i, want) in [
                (1, &b"signed:\x0blist keys"[..]),
                (2, b"signed:\x0dsign this"),
            ] {
                match &replies[i].1 {
                    Ok(ReplyBody::SshAgent { response }) => assert_eq!(response.0, want),
                    other => panic!("{other:?}"),
                }
            }
            let refused = replies[3].1.as_ref().unwrap_err();
            assert!(
                refused.contains("\"deploy\" was not passed with --ssh"),
                "{refused}"
            );
            // The coordinator's dead agent: the node is told it failed,
            // without the coordinator's paths.
            let failed = replies[4].1.as_ref().unwrap_err();
            assert_eq!(failed, "the coordinator's ssh agent \"gone\" failed");
            w.send(&Message::Failed {
                message: "done".into(),
                step: None,
            })
            .await
            .unwrap();
            w.flush().await.unwrap();
        });
        let (r, w) = tokio::io::split(ours);
        let mut worker = RemoteWorker::connect(stream(r, w), "amd1").await.unwrap();
        let engine = engine(&dir.path().join("coord"));
        let graph = xbuild_plan::plan_source(
            "FROM scratch\nCOPY f.txt /\n",
            &Platform::parse("linux/amd64").unwrap(),
            &xbuild_plan::PlanOptions::new("Dockerfile"),
            &mut xbuild_plan::OfflineResolver,
        )
        .unwrap();
        let mut secrets = Secrets::new();
        secrets.insert_ssh("default", &sock);
        let gone = dir.path().join("gone.sock");
        secrets.insert_ssh("gone", &gone);
        let ids = VertexIds::new();
        let seen = std::sync::Mutex::new(Vec::new());
        let events = |e: xbuild_engine::events::Event| seen.lock().unwrap().push(e);
        let e = worker
            .solve(
                &engine,
                SolveRequest {
                    graph: &graph,
                    context_dir: Some(&ctx),
                    context: Some(&index),
                    source: &xbuild_engine::StoreSource,
                    events: &events,
                    ids: &ids,
                    no_cache: false,
                    no_cache_filter: &[],
                    secrets: &secrets,
                    source_date_epoch: None,
                    presolved: &[],
                },
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("done"), "{e}");
        // Here, the user is told which agent failed and why (once per id).
        let warnings: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                xbuild_engine::events::Event::Warning { message } => Some(message.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(
            warnings[0],
            "node amd1: --ssh deploy: ssh agent \"deploy\" was not passed with --ssh; refused"
        );
        assert!(
            warnings[1].starts_with("node amd1: --ssh gone: ssh agent \"gone\" at ")
                && warnings[1].contains("gone.sock"),
            "{warnings:?}"
        );
        node.await.unwrap();
    });
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "both requests of step connection 5 used one agent connection"
    );
}

/// A whole build through a real agent with a forwarded ssh id: the job
/// carries it, replies reach the solve (context files) and the image
/// lands in the coordinator's store.
#[test]
fn a_solve_with_forwarded_ssh_ids_completes_through_a_real_agent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    fake_agent(&sock);
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let index = context_of(&ctx, "f.txt", b"through the agent\n");
    rt().block_on(async {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(theirs);
        let cfg = AgentConfig {
            root: dir.path().join("agent"),
            init_program: "/nonexistent".into(),
            init_args: vec![],
            native: Platform::parse("linux/amd64").unwrap(),
            emulated: vec![],
            peer: "coordinator".into(),
        };
        let served = tokio::spawn(agent::serve(ar, aw, cfg));
        let (r, w) = tokio::io::split(ours);
        let mut worker = RemoteWorker::connect(stream(r, w), "amd1").await.unwrap();
        let engine = engine(&dir.path().join("coord"));
        let graph = xbuild_plan::plan_source(
            "FROM scratch\nCOPY f.txt /\n",
            &Platform::parse("linux/amd64").unwrap(),
            &xbuild_plan::PlanOptions::new("Dockerfile"),
            &mut xbuild_plan::OfflineResolver,
        )
        .unwrap();
        let mut secrets = Secrets::new();
        secrets.insert_ssh("default", &sock);
        let ids = VertexIds::new();
        let out = worker
            .solve(
                &engine,
                SolveRequest {
                    graph: &graph,
                    context_dir: Some(&ctx),
                    context: Some(&index),
                    source: &xbuild_engine::StoreSource,
                    events: &xbuild_engine::events::NullSink,
                    ids: &ids,
                    no_cache: false,
                    no_cache_filter: &[],
                    secrets: &secrets,
                    source_date_epoch: None,
                    presolved: &[],
                },
            )
            .await
            .unwrap();
        assert!(engine.store().exists(&out.result.manifest.digest));
        assert!(out.context_bytes >= 18, "{}", out.context_bytes);
        worker.close(Duration::from_secs(10)).await;
        served.await.unwrap().unwrap();
    });
    // No forwarded agent socket directory of this process is left behind.
    let mine = format!("xbuild-ssh-{}-", std::process::id());
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&mine))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
