//! Frontend subrequest expectations (`expect.call`): instead of building,
//! run `--call METHOD,format=json` (and `--call METHOD` for text) with the
//! build's flags and compare fields of BuildKit's JSON answer, as
//! BuildKit's `dockerfile_targets_test.go`/`dockerfile_outline_test.go`
//! read the subrequest's `result.json`.

use crate::case::CallExpect;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use xbuild_e2e::Xbuild;

/// Run the subrequest and check every field the case lists.
pub fn check(
    xb: &Xbuild,
    ctx: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    want: &CallExpect,
    subst: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let run = |format: &str| {
        xb.command()
            .current_dir(ctx)
            .args(args)
            .args(["--call", &format!("{},format={format}", want.method), "."])
            .envs(env)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("spawn xbuild --call {}: {e}", want.method))
    };
    let out = run("json")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "--call {} failed: {}",
            want.method,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let got: Value = serde_json::from_str(&stdout)
        .map_err(|e| format!("--call {} printed no JSON ({e}): {stdout}", want.method))?;
    check_json(
        &format!("--call {}", want.method),
        &got,
        &want.json,
        &want.json_len,
        subst,
    )?;
    if let Some(text) = &want.text {
        let out = run("text")?;
        let got = String::from_utf8_lossy(&out.stdout);
        let text = subst(text);
        if *got != text {
            return Err(format!(
                "--call {} text differs:\n    got:  {got:?}\n    want: {text:?}",
                want.method
            ));
        }
    }
    Ok(())
}

/// Compare the values at JSON pointers (`null`: absent) and the lengths of
/// arrays or objects; `what` names the document in errors.
pub fn check_json(
    what: &str,
    got: &Value,
    json: &BTreeMap<String, Value>,
    json_len: &BTreeMap<String, usize>,
    subst: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    for (pointer, value) in json {
        let value = subst_value(value, subst);
        let found = got.pointer(pointer);
        let ok = match (&value, found) {
            (Value::Null, None) | (Value::Null, Some(Value::Null)) => true,
            (v, Some(f)) => v == f,
            (_, None) => false,
        };
        if !ok {
            return Err(format!(
                "{what} JSON {pointer}: got {}, BuildKit gives {value}",
                found.map_or("nothing".to_string(), |f| f.to_string())
            ));
        }
    }
    for (pointer, n) in json_len {
        let len = match got.pointer(pointer) {
            Some(Value::Array(a)) => Some(a.len()),
            Some(Value::Object(o)) => Some(o.len()),
            _ => None,
        };
        if len != Some(*n) {
            return Err(format!(
                "{what} JSON {pointer}: {len:?} entries, BuildKit gives {n}"
            ));
        }
    }
    Ok(())
}

/// Placeholders replaced in the strings of an expected JSON value.
pub fn subst_value(v: &Value, subst: &dyn Fn(&str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(subst(s)),
        Value::Array(a) => Value::Array(a.iter().map(|x| subst_value(x, subst)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), subst_value(x, subst)))
                .collect(),
        ),
        other => other.clone(),
    }
}
