//! AFL++ entry point of the `load` target (see the crate's documentation).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::load(data));
}
