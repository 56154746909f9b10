//! `imagetools inspect --format`: a small evaluator for the Go-template
//! forms pipelines use with buildx — `{{json X}}` and `{{X}}` where X is `.`
//! or a field path such as `.Manifest.Digest` or `.Image.Config.Labels` —
//! around literal text. Anything else (pipelines, `index`, `range`, `if`,
//! functions other than `json`) is refused with a clear error rather than
//! guessed at.
//!
//! The data is the same as buildx's: `.Name` (the name as given),
//! `.Manifest` (for an image manifest its descriptor; for an index the
//! index with its digest and size), `.Image` (the image config; for an index
//! of several platforms a map from platform to config), `.Provenance` and
//! `.SBOM` (the attestations, by platform). Field names are Go's
//! (`.Manifest.MediaType`) and are looked up in the JSON documents by their
//! JSON spelling. `json` prints indented JSON with Go's escaping of `<`, `>`
//! and `&`.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A field path (empty = `.`), printed as JSON or as a scalar.
    Value {
        path: Vec<String>,
        json: bool,
    },
}

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

fn parse_path(s: &str, whole: &str) -> Result<Vec<String>> {
    if s == "." {
        return Ok(Vec::new());
    }
    let Some(rest) = s.strip_prefix('.') else {
        bail!(unsupported(whole));
    };
    let mut out = Vec::new();
    for part in rest.split('.') {
        let ok = part
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            bail!(unsupported(whole));
        }
        out.push(part.to_string());
    }
    Ok(out)
}

fn unsupported(action: &str) -> String {
    format!(
        "unsupported template action {{{{{action}}}}}: xbuild's --format understands \
         {{{{.Field.Path}}}}, {{{{json .Field.Path}}}} and {{{{json .}}}}"
    )
}

impl Template {
    /// Parse a template.
    pub fn parse(src: &str) -> Result<Template> {
        let mut pieces = Vec::new();
        let mut rest = src;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| anyhow!("template {src:?}: unclosed action"))?;
            let action = after[..close].trim();
            let words: Vec<&str> = action.split_whitespace().collect();
            let piece = match words.as_slice() {
                ["json", arg] => Piece::Value {
                    path: parse_path(arg, action)?,
                    json: true,
                },
                [arg] => Piece::Value {
                    path: parse_path(arg, action)?,
                    json: false,
                },
                _ => bail!(unsupported(action)),
            };
            pieces.push(piece);
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            bail!("template {src:?}: unexpected \"}}}}\"");
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// True for exactly `{{.Manifest}}` (buildx prints its default view then).
    pub fn is_whole_manifest(&self) -> bool {
        let v: Vec<&Piece> = self
            .pieces
            .iter()
            .filter(|p| !matches!(p, Piece::Text(t) if t.trim().is_empty()))
            .collect();
        matches!(v.as_slice(), [Piece::Value { path, json: false }] if path == &["Manifest"])
    }

    /// Render against `data` (whose keys are JSON spellings).
    pub fn render(&self, data: &Value) -> Result<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Value { path, json } => {
                    let v = lookup(data, path)?;
                    if *json {
                        out.push_str(&go_json(v)?);
                    } else {
                        match v {
                            Value::String(s) => out.push_str(s),
                            Value::Number(n) => out.push_str(&n.to_string()),
                            Value::Bool(b) => out.push_str(&b.to_string()),
                            Value::Null => out.push_str("<no value>"),
                            _ => bail!(
                                "{{{{.{}}}}} is a structure; print it with {{{{json .{}}}}}",
                                path.join("."),
                                path.join(".")
                            ),
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Find a Go field name among JSON keys: exact, then first letter lowered
/// (`MediaType` → `mediaType`), then ignoring case (`OS` → `os`, `RootFS` →
/// `rootfs`).
fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = obj.get(name) {
        return Some(v);
    }
    let mut c = name.chars();
    let lowered: String = match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    };
    if let Some(v) = obj.get(&lowered) {
        return Some(v);
    }
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn lookup<'a>(data: &'a Value, path: &[String]) -> Result<&'a Value> {
    let mut cur = data;
    for (i, name) in path.iter().enumerate() {
        cur = match cur {
            Value::Object(o) => match field(o, name) {
                Some(v) => v,
                // Optional fields that are absent print as Go's zero value.
                None if i + 1 == path.len() => &Value::Null,
                None => bail!("can't evaluate field {name} in .{}", path[..i].join(".")),
            },
            _ => bail!(
                "can't evaluate field {name}: .{} is not a structure",
                path[..i].join(".")
            ),
        };
    }
    Ok(cur)
}

/// `json.MarshalIndent(v, "", "  ")` as Go writes it, including its HTML
/// escaping of `<`, `>` and `&` (which only occur inside strings).
pub fn go_json(v: &Value) -> Result<String> {
    let s = serde_json::to_string_pretty(v)?;
    Ok(s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Value {
        json!({
            "name": "localhost:5000/app:1",
            "manifest": {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": "sha256:abc",
                "size": 123,
                "manifests": [],
                "annotations": {"a": "<b>&"}
            },
            "image": {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"org.opencontainers.image.title": "t"}},
                "rootfs": {"type": "layers", "diff_ids": []}
            }
        })
    }

    #[test]
    fn common_pipeline_templates() {
        let d = data();
        let t = |s: &str| Template::parse(s).unwrap().render(&d).unwrap();
        assert_eq!(t("{{.Name}}"), "localhost:5000/app:1");
        assert_eq!(t("{{.Manifest.Digest}}"), "sha256:abc");
        assert_eq!(
            t("{{ .Manifest.MediaType }}"),
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            t("size={{.Manifest.Size}} os={{.Image.OS}}"),
            "size=123 os=linux"
        );
        assert_eq!(t("{{.Image.RootFS.Type}}"), "layers");
        let m: Value = serde_json::from_str(&t("{{json .Manifest}}")).unwrap();
        assert_eq!(m, d["manifest"]);
        assert!(t("{{json .Manifest}}").contains("\\u003cb\\u003e\\u0026"));
        assert!(t("{{json .Manifest}}").contains("\n  \"digest\""));
        let all: Value = serde_json::from_str(&t("{{json .}}")).unwrap();
        assert_eq!(all, d);
        let labels: Value = serde_json::from_str(&t("{{json .Image.Config.Labels}}")).unwrap();
        assert_eq!(labels["org.opencontainers.image.title"], "t");
        assert_eq!(t("{{.Image.Variant}}"), "<no value>");
    }

    #[test]
    fn whole_manifest_form() {
        assert!(Template::parse("{{.Manifest}}")
            .unwrap()
            .is_whole_manifest());
        assert!(Template::parse(" {{ .Manifest }} ")
            .unwrap()
            .is_whole_manifest());
        assert!(!Template::parse("{{json .Manifest}}")
            .unwrap()
            .is_whole_manifest());
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "{{range .Manifest.Manifests}}x{{end}}",
            "{{index .Image \"linux/amd64\"}}",
            "{{.Name | printf \"%s\"}}",
            "{{json}}",
            "{{Name}}",
            "{{.Name",
            "{{.a-b}}",
            "x}}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        let d = data();
        let t = Template::parse("{{.Image.Config}}").unwrap();
        assert!(t.render(&d).unwrap_err().to_string().contains("json"));
        let t = Template::parse("{{.Nope.Deeper}}").unwrap();
        assert!(t.render(&d).is_err());
        let t = Template::parse("{{.Name.Deeper}}").unwrap();
        assert!(t.render(&d).is_err());
    }
}
