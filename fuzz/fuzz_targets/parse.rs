//! Any text through the whole frontend: parse, type, plan (offline) and
//! check. None of it may panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xbuild_oci::Platform;
use xbuild_plan::{check, OfflineResolver, PlanOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opts = PlanOptions::new("Dockerfile");
    let amd64 = Platform::parse("linux/amd64").unwrap();
    if let Ok(doc) = xbuild_dockerfile::parse(text, "Dockerfile") {
        let _ = xbuild_dockerfile::dump::dump(&doc);
        let _ = xbuild_dockerfile::instructions::check_document(&doc, "Dockerfile");
    }
    let _ = xbuild_plan::plan_source(text, &amd64, &opts, &mut OfflineResolver);
    let _ = check::check_source(text, &opts, &[amd64]);
});
