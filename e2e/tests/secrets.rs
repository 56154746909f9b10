//! Build secrets (issue #9): `--secret id=TOKEN,env=TOKEN` and
//! `--secret id=FILESEC,src=FILE`, used as a file under `/run/secrets`, at
//! a chosen target and as an environment variable. After building, pushing
//! and exporting, the secret's bytes are in no blob of the content store
//! (gzip layers decompressed), no cache record, no snapshot, no file of the
//! state directory, no registry blob, no config or history, no OCI archive
//! and no log (plain and rawjson).
//!
//! Step output: BuildKit shows it as is; xbuild masks secret values in it
//! with `****` (see `xbuild_engine::redact`), which this test checks with a
//! RUN that prints both secrets.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use xbuild_e2e::testbed::{self, Registry};
use xbuild_e2e::{context, publish_base, require_multiplatform, s, Xbuild};

/// Every regular file below `dir` whose bytes (or gunzipped bytes) contain
/// one of `needles`.
fn files_containing(dir: &Path, needles: &[&[u8]], out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            files_containing(&p, needles, out);
        } else if md.is_file() {
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            if contains_any(&bytes, needles) {
                out.push(p);
            } else if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut plain = Vec::new();
                let _ = flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut plain);
                if contains_any(&plain, needles) {
                    out.push(p);
                }
            }
        }
    }
}

fn contains_any(hay: &[u8], needles: &[&[u8]]) -> bool {
    needles
        .iter()
        .any(|n| hay.windows(n.len()).any(|w| w == *n))
}

/// The bytes of every log of a rawjson stream (BuildKit's SolveStatus
/// lines, log data in standard base64), decoded and concatenated.
fn rawjson_log_bytes(stream: &str) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for line in stream.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for log in v["logs"].as_array().into_iter().flatten() {
            let data = log["data"].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap_or_else(|e| panic!("log data {data:?} is not base64: {e}"));
            out.extend_from_slice(&bytes);
        }
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    testbed::sha256_digest(bytes)
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string()
}

#[test]
fn secrets_reach_the_step_and_nothing_else() {
    if require_multiplatform().is_none() {
        return;
    }
    let Some(reg) = Registry::start_or_skip() else {
        return;
    };
    let xb = Xbuild::new();
    let base = publish_base(&xb, &reg);
    let nonce = std::process::id();
    let env_secret = format!("env-Secret-{nonce}-q8Zt");
    let file_secret = format!("file-Secret-{nonce}-Lw3x\n");
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("file-secret");
    std::fs::write(&secret_file, &file_secret).unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {base}\n\
             RUN --mount=type=secret,id=FILESEC sha256sum /run/secrets/FILESEC | cut -d' ' -f1 > /file.sum\n\
             RUN --mount=type=secret,id=TOKEN,env=TOKEN printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1 > /env.sum\n\
             RUN --mount=type=secret,id=TOKEN,target=/etc/tok,required=true cp /etc/tok /tmp/leak && cat /tmp/leak > /dev/null && rm /tmp/leak && echo used > /tok.used\n\
             RUN --mount=type=secret,id=TOKEN,env=TOKEN --mount=type=secret,id=FILESEC \
                 echo \"token=$TOKEN\"; cat /run/secrets/FILESEC; echo \"to stderr: $TOKEN\" >&2\n\
             RUN ls /run/secrets 2>/dev/null | wc -l > /after.count; echo \"${{TOKEN:-unset}}\" > /after.env\n"
        ),
    )]);
    let secret_args = [
        "--secret",
        "id=TOKEN,env=TOKEN",
        "--secret",
        &format!("id=FILESEC,src={}", s(&secret_file)),
    ];
    let env = [("TOKEN", env_secret.as_str())];
    let tag = reg.reference("e2e/secrets:1");
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-t",
        &tag,
        "--push",
    ];
    args.extend(secret_args);
    args.push(s(ctx.path()));
    let plain = xb.run_with(&args, &env, None).ok();

    // Again without the cache, as rawjson, into an OCI archive.
    let archive_dir = tempfile::tempdir().unwrap();
    let archive = archive_dir.path().join("image.tar");
    let dest = format!("type=oci,dest={}", s(&archive));
    let mut args = vec![
        "build",
        "--no-cache",
        "--progress",
        "rawjson",
        "--platform",
        "linux/amd64",
        "-o",
        &dest,
    ];
    args.extend(secret_args);
    args.push(s(ctx.path()));
    let raw = xb.run_with(&args, &env, None).ok();

    // The secrets were usable: their hashes are in the image.
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", s(out.path()));
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--platform",
        "linux/amd64",
        "-o",
        &dest,
    ];
    args.extend(secret_args);
    args.push(s(ctx.path()));
    let local = xb.run_with(&args, &env, None).ok();
    assert_eq!(local.missed_steps(), 0, "{}", local.stderr);
    let read = |n: &str| std::fs::read_to_string(out.path().join(n)).unwrap();
    assert_eq!(read("file.sum").trim(), sha256_hex(file_secret.as_bytes()));
    assert_eq!(read("env.sum").trim(), sha256_hex(env_secret.as_bytes()));
    assert_eq!(read("tok.used"), "used\n");
    assert_eq!(
        read("after.count").trim(),
        "0",
        "secrets stayed mounted in a later RUN"
    );
    assert_eq!(
        read("after.env"),
        "unset\n",
        "the secret env leaked into a later RUN"
    );
    assert!(!out.path().join("tmp/leak").exists());

    // The printing step ran and its output was masked.
    let raw_logs = rawjson_log_bytes(&raw.stderr);
    for (name, log) in [("plain", plain.stderr.as_bytes()), ("rawjson", &raw_logs)] {
        for line in [&b"token=****\n"[..], b"to stderr: ****\n", b"****\n"] {
            assert!(
                contains_any(log, &[line]),
                "{name} log lacks {:?}:\n{}",
                String::from_utf8_lossy(line),
                String::from_utf8_lossy(log)
            );
        }
    }

    let file_value = file_secret.trim_end().as_bytes();
    let needles: [&[u8]; 2] = [env_secret.as_bytes(), file_value];
    for (name, text) in [
        ("plain log", &plain.stderr),
        ("plain stdout", &plain.stdout),
        ("rawjson log", &raw.stderr),
        (
            "rawjson log data",
            &String::from_utf8_lossy(&raw_logs).into_owned(),
        ),
        ("rawjson stdout", &raw.stdout),
        ("local build log", &local.stderr),
    ] {
        assert!(
            !contains_any(text.as_bytes(), &needles),
            "the secret is in the {name}"
        );
    }
    let config = testbed::skopeo_inspect_config(&tag).unwrap().to_string();
    assert!(
        !contains_any(config.as_bytes(), &needles),
        "the secret is in the config/history"
    );

    let unpacked = archive_dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    testbed::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&unpacked),
    )
    .unwrap();
    let mut leaks = Vec::new();
    files_containing(xb.root(), &needles, &mut leaks);
    files_containing(reg.dir(), &needles, &mut leaks);
    files_containing(&unpacked, &needles, &mut leaks);
    files_containing(out.path(), &needles, &mut leaks);
    assert!(leaks.is_empty(), "the secret's bytes are in: {leaks:#?}");
    // Sanity check of the scan itself: it does find the secret file.
    let mut found = Vec::new();
    files_containing(secret_dir.path(), &needles, &mut found);
    assert_eq!(found, [secret_file]);
}
