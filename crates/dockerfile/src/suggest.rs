//! "did you mean ...?" hints for misspelt names (instructions, flags,
//! mount keys and types, stage names), chosen the way BuildKit chooses
//! them: the closest option by Levenshtein distance, if it is closer than 3
//! edits, and nothing when the value is itself an option.

/// The option closest to `value` (less than 3 edits away), or `None` when
/// none is close or `value` is one of `options`. Without `case_sensitive`
/// the comparison ignores case and the answer follows `value`'s case when it
/// is all lower or all upper case.
pub fn suggest<S: AsRef<str>>(value: &str, options: &[S], case_sensitive: bool) -> Option<String> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let v = fold(value);
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let o = fold(opt.as_ref());
        if o == v {
            return None;
        }
        let d = distance(&v, &o);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                o
            } else {
                match_case(&o, value)
            });
        }
    }
    best
}

/// ` (did you mean X?)` for a suggestion, else the empty string.
pub fn hint<S: AsRef<str>>(value: &str, options: &[S], case_sensitive: bool) -> String {
    suggest(value, options, case_sensitive)
        .map(|m| format!(" (did you mean {m}?)"))
        .unwrap_or_default()
}

fn match_case(option: &str, original: &str) -> String {
    if original == original.to_lowercase() {
        option.to_lowercase()
    } else if original == original.to_uppercase() {
        option.to_uppercase()
    } else {
        option.to_string()
    }
}

/// Levenshtein distance over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_suggestions() {
        let kws = ["from", "run", "entrypoint", "copy"];
        assert_eq!(
            suggest("FNTRYPOINT", &kws, false).as_deref(),
            Some("ENTRYPOINT")
        );
        assert_eq!(
            suggest("mont", &["mount", "network"], true).as_deref(),
            Some("mount")
        );
        assert_eq!(
            suggest("typ", &["type", "target"], true).as_deref(),
            Some("type")
        );
        assert_eq!(
            suggest("tmp", &["bind", "cache", "tmpfs"], true).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            suggest("bulid", &["build", "base"], false).as_deref(),
            Some("build")
        );
        // Exact matches and far values give nothing.
        assert_eq!(suggest("run", &kws, false), None);
        assert_eq!(suggest("xyzzy", &kws, false), None);
        assert_eq!(hint("bulid", &["build"], false), " (did you mean build?)");
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
