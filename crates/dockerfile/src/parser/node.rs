//! Turning one joined instruction line into a [`Node`]: the per-keyword
//! argument rules of BuildKit's dispatch table.

use super::json::{parse_json_args, JsonArgs};
use super::words::{is_ascii_space, parse_words, split2_token_ws, split_command, split_token_ws};
use crate::ast::{Node, Span};

const NOT_STRINGS: &str =
    "invalid JSON array: when using the JSON (exec) form, every element must be a string, e.g. [\"executable\", \"param1\"]";

const CHAINED_ONBUILD: &str =
    "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed: expected an instruction other than ONBUILD after ONBUILD";

fn empty_node(keyword: String, flags: Vec<String>, original: &str) -> Node {
    Node {
        keyword,
        flags,
        args: Vec::new(),
        json: false,
        onbuild: None,
        heredocs: Vec::new(),
        original: original.to_string(),
        span: Span::default(),
    }
}

/// Parse one instruction line (continuations already joined, heredoc bodies
/// not included). `nested` is true for the instruction inside `ONBUILD`.
/// The span is left for the caller to fill in.
pub(crate) fn node_from_line(line: &str, escape: char, nested: bool) -> Result<Node, String> {
    let sc = split_command(line);
    let rest = sc.args;
    let mut node = empty_node(sc.keyword, sc.flags, line);
    match node.keyword.as_str() {
        "add" | "copy" | "volume" => maybe_json_to_list(&mut node, rest)?,
        "cmd" | "entrypoint" | "run" | "shell" => maybe_json(&mut node, rest)?,
        "arg" => node.args = parse_words(rest, escape),
        "env" => name_val(&mut node, rest, "ENV", escape)?,
        "label" => name_val(&mut node, rest, "LABEL", escape)?,
        "expose" | "from" => {
            if !rest.is_empty() {
                node.args = split_token_ws(rest);
            }
        }
        "healthcheck" => health(&mut node, rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if !rest.is_empty() {
                node.args.push(rest.to_string());
            }
        }
        "onbuild" => {
            if nested {
                return Err(CHAINED_ONBUILD.into());
            }
            if !rest.is_empty() {
                let inner_kw = split_command(rest).keyword;
                match inner_kw.as_str() {
                    "onbuild" => return Err(CHAINED_ONBUILD.into()),
                    "from" | "maintainer" => {
                        return Err(format!(
                            "{} isn't allowed as an ONBUILD trigger: expected an instruction such as RUN, COPY or ENV",
                            inner_kw.to_uppercase()
                        ))
                    }
                    _ => {}
                }
                node.onbuild = Some(Box::new(node_from_line(rest, escape, true)?));
            }
        }
        // Unknown instruction: kept with its whole argument text (the typed
        // layer rejects it with a proper message).
        _ => node.args.push(rest.to_string()),
    }
    Ok(node)
}

/// RUN, CMD, ENTRYPOINT, SHELL: JSON array, or the whole text as one argument.
fn maybe_json(node: &mut Node, rest: &str) -> Result<(), String> {
    if rest.is_empty() {
        return Ok(());
    }
    match parse_json_args(rest) {
        JsonArgs::Strings(v) => {
            node.args = v;
            node.json = true;
        }
        JsonArgs::NotStrings => return Err(NOT_STRINGS.into()),
        JsonArgs::NotJson => node.args.push(rest.to_string()),
    }
    Ok(())
}

/// COPY, ADD, VOLUME: JSON array, or whitespace-separated words.
fn maybe_json_to_list(node: &mut Node, rest: &str) -> Result<(), String> {
    match parse_json_args(rest) {
        JsonArgs::Strings(v) => {
            node.args = v;
            node.json = true;
        }
        JsonArgs::NotStrings => return Err(NOT_STRINGS.into()),
        JsonArgs::NotJson => {
            if !rest.is_empty() {
                node.args = split_token_ws(rest);
            }
        }
    }
    Ok(())
}

/// ENV and LABEL: `name value sep` triples.
fn name_val(node: &mut Node, rest: &str, key: &str, escape: char) -> Result<(), String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(());
    };
    if !first.contains('=') {
        // Legacy form: `ENV name value with spaces`.
        let (name, value) = split2_token_ws(rest);
        let Some(value) = value else {
            return Err(format!(
                "{key} must have two arguments: expected `{key} {name}=value` or `{key} {name} value`"
            ));
        };
        node.args = vec![name.to_string(), value.to_string(), String::new()];
        return Ok(());
    }
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(format!(
                "{key}: can't find = in {word:?}: expected name=value (quote values that contain spaces)"
            ));
        };
        if name.is_empty() {
            return Err(format!(
                "{key} names can not be blank: expected name=value, got {word:?}"
            ));
        }
        node.args
            .extend([name.to_string(), value.to_string(), "=".to_string()]);
    }
    Ok(())
}

/// HEALTHCHECK: bare, or a type word (`CMD`, `NONE`, ...) followed by the
/// command in JSON or shell form.
fn health(node: &mut Node, rest: &str) -> Result<(), String> {
    let sep = rest.find(is_ascii_space).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(());
    }
    let typ = &rest[..sep];
    let cmd = rest[sep..].trim_start_matches(is_ascii_space);
    node.args.push(typ.to_string());
    let mut tail = empty_node(String::new(), Vec::new(), "");
    maybe_json(&mut tail, cmd)?;
    node.args.extend(tail.args);
    node.json = tail.json;
    Ok(())
}
