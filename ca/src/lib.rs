//! Keyward's certificate authority: a root and an issuing CA whose private
//! keys live in the HSM, issuing device, server-TLS, operator and
//! load-permit certificates, with revocation, CRLs and OCSP.
//!
//! # Layout
//! Empty until the CA issue lands; it will sign only through `keyward-kms`
//! (no private key ever leaves the HSM) and use `rcgen` and `x509-parser`,
//! which no other crate may depend on.
