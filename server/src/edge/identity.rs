//! Who is on the other end of a TLS connection, read once after the handshake
//! from the verified client certificate and put in every request's extensions.
//!
//! The TLS verifier has already checked the chain to the Keyward root and the
//! CRL; this only reads the subject. Operator certificates carry their role in
//! the subject OU (`admin`, `operator`, `auditor`); service certificates OU
//! `service` and their name in CN; device certificates carry the device id
//! in CN and `serialNumber`.

use std::net::SocketAddr;

use keyward_ca::Role;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::audit::Actor;

/// X.520 `serialNumber` attribute (2.5.4.5).
const OID_SERIAL_NUMBER: &str = "2.5.4.5";

/// The peer of one connection.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub peer: SocketAddr,
    pub cert: Option<PeerCertificate>,
}

/// What the verified client certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Serial number, upper-case hex without separators.
    pub serial: String,
    pub common_name: String,
    pub kind: CertKind,
    /// Unix seconds.
    pub not_after: i64,
}

/// The kinds of client the listeners know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    /// An operator certificate with a known role in its OU.
    Operator(Role),
    /// A device certificate (serialNumber = device id).
    Device { device_id: String },
    /// A back-end system (OU `service`, CN = name): only the bulk MAC route
    /// admits it.
    Service { name: String },
    /// Anything else the CA signed (server, load-permit, an OU that is not a role).
    Other,
}

impl PeerCertificate {
    /// Parses a DER certificate the TLS layer has verified.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            attr.as_str().ok().map(str::to_owned)
        };
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(text)
            .unwrap_or_default();
        let ous: Vec<String> = subject
            .iter_organizational_unit()
            .filter_map(text)
            .collect();
        let device_serial = subject
            .iter_attributes()
            .find(|a| a.attr_type().to_id_string() == OID_SERIAL_NUMBER)
            .and_then(text);
        let kind = match (ous.as_slice(), device_serial) {
            ([ou], None) if ou == keyward_ca::SERVICE_OU => CertKind::Service {
                name: common_name.clone(),
            },
            ([ou], None) => match ou.parse::<Role>() {
                Ok(role) => CertKind::Operator(role),
                Err(_) => CertKind::Other,
            },
            ([], Some(id)) if id == common_name => CertKind::Device { device_id: id },
            _ => CertKind::Other,
        };
        Some(Self {
            serial: hex::encode_upper(cert.raw_serial()),
            common_name,
            kind,
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    pub fn role(&self) -> Option<Role> {
        match self.kind {
            CertKind::Operator(r) => Some(r),
            _ => None,
        }
    }
}

impl ClientIdentity {
    /// Reads the end-entity certificate of a finished handshake.
    pub fn from_peer_certs(
        peer: SocketAddr,
        certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    ) -> Self {
        let cert = certs
            .and_then(|c| c.first())
            .and_then(|c| PeerCertificate::from_der(c.as_ref()));
        Self { peer, cert }
    }

    /// The audit actor for this peer.
    pub fn actor(&self) -> Actor {
        match &self.cert {
            None => Actor::Anonymous,
            Some(c) => Actor::Certificate {
                kind: match c.kind {
                    CertKind::Operator(_) => "operator",
                    CertKind::Device { .. } => "device",
                    CertKind::Service { .. } => "service",
                    CertKind::Other => "certificate",
                },
                name: c.common_name.clone(),
                serial: c.serial.clone(),
            },
        }
    }
}
