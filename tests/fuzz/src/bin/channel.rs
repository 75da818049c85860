//! AFL++ entry point of the `channel` target (see the crate's documentation).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::channel(data));
}
