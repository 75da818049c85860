//! AFL++ entry point of the `confirmation` target (see the crate's documentation).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::confirmation(data));
}
