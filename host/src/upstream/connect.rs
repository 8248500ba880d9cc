//! Connections to an upstream's servers, for hyper-util's client: TCP, TLS (rustls) or a Unix
//! socket, within `connect_timeout`. Each server has its own connector (and client, so its own
//! pool): the request's URI then carries the authority the server should see (HTTP/2's
//! `:authority`), not the server's address.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{Endpoint, UpstreamConfig};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server could not be reached (refused, unreachable, no such name...).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not within `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
    /// The TLS configuration could not be built.
    #[error("{0}")]
    Tls(String),
}

/// Opens connections to one server.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("endpoint", &self.inner.endpoint)
            .finish()
    }
}

impl Connector {
    /// One connector per server of `config`, in order; the TLS client (built once) for
    /// `https://` servers.
    pub fn for_servers(config: &UpstreamConfig) -> Result<Vec<Connector>, ConnectError> {
        let needs_tls = config
            .servers
            .iter()
            .any(|s| matches!(s.endpoint, Endpoint::Https { .. }));
        let tls = if needs_tls {
            Some(tls_connector(config)?)
        } else {
            None
        };
        Ok(config
            .servers
            .iter()
            .map(|s| Connector {
                inner: Arc::new(Inner {
                    endpoint: s.endpoint.clone(),
                    tls: tls.clone(),
                    timeout: config.connect_timeout,
                }),
            })
            .collect())
    }

    async fn connect(inner: Arc<Inner>) -> Result<Conn, ConnectError> {
        let endpoint = inner.endpoint.clone();
        let timeout = inner.timeout;
        let open = async {
            match endpoint {
                Endpoint::Http { host, port } => {
                    let tcp = TcpStream::connect((host.as_str(), port)).await?;
                    let _ = tcp.set_nodelay(true);
                    Ok(Conn::plain(Stream::Tcp(tcp)))
                }
                Endpoint::Unix(path) => Ok(Conn::plain(Stream::Unix(unix(path).await?))),
                Endpoint::Https { host, port } => {
                    let tcp = TcpStream::connect((host.as_str(), port)).await?;
                    let _ = tcp.set_nodelay(true);
                    let connector = inner
                        .tls
                        .as_ref()
                        .ok_or_else(|| ConnectError::Tls("no TLS client".into()))?;
                    let name = ServerName::try_from(host.clone())
                        .map_err(|e| ConnectError::Tls(format!("{host}: {e}")))?;
                    let tls = connector.connect(name, tcp).await?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok(Conn {
                        io: TokioIo::new(Stream::Tls(Box::new(tls))),
                        h2,
                    })
                }
            }
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ConnectError::Timeout)?
    }
}

async fn unix(path: PathBuf) -> io::Result<UnixStream> {
    UnixStream::connect(path).await
}

fn tls_connector(config: &UpstreamConfig) -> Result<tokio_rustls::TlsConnector, ConnectError> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let mut client = if config.tls_verify {
        let mut roots = rustls::RootCertStore::empty();
        match &config.tls_ca {
            Some(path) => {
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| ConnectError::Tls(format!("{}: {e}", path.display())))?;
                for cert in certs {
                    let cert =
                        cert.map_err(|e| ConnectError::Tls(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| ConnectError::Tls(format!("{}: {e}", path.display())))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(ConnectError::Tls(
                        "no system CA certificates found: set tls_ca".into(),
                    ));
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    client.alpn_protocols = if config.http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(client)))
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        Box::pin(Connector::connect(Arc::clone(&self.inner)))
    }
}

/// One connection to a server.
#[derive(Debug)]
pub struct Conn {
    io: TokioIo<Stream>,
    h2: bool,
}

impl Conn {
    fn plain(stream: Stream) -> Conn {
        Conn {
            io: TokioIo::new(stream),
            h2: false,
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The byte stream under a connection.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A Unix-domain socket.
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `tls_verify = false`: any certificate is accepted (signatures are still checked, so the
/// handshake is sound; who the server is, is not).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
