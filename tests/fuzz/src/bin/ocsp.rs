//! AFL++ entry point of the `ocsp` target (see the crate's documentation).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::ocsp(data));
}
