//! AFL++ entry point of the `csr` target (see the crate's documentation).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::csr(data));
}
