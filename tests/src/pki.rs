//! A throwaway certificate authority for the TLS tests: a CA and a
//! certificate for `localhost` / 127.0.0.1 signed by it, made afresh by
//! each test.

use anyhow::Result;

/// A throwaway CA and a certificate for 127.0.0.1 signed by it (PEM; the
/// CA also as DER, for clients that take it so).
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: String,
    pub ca_der: Vec<u8>,
    pub cert: String,
    pub key: String,
}

impl Pki {
    /// A CA named "e2e test CA".
    pub fn generate() -> Result<Pki> {
        Pki::named("e2e test CA")
    }

    /// A CA with the common name `ca_name` (two CAs of one test told
    /// apart by name, as a client sees them).
    pub fn named(ca_name: &str) -> Result<Pki> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Distinct names: OpenSSL (Mosquitto's bridge) takes a leaf whose
        // subject equals its issuer for self-signed and refuses it.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "e2e test broker");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok(Pki {
            ca: ca.pem(),
            ca_der: ca.der().to_vec(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
