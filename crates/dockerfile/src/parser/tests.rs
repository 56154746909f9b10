//! Unit tests of the parser (the BuildKit corpus runs in
//! `tests/conformance_parser.rs`).

use super::*;
use crate::dump::dump;

fn p(src: &str) -> Document {
    parse(src, "Dockerfile").unwrap_or_else(|e| panic!("{e}"))
}

fn perr(src: &str) -> ParseError {
    match parse(src, "Dockerfile") {
        Ok(doc) => panic!("expected an error, got:\n{}", dump(&doc)),
        Err(e) => e,
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn from_platform_as() {
    let doc = p("FROM --platform=$BUILDPLATFORM golang AS build\n");
    let n = &doc.nodes[0];
    assert_eq!(n.keyword, "from");
    assert_eq!(n.flags, strs(&["--platform=$BUILDPLATFORM"]));
    assert_eq!(n.args, strs(&["golang", "AS", "build"]));
    assert_eq!(n.original, "FROM --platform=$BUILDPLATFORM golang AS build");
    assert_eq!(
        dump(&doc),
        "(from [\"--platform=$BUILDPLATFORM\"] \"golang\" \"AS\" \"build\")\n"
    );
}

#[test]
fn shell_stopsignal_maintainer() {
    let doc = p("FROM a\nSHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]\nSHELL powershell -Command\nSTOPSIGNAL  SIGKILL \nMAINTAINER Jane Doe <jane@example.com>\n");
    let n = &doc.nodes;
    assert_eq!(
        (n[1].args.clone(), n[1].json),
        (strs(&["/bin/bash", "-o", "pipefail", "-c"]), true)
    );
    assert_eq!(
        (n[2].args.clone(), n[2].json),
        (strs(&["powershell -Command"]), false)
    );
    assert_eq!(n[3].args, strs(&["SIGKILL"]));
    assert_eq!(n[4].args, strs(&["Jane Doe <jane@example.com>"]));
    assert_eq!(n[4].keyword, "maintainer");
}

#[test]
fn healthcheck_none_and_flags() {
    let doc = p("HEALTHCHECK NONE\nHEALTHCHECK --interval=5s --start-interval=1s CMD [\"curl\", \"-f\", \"x\"]\nHEALTHCHECK\n");
    let n = &doc.nodes;
    assert_eq!(n[0].args, strs(&["NONE"]));
    assert!(n[0].flags.is_empty());
    assert_eq!(n[1].flags, strs(&["--interval=5s", "--start-interval=1s"]));
    assert_eq!(n[1].args, strs(&["CMD", "curl", "-f", "x"]));
    assert!(n[1].json);
    assert!(n[2].args.is_empty());
}

#[test]
fn unknown_flags_kept() {
    let doc = p("RUN --mount=type=cache,target=/root/.cache --frobnicate --security=insecure -- echo hi\nCOPY --chown=\"app user\" --link --parents --exclude=*.tmp a b\nFROBNICATE --x=1 some  args\n");
    let n = &doc.nodes;
    assert_eq!(
        n[0].flags,
        strs(&[
            "--mount=type=cache,target=/root/.cache",
            "--frobnicate",
            "--security=insecure"
        ])
    );
    assert_eq!(n[0].args, strs(&["echo hi"]));
    // Quotes in flags are removed, as BuildKit does.
    assert_eq!(
        n[1].flags,
        strs(&["--chown=app user", "--link", "--parents", "--exclude=*.tmp"])
    );
    assert_eq!(n[1].args, strs(&["a", "b"]));
    assert_eq!(n[2].keyword, "frobnicate");
    assert_eq!(n[2].flags, strs(&["--x=1"]));
    assert_eq!(n[2].args, strs(&["some  args"]));
}

#[test]
fn error_location_and_display() {
    let e = perr("FROM a\n\n   ENV PATH\n");
    assert_eq!((e.line, e.column), (3, 4));
    assert!(
        e.message.contains("ENV must have two arguments"),
        "{}",
        e.message
    );
    assert!(e
        .to_string()
        .starts_with("Dockerfile:3:4: ENV must have two arguments"));

    let e = perr("FROM a\nENV a=1 =2\n");
    assert_eq!(e.line, 2);
    assert!(
        e.message.contains("ENV names can not be blank"),
        "{}",
        e.message
    );

    let e = perr("FROM a\nLABEL a=1 b\n");
    assert!(e.message.contains("can't find = in \"b\""), "{}", e.message);

    let e = perr("FROM a\nRUN [\"a\", 1]\n");
    assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
    assert_eq!(e.line, 2);

    // Error in a continued instruction is reported at its first line.
    let e = perr("FROM a\nCMD [\"a\", \\\n  [\"b\"]]\n");
    assert_eq!(e.line, 2);

    let e = perr("");
    assert_eq!((e.line, e.column), (1, 1));
    assert!(e.message.starts_with("file with no instructions"));
    let e = perr("# a\n\n# b\n");
    assert_eq!(e.line, 3);
    assert!(e.message.starts_with("file with no instructions"));
}

#[test]
fn onbuild_rules() {
    let doc = p("ONBUILD RUN echo hi\nONBUILD\n");
    let inner = doc.nodes[0].onbuild.as_ref().expect("nested");
    assert_eq!(inner.keyword, "run");
    assert_eq!(inner.args, strs(&["echo hi"]));
    assert_eq!(inner.original, "RUN echo hi");
    assert!(doc.nodes[0].args.is_empty());
    assert!(doc.nodes[1].onbuild.is_none());
    for bad in [
        "ONBUILD ONBUILD RUN x\n",
        "ONBUILD FROM x\n",
        "onbuild maintainer me\n",
    ] {
        let e = perr(bad);
        assert!(e.message.contains("ONBUILD"), "{bad:?}: {}", e.message);
    }
}

#[test]
fn crlf_and_bom() {
    let doc = p("\u{feff}# syntax=docker/dockerfile:1\r\nFROM a\r\nRUN echo a \\\r\n  b\r\n\r\nCOPY <<EOF /x\r\nhi\r\nEOF\r\n");
    assert_eq!(
        doc.directives.syntax.as_deref(),
        Some("docker/dockerfile:1")
    );
    assert_eq!(
        dump(&doc),
        "(from \"a\")\n(run \"echo a   b\")\n(copy \"<<EOF\" \"/x\")\n"
    );
    assert_eq!(doc.nodes[1].span, Span::new(3, 4));
    // Heredoc bodies are kept byte for byte, as in BuildKit.
    assert_eq!(doc.nodes[2].heredocs[0].content, "hi\r\n");
    assert_eq!(doc.nodes[2].span, Span::new(6, 8));
    assert_eq!(doc.span, Span::new(2, 8));
}

#[test]
fn backtick_escape() {
    let doc = p("# escape=`\nFROM mcr.microsoft.com/windows\nRUN dir c:\\ `\n  && echo hi\nENV A=c:\\dir B=x` y\n");
    assert_eq!(doc.directives.escape, '`');
    assert_eq!(doc.nodes[1].args, strs(&["dir c:\\   && echo hi"]));
    assert_eq!(
        doc.nodes[2].args,
        strs(&["A", "c:\\dir", "=", "B", "x` y", "="])
    );
    // A backslash at the end of a line is not a continuation here.
    let doc = p("#escape=`\nRUN a \\\nRUN b\n");
    assert_eq!(doc.nodes.len(), 2);
}

#[test]
fn directives() {
    let doc = p("# Syntax = docker/dockerfile:1.7\n#CHECK=skip=JSONArgsRecommended;error=true\n#escape=\\\nFROM a\n");
    assert_eq!(
        doc.directives.syntax.as_deref(),
        Some("docker/dockerfile:1.7")
    );
    assert_eq!(
        doc.directives.check.as_deref(),
        Some("skip=JSONArgsRecommended;error=true")
    );
    assert_eq!(doc.directives.escape, '\\');

    let e = perr("# escape=`\n# ESCAPE=\\\nFROM a\n");
    assert_eq!(e.line, 2);
    assert!(
        e.message.contains("only one escape parser directive"),
        "{}",
        e.message
    );

    let e = perr("# escape=x\nFROM a\n");
    assert!(e.message.contains("invalid escape token"), "{}", e.message);

    // After a blank line, an instruction or another comment, directives are plain comments.
    for src in [
        "\n# escape=`\nFROM a\n",
        "FROM a\n# escape=`\n",
        "# hi\n# escape=`\nFROM a\n",
        "# foo=bar\n# escape=`\nFROM a\n",
    ] {
        assert_eq!(p(src).directives.escape, '\\', "{src:?}");
    }
    // A repeat after directives ended is only a comment.
    assert_eq!(
        p("# escape=`\n\n# escape=\\\nFROM a\n").directives.escape,
        '`'
    );
}

#[test]
fn continuations() {
    let doc = p("FROM a\nRUN a \\\n# comment\n\n  \\\n  b \\\n\t\n");
    assert_eq!(doc.nodes[1].args, strs(&["a     b"]));
    assert_eq!(doc.nodes[1].span, Span::new(2, 7));
    assert_eq!(doc.warnings.len(), 1);
    assert_eq!(doc.warnings[0].rule, "NoEmptyContinuation");
    assert_eq!(doc.warnings[0].line, 4);
    // Escaped escape at end of line is not a continuation.
    let doc = p("ENV A=b\\\\\nENV C=d\n");
    assert_eq!(doc.nodes.len(), 2);
    assert!(doc.warnings.is_empty());
}

#[test]
fn heredoc_copy_and_several_per_run() {
    let doc = p("FROM a\nCOPY <<EOF /dst\nline 1\n\n# not a comment\nEOF\nRUN <<A cat - <<-\"B\" > /f\nfrom a\nA\n\tfrom b\n\tB\nENV X=1\n");
    let copy = &doc.nodes[1];
    assert_eq!(copy.args, strs(&["<<EOF", "/dst"]));
    assert_eq!(copy.original, "COPY <<EOF /dst");
    assert_eq!(copy.span, Span::new(2, 6));
    assert_eq!(copy.heredocs.len(), 1);
    assert_eq!(copy.heredocs[0].content, "line 1\n\n# not a comment\n");
    assert!(copy.heredocs[0].expand);

    let run = &doc.nodes[2];
    assert_eq!(run.span, Span::new(7, 11));
    let names: Vec<_> = run
        .heredocs
        .iter()
        .map(|h| (h.name.as_str(), h.chomp, h.expand))
        .collect();
    assert_eq!(names, [("A", false, true), ("B", true, false)]);
    assert_eq!(run.heredocs[0].content, "from a\n");
    assert_eq!(run.heredocs[1].content, "\tfrom b\n");
    assert_eq!(chomp_heredoc_content(&run.heredocs[1].content), "from b\n");
    assert_eq!(doc.nodes[3].span, Span::new(12, 12));
    assert_eq!(doc.span, Span::new(1, 12));
}

#[test]
fn heredoc_edge_cases() {
    // Terminator without final newline; fd; quoted delimiter; heredoc after continuation.
    let doc = p("RUN 3<<'EOF' \\\n  cat\n$HOME\nEOF");
    let h = &doc.nodes[0].heredocs[0];
    assert_eq!(
        (h.name.as_str(), h.file_descriptor, h.expand),
        ("EOF", 3, false)
    );
    assert_eq!(h.content, "$HOME\n");
    assert_eq!(doc.nodes[0].span, Span::new(1, 4));

    // `<<-` lets the terminator be indented with tabs, but not with spaces.
    let e = perr("RUN <<-EOF\n\techo\n  EOF\n");
    assert_eq!(e.line, 1);
    assert!(
        e.message
            .contains("unterminated heredoc <<-EOF started at line 1: expected a line \"EOF\""),
        "{}",
        e.message
    );
    let e = perr("FROM a\n\nRUN <<EOF\nEOF \n");
    assert_eq!(e.line, 3);
    assert!(
        e.message
            .starts_with("unterminated heredoc <<EOF started at line 3"),
        "{}",
        e.message
    );

    // JSON form, other instructions and quoted words have no heredocs.
    let doc = p("RUN [\"<<EOF\"]\nUSER <<EOF\nRUN echo '<<EOF'\nCMD <<EOF\n");
    assert!(doc.nodes.iter().all(|n| n.heredocs.is_empty()));
    assert_eq!(doc.nodes.len(), 4);

    // ONBUILD: the heredocs are on the ONBUILD node and on its nested node.
    let doc = p("ONBUILD RUN <<EOF\necho hi\nEOF\n");
    assert_eq!(doc.nodes[0].heredocs.len(), 1);
    assert_eq!(
        doc.nodes[0].onbuild.as_ref().unwrap().heredocs,
        doc.nodes[0].heredocs
    );
    assert_eq!(doc.nodes[0].onbuild.as_ref().unwrap().span, Span::new(1, 3));

    // An invalid delimiter is an error; an unterminated quote in the line is not a heredoc.
    assert!(parse_heredoc("<<'EOF").is_err());
    assert_eq!(p("RUN cat <<\"EOF\nRUN x\n").nodes.len(), 2);
    assert!(heredocs_from_line("RUN <<${a:-${b:-${c}}} x").len() == 1);
    let deep = format!("RUN <<X {}", "${a:-".repeat(1000));
    assert!(heredocs_from_line(&deep).is_empty());
}

#[test]
fn heredoc_helpers() {
    let h = parse_heredoc("<<-\"EO\"F").unwrap().unwrap();
    assert_eq!((h.name.as_str(), h.chomp, h.expand), ("EOF", true, false));
    assert_eq!(parse_heredoc("12<<X").unwrap().unwrap().file_descriptor, 12);
    assert_eq!(parse_heredoc("<<EOF sh").unwrap(), None);
    let names: Vec<_> = heredocs_from_line("COPY --chmod=755 <<a.sh <<- b.txt /dst/")
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names, ["a.sh", "b.txt"]);
    assert_eq!(chomp_heredoc_content("\t\ta\n b\n\tc"), "a\n b\nc");
}

#[test]
fn arg_env_label_forms() {
    let doc = p("ARG A B=\"x y\" C\nENV A 1 2  3\nENV A=\"x y\" B='z'\nLABEL \"k k\"=v\nENV\n");
    let n = &doc.nodes;
    assert_eq!(n[0].args, strs(&["A", "B=\"x y\"", "C"]));
    assert_eq!(n[1].args, strs(&["A", "1 2  3", ""]));
    assert_eq!(n[2].args, strs(&["A", "\"x y\"", "=", "B", "'z'", "="]));
    assert_eq!(n[3].args, strs(&["\"k k\"", "v", "="]));
    assert!(n[4].args.is_empty());
}

#[test]
fn large_inputs_are_linear() {
    // 100k continuation lines.
    let mut src = String::from("RUN a \\\n");
    for _ in 0..100_000 {
        src.push_str("  && b \\\n");
    }
    src.push_str("  && c\n");
    let doc = p(&src);
    assert_eq!(doc.nodes[0].span, Span::new(1, 100_002));

    // Very long single lines, a huge JSON array and deep nesting.
    let long = format!(
        "FROM a\nRUN {}\nCMD [{}\"x\"]\nRUN [{}]\n",
        "x".repeat(2_000_000),
        "\"a\",".repeat(200_000),
        "[".repeat(100_000)
    );
    let doc = p(&long);
    assert_eq!(doc.nodes[2].args.len(), 200_001);
    assert!(!doc.nodes[3].json);

    // Many small instructions.
    let many = "RUN echo hi\n".repeat(200_000);
    assert_eq!(p(&many).nodes.len(), 200_000);
}

#[test]
fn never_panics_on_noise() {
    const PIECES: &[&str] = &[
        "RUN ",
        "COPY ",
        "ADD ",
        "ENV ",
        "LABEL ",
        "ARG ",
        "ONBUILD ",
        "HEALTHCHECK ",
        "CMD ",
        "FROM ",
        "X ",
        "<<",
        "<<-",
        "EOF",
        "\n",
        "\r\n",
        "\\",
        "`",
        "# escape=`",
        "#",
        " ",
        "\t",
        "\"",
        "'",
        "[",
        "]",
        ",",
        "=",
        "$",
        "{",
        "}",
        ":",
        "-",
        "--",
        "--f=",
        "é",
        "\u{0}",
        "\u{a0}",
        "3",
        "/",
        "NONE",
        "\u{feff}",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let mut s = String::new();
        for _ in 0..len {
            s.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        if let Ok(doc) = parse(&s, "fuzz") {
            let _ = dump(&doc);
            assert!(doc.span.start_line <= doc.span.end_line);
        }
        for w in s.split('\n') {
            let _ = parse_heredoc(w);
            let _ = heredocs_from_line(w);
        }
    }
}
