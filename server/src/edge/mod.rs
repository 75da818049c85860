//! The edge: where a connection becomes a request. Both TLS listeners and
//! their connection handling ([`serve`]), the HSM-backed rustls key and
//! client verification ([`tls`]), the server certificate and the CRL reload
//! ([`pki`]), the client certificate read into a [`identity::ClientIdentity`]
//! ([`identity`]), and what a replica opens and recovers before it listens
//! ([`startup`]). Everything behind it sees requests, never sockets or
//! certificates.

pub mod identity;
pub mod pki;
pub mod serve;
pub mod startup;
pub mod tls;
