//! The sandbox init helper used by the engine's tests (`init_program`).

fn main() {
    xbuild_sandbox::init_main()
}
