//! Word expansion on arbitrary words, with and without field splitting.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use xbuild_dockerfile::shell::Lexer;

fuzz_target!(|data: &[u8]| {
    let Ok(word) = std::str::from_utf8(data) else {
        return;
    };
    let mut env = BTreeMap::new();
    env.insert("PWD".to_string(), "/home".to_string());
    env.insert("KOREAN".to_string(), "한국어".to_string());
    env.insert("NULL".to_string(), String::new());
    env.insert("LIST".to_string(), "a b  c".to_string());
    for escape in ['\\', '`'] {
        let lexer = Lexer::new(escape);
        let _ = lexer.process_word(word, &env);
        let _ = lexer.process_words(word, &env);
        let _ = lexer.process_word_with_matches(word, &env);
    }
});
