//! `xbuild-testbed base-context DIR [ARCH...]`: write the busybox base
//! image's build context (used by `scripts/demo.sh` and `scripts/bench.sh`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("base-context") if args.len() >= 2 => {
            let dir = PathBuf::from(&args[1]);
            let arches: Vec<&str> = if args.len() > 2 {
                args[2..].iter().map(String::as_str).collect()
            } else {
                vec!["amd64", "arm64"]
            };
            match xbuild_testbed::write_base_context(&dir, &arches) {
                Ok(()) => {
                    println!("{}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xbuild-testbed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: xbuild-testbed base-context DIR [ARCH...]");
            ExitCode::from(2)
        }
    }
}
