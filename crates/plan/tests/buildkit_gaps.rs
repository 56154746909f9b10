//! Planning behaviour taken from BuildKit's Dockerfile frontend where
//! xbuild used to differ: ARGs inherited by a stage built FROM a stage,
//! TARGETSTAGE, proxy args, ONBUILD of a stage, `--from` refusals, and
//! variables in `--checksum` and `--mount` options.

use std::collections::BTreeMap;
use xbuild_oci::Platform;
use xbuild_plan::*;

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

fn opts() -> PlanOptions {
    PlanOptions {
        file: "Dockerfile".into(),
        target: None,
        build_args: BTreeMap::new(),
        build_platform: amd64(),
        network: Default::default(),
        allow: Default::default(),
        image_aliases: BTreeMap::new(),
        extra_hosts: Vec::new(),
        shm_size: None,
        ulimits: Vec::new(),
    }
}

fn plan_with(src: &str, o: &PlanOptions) -> Result<BuildGraph, PlanError> {
    plan_source(src, &amd64(), o, &mut OfflineResolver)
}

fn plan_for(src: &str) -> BuildGraph {
    plan_with(src, &opts()).unwrap_or_else(|e| panic!("plan failed: {e}"))
}

fn exec(step: &Step) -> &ExecOp {
    match &step.op {
        Op::Exec(e) => e,
        other => panic!("not an exec step: {other:?}"),
    }
}

fn env_of<'a>(e: &'a ExecOp, k: &str) -> Option<&'a str> {
    e.env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
}

fn stage<'a>(g: &'a BuildGraph, name: &str) -> &'a Stage {
    g.stages
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no stage {name}"))
}

#[test]
fn a_stage_from_a_stage_sees_its_args() {
    // reference.md "Scope"; convert.go copies the base stage's build args.
    let src = "FROM scratch AS base\nARG FOO=bar\nENV E=1\n\
               FROM base AS child\nRUN echo $FOO $E\n";
    let g = plan_for(src);
    let run = &stage(&g, "child").steps[0];
    assert_eq!(env_of(exec(run), "FOO"), Some("bar"));
    assert_eq!(env_of(exec(run), "E"), Some("1"));
    assert_eq!(run.build_args.get("FOO").map(String::as_str), Some("bar"));
    assert!(
        run.created_by.starts_with("RUN |1 FOO=bar "),
        "{}",
        run.created_by
    );
    // A sibling stage does not.
    let src = "FROM scratch AS base\nARG FOO=bar\nFROM scratch AS other\nRUN echo $FOO\n";
    let g = plan_for(src);
    assert_eq!(env_of(exec(&stage(&g, "other").steps[0]), "FOO"), None);
}

#[test]
fn targetstage_is_the_target_name() {
    // dockerfile_args_test.go testTargetStageNameArg
    let src = "FROM scratch AS base\nRUN echo $TARGETSTAGE\nARG TARGETSTAGE\nRUN echo $TARGETSTAGE\n\
               FROM scratch AS foo\nCOPY --from=base /out/ /\nFROM scratch\nCOPY --from=base /out/ /\n";
    let mut o = opts();
    o.target = Some("foo".into());
    let g = plan_with(src, &o).unwrap();
    let base = stage(&g, "base");
    assert_eq!(env_of(exec(&base.steps[0]), "TARGETSTAGE"), None);
    assert_eq!(env_of(exec(&base.steps[2]), "TARGETSTAGE"), Some("foo"));
    let g = plan_for(src);
    let base = stage(&g, "base");
    assert_eq!(env_of(exec(&base.steps[2]), "TARGETSTAGE"), Some("default"));
    // Without --target, a named last stage gives its name.
    let g = plan_for(&format!(
        "{src}FROM scratch AS final\nCOPY --from=base /out/ /\n"
    ));
    let base = stage(&g, "base");
    assert_eq!(env_of(exec(&base.steps[2]), "TARGETSTAGE"), Some("final"));
}

#[test]
fn proxy_args_reach_run_in_both_spellings_and_stay_out_of_history() {
    let mut o = opts();
    o.build_args
        .insert("http_proxy".into(), "http://p:3128".into());
    o.build_args.insert("NO_PROXY".into(), "localhost".into());
    let g = plan_with("FROM scratch\nRUN env\n", &o).unwrap();
    let step = &g.stages[0].steps[0];
    let e = exec(step);
    assert_eq!(env_of(e, "HTTP_PROXY"), Some("http://p:3128"));
    assert_eq!(env_of(e, "http_proxy"), Some("http://p:3128"));
    assert_eq!(env_of(e, "NO_PROXY"), Some("localhost"));
    assert_eq!(env_of(e, "no_proxy"), Some("localhost"));
    assert_eq!(env_of(e, "HTTPS_PROXY"), None);
    assert!(!step.created_by.contains("proxy"), "{}", step.created_by);
    assert!(step.build_args.is_empty());
    assert!(g.unused_build_args.is_empty());
}

#[test]
fn onbuild_of_a_stage_runs_in_a_stage_from_it() {
    // dockerfile_onbuild_test.go testOnBuildInheritedStageRun / WithFrom
    let src = "FROM scratch AS src\nRUN echo 12 > /in\n\
               FROM scratch AS base\nONBUILD COPY --from=src /in /out/foo\nONBUILD RUN echo 11\n\
               FROM base AS mid\nRUN cp /out/foo /out/bar\n\
               FROM mid AS last\nRUN true\n";
    let g = plan_for(src);
    let mid = stage(&g, "mid");
    assert_eq!(mid.steps.len(), 3, "{:#?}", mid.steps);
    assert!(mid.steps[0].from_onbuild && mid.steps[1].from_onbuild);
    match &mid.steps[0].op {
        Op::Copy(c) => {
            let src_idx = g
                .stages
                .iter()
                .position(|s| s.name.as_deref() == Some("src"));
            assert_eq!(c.from, FileSource::Stage(src_idx.unwrap()));
        }
        other => panic!("not a copy: {other:?}"),
    }
    assert_eq!(exec(&mid.steps[1]).args.last().unwrap(), "echo 11");
    // Triggers run once: not again in a stage built FROM mid.
    assert_eq!(stage(&g, "last").steps.len(), 1);
}

fn plan_err(src: &str) -> String {
    match plan_with(src, &opts()) {
        Ok(_) => panic!("planned, but should have failed:\n{src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn copy_from_a_variable_is_refused_at_the_copy_line() {
    let e = plan_err("FROM scratch AS a\nFROM scratch\nENV t=a\nCOPY --from=$t /x /x\n");
    assert!(
        e.contains("variable expansion is not supported for --from"),
        "{e}"
    );
    assert!(e.contains("Dockerfile:4"), "{e}");
    let e = plan_err("FROM scratch AS a\n\nFROM scratch\nCOPY --from=$UNDEFINED /x /x\n");
    assert!(e.contains("Dockerfile:4") && e.contains("COPY"), "{e}");
}

#[test]
fn mount_from_a_variable_is_refused() {
    // dockerfile_mount_test.go testMountFromError
    let e = plan_err(
        "FROM scratch AS test\nFROM scratch\nENV ttt=test\nRUN --mount=from=$ttt,type=cache,target=/tmp ls\n",
    );
    assert!(
        e.contains("'from' doesn't support variable expansion, define alias stage instead"),
        "{e}"
    );
}

#[test]
fn copy_or_mount_from_a_later_stage_is_refused() {
    let e = plan_err("FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nFROM a\n");
    assert!(
        e.contains(
            "cannot copy from stage \"b\", it needs to be defined before current stage \"a\""
        ),
        "{e}"
    );
    let e = plan_err("FROM scratch AS a\nCOPY --from=0 /x /x\n");
    assert!(e.contains("cannot copy from stage \"0\""), "{e}");
    let e = plan_err("FROM scratch AS a\nCOPY --from=5 /x /x\n");
    assert!(e.contains("invalid stage index 5"), "{e}");
    let e =
        plan_err("FROM scratch AS a\nRUN --mount=from=b,target=/m ls\nFROM scratch AS b\nFROM a\n");
    assert!(
        e.contains("cannot mount from stage \"b\" to \"/m\", stage needs to be defined before current command"),
        "{e}"
    );
}

#[test]
fn checksum_and_mount_options_are_expanded() {
    let sum = "sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d";
    let src = format!(
        "FROM scratch\nARG SUM={sum}\nADD --checksum=${{SUM}} https://example.com/f /f\n\
         ARG MNT_TYPE=cache\nRUN --mount=type=$MNT_TYPE,target=/mycache2 touch /mycache2/foo\n"
    );
    let g = plan_for(&src);
    let st = &g.stages[0];
    match &st.steps[1].op {
        Op::Copy(c) => assert_eq!(c.checksum.as_deref(), Some(sum)),
        other => panic!("not ADD: {other:?}"),
    }
    let e = exec(&st.steps[3]);
    assert_eq!(
        e.mounts[0].kind,
        xbuild_dockerfile::instructions::MountType::Cache
    );
    assert_eq!(e.mounts[0].target.as_deref(), Some("/mycache2"));
    assert_eq!(
        st.steps[3].build_args.get("MNT_TYPE").map(String::as_str),
        Some("cache")
    );
}
