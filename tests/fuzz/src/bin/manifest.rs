//! AFL++ entry point of the `manifest` target (see the crate's documentation).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::manifest(data));
}
