//! TLS for every connection the driver makes (the store's, the notifier's `LISTEN`, an
//! app's own through [`super::connect`]), with libpq's `sslmode` and `sslrootcert` read
//! from the URL. The client crate's own parser takes `sslmode` as disable, prefer or
//! require only and knows no `sslrootcert`, so [`Target::parse`] takes both out of the URL
//! first and gives the client the rest; the verification the client cannot express (a
//! chain without a host name for `verify-ca`, a full check for `verify-full`, none for
//! `prefer` and `require`) is the rustls configuration's.
//!
//! The stack is rustls on the `ring` provider through `tokio-postgres-rustls` (which also
//! gives SCRAM's channel binding): no OpenSSL. Roots come from the `sslrootcert` file, or
//! else, for the verifying modes, from the system's trusted roots (`rustls-native-certs`).

use std::borrow::Cow;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use postgres::config::{Host, SslMode as ClientSslMode};
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres::{Client, Config, NoTls, Socket};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{CertificateFault, TlsProblem};
use crate::target::SslMode;

/// The URL parameters castor reads itself (the client's parser is given the rest).
const SSLMODE: &str = "sslmode";
const SSLROOTCERT: &str = "sslrootcert";

/// libpq's client-certificate and revocation parameters, which castor does not support
/// yet: refused by name rather than as unknown options.
const UNSUPPORTED: [&str; 5] = ["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// `sslrootcert=PATH`: the certificates in that PEM file.
    File(PathBuf),
    /// `sslrootcert=system`, or no `sslrootcert` under a verifying mode: the system's.
    System,
}

impl Roots {
    /// What signed nothing the server sent, for an unknown-issuer message.
    fn describe(&self) -> String {
        match self {
            Roots::File(path) => format!(
                "a certificate authority in sslrootcert={} (give the file holding the CA \
                 that issued the server's certificate)",
                path.display()
            ),
            Roots::System => "any of the system's trusted certificate authorities (for a \
                              server whose certificate a private CA issued, name that CA's \
                              file with sslrootcert=PATH)"
                .to_owned(),
        }
    }
}

/// The TLS parameters taken out of a URL.
#[derive(Debug, Default, PartialEq, Eq)]
struct SslParams {
    mode: Option<SslMode>,
    root_cert: Option<Roots>,
}

/// Splits `url` into the URL the client parses (without `sslmode` and `sslrootcert`) and
/// those two parameters. A URL's query starts at the first `?` after its credentials,
/// as the client's parser reads it; a string that is not a URL is returned as it is.
fn split_url(url: &str) -> Result<(Cow<'_, str>, SslParams), TlsProblem> {
    let mut params = SslParams::default();
    let Some(scheme_end) = url.find("://") else {
        return Ok((Cow::Borrowed(url), params));
    };
    let after_scheme = scheme_end + 3;
    let authority = after_scheme + url[after_scheme..].find('@').map_or(0, |at| at + 1);
    let Some(question) = url[authority..].find('?').map(|q| authority + q) else {
        return Ok((Cow::Borrowed(url), params));
    };
    let mut kept = Vec::new();
    for pair in url[question + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key, key)?;
        let taken = key == SSLMODE || key == SSLROOTCERT || UNSUPPORTED.contains(&&*key);
        if !taken {
            kept.push(pair);
            continue;
        }
        let value = decode(&key, value)?;
        if key == SSLMODE {
            params.mode = Some(SslMode::parse(&value).ok_or_else(|| {
                let reason = if value == "allow" {
                    "castor does not support `allow`; use prefer (TLS when the server offers \
                     it) or disable"
                } else {
                    "castor takes disable, prefer (the default), require, verify-ca or \
                     verify-full"
                };
                setting(&key, &value, reason)
            })?);
        } else if key == SSLROOTCERT {
            params.root_cert = Some(match &*value {
                "" => return Err(setting(&key, &value, "give the path of a PEM file")),
                "system" => Roots::System,
                path => Roots::File(PathBuf::from(path)),
            });
        } else {
            return Err(setting(
                &key,
                &value,
                "castor does not support client certificates or revocation lists yet \
                 (sslcert, sslkey, sslpassword, sslcrl, sslcrldir); remove it",
            ));
        }
    }
    let mut rest = url[..question].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((Cow::Owned(rest), params))
}

/// A URL parameter's key or value, percent-decoded.
fn decode<'a>(key: &str, text: &'a str) -> Result<Cow<'a, str>, TlsProblem> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| setting(key, text, "it is not valid UTF-8 once percent-decoded"))
}

fn setting(parameter: &str, value: &str, reason: &str) -> TlsProblem {
    TlsProblem::Setting {
        parameter: parameter.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A database to connect to: the client's settings and the TLS to use with them.
#[derive(Clone)]
pub(crate) struct Target {
    /// The client's settings (its `ssl_mode` set from [`Target::mode`]).
    pub(crate) config: Config,
    /// The mode the URL asks for (or the default).
    mode: SslMode,
    /// `None` when no connection may use TLS (`disable`, or only Unix sockets).
    connector: Option<Connector>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("mode", &self.mode)
            .field("tls", &self.connector.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a URL could not become a [`Target`].
pub(crate) enum ParseError {
    /// The TLS parameters.
    Tls(TlsProblem),
    /// The client's parser refused the rest.
    Client(postgres::Error),
}

impl Target {
    /// Reads a `postgres://` URL: its TLS parameters here, the rest by the client. The
    /// `sslrootcert` file (or the system's roots) is read now, once.
    pub(crate) fn parse(url: &str) -> Result<Target, ParseError> {
        let (rest, params) = split_url(url).map_err(ParseError::Tls)?;
        let config: Config = rest.parse().map_err(ParseError::Client)?;
        Target::new(config, params).map_err(ParseError::Tls)
    }

    fn new(mut config: Config, params: SslParams) -> Result<Target, TlsProblem> {
        let system = params.root_cert == Some(Roots::System);
        // As libpq: `sslrootcert=system` means verify-full unless said otherwise, and
        // refuses the modes that would not check the name.
        let mode = params.mode.unwrap_or(if system {
            SslMode::VerifyFull
        } else {
            SslMode::Prefer
        });
        if system && mode != SslMode::VerifyFull {
            return Err(setting(
                SSLMODE,
                mode.as_str(),
                "sslrootcert=system trusts every public certificate authority, so only \
                 verify-full (which checks the host name) is safe with it",
            ));
        }
        // A URL giving only addresses (`hostaddr=`) verifies them as the names.
        if config.get_hosts().is_empty() {
            let addresses: Vec<String> = config
                .get_hostaddrs()
                .iter()
                .map(ToString::to_string)
                .collect();
            for address in addresses {
                config.host(&address);
            }
        }
        // The server never offers TLS on a Unix socket: libpq ignores sslmode there.
        let only_sockets = !config.get_hosts().is_empty()
            && config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| !matches!(host, Host::Tcp(_)));
        let effective = if only_sockets { SslMode::Disable } else { mode };
        config.ssl_mode(match effective {
            SslMode::Disable => ClientSslMode::Disable,
            SslMode::Prefer => ClientSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => ClientSslMode::Require,
        });
        let verify = match (effective, params.root_cert) {
            (SslMode::Disable, _) => {
                return Ok(Target {
                    config,
                    mode,
                    connector: None,
                });
            }
            (SslMode::Prefer, _) | (SslMode::Require, None | Some(Roots::System)) => {
                Verify::Nothing
            }
            // libpq: `require` with a root file verifies the chain.
            (SslMode::Require | SslMode::VerifyCa, Some(Roots::File(path))) => {
                Verify::Chain(Roots::File(path))
            }
            (SslMode::VerifyCa, None | Some(Roots::System)) => Verify::Chain(Roots::System),
            (SslMode::VerifyFull, roots) => Verify::Full(roots.unwrap_or(Roots::System)),
        };
        let connector = Connector::new(mode, verify)?;
        Ok(Target {
            config,
            mode,
            connector: Some(connector),
        })
    }

    /// Opens a connection, with TLS as the URL says. Under `prefer`, a handshake that
    /// fails is followed by a connection without TLS, as libpq's.
    pub(crate) fn connect(&self) -> Result<Client, postgres::Error> {
        let Some(connector) = &self.connector else {
            return self.config.connect(NoTls);
        };
        match self.config.connect(connector.clone()) {
            Err(e) if self.mode == SslMode::Prefer && handshake_problem(&e).is_some() => {
                let mut plain = self.config.clone();
                plain.ssl_mode(ClientSslMode::Disable);
                plain.connect(NoTls)
            }
            result => result,
        }
    }

    /// The TLS problem behind a failure to connect, if it was one.
    pub(crate) fn problem(&self, e: &postgres::Error) -> Option<TlsProblem> {
        if let Some(problem) = handshake_problem(e) {
            return Some(problem);
        }
        // The client's own words when the server answers `N` to its TLS request.
        let refused = e.to_string().starts_with("error performing TLS handshake")
            && std::error::Error::source(e)
                .is_some_and(|cause| cause.to_string() == "server does not support TLS");
        refused.then(|| TlsProblem::Refused {
            host: self.hosts(),
            mode: self.mode,
        })
    }

    /// The servers the URL names, as `host:port`, comma-separated.
    fn hosts(&self) -> String {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                    Host::Tcp(name) => format!("{name}:{port}"),
                    Host::Unix(path) => format!("{}:{port}", path.display()),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The TLS problem a handshake of ours failed with, if `e` is one.
fn handshake_problem(e: &postgres::Error) -> Option<TlsProblem> {
    let mut cause = std::error::Error::source(e);
    while let Some(error) = cause {
        if let Some(failed) = error.downcast_ref::<HandshakeFailed>() {
            return Some(failed.0.clone());
        }
        cause = error.source();
    }
    None
}

/// What a connection checks of the server's certificate.
enum Verify {
    /// Nothing (`prefer`, `require`): encryption without authentication, as libpq's.
    Nothing,
    /// Its chain up to a trusted root, whatever name it is issued for (`verify-ca`).
    Chain(Roots),
    /// Its chain and its name (`verify-full`).
    Full(Roots),
}

/// The rustls connector for one [`Target`], which names the server in its errors.
#[derive(Clone)]
struct Connector {
    inner: MakeRustlsConnect,
    mode: SslMode,
    /// The roots a certificate must chain to, for the messages (`None`: not verified).
    roots: Option<Arc<Roots>>,
}

impl Connector {
    fn new(mode: SslMode, verify: Verify) -> Result<Connector, TlsProblem> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| setting(SSLMODE, mode.as_str(), &e.to_string()))?;
        let (verifier, roots): (Arc<dyn ServerCertVerifier>, _) = match verify {
            Verify::Nothing => (Arc::new(AnyCertificate(provider)), None),
            Verify::Chain(roots) => {
                let webpki = webpki(&roots, mode, &provider)?;
                (Arc::new(ChainOnly(webpki)), Some(Arc::new(roots)))
            }
            Verify::Full(roots) => {
                let webpki = webpki(&roots, mode, &provider)?;
                (webpki as Arc<dyn ServerCertVerifier>, Some(Arc::new(roots)))
            }
        };
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // What libpq 17 sends, and what a server taking direct TLS requires.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Connector {
            inner: MakeRustlsConnect::new(config),
            mode,
            roots,
        })
    }
}

/// rustls's verifier of a chain and a name, on the roots given.
fn webpki(
    roots: &Roots,
    mode: SslMode,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsProblem> {
    let store = match roots {
        Roots::File(path) => file_roots(path)?,
        Roots::System => system_roots(mode)?,
    };
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(provider))
        .build()
        .map_err(|e| match roots {
            Roots::File(path) => TlsProblem::RootCert {
                path: path.clone(),
                reason: e.to_string(),
            },
            Roots::System => TlsProblem::SystemRoots {
                mode,
                reason: e.to_string(),
            },
        })
}

/// The certificates of the PEM file `sslrootcert` names.
fn file_roots(path: &Path) -> Result<RootCertStore, TlsProblem> {
    let problem = |reason: String| TlsProblem::RootCert {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        problem(match e.kind() {
            std::io::ErrorKind::NotFound if path.is_relative() => {
                let cwd = std::env::current_dir()
                    .map_or_else(|_| "?".to_owned(), |dir| dir.display().to_string());
                format!(
                    "no such file (a relative path is relative to the working directory, \
                     here {cwd}; give an absolute path)"
                )
            }
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (this user needs to read it)".to_owned()
            }
            _ => e.to_string(),
        })
    })?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| problem(format!("it cannot be read as PEM ({e})")))?;
        store
            .add(cert)
            .map_err(|e| problem(format!("a certificate in it cannot be used ({e})")))?;
    }
    if store.is_empty() {
        return Err(problem(
            "it holds no certificate (a PEM file with -----BEGIN CERTIFICATE----- blocks is \
             expected)"
                .to_owned(),
        ));
    }
    Ok(store)
}

/// The system's trusted roots.
fn system_roots(mode: SslMode) -> Result<RootCertStore, TlsProblem> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let reason = if found.errors.is_empty() {
            "none were found".to_owned()
        } else {
            found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(TlsProblem::SystemRoots { mode, reason });
    }
    Ok(store)
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = HostConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<HostConnect, Self::Error> {
        let inner =
            <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(&mut self.inner, host)?;
        Ok(HostConnect {
            inner,
            host: host.to_owned(),
            mode: self.mode,
            roots: self.roots.clone(),
        })
    }
}

/// The handshake with one server.
pub(crate) struct HostConnect {
    inner: <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect,
    host: String,
    mode: SslMode,
    roots: Option<Arc<Roots>>,
}

/// A failed handshake, as the client's error's cause.
#[derive(Debug)]
pub(crate) struct HandshakeFailed(TlsProblem);

impl std::fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for HandshakeFailed {}

type Handshake = Pin<
    Box<
        dyn Future<Output = Result<<HostConnect as TlsConnect<Socket>>::Stream, HandshakeFailed>>
            + Send,
    >,
>;

impl TlsConnect<Socket> for HostConnect {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type Error = HandshakeFailed;
    type Future = Handshake;

    fn connect(self, stream: Socket) -> Handshake {
        let HostConnect {
            inner,
            host,
            mode,
            roots,
        } = self;
        let handshake = inner.connect(stream);
        Box::pin(async move {
            handshake
                .await
                .map_err(|e| HandshakeFailed(describe(host, mode, roots.as_deref(), &e)))
        })
    }
}

/// A failed handshake in words: which server, and why.
fn describe(host: String, mode: SslMode, roots: Option<&Roots>, e: &std::io::Error) -> TlsProblem {
    let Some(error) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return TlsProblem::Handshake {
            host,
            reason: e.to_string(),
        };
    };
    let rustls::Error::InvalidCertificate(certificate) = error else {
        return TlsProblem::Handshake {
            host,
            reason: error.to_string(),
        };
    };
    let (fault, reason) = match certificate {
        CertificateError::UnknownIssuer => (
            CertificateFault::UnknownIssuer,
            format!(
                "it is not signed by {}",
                roots.map_or_else(|| "a trusted root".to_owned(), Roots::describe)
            ),
        ),
        CertificateError::NotValidForName => (
            CertificateFault::WrongName,
            format!("it is not issued for the name {host} (use the name it is issued for)"),
        ),
        CertificateError::NotValidForNameContext { presented, .. } => (
            CertificateFault::WrongName,
            format!(
                "it is not issued for the name {host} but for {} (connect by one of its \
                 names, or with sslmode=verify-ca, which checks the issuer only)",
                if presented.is_empty() {
                    "no name (it has no subjectAltName)".to_owned()
                } else {
                    presented
                        .iter()
                        .map(|name| plain_name(name))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
            CertificateFault::Expired,
            format!("it has expired ({error})"),
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
            CertificateFault::NotYetValid,
            format!("it is not valid yet ({error}; check this machine's clock)"),
        ),
        CertificateError::Revoked => (CertificateFault::Revoked, "it was revoked".to_owned()),
        _ => (CertificateFault::Other, error.to_string()),
    };
    TlsProblem::Certificate {
        host,
        mode,
        fault,
        reason,
    }
}

/// A name as the verifier reports it (`DnsName("db.example")`, `IpAddress(10.0.0.1)`),
/// without its wrapping.
fn plain_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            name.strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(name)
}

/// Accepts any certificate (`prefer`, `require`), still checking that the server holds
/// its key (the handshake's signatures).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain up to a trusted root but not the name (`verify-ca`): rustls's
/// verifier checks the chain first, so a name error means the chain verified.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, SslParams) {
        let (rest, params) = split_url(url).expect("split");
        (rest.into_owned(), params)
    }

    #[test]
    fn the_tls_parameters_are_taken_out_of_the_url() {
        assert_eq!(
            split("postgres://u:p@db:5432/tasks"),
            (
                "postgres://u:p@db:5432/tasks".to_owned(),
                SslParams::default()
            )
        );
        assert_eq!(
            split(
                "postgres://u@db/tasks?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5"
            ),
            (
                "postgres://u@db/tasks?connect_timeout=5".to_owned(),
                SslParams {
                    mode: Some(SslMode::VerifyFull),
                    root_cert: Some(Roots::File("/etc/ca.pem".into())),
                }
            )
        );
        assert_eq!(
            split("postgresql://db/tasks?sslrootcert=system"),
            (
                "postgresql://db/tasks".to_owned(),
                SslParams {
                    mode: None,
                    root_cert: Some(Roots::System),
                }
            )
        );
        // A `?` in the password is not the query's start; the last of a repeated
        // parameter wins, as in the client's parser.
        assert_eq!(
            split("postgres://u:p?w@db/t?sslmode=require&sslmode=verify-ca"),
            (
                "postgres://u:p?w@db/t".to_owned(),
                SslParams {
                    mode: Some(SslMode::VerifyCa),
                    root_cert: None,
                }
            )
        );
    }

    #[test]
    fn tls_parameters_castor_does_not_take_are_named() {
        for (url, parameter, says) in [
            (
                "postgres://db/t?sslmode=verify-fuller",
                "sslmode",
                "verify-full",
            ),
            (
                "postgres://db/t?sslmode=allow",
                "sslmode",
                "does not support `allow`",
            ),
            ("postgres://db/t?sslrootcert=", "sslrootcert", "path"),
            (
                "postgres://db/t?sslcert=c.pem",
                "sslcert",
                "client certificates",
            ),
        ] {
            match split_url(url) {
                Err(TlsProblem::Setting {
                    parameter: p,
                    reason,
                    ..
                }) => {
                    assert_eq!(p, parameter, "{url}");
                    assert!(reason.contains(says), "{url}: {reason}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    fn target(url: &str) -> Result<Target, TlsProblem> {
        Target::parse(url).map_err(|e| match e {
            ParseError::Tls(problem) => problem,
            ParseError::Client(e) => panic!("{url}: {e}"),
        })
    }

    #[test]
    fn modes_map_to_the_clients_and_unix_sockets_never_use_tls() {
        let prefer = target("postgres://u@db/t").expect("parse");
        assert_eq!(prefer.mode, SslMode::Prefer);
        assert_eq!(prefer.config.get_ssl_mode(), ClientSslMode::Prefer);
        assert!(prefer.connector.is_some());
        let disable = target("postgres://u@db/t?sslmode=disable").expect("parse");
        assert_eq!(disable.config.get_ssl_mode(), ClientSslMode::Disable);
        assert!(disable.connector.is_none());
        // Verification needs no file under require; the client refuses a plain server.
        let require = target("postgres://u@db/t?sslmode=require").expect("parse");
        assert_eq!(require.config.get_ssl_mode(), ClientSslMode::Require);
        assert!(
            require
                .connector
                .as_ref()
                .is_some_and(|c| c.roots.is_none())
        );
        let socket = target("postgres:///t?host=/run/postgresql&sslmode=require").expect("parse");
        assert_eq!(socket.config.get_ssl_mode(), ClientSslMode::Disable);
        assert!(socket.connector.is_none());
        // Only an address: it is the name checked.
        let address = target("postgres:///t?hostaddr=127.0.0.1&sslmode=require").expect("parse");
        assert_eq!(
            address.config.get_hosts(),
            [Host::Tcp("127.0.0.1".to_owned())]
        );
    }

    #[test]
    fn names_lose_the_verifiers_wrapping() {
        assert_eq!(plain_name("DnsName(\"db.example\")"), "db.example");
        assert_eq!(plain_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(plain_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn a_root_file_that_cannot_be_used_is_one_clear_error() {
        let dir = std::env::temp_dir().join(format!("castor-tls-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("create a directory");
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        for (path, says) in [
            (&missing, "no such file"),
            (&empty, "holds no certificate"),
            (&dir, "Is a directory"),
        ] {
            let url = format!(
                "postgres://u@db/t?sslmode=verify-full&sslrootcert={}",
                path.display()
            );
            match target(&url) {
                Err(problem @ TlsProblem::RootCert { .. }) => {
                    let message = problem.to_string();
                    assert!(
                        message.contains(&path.display().to_string()) && message.contains(says),
                        "{message}"
                    );
                    assert!(problem.is_setting());
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        // Modes that verify nothing never read it.
        let prefer = format!("postgres://u@db/t?sslrootcert={}", missing.display());
        assert!(target(&prefer).is_ok());
        // `system` with a mode that does not check the name is refused, as by libpq.
        assert!(matches!(
            target("postgres://u@db/t?sslmode=require&sslrootcert=system"),
            Err(TlsProblem::Setting { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("remove the directory");
    }
}
