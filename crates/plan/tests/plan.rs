//! Planning tests modelled on real Dockerfiles: ARG scoping, ENV/ARG
//! precedence, `--target` and stage selection, platform args, COPY --from,
//! heredocs, ONBUILD triggers from a base image.

use std::collections::BTreeMap;
use xbuild_oci::Platform;
use xbuild_plan::*;

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}
fn arm64() -> Platform {
    Platform::parse("linux/arm64").unwrap()
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

#[test]
fn build_context_image_aliases_replace_from_and_copy_from() {
    let mut o = opts();
    o.image_aliases
        .insert("base".into(), "registry.example/base@sha256:1234".into());
    o.image_aliases
        .insert("tools".into(), "busybox:1.36".into());
    let g = plan_for(
        "FROM base\nCOPY --from=tools:latest /bin/sh /sh\nCOPY --from=other /x /x\n",
        &amd64(),
        &o,
    );
    let refs: Vec<&str> = g.images().iter().map(|r| r.reference.as_str()).collect();
    assert!(
        refs.contains(&"registry.example/base@sha256:1234"),
        "{refs:?}"
    );
    assert!(refs.contains(&"busybox:1.36"), "{refs:?}");
    assert!(refs.contains(&"other"), "{refs:?}");
    assert!(!refs.contains(&"base"), "{refs:?}");
}

/// BuildKit: a named context of a stage's name replaces the whole stage
/// (its FROM and its steps); `docker-image://scratch` is the empty image.
#[test]
fn build_context_of_a_stage_name_replaces_the_stage() {
    let mut o = opts();
    o.image_aliases
        .insert("base".into(), "registry.example/base@sha256:1234".into());
    o.image_aliases.insert("busybox".into(), "scratch".into());
    let g = plan_for(
        "FROM unreachable.example/parent AS parent\nFROM parent AS base\nRUN echo base > /out\n\
         FROM base\nRUN true\nFROM busybox AS empty\nCOPY --from=base /etc /etc\n",
        &amd64(),
        &o,
    );
    let refs: Vec<&str> = g.images().iter().map(|r| r.reference.as_str()).collect();
    assert_eq!(refs, ["registry.example/base@sha256:1234"], "{refs:?}");
    let base = g
        .stages
        .iter()
        .find(|s| s.name.as_deref() == Some("base"))
        .expect("stage base");
    assert!(base.steps.is_empty(), "the replaced stage has no steps");
    let empty = g.stages.last().unwrap();
    assert!(matches!(empty.base, Base::Scratch), "{:?}", empty.base);
}

fn plan_for(src: &str, p: &Platform, o: &PlanOptions) -> BuildGraph {
    plan_source(src, p, o, &mut OfflineResolver).unwrap_or_else(|e| panic!("plan failed: {e}"))
}

fn exec(step: &Step) -> &ExecOp {
    match &step.op {
        Op::Exec(e) => e,
        other => panic!("not an exec step: {other:?}"),
    }
}

fn copy(step: &Step) -> &CopyOp {
    match &step.op {
        Op::Copy(c) => c,
        other => panic!("not a copy step: {other:?}"),
    }
}

fn env_of<'a>(e: &'a ExecOp, k: &str) -> Option<&'a str> {
    e.env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
}

/// The classic Go cross-compile Dockerfile.
const GO_CROSS: &str = r#"# syntax=docker/dockerfile:1
ARG GO_VERSION=1.22
ARG ALPINE=3.19

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-alpine AS build
WORKDIR /src
ARG TARGETOS TARGETARCH
ARG VERSION=dev
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -ldflags "-X main.version=$VERSION" -o /out/app .

FROM alpine:${ALPINE} AS test
COPY --from=build /out/app /app
RUN /app --self-test

FROM alpine:${ALPINE}
COPY --from=build /out/app /usr/local/bin/app
ENTRYPOINT ["app"]
"#;

#[test]
fn global_arg_in_from_and_buildplatform_stage() {
    let g = plan_for(GO_CROSS, &arm64(), &opts());
    // The default target (last stage) needs `build` but not `test`.
    assert_eq!(g.stages.len(), 2, "unused stage `test` must be dropped");
    let build = &g.stages[0];
    assert_eq!(build.name.as_deref(), Some("build"));
    // FROM --platform=$BUILDPLATFORM runs natively...
    assert_eq!(build.platform, amd64());
    match &build.base {
        Base::Image(r) => {
            assert_eq!(r.reference, "golang:1.22-alpine");
            assert_eq!(r.platform, amd64());
        }
        other => panic!("{other:?}"),
    }
    // ...while TARGETARCH still names the target.
    let run = exec(&build.steps[6]);
    assert_eq!(env_of(run, "TARGETARCH"), Some("arm64"));
    assert_eq!(env_of(run, "TARGETOS"), Some("linux"));
    assert_eq!(env_of(run, "VERSION"), Some("dev"));
    assert_eq!(run.cwd, "/src");
    assert_eq!(
        run.mounts[0].target.as_deref(),
        Some("/root/.cache/go-build")
    );
    assert_eq!(run.mounts[0].id.as_deref(), Some("/root/.cache/go-build"));
    // The final stage is for the target platform with the global ALPINE arg.
    let fin = &g.stages[g.target];
    assert_eq!(fin.platform, arm64());
    match &fin.base {
        Base::Image(r) => assert_eq!(r.reference, "alpine:3.19"),
        other => panic!("{other:?}"),
    }
    assert_eq!(copy(&fin.steps[0]).from, FileSource::Stage(0));
    assert_eq!(copy(&fin.steps[0]).dest, "/usr/local/bin/app");
    // COPY go.mod go.sum ./ lands in WORKDIR.
    assert_eq!(copy(&build.steps[3]).dest, "/src/");
}

#[test]
fn target_selects_stage_and_drops_the_rest() {
    let mut o = opts();
    o.target = Some("test".into());
    let g = plan_for(GO_CROSS, &amd64(), &o);
    let names: Vec<_> = g.stages.iter().map(|s| s.display_name()).collect();
    assert_eq!(names, ["build", "test"]);
    o.target = Some("build".into());
    let g = plan_for(GO_CROSS, &amd64(), &o);
    assert_eq!(g.stages.len(), 1);
    o.target = Some("nope".into());
    let err = plan_source(GO_CROSS, &amd64(), &o, &mut OfflineResolver).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"nope\"") && msg.contains("build, test"),
        "{msg}"
    );
}

#[test]
fn build_arg_overrides_defaults_global_and_local() {
    let mut o = opts();
    o.build_args.insert("GO_VERSION".into(), "1.23".into());
    o.build_args.insert("VERSION".into(), "2.0".into());
    o.build_args.insert("UNUSED".into(), "x".into());
    let g = plan_for(GO_CROSS, &amd64(), &o);
    match &g.stages[0].base {
        Base::Image(r) => assert_eq!(r.reference, "golang:1.23-alpine"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env_of(exec(&g.stages[0].steps[6]), "VERSION"), Some("2.0"));
    assert_eq!(g.unused_build_args, ["UNUSED"]);
}

#[test]
fn arg_scope_is_per_stage_and_global_needs_redeclaring() {
    let src = r#"
ARG V=global
FROM scratch AS a
RUN echo $V
ARG V
RUN echo $V
ARG L=local
FROM scratch AS b
COPY --from=a /x /x
RUN echo $L
"#;
    let g = plan_for(src, &amd64(), &opts());
    let a = &g.stages[0];
    // Before `ARG V` the global is not visible inside the stage.
    assert_eq!(env_of(exec(&a.steps[0]), "V"), None);
    assert!(a.steps[0].build_args.is_empty());
    // After a bare `ARG V` it inherits the global default.
    assert_eq!(env_of(exec(&a.steps[2]), "V"), Some("global"));
    assert_eq!(
        a.steps[2].build_args.get("V").map(String::as_str),
        Some("global")
    );
    // L does not leak into stage b.
    let b = &g.stages[1];
    assert_eq!(env_of(exec(&b.steps[1]), "L"), None);
}

#[test]
fn env_wins_over_arg_and_env_refers_to_old_values() {
    let src = r#"
FROM scratch
ARG A=fromarg
ENV A=fromenv
ENV X=1 Y=$X
ENV X=2
WORKDIR /w/$A
RUN true
"#;
    let g = plan_for(src, &amd64(), &opts());
    let st = &g.stages[0];
    match &st.steps[2].op {
        Op::Config(ConfigOp::Env(p)) => {
            assert_eq!(
                p[1],
                ("Y".to_string(), String::new()),
                "ENV sees values from before the instruction"
            );
        }
        other => panic!("{other:?}"),
    }
    match &st.steps[4].op {
        Op::Config(ConfigOp::Workdir(w)) => assert_eq!(w, "/w/fromenv"),
        other => panic!("{other:?}"),
    }
    // ENV-shadowed ARG is not a build arg of the step (and not in the key).
    assert!(!st.steps[4].build_args.contains_key("A"));
    let run = exec(&st.steps[5]);
    assert_eq!(env_of(run, "A"), Some("fromenv"));
    assert_eq!(env_of(run, "X"), Some("2"));
    assert!(
        env_of(run, "PATH").is_some(),
        "scratch gets the default PATH"
    );
}

#[test]
fn build_arg_used_only_from_first_use() {
    let src = r#"
FROM scratch
COPY a /a
ARG VERSION=1
COPY b /b
LABEL version=$VERSION
RUN make
"#;
    let g = plan_for(src, &amd64(), &opts());
    let s = &g.stages[0].steps;
    assert!(s[0].build_args.is_empty());
    assert!(s[2].build_args.is_empty(), "COPY b does not use VERSION");
    assert_eq!(
        s[3].build_args.get("VERSION").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        s[4].build_args.get("VERSION").map(String::as_str),
        Some("1"),
        "RUN sees every ARG in scope"
    );
    assert!(
        s[4].created_by
            .starts_with("RUN |1 VERSION=1 /bin/sh -c make"),
        "{}",
        s[4].created_by
    );
}

#[test]
fn copy_from_by_index_name_and_image() {
    let src = r#"
FROM scratch AS first
FROM scratch
COPY --from=0 /a /a
COPY --from=first /b /b
COPY --from=busybox:1.36 /bin/busybox /bin/busybox
"#;
    let g = plan_for(src, &amd64(), &opts());
    let fin = &g.stages[g.target];
    assert_eq!(copy(&fin.steps[0]).from, FileSource::Stage(0));
    assert_eq!(copy(&fin.steps[1]).from, FileSource::Stage(0));
    match &copy(&fin.steps[2]).from {
        FileSource::Image(r) => {
            assert_eq!(r.reference, "busybox:1.36");
            assert_eq!(r.platform, amd64());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(g.images().len(), 1);
}

#[test]
fn copy_from_future_index_and_cycles_are_errors() {
    let src = "FROM scratch AS a\nCOPY --from=1 /a /a\nFROM a\n";
    let e = plan_source(src, &amd64(), &opts(), &mut OfflineResolver).unwrap_err();
    assert!(e.to_string().contains("Dockerfile:2"), "{e}");
    // A stage is read only after it is defined, as BuildKit dispatches
    // stages in order: COPY --from and RUN --mount=from of a later stage are
    // refused before any cycle could form (convert.go, convert_runmount.go).
    let src = "FROM scratch AS a\nRUN --mount=from=b,target=/x true\nFROM scratch AS b\nCOPY --from=a /y /y\n";
    let e = plan_source(src, &amd64(), &opts(), &mut OfflineResolver).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot mount from stage \"b\" to \"/x\", stage needs to be defined before current command"),
        "{e}"
    );
}

#[test]
fn from_stage_inherits_config() {
    let src = r#"
FROM scratch AS base
ENV APP=/opt/app
WORKDIR $APP
USER 1000
FROM base
RUN pwd
"#;
    let g = plan_for(src, &amd64(), &opts());
    assert_eq!(g.stages[1].base, Base::Stage(0));
    let run = exec(&g.stages[1].steps[0]);
    assert_eq!(run.cwd, "/opt/app");
    assert_eq!(run.user, "1000");
    assert_eq!(env_of(run, "APP"), Some("/opt/app"));
}

#[test]
fn base_image_config_and_onbuild_triggers() {
    struct R;
    impl ImageResolver for R {
        fn resolve(&mut self, reference: &str, p: &Platform) -> Result<ResolvedImage, String> {
            if reference == "missing" {
                return Err("not found".into());
            }
            Ok(ResolvedImage {
                digest: Some(format!("sha256:{:064}", p.architecture().len())),
                config: BaseConfig {
                    env: vec!["PATH=/custom/bin".into(), "GOPATH=/go".into()],
                    working_dir: "/go".into(),
                    user: String::new(),
                    shell: vec![],
                    onbuild: vec!["COPY . /app/src".into(), "RUN make -C /app/src".into()],
                },
            })
        }
    }
    let src = "FROM golang:onbuild\nWORKDIR $GOPATH/src\nRUN echo $PATH\n";
    let g = plan_source(src, &amd64(), &opts(), &mut R).unwrap();
    let st = &g.stages[0];
    assert!(st.steps[0].from_onbuild && st.steps[1].from_onbuild);
    assert_eq!(copy(&st.steps[0]).dest, "/app/src");
    match &st.steps[2].op {
        Op::Config(ConfigOp::Workdir(w)) => assert_eq!(w, "/go/src"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env_of(exec(&st.steps[3]), "PATH"), Some("/custom/bin"));
    match &st.base {
        Base::Image(r) => assert!(r.digest.is_some()),
        other => panic!("{other:?}"),
    }
    let e = plan_source("FROM missing\n", &amd64(), &opts(), &mut R).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:1: FROM missing (linux/amd64): not found"
    );
}

#[test]
fn heredocs_in_run_and_copy() {
    let src = "FROM scratch\nARG NAME=world\nRUN <<EOF\necho hi\nEOF\nRUN <<-EOT\n\t#!/bin/sh\n\techo x\n\tEOT\nCOPY <<EOF /etc/greeting\nhello $NAME\nEOF\nCOPY <<'EOF' /etc/raw\nhello $NAME\nEOF\nRUN cat <<EOF > /x\ny\nEOF\n";
    let g = plan_for(src, &amd64(), &opts());
    let s = &g.stages[0].steps;
    assert_eq!(exec(&s[1]).args, ["/bin/sh", "-c", "echo hi\n"]);
    let shebang = exec(&s[2]);
    assert_eq!(shebang.inline_files.len(), 1);
    assert_eq!(shebang.inline_files[0].content, "#!/bin/sh\necho x\n");
    assert_eq!(shebang.args, [shebang.inline_files[0].name.clone()]);
    let c = copy(&s[3]);
    assert_eq!(c.inline[0].content, "hello world\n");
    assert_eq!(c.dest, "/etc/greeting");
    assert_eq!(copy(&s[4]).inline[0].content, "hello $NAME\n");
    assert_eq!(exec(&s[5]).args[2], "cat <<EOF > /x\ny\nEOF");
}

#[test]
fn instruction_config_ops() {
    let src = r#"FROM scratch
EXPOSE 80 53/udp
VOLUME ["/data"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s CMD wget -q localhost
SHELL ["/bin/bash", "-c"]
CMD echo hi
LABEL a="b c"
ONBUILD RUN echo child
"#;
    let g = plan_for(src, &amd64(), &opts());
    let s = &g.stages[0].steps;
    assert_eq!(
        s[0].op,
        Op::Config(ConfigOp::Expose(vec!["53/udp".into(), "80/tcp".into()]))
    );
    assert_eq!(s[1].op, Op::Config(ConfigOp::Volume(vec!["/data".into()])));
    match &s[3].op {
        Op::Config(ConfigOp::Healthcheck(h)) => {
            assert_eq!(h.test, ["CMD-SHELL", "wget -q localhost"]);
            assert_eq!(h.interval, Some(5_000_000_000));
        }
        other => panic!("{other:?}"),
    }
    // CMD in shell form uses the SHELL set before it.
    assert_eq!(
        s[5].op,
        Op::Config(ConfigOp::Cmd(vec![
            "/bin/bash".into(),
            "-c".into(),
            "echo hi".into()
        ]))
    );
    assert_eq!(
        s[6].op,
        Op::Config(ConfigOp::Label(vec![("a".into(), "b c".into())]))
    );
    assert_eq!(
        s[7].op,
        Op::Config(ConfigOp::Onbuild("RUN echo child".into()))
    );
}

#[test]
fn errors_name_file_and_line() {
    let cases = [
        ("FROM scratch\nCOPY a\n", "Dockerfile:2"),
        (
            "FROM scratch\nRUN --mount=type=nfs,target=/x true\n",
            "Dockerfile:2",
        ),
        ("FROM scratch\nBOGUS x\n", "Dockerfile:2"),
        ("RUN true\nFROM scratch\n", "Dockerfile:1"),
        ("FROM scratch\nCOPY a b c\n", "Dockerfile:2"),
        ("FROM scratch\nENV X=${NOPE:?must be set}\n", "Dockerfile:2"),
        ("FROM scratch\nCOPY --bogus=1 a /b\n", "Dockerfile:2"),
        ("FROM --platform=linux/bogus/x/y scratch\n", "Dockerfile:1"),
    ];
    for (src, want) in cases {
        let e = plan_source(src, &amd64(), &opts(), &mut OfflineResolver).unwrap_err();
        assert!(e.to_string().contains(want), "{src:?}: {e}");
    }
    let e = plan_source(
        "# only a comment\n",
        &amd64(),
        &opts(),
        &mut OfflineResolver,
    )
    .unwrap_err();
    assert!(e.to_string().contains("Dockerfile"), "{e}");
}

#[test]
fn graphs_are_plain_data_and_independent_of_the_planning_host() {
    let g = plan_for(GO_CROSS, &arm64(), &opts());
    let json = serde_json::to_string(&g).unwrap();
    let back: BuildGraph = serde_json::from_str(&json).unwrap();
    assert_eq!(back, g);
    let again = plan_for(GO_CROSS, &arm64(), &opts());
    assert_eq!(
        serde_json::to_string(&again).unwrap(),
        json,
        "planning is deterministic"
    );
}

#[test]
fn check_finds_the_usual_problems() {
    let src = "FROM alpine as Build\nCMD [ls]\nENTRYPOINT echo hi\nCOPY --from=buidl /a /a\nFROM ${UNDECLARED}\nMAINTAINER me\n";
    let f = check::check_source(src, &opts(), &[amd64()]);
    let rules: Vec<&str> = f.iter().map(|x| x.rule.as_str()).collect();
    for want in [
        "FromAsCasing",
        "StageNameCasing",
        "JSONArgsTypo",
        "JSONArgsRecommended",
        "CopyFromUnknownStage",
        "UndefinedArgInFrom",
        "MaintainerDeprecated",
    ] {
        assert!(rules.contains(&want), "missing {want} in {rules:?}");
    }
    let typo = f.iter().find(|x| x.rule == "JSONArgsTypo").unwrap();
    assert_eq!(typo.location.as_ref().unwrap().start_line, 2);
    let clean = "FROM alpine AS build\nCMD [\"ls\"]\n";
    assert!(check::check_source(clean, &opts(), &[amd64()]).is_empty());
    let skipped = "# check=skip=JSONArgsRecommended\nFROM alpine\nCMD ls\n";
    assert!(check::check_source(skipped, &opts(), &[amd64()]).is_empty());
}

#[test]
fn copy_from_a_later_stage_is_refused_but_mounting_it_is_not() {
    // testOutOfOrderStage: COPY --from a stage defined further down fails.
    let src = "FROM scratch AS target\nCOPY --from=build /d2 /out\nFROM scratch AS build\nCOPY Dockerfile /d2\nFROM target\n";
    let e = plan_source(src, &amd64(), &opts(), &mut OfflineResolver)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot copy from stage \"build\", it needs to be defined before current stage \"target\""),
        "{e}"
    );
    // An empty Dockerfile has no stage (testEmptyStages).
    let e = plan_source("ARG foo=bar\n", &amd64(), &opts(), &mut OfflineResolver)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dockerfile contains no stages to build"), "{e}");
}

#[test]
fn sandbox_hostname_build_arg_sets_run_hostname() {
    // testDockerfileCheckHostname (arg): no ARG needed, not an unused arg.
    let mut o = opts();
    o.build_args
        .insert("BUILDKIT_SANDBOX_HOSTNAME".into(), "foo".into());
    let g = plan_for("FROM busybox\nRUN hostname\n", &amd64(), &o);
    let e = exec(&g.stages[0].steps[0]);
    assert_eq!(e.hostname.as_deref(), Some("foo"));
    // Unset: not in the serialized op, so cache keys do not change.
    let g = plan_for("FROM busybox\nRUN hostname\n", &amd64(), &opts());
    let e = exec(&g.stages[0].steps[0]);
    assert_eq!(e.hostname, None);
    assert!(!serde_json::to_string(e).unwrap().contains("\"hostname\":"));
}

// RUN --network / --security need buildx's entitlements (`--allow`), and
// the build's `--network` is the default of steps that name none.
#[test]
fn network_and_security_modes_need_entitlements() {
    let src = "FROM scratch\nRUN --network=host true\n";
    let e = plan_source(src, &amd64(), &opts(), &mut OfflineResolver).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("Dockerfile:2") && text.contains("--allow network.host"),
        "{text}"
    );

    let mut allowed = opts();
    allowed.allow = Entitlements::parse(&["network.host,security.insecure"]).unwrap();
    let g = plan_for(
        "FROM scratch\nRUN --network=host --security=insecure true\nRUN true\n",
        &amd64(),
        &allowed,
    );
    let steps = &g.stages[0].steps;
    let run = exec(&steps[steps.len() - 2]);
    assert_eq!((run.network, run.insecure), (Network::Host, true));
    assert_eq!(exec(&steps[steps.len() - 1]).network, Network::Default);
    assert_eq!(g.entitlements, allowed.allow);

    let src = "FROM scratch\nRUN --security=insecure true\n";
    let e = plan_source(src, &amd64(), &opts(), &mut OfflineResolver).unwrap_err();
    assert!(e.to_string().contains("--allow security.insecure"), "{e}");

    let e = plan_source(
        "FROM scratch\nRUN --network=bridge true\n",
        &amd64(),
        &opts(),
        &mut OfflineResolver,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unsupported network mode"), "{e}");

    // The build's --network: none applies to every step that names none;
    // host needs the entitlement there too.
    let mut none = opts();
    none.network = Network::parse("none").unwrap();
    let g = plan_for(
        "FROM scratch\nRUN true\nRUN --network=default true\n",
        &amd64(),
        &none,
    );
    for step in g.stages[0]
        .steps
        .iter()
        .filter(|s| matches!(s.op, Op::Exec(_)))
    {
        assert_eq!(exec(step).network, Network::None);
    }
    let mut host = opts();
    host.network = Network::Host;
    assert!(plan_source(
        "FROM scratch\nRUN true\n",
        &amd64(),
        &host,
        &mut OfflineResolver
    )
    .is_err());
    assert!(Entitlements::parse(&["device"]).is_err());
    assert!(Network::parse("bridge").is_err());
}

/// BuildKit's Dockerfile frontend (`dockerfile2llb`, the `[stage i/n]`
/// prefix): an image FROM and RUN/COPY/ADD/WORKDIR take numbers, metadata
/// instructions none, FROM scratch or a stage none; titles are the
/// instructions as written, before expansion.
#[test]
fn progress_numbering_counts_filesystem_steps_only() {
    let src = "FROM busybox AS build\n\
               ARG TARGETOS=linux\n\
               ENV GREETING=hi PATH=/opt/bin:$PATH\n\
               WORKDIR /src\n\
               USER 0\n\
               COPY a /a\n\
               EXPOSE 80\n\
               RUN echo $GREETING \\\n  done\n\
               LABEL x=y\n\
               CMD [\"sh\"]\n\
               FROM build AS derived\n\
               RUN true\n\
               FROM scratch\n\
               COPY --from=derived /a /a\n";
    let g = plan_for(src, &amd64(), &opts());
    let build = &g.stages[0];
    let n = build.numbers();
    assert_eq!(n.from, Some(1));
    assert_eq!(n.total, 4);
    assert_eq!(
        n.steps,
        [
            None,
            None,
            Some(2),
            None,
            Some(3),
            None,
            Some(4),
            None,
            None
        ]
    );
    assert_eq!(build.step_label(0), "[build 1/4] FROM busybox AS build");
    assert_eq!(
        build.step_label(2),
        "[build] ENV GREETING=hi PATH=/opt/bin:$PATH"
    );
    assert_eq!(build.step_label(3), "[build 2/4] WORKDIR /src");
    assert_eq!(build.step_label(1), "[build] ARG TARGETOS=linux");
    assert!(build
        .step_label(7)
        .starts_with("[build 4/4] RUN echo $GREETING"));
    // Keys still see the expanded text.
    assert!(
        build.steps[1].text.contains("/opt/bin:"),
        "{}",
        build.steps[1].text
    );
    assert!(!build.steps[1].text.contains("$PATH"));

    let stage = |name: &str| {
        g.stages
            .iter()
            .find(|s| s.display_name() == name)
            .unwrap_or_else(|| panic!("no stage {name}"))
    };
    let derived = stage("derived").numbers();
    assert_eq!((derived.from, derived.total), (None, 1));
    assert_eq!(stage("derived").step_label(1), "[derived 1/1] RUN true");
    let scratch = stage("stage-2");
    assert_eq!(scratch.numbers().from, None);
    assert_eq!(scratch.step_label(0), "[stage-2] FROM scratch");
    assert_eq!(
        scratch.step_label(1),
        "[stage-2 1/1] COPY --from=derived /a /a"
    );
}

/// As in BuildKit, a repeated stage name is a warning (DuplicateStageName),
/// not an error: the name means the last stage given it so far.
#[test]
fn duplicate_stage_names_mean_the_latest_stage() {
    let src = "FROM scratch AS a\nENV X=1\nFROM scratch AS a\nENV X=2\nFROM a\n";
    let g = plan_source(src, &amd64(), &opts(), &mut OfflineResolver).unwrap();
    let last = g.stages.last().unwrap();
    let dump = format!("{:?}", last.base);
    let k: usize = dump
        .trim_start_matches("Stage(")
        .trim_end_matches(')')
        .parse()
        .expect("based on a stage");
    // Dockerfile stage 1 is the second `a` (stage 0 is the first).
    assert_eq!(g.stages[k].dockerfile_index, 1, "{:?}", g.stages);
}
