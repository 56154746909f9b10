//! Turning the license strings package databases hold into SPDX license
//! expressions: known SPDX ids are kept (case fixed), common names and
//! Debian short names are mapped, and anything else becomes a
//! `LicenseRef-…` whose original text the document carries.

/// SPDX license ids that package databases commonly name.
const SPDX_IDS: &[&str] = &[
    "0BSD",
    "AFL-2.1",
    "AFL-3.0",
    "AGPL-1.0-only",
    "AGPL-1.0-or-later",
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "Apache-1.0",
    "Apache-1.1",
    "Apache-2.0",
    "APSL-2.0",
    "Artistic-1.0",
    "Artistic-1.0-Perl",
    "Artistic-2.0",
    "Beerware",
    "BlueOak-1.0.0",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-2-Clause-Patent",
    "BSD-3-Clause",
    "BSD-3-Clause-Clear",
    "BSD-4-Clause",
    "BSD-Source-Code",
    "BSL-1.0",
    "bzip2-1.0.6",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    "CDDL-1.0",
    "CDDL-1.1",
    "curl",
    "ECL-2.0",
    "EPL-1.0",
    "EPL-2.0",
    "EUPL-1.1",
    "EUPL-1.2",
    "FSFAP",
    "FSFUL",
    "FSFULLR",
    "FTL",
    "GFDL-1.1-only",
    "GFDL-1.1-or-later",
    "GFDL-1.2-only",
    "GFDL-1.2-or-later",
    "GFDL-1.3-only",
    "GFDL-1.3-or-later",
    "GPL-1.0-only",
    "GPL-1.0-or-later",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "HPND",
    "ICU",
    "IJG",
    "ISC",
    "LGPL-2.0-only",
    "LGPL-2.0-or-later",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "Libpng",
    "libtiff",
    "MIT",
    "MIT-0",
    "MIT-CMU",
    "MPL-1.0",
    "MPL-1.1",
    "MPL-2.0",
    "NCSA",
    "OFL-1.1",
    "OLDAP-2.8",
    "OpenSSL",
    "PHP-3.01",
    "PostgreSQL",
    "PSF-2.0",
    "Python-2.0",
    "Python-2.0.1",
    "Ruby",
    "Sleepycat",
    "SSPL-1.0",
    "TCL",
    "Unicode-3.0",
    "Unicode-DFS-2015",
    "Unicode-DFS-2016",
    "Unlicense",
    "UPL-1.0",
    "Vim",
    "W3C",
    "WTFPL",
    "X11",
    "Zlib",
    "zlib-acknowledgement",
    "ZPL-2.0",
    "ZPL-2.1",
];

/// SPDX license exception ids (after `WITH`).
const SPDX_EXCEPTIONS: &[&str] = &[
    "Autoconf-exception-2.0",
    "Autoconf-exception-3.0",
    "Bison-exception-2.2",
    "Classpath-exception-2.0",
    "GCC-exception-2.0",
    "GCC-exception-3.1",
    "LLVM-exception",
    "Qt-GPL-exception-1.0",
    "Qt-LGPL-exception-1.1",
    "WxWindows-exception-3.1",
    "Font-exception-2.0",
    "Libtool-exception",
];

/// Names that are not SPDX ids but mean one (lowercase key).
const ALIASES: &[(&str, &str)] = &[
    // Debian copyright-format short names.
    ("expat", "MIT"),
    ("artistic", "Artistic-1.0-Perl"),
    ("psf-2", "PSF-2.0"),
    ("zope-2.1", "ZPL-2.1"),
    ("gpl", "GPL-1.0-or-later"),
    ("lgpl", "LGPL-2.0-or-later"),
    ("bsd-2-clause-freebsd", "BSD-2-Clause"),
    // Common free-text names (Python `License:`, classifiers, npm).
    ("mit license", "MIT"),
    ("the mit license", "MIT"),
    ("mit/x11", "MIT"),
    ("bsd license", "BSD-3-Clause"),
    ("new bsd license", "BSD-3-Clause"),
    ("bsd-3", "BSD-3-Clause"),
    ("3-clause bsd", "BSD-3-Clause"),
    ("simplified bsd", "BSD-2-Clause"),
    ("apache", "Apache-2.0"),
    ("apache 2", "Apache-2.0"),
    ("apache 2.0", "Apache-2.0"),
    ("apache-2", "Apache-2.0"),
    ("apache license 2.0", "Apache-2.0"),
    ("apache license, version 2.0", "Apache-2.0"),
    ("apache license version 2.0", "Apache-2.0"),
    ("apache software license", "Apache-2.0"),
    ("apache software license 2.0", "Apache-2.0"),
    ("isc license", "ISC"),
    ("isc license (iscl)", "ISC"),
    ("mozilla public license 2.0 (mpl 2.0)", "MPL-2.0"),
    ("python software foundation license", "PSF-2.0"),
    ("psf", "PSF-2.0"),
    ("psf license", "PSF-2.0"),
    ("the unlicense (unlicense)", "Unlicense"),
    ("public domain", "LicenseRef-public-domain"),
    ("public-domain", "LicenseRef-public-domain"),
    ("gnu general public license v2 (gplv2)", "GPL-2.0-only"),
    ("gnu general public license v3 (gplv3)", "GPL-3.0-only"),
    (
        "gnu general public license v2 or later (gplv2+)",
        "GPL-2.0-or-later",
    ),
    (
        "gnu general public license v3 or later (gplv3+)",
        "GPL-3.0-or-later",
    ),
    (
        "gnu lesser general public license v2 or later (lgplv2+)",
        "LGPL-2.0-or-later",
    ),
    (
        "gnu lesser general public license v3 (lgplv3)",
        "LGPL-3.0-only",
    ),
    (
        "gnu lesser general public license v3 or later (lgplv3+)",
        "LGPL-3.0-or-later",
    ),
    (
        "gnu library or lesser general public license (lgpl)",
        "LGPL-2.0-or-later",
    ),
    ("gplv2", "GPL-2.0-only"),
    ("gplv2+", "GPL-2.0-or-later"),
    ("gplv3", "GPL-3.0-only"),
    ("gplv3+", "GPL-3.0-or-later"),
    ("lgplv2+", "LGPL-2.0-or-later"),
    ("lgplv3+", "LGPL-3.0-or-later"),
];

/// An SPDX license expression, and the `LicenseRef-…` ids it uses with the
/// original text each stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    /// The expression.
    pub expression: String,
    /// `(LicenseRef id, original text)` pairs.
    pub refs: Vec<(String, String)>,
}

fn lookup(token: &str) -> Option<String> {
    let lower = token.to_ascii_lowercase();
    if let Some(id) = SPDX_IDS.iter().find(|i| i.eq_ignore_ascii_case(token)) {
        return Some(id.to_string());
    }
    if let Some((_, id)) = ALIASES.iter().find(|(k, _)| *k == lower) {
        return Some(id.to_string());
    }
    // Debian short names: GPL-2, GPL-2+, LGPL-2.1+, GFDL-1.3+, AGPL-3,
    // and SPDX's deprecated GPL-2.0 / GPL-2.0+ forms.
    let (base, plus) = match lower.strip_suffix('+') {
        Some(b) => (b, true),
        None => (lower.as_str(), false),
    };
    for fam in ["agpl", "lgpl", "gpl", "gfdl"] {
        if let Some(ver) = base.strip_prefix(fam).and_then(|r| r.strip_prefix('-')) {
            let ver = ver.strip_suffix("-only").unwrap_or(ver);
            let ver = if ver.contains('.') {
                ver.to_string()
            } else {
                format!("{ver}.0")
            };
            let cand = format!(
                "{}-{ver}-{}",
                fam.to_ascii_uppercase(),
                if plus { "or-later" } else { "only" }
            );
            if let Some(id) = SPDX_IDS.iter().find(|i| i.eq_ignore_ascii_case(&cand)) {
                return Some(id.to_string());
            }
        }
    }
    if plus {
        // `MPL-1.1+`: the SPDX `+` operator on a known id.
        if let Some(id) = SPDX_IDS.iter().find(|i| i.eq_ignore_ascii_case(base)) {
            return Some(format!("{id}+"));
        }
    }
    if token.starts_with("LicenseRef-") && valid_idstring(&token["LicenseRef-".len()..]) {
        return Some(token.to_string());
    }
    None
}

fn valid_idstring(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A `LicenseRef-` id for free text: its letters and digits, and a short
/// hash so that different texts never share an id.
pub fn license_ref(text: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let mut slug: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while slug.contains("--") {
        slug = slug.replace("--", "-");
    }
    let slug = slug.trim_matches('-');
    let slug: String = slug.chars().take(40).collect();
    let h = hex::encode(&Sha256::digest(text.as_bytes())[..4]);
    if slug.is_empty() {
        format!("LicenseRef-{h}")
    } else {
        format!("LicenseRef-{}-{h}", slug.trim_end_matches('-'))
    }
}

fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' | ')' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Try to read `s` as an expression of known ids joined by AND / OR / WITH
/// (any case, `and`/`or` as Debian writes them; `, ` and `/` are not
/// accepted). `None` when any part is unknown.
fn as_expression(s: &str) -> Option<String> {
    let toks = tokens(s);
    if toks.is_empty() {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    let mut expect_license = true;
    let mut after_with = false;
    let mut depth = 0i32;
    for t in &toks {
        let up = t.to_ascii_uppercase();
        match up.as_str() {
            "(" if expect_license => {
                depth += 1;
                out.push("(".into());
            }
            ")" if !expect_license && depth > 0 => {
                depth -= 1;
                out.push(")".into());
            }
            "AND" | "OR" if !expect_license => {
                out.push(up);
                expect_license = true;
            }
            "WITH" if !expect_license => {
                out.push(up);
                expect_license = true;
                after_with = true;
            }
            _ if expect_license && after_with => {
                // Debian writes "with OpenSSL exception".
                let id = SPDX_EXCEPTIONS
                    .iter()
                    .find(|e| e.eq_ignore_ascii_case(t))
                    .or_else(|| {
                        SPDX_EXCEPTIONS
                            .iter()
                            .find(|e| e.eq_ignore_ascii_case(&format!("{t}-exception")))
                    })?;
                out.push(id.to_string());
                expect_license = false;
                after_with = false;
            }
            _ if expect_license => {
                out.push(lookup(t)?);
                expect_license = false;
            }
            // Debian's trailing word: "GPL-2+ with OpenSSL exception".
            "EXCEPTION" if out.len() >= 2 && out[out.len() - 2] == "WITH" => {}
            _ => return None,
        }
    }
    if expect_license || depth != 0 {
        return None;
    }
    let mut s = String::new();
    for (i, t) in out.iter().enumerate() {
        if i > 0 && t != ")" && out[i - 1] != "(" {
            s.push(' ');
        }
        s.push_str(t);
    }
    Some(s)
}

/// Normalize one license string: a whole-string alias, an expression of
/// known ids, or else a `LicenseRef-` for the text.
pub fn normalize(text: &str) -> Option<Expression> {
    let t = text.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("UNKNOWN") || t.eq_ignore_ascii_case("NOASSERTION") {
        return None;
    }
    if let Some(id) = lookup(t) {
        return Some(with_refs(id, t));
    }
    if let Some(e) = as_expression(t) {
        return Some(with_refs(e, t));
    }
    let id = license_ref(t);
    Some(Expression {
        expression: id.clone(),
        refs: vec![(id, t.to_string())],
    })
}

/// Record the original text for `LicenseRef-public-domain`-style aliases.
fn with_refs(expression: String, original: &str) -> Expression {
    let refs = tokens(&expression)
        .into_iter()
        .filter(|t| t.starts_with("LicenseRef-"))
        .map(|t| (t, original.to_string()))
        .collect();
    Expression { expression, refs }
}

/// Join several license strings (one per copyright paragraph, say) with
/// AND, parenthesizing compound parts; duplicates are dropped.
pub fn all_of<'a>(texts: impl IntoIterator<Item = &'a str>) -> Option<Expression> {
    let mut parts: Vec<String> = Vec::new();
    let mut refs: Vec<(String, String)> = Vec::new();
    for t in texts {
        let Some(e) = normalize(t) else { continue };
        let p = if e.expression.contains(' ') {
            format!("({})", e.expression)
        } else {
            e.expression
        };
        if !parts.contains(&p) {
            parts.push(p);
        }
        for r in e.refs {
            if !refs.iter().any(|x| x.0 == r.0) {
                refs.push(r);
            }
        }
    }
    match parts.len() {
        0 => None,
        1 => Some(Expression {
            expression: parts[0]
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or(&parts[0])
                .to_string(),
            refs,
        }),
        _ => Some(Expression {
            expression: parts.join(" AND "),
            refs,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s).unwrap().expression
    }

    #[test]
    fn ids_aliases_and_debian_names() {
        assert_eq!(n("mit"), "MIT");
        assert_eq!(n("Apache License, Version 2.0"), "Apache-2.0");
        assert_eq!(n("GPL-2+"), "GPL-2.0-or-later");
        assert_eq!(n("GPL-2"), "GPL-2.0-only");
        assert_eq!(n("LGPL-2.1+"), "LGPL-2.1-or-later");
        assert_eq!(n("GPL-2.0+"), "GPL-2.0-or-later");
        assert_eq!(n("Expat"), "MIT");
        assert_eq!(n("MPL-1.1+"), "MPL-1.1+");
        assert_eq!(
            n("GPL-2+ or Artistic"),
            "GPL-2.0-or-later OR Artistic-1.0-Perl"
        );
        assert_eq!(
            n("(MIT OR Apache-2.0) AND BSD-3-Clause"),
            "(MIT OR Apache-2.0) AND BSD-3-Clause"
        );
        assert_eq!(
            n("GPL-2+ with Classpath-exception-2.0"),
            "GPL-2.0-or-later WITH Classpath-exception-2.0"
        );
        assert_eq!(
            n("GPL-3+ with autoconf-exception-3.0"),
            "GPL-3.0-or-later WITH Autoconf-exception-3.0"
        );
        // Not an SPDX exception: the whole text becomes a LicenseRef.
        assert!(n("GPL-2+ with OpenSSL exception").starts_with("LicenseRef-GPL-2-with-OpenSSL"));
        assert!(normalize("UNKNOWN").is_none());
        assert!(normalize("  ").is_none());
    }

    #[test]
    fn free_text_becomes_license_ref() {
        let e = normalize("Copyright (c) Someone, all rights reserved").unwrap();
        assert!(
            e.expression.starts_with("LicenseRef-Copyright-c-Someone"),
            "{e:?}"
        );
        assert_eq!(e.refs.len(), 1);
        assert_eq!(e.refs[0].1, "Copyright (c) Someone, all rights reserved");
        let pd = normalize("public-domain").unwrap();
        assert_eq!(pd.expression, "LicenseRef-public-domain");
        assert_eq!(pd.refs[0].0, "LicenseRef-public-domain");
        // Unbalanced or dangling expressions are text, not expressions.
        assert!(n("MIT OR").starts_with("LicenseRef-"));
        assert!(n("(MIT").starts_with("LicenseRef-"));
    }

    #[test]
    fn joined() {
        let e = all_of(["GPL-2+", "GPL-2+ or Artistic", "BSD-3-clause", "GPL-2+"]).unwrap();
        assert_eq!(
            e.expression,
            "GPL-2.0-or-later AND (GPL-2.0-or-later OR Artistic-1.0-Perl) AND BSD-3-Clause"
        );
        assert_eq!(all_of(["MIT or Expat"]).unwrap().expression, "MIT OR MIT");
        assert!(all_of(Vec::<&str>::new()).is_none());
    }
}
