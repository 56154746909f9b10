use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn word(w: &str, e: &[(&str, &str)]) -> Result<String, ExpandError> {
    Lexer::new('\\').process_word(w, &env(e))
}

#[test]
fn utf8_everywhere() {
    let e = [("K", "한국어"), ("E", "")];
    assert_eq!(word("안녕$K!", &e).unwrap(), "안녕한국어!");
    assert_eq!(word("${K#한}", &e).unwrap(), "국어");
    assert_eq!(word("${K%어}", &e).unwrap(), "한국");
    assert_eq!(word("${K/국/-}", &e).unwrap(), "한-어");
    assert_eq!(word("${K#?}", &e).unwrap(), "국어");
    assert_eq!(word("${E:-ü}", &e).unwrap(), "ü");
    assert_eq!(word("'é'\\ü", &e).unwrap(), "éü");
    // a leading byte-order mark is skipped, as Go's text/scanner does
    assert_eq!(word("\u{feff}a", &e).unwrap(), "a");
}

#[test]
fn escapes() {
    let e = [("A", "x")];
    assert_eq!(word("\\$A", &e).unwrap(), "$A");
    assert_eq!(word("\"\\$A\"", &e).unwrap(), "$A");
    assert_eq!(word("\"\\a\"", &e).unwrap(), "\\a");
    assert_eq!(word("a\\", &e).unwrap(), "a");
    assert_eq!(word("${A:-\\}}", &e).unwrap(), "x");
    assert_eq!(word("${B:-\\}}", &e).unwrap(), "}");
    let bt = Lexer::new('`');
    assert_eq!(bt.process_word("a`$A\\b", &env(&e)).unwrap(), "a$A\\b");
    let raw = Lexer::new('\\').raw_escapes(true);
    assert_eq!(raw.process_word("a\\$b", &env(&e)).unwrap(), "a\\$b");
}

#[test]
fn modes() {
    let e = env(&[("A", "x")]);
    let skip = Lexer::new('\\').skip_unset_env(true);
    assert_eq!(
        skip.process_word("$A $B ${B} ${B:-d}", &e).unwrap(),
        "x $B ${B} ${B:-d}"
    );
    let rq = Lexer::new('\\').raw_quotes(true);
    assert_eq!(rq.process_word("'a' \"$A\"", &e).unwrap(), "'a' \"x\"");
    let nq = Lexer::new('\\').skip_process_quotes(true);
    assert_eq!(nq.process_word("'$A'", &e).unwrap(), "'x'");
}

#[test]
fn patterns() {
    let e = [("F", "a.b.c"), ("P", "/usr/local/bin")];
    assert_eq!(word("${F#*.}", &e).unwrap(), "b.c");
    assert_eq!(word("${F##*.}", &e).unwrap(), "c");
    assert_eq!(word("${F%.*}", &e).unwrap(), "a.b");
    assert_eq!(word("${F%%.*}", &e).unwrap(), "a");
    assert_eq!(word("${P//\\//:}", &e).unwrap(), ":usr:local:bin");
    assert_eq!(word("${F//./$}", &e).unwrap(), "a$b$c");
    // Go's ReplaceAllString expands $0 in the replacement (the escape is
    // kept raw there, as in BuildKit)
    assert_eq!(word("${F//b/[\\$0]}", &e).unwrap(), "a.[\\b].c");
    assert_eq!(word("${F/b/[\\$0]}", &e).unwrap(), "a.[\\$0].c");
    assert!(matches!(
        word("${F#\\x}", &e),
        Err(ExpandError::InvalidPattern { .. })
    ));
    assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
    assert_eq!(reverse_pattern("ab\\"), "\\ba");
    assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
    assert_eq!(reverse_pattern(""), "");
}

#[test]
fn error_messages() {
    let e = word("${X?}", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "failed to process \"${X?}\": X: is not allowed to be unset"
    );
    assert_eq!(e.word(), "${X?}");
    let e = word("${X:?}", &[("X", "")]).unwrap_err();
    assert!(e.to_string().ends_with("X: is not allowed to be empty"));
    let e = word("${X:=1}", &[]).unwrap_err();
    assert!(
        e.to_string()
            .contains("unsupported modifier (:=) in substitution"),
        "{e}"
    );
    assert!(matches!(
        word("${X", &[]),
        Err(ExpandError::MissingBrace { .. })
    ));
    assert!(matches!(
        word("${X:-a", &[]),
        Err(ExpandError::MissingBrace { .. })
    ));
    assert!(matches!(
        word("${}", &[]),
        Err(ExpandError::BadSubstitution { .. })
    ));
    assert!(matches!(
        word("${X/a", &[]),
        Err(ExpandError::MissingSlash { .. })
    ));
    assert!(matches!(
        word("'a", &[]),
        Err(ExpandError::UnterminatedSingleQuote { .. })
    ));
    assert!(matches!(
        word("\"a", &[]),
        Err(ExpandError::UnterminatedDoubleQuote { .. })
    ));
}

#[test]
fn dollar_edges() {
    assert_eq!(word("$", &[]).unwrap(), "$");
    assert_eq!(word("a$", &[]).unwrap(), "a$");
    assert_eq!(word("$$x", &[]).unwrap(), "x");
    assert_eq!(word("${1}x$@y", &[]).unwrap(), "xy");
    assert_eq!(word("$a_b1-", &[("a_b1", "v")]).unwrap(), "v-");
}

#[test]
fn lookups() {
    let v = vec![
        ("A".to_string(), "1".to_string()),
        ("A".to_string(), "2".to_string()),
    ];
    assert_eq!(Lexer::default().process_word("$A", &v).unwrap(), "2");
    let h: HashMap<String, String> = [("A".to_string(), "3".to_string())].into();
    assert_eq!(Lexer::default().process_word("$A", &h).unwrap(), "3");
    let r = &h;
    assert_eq!(Lexer::default().process_word("$A", &r).unwrap(), "3");
    let m = Lexer::default()
        .process_word_with_matches("${A:-$B}${C+x}", &env(&[("A", ""), ("C", "")]))
        .unwrap();
    assert_eq!(m.value, "x");
    assert_eq!(
        m.matched,
        ["A", "C"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(m.unmatched, ["B"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn words_split() {
    let e = env(&[("S", " a  b ")]);
    let lx = Lexer::default();
    assert_eq!(
        lx.process_words("x${S}y", &e).unwrap(),
        ["x", "a", "b", "y"]
    );
    assert_eq!(lx.process_words("x\"${S}\"y", &e).unwrap(), ["x a  b y"]);
    assert_eq!(lx.process_words("a\\ b c", &e).unwrap(), ["a b", "c"]);
    assert_eq!(lx.process_words("pre${U:-d}", &e).unwrap(), ["pred"]);
    assert_eq!(lx.process_words("", &e).unwrap(), Vec::<String>::new());
    assert_eq!(lx.process_words("'' x", &e).unwrap(), ["x"]);
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = "${a:-".repeat(5000) + &"}".repeat(5000);
    assert!(matches!(word(&deep, &[]), Err(ExpandError::TooDeep { .. })));
    let ok = "${a:-".repeat(127) + "x" + &"}".repeat(127);
    assert_eq!(word(&ok, &[]).unwrap(), "x");
}

#[test]
fn never_panics_on_junk() {
    let pieces = [
        "$", "{", "}", ":", "-", "+", "?", "#", "%", "/", "\\", "'", "\"", "a", "é", "*", "=",
        "$$", "\u{feff}", "\n",
    ];
    let e = env(&[("a", "xé*\n"), ("b", "")]);
    let lexers = [
        Lexer::new('\\'),
        Lexer::new('`'),
        Lexer::new('\\').skip_unset_env(true).raw_quotes(true),
        Lexer::new('\\').raw_escapes(true).skip_process_quotes(true),
    ];
    // All words of up to 4 pieces, plus a pseudo-random sample of longer ones.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut words: Vec<String> = Vec::new();
    for a in pieces {
        for b in pieces {
            for c in ["", "$", "}", "a", "/", "\\"] {
                words.push(format!("{a}{b}{c}"));
                words.push(format!("${{a{a}{b}{c}"));
            }
        }
    }
    for _ in 0..5000 {
        let mut w = String::new();
        for _ in 0..12 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            w.push_str(pieces[(seed % pieces.len() as u64) as usize]);
        }
        words.push(w);
    }
    for w in &words {
        for lx in &lexers {
            let _ = lx.process_word_with_matches(w, &e);
            let _ = lx.process_words(w, &e);
        }
    }
}

#[test]
fn max_depth_fits_a_small_stack() {
    let handle = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(|| {
            for unit in ["${a:-", "\"${a:-", "${a:+${b:-"] {
                let w = unit.repeat(300) + "x";
                let _ = word(&w, &[("b", "")]);
            }
        })
        .unwrap();
    handle.join().unwrap();
}
