//! `.dockerignore` files and paths: the first line of the input is the
//! path, the rest is the ignore file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xbuild_dockerfile::ignore::{read_ignore_file, PatternMatcher};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, rest) = text.split_once('\n').unwrap_or((text, ""));
    let patterns = read_ignore_file(rest);
    if let Ok(pm) = PatternMatcher::new(&patterns) {
        let _ = pm.matches_or_parent_matches(path);
        let _ = pm.matches_or_parent_matches(path);
    }
});
