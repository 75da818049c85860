//! AFL++ entry point of the `config` target (see the crate's documentation).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::config(data));
}
