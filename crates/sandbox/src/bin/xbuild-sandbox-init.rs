//! The sandbox init helper: started by `LinuxExecutor` for each process.

#[cfg(target_os = "linux")]
fn main() {
    xbuild_sandbox::init_main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    std::process::exit(125)
}
