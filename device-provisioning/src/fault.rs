//! Fault points at provisioning's durable steps, for keyward-server's crash
//! tests (its `fault` module lists and arms every point). They compile to
//! nothing without the feature `faults`, which only the test build turns
//! on; with it, a point calls the hook the server set when it armed points.

/// What a point reached calls: set once, by the server arming its points.
#[cfg(feature = "faults")]
pub static HOOK: std::sync::OnceLock<fn(&'static str)> = std::sync::OnceLock::new();

/// Marks a fault point (named in keyward-server's `fault::POINTS`).
macro_rules! fault_point {
    ($name:literal) => {{
        #[cfg(feature = "faults")]
        if let Some(hit) = $crate::fault::HOOK.get() {
            hit($name);
        }
    }};
}
pub(crate) use fault_point;
