//! TLS for the listeners and the clients: rustls with the ring provider.
//!
//! The broker's side is one [`ServerTls`]: the certificate and key (reloaded from their
//! files on SIGHUP, see [`ServerTls::reload`]), the client certificate policy (mTLS), and
//! which listeners encrypt. Every shard and both HTTP threads share it; a reload swaps the
//! certificate for handshakes that start afterwards, and connections already open keep
//! theirs. The clients' side is [`ClientTls`]: the CA to trust, and optionally a client
//! certificate.
//!
//! A verified client certificate names its connection's user: the subject's common name
//! (`CN=alice,O=…` is the user `alice`, as `--sasl-user alice` would be). See
//! docs/SECURITY.md.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// A TLS setting that cannot be used, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct TlsError {
    what: String,
    message: String,
}

impl TlsError {
    fn new(what: impl Into<String>, message: impl fmt::Display) -> TlsError {
        TlsError {
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// The crypto provider every config here is built with: ring's. rustls marks it
/// deprecated because ring has no post-quantum key exchange (X25519MLKEM768); the
/// aws-lc-rs provider has, at the price of a C toolchain build. docs/SECURITY.md says so.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order (a chain: the end entity first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = || format!("certificate file {}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new(what(), e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(what(), e))?;
    if certs.is_empty() {
        return Err(TlsError::new(what(), "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::new(format!("key file {}", path.display()), e))
}

/// A trust store of every certificate in a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::new(format!("CA file {}", path.display()), e))?;
    }
    Ok(roots)
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    CertifiedKey::from_der(chain, key_der, &provider())
        .map(Arc::new)
        .map_err(|e| {
            TlsError::new(
                format!(
                    "--tls-cert {} with --tls-key {}",
                    cert.display(),
                    key.display()
                ),
                e,
            )
        })
}

/// Whether the broker asks its TLS clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates (Kafka's `ssl.client.auth=none`).
    None,
    /// A client may present one; if it does, it must verify (`requested`).
    Requested,
    /// Every client must present a certificate that verifies (`required`).
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ClientAuth::None),
            "requested" => Ok(ClientAuth::Requested),
            "required" => Ok(ClientAuth::Required),
            other => Err(format!(
                "`{other}` is not a client certificate policy: none, requested or required"
            )),
        }
    }
}

/// Which listeners speak TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsListeners {
    /// The native listeners (shared port and direct ports).
    pub native: bool,
    /// The Kafka listener.
    pub kafka: bool,
    /// The HTTP API and console.
    pub http: bool,
    /// The Prometheus `/metrics` listener.
    pub metrics: bool,
}

impl TlsListeners {
    /// Parses a comma-separated list of `native`, `kafka`, `http`, `metrics` (or `all`).
    pub fn parse(list: &str) -> Result<TlsListeners, String> {
        let mut out = TlsListeners {
            native: false,
            kafka: false,
            http: false,
            metrics: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "native" => out.native = true,
                "kafka" => out.kafka = true,
                "http" => out.http = true,
                "metrics" => out.metrics = true,
                "all" => {
                    out = TlsListeners {
                        native: true,
                        kafka: true,
                        http: true,
                        metrics: true,
                    };
                }
                other => {
                    return Err(format!(
                        "`{other}` is not a listener: native, kafka, http, metrics or all"
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// The files and policies `eventflowd`'s `--tls-*` flags name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain (PEM, end entity first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CAs that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Whether clients are asked for certificates.
    pub client_auth: ClientAuth,
    /// Which listeners encrypt.
    pub listeners: TlsListeners,
}

/// The broker's TLS: one per process, shared by every listener that encrypts.
pub struct ServerTls {
    settings: TlsSettings,
    cert: Arc<ReloadableCert>,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate, key and client CAs, and checks that they go together.
    pub fn new(settings: TlsSettings) -> Result<ServerTls, TlsError> {
        let cert = Arc::new(ReloadableCert {
            current: RwLock::new(certified_key(&settings.cert, &settings.key)?),
        });
        let builder =
            ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions();
        let builder = builder.map_err(|e| TlsError::new("TLS versions", e))?;
        let builder = match (&settings.client_ca, settings.client_auth) {
            (_, ClientAuth::None) => builder.with_no_client_auth(),
            (None, _) => {
                return Err(TlsError::new(
                    "--tls-client-auth",
                    "asking clients for certificates needs --tls-client-ca",
                ))
            }
            (Some(ca), policy) => {
                let roots = Arc::new(load_roots(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier = match policy {
                    ClientAuth::Requested => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::new(format!("--tls-client-ca {}", ca.display()), e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = Arc::new(builder.with_cert_resolver(cert.clone()));
        Ok(ServerTls {
            settings,
            cert,
            config,
        })
    }

    /// The rustls configuration every accepted connection starts from.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Which listeners encrypt.
    pub fn listeners(&self) -> TlsListeners {
        self.settings.listeners
    }

    /// The settings this was built from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Reads the certificate and key files again; handshakes from now on use them. On an
    /// error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = certified_key(&self.settings.cert, &self.settings.key)?;
        *self
            .cert
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The end-entity certificate served now.
    pub fn current_certificate(&self) -> CertificateDer<'static> {
        self.cert.current().cert[0].clone()
    }

    /// A client configuration that trusts exactly the certificate this broker serves at
    /// the time of each handshake: for the broker's own clients of its listeners (the
    /// HTTP API's connections to the native listener), which need no CA file.
    pub fn own_client(self: &Arc<Self>) -> ClientTls {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedToOwn {
                broker: self.clone(),
                schemes: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth();
        ClientTls {
            config: Arc::new(config),
        }
    }
}

/// The certificate handshakes use, swapped by [`ServerTls::reload`].
struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadableCert")
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Trusts the one certificate its broker serves, checked byte for byte, with the
/// handshake's signature verified against it.
#[derive(Debug)]
struct PinnedToOwn {
    broker: Arc<ServerTls>,
    schemes: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedToOwn {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.broker.current_certificate().as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the certificate this broker serves".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.supported_schemes()
    }
}

/// A client's TLS: what it trusts and what it presents.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

/// Two are equal when they are the same configuration (clones of one [`ClientTls`]).
impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for ClientTls {}

impl ClientTls {
    /// Trusts the CAs in the PEM file `ca`; presents the certificate chain and key of
    /// `client_cert` (cert file, key file) when the broker asks for one.
    pub fn new(ca: &Path, client_cert: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let roots = load_roots(ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new("TLS versions", e))?
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| {
                    TlsError::new(
                        format!(
                            "client certificate {} with key {}",
                            cert.display(),
                            key.display()
                        ),
                        e,
                    )
                })?,
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

/// The name a client checks the broker's certificate against: the host part of the
/// address it dialled (a DNS name or an IP address).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::new(format!("server name `{host}`"), e))
}

/// The user a verified client certificate names: its subject's common name (the first
/// CN attribute). None if the certificate has none, or does not parse.
pub fn certificate_user(cert: &CertificateDer<'_>) -> Option<String> {
    let subject = der::subject(cert.as_ref())?;
    der::common_name(subject)
}

/// Just enough DER (X.690) to find a certificate's subject and its common name.
mod der {
    /// The id of the commonName attribute (2.5.4.3).
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

    /// Splits the element at the front of `input`: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[count..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;

    /// The subject Name's contents in a Certificate.
    pub(super) fn subject(cert: &[u8]) -> Option<&[u8]> {
        let (SEQUENCE, certificate, _) = element(cert)? else {
            return None;
        };
        let (SEQUENCE, mut tbs, _) = element(certificate)? else {
            return None;
        };
        // [0] version (optional), serialNumber, signature, issuer, validity, subject.
        if tbs.first() == Some(&0xa0) {
            tbs = element(tbs)?.2;
        }
        for _ in 0..4 {
            tbs = element(tbs)?.2;
        }
        match element(tbs)? {
            (SEQUENCE, subject, _) => Some(subject),
            _ => None,
        }
    }

    /// The first commonName in a Name's contents, as text.
    pub(super) fn common_name(mut name: &[u8]) -> Option<String> {
        while !name.is_empty() {
            let (tag, mut set, rest) = element(name)?;
            name = rest;
            if tag != SET {
                return None;
            }
            while !set.is_empty() {
                let (tag, attribute, rest) = element(set)?;
                set = rest;
                if tag != SEQUENCE {
                    return None;
                }
                let (oid_tag, oid, value) = element(attribute)?;
                if oid_tag == 0x06 && oid == COMMON_NAME {
                    // UTF8String, PrintableString, IA5String, T61String: the bytes as text.
                    let (_, text, _) = element(value)?;
                    return String::from_utf8(text.to_vec()).ok();
                }
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn common_name_of_a_generated_certificate() {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "Eventflow tests");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "alice");
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let subject = subject(cert.der()).expect("a subject");
            assert_eq!(common_name(subject).as_deref(), Some("alice"));
        }

        #[test]
        fn truncated_or_garbage_input_gives_none() {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["x".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let der = cert.der().to_vec();
            for cut in 0..der.len() {
                // Must not panic; a cut certificate may still hold its subject.
                let _ = subject(&der[..cut]).and_then(common_name);
            }
            assert_eq!(subject(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
            assert_eq!(common_name(&[0x31, 0x02, 0x05, 0x00]), None);
        }
    }
}
