//! Device provisioning (seed CN102004977A): manufacturing intake, the
//! genuine-device check, original keys and the init package, customer
//! registration with maker-checker review, and PSAM/ESAM binding.
//!
//! # Layout
//! Empty until the provisioning issue lands; it will build on `keyward-kms`
//! (`Kms::init_package`, the key hierarchy) and `keyward-ca` (device
//! certificates).
