//! TLS: the listener's certificate (`--tls-cert`, `--tls-key`, reloaded on SIGHUP), the
//! roots the broker connections trust (`--broker-ca` or the system's), the crypto provider
//! both use, and what one TLS connection may hold (its part of the memory budget).
//!
//! rustls with *ring* as its provider: ring is Rust plus a little C and assembly that a plain
//! C compiler for the target builds (`.ci/cross` names one per target; no cmake, no bindgen),
//! where aws-lc-rs builds all of AWS-LC, a far larger C library, for each target, and its
//! build wants cmake or bindgen on some of them. One provider for both sides, chosen here and
//! nowhere else.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::TlsStream;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The most bytes rustls holds for one connection's outgoing records not yet taken by the
/// socket (`set_buffer_limit`): past it a write waits for the socket, as a plain one does.
/// Half a large frame is enough to keep the socket busy.
pub const SEND_BUFFER_LIMIT: usize = 8 * 1024;

/// The largest TLS record on the wire (16 KiB of data, plus the most a record may add), which
/// rustls buffers whole before it decrypts it.
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;
/// rustls's bound on decrypted bytes not yet read, which a record may overshoot by one.
const RECEIVED_PLAINTEXT: usize = 2 * 16 * 1024;
/// The connection's own state: keys, the handshake's leftovers, the allocator's rounding.
const STATE: usize = 8 * 1024;

/// What one TLS connection may hold in rustls, beside what a plain one costs: a record being
/// read, decrypted bytes not yet read, records being written (and, during the handshake, the
/// bytes written before it ends: the limit applies to each), and its state. An idle one holds
/// far less (the fan-out bench's TLS row measures it).
pub const PER_CONNECTION: usize = MAX_RECORD + RECEIVED_PLAINTEXT + 2 * SEND_BUFFER_LIMIT + STATE;

/// The crypto provider of every TLS connection, listener and brokers alike.
///
/// rustls 0.23.48 marks ring's provider deprecated because it has no post-quantum key
/// exchange (X25519MLKEM768 is aws-lc-rs's): connections here agree keys with X25519 or the
/// NIST curves, which every browser and broker offers. That is the price of a provider that
/// builds for the ARM gateways with their plain C cross compilers (module comment).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's TLS settings: the certificate and key in force for new connections, and the
/// files they are read from again on SIGHUP. Connections keep the settings they started with.
pub struct ListenerTls {
    cert_path: String,
    key_path: String,
    config: RefCell<Arc<ServerConfig>>,
}

impl ListenerTls {
    /// Reads the certificate chain and key; the error names the file and what is wrong.
    pub fn load(cert_path: &str, key_path: &str) -> Result<ListenerTls, String> {
        let config = server_config(cert_path, key_path)?;
        Ok(ListenerTls {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            config: RefCell::new(config),
        })
    }

    /// Reads the files again; on success new connections get the new certificate, on error
    /// the one in force stays (and the error says why).
    pub fn reload(&self) -> Result<(), String> {
        let fresh = server_config(&self.cert_path, &self.key_path)?;
        *self.config.borrow_mut() = fresh;
        Ok(())
    }

    /// The acceptor for a new connection, with the settings in force now.
    pub fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        futures_rustls::TlsAcceptor::from(self.config.borrow().clone())
    }

    /// The certificate file, for the logs.
    pub fn cert_path(&self) -> &str {
        &self.cert_path
    }
}

fn server_config(cert_path: &str, key_path: &str) -> Result<Arc<ServerConfig>, String> {
    let chain = read_certs(cert_path, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("--tls-key {key_path}: no usable PEM private key: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert {cert_path} with --tls-key {key_path}: {e}"))?;
    // HTTP/1.1 only (websockets upgrade from it); a client offering only h2 is refused.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No session tickets or cache to hold per client: a resumed handshake saves a round trip
    // that a long-lived websocket does not need.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; an error if there is none.
fn read_certs(path: &str, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{flag} {path}: no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Whether a broker connection is TLS (`mqtts://`, `amqps://`), and whom it trusts.
#[derive(Clone, Default)]
pub enum BrokerTls {
    #[default]
    Off,
    /// TLS, with the settings built ahead by [`BrokerTls::trust`] (`--broker-ca`), or else
    /// trusting the system's roots, read at each connect.
    On(Option<Arc<ClientConfig>>),
}

impl BrokerTls {
    /// Builds the settings now, trusting `ca` (a PEM file) or the system's roots: a file that
    /// will not do is an error at start-up, not at each connect. Nothing to do when off.
    pub fn trust(&mut self, ca: Option<&str>) -> Result<(), String> {
        if let BrokerTls::On(config) = self {
            *config = Some(broker_config(ca)?);
        }
        Ok(())
    }

    pub fn is_on(&self) -> bool {
        matches!(self, BrokerTls::On(_))
    }
}

impl std::fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_on() { "on" } else { "off" })
    }
}

/// The client settings for `mqtts://` and `amqps://`: trusting the certificates in `ca` (a
/// PEM file, `--broker-ca`) or, without it, the system's roots.
fn broker_config(ca: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certs(path, "--broker-ca")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("--broker-ca {path}: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(": {e}"));
                return Err(format!(
                    "TLS to the broker: no trusted root certificates found on this system{}; \
                     pass --broker-ca FILE",
                    why.unwrap_or_default()
                ));
            }
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a broker's certificate must carry, from the host in its URL.
fn server_name(host: &str) -> io::Result<rustls_pki_types::ServerName<'static>> {
    rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{host}' is not a host name TLS can check"),
        )
    })
}

/// A connection that is plain, or TLS over the same stream: a client's (`ws::Stream`) or a
/// broker's. The plain one reads and writes the stream itself, with nothing added; the TLS
/// one goes through rustls's buffers, boxed so that plain connections do not carry its size.
pub enum MaybeTls<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(plain) => Pin::new(plain).poll_read(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(plain) => Pin::new(plain).poll_write(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(plain) => Pin::new(plain).poll_write_vectored(cx, bufs),
            // rustls seals the slices together into as few records as they fill.
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    /// Under TLS, also writes out the records rustls holds: a write is done only once flushed.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(plain) => Pin::new(plain).poll_flush(cx),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(plain) => Pin::new(plain).poll_close(cx),
            MaybeTls::Tls(tls) => Pin::new(&mut **tls).poll_close(cx),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> MaybeTls<S> {
    /// The connection to a broker over `stream`: plain, or TLS as `tls` says, checking that
    /// the broker's certificate names `host`.
    pub async fn to_broker(stream: S, tls: &BrokerTls, host: &str) -> io::Result<MaybeTls<S>> {
        let config = match tls {
            BrokerTls::Off => return Ok(MaybeTls::Plain(stream)),
            BrokerTls::On(Some(config)) => config.clone(),
            BrokerTls::On(None) => broker_config(None).map_err(io::Error::other)?,
        };
        let connector = futures_rustls::TlsConnector::from(config);
        let tls = connector
            .connect(server_name(host)?, stream)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with '{host}': {e}")))?;
        Ok(MaybeTls::Tls(Box::new(tls.into())))
    }
}
