//! AFL++ entry point of the `bulk_binary` target (see the crate's documentation).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::bulk_binary(data));
}
