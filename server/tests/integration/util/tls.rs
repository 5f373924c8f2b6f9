//! TLS for tests: a private CA and a leaf certificate for 127.0.0.1 as PEM
//! files, servers started on them, and rustls clients (`wss://` and
//! `https://`) that trust only that CA.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::Connector;

use super::{
    barrier, get_request, metric, parse_http, parse_metrics, HttpResponse, Server, Ws,
    EVENT_TIMEOUT,
};

/// A private CA and a server certificate for `127.0.0.1`/`localhost`
/// signed by it, as PEM files in a directory removed on drop.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    pub(crate) fn new(tag: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::Builder::new()
            .prefix(&format!("bs-tls-{tag}-"))
            .tempdir()
            .unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "broadcast-server test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca_der: ca_cert.der().clone(),
        }
    }

    pub(crate) fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_str().unwrap().to_owned()
    }

    /// `broadcast-server start ... --tls-cert --tls-key` plus `args`.
    pub(crate) async fn server(&self, args: &[&str]) -> Server {
        let cert = self.path("cert.pem");
        let key = self.path("key.pem");
        let mut all = vec!["--tls-cert", &cert, "--tls-key", &key];
        all.extend_from_slice(args);
        Server::start(&all).await
    }

    /// A rustls client trusting only the test CA.
    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    pub(crate) async fn connect(&self, server: &Server) -> Ws {
        let url = format!("wss://127.0.0.1:{}/ws", server.port);
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            None,
            false,
            Some(Connector::Rustls(self.client_config())),
        );
        match timeout(EVENT_TIMEOUT, connecting).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => panic!("connect {url}: {e}"),
            Err(_) => panic!("connect {url}: timed out"),
        }
    }

    pub(crate) async fn connect_many(&self, server: &Server, n: usize) -> Vec<Ws> {
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(self.connect(server).await);
        }
        barrier(&mut clients, false).await;
        clients
    }

    /// A TLS connection to the server (the handshake done), nothing sent.
    pub(crate) async fn tls_connect(
        &self,
        server: &Server,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let connector = tokio_rustls::TlsConnector::from(self.client_config());
        let connecting = async {
            let tcp = TcpStream::connect(server.addr()).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            connector.connect(name, tcp).await.expect("TLS handshake")
        };
        timeout(EVENT_TIMEOUT, connecting)
            .await
            .expect("TLS handshake timed out")
    }

    /// A `wss://` connection upgraded by hand, for tests that write raw
    /// frames over TLS; the 101 response has been read, nothing more.
    pub(crate) async fn raw_wss(
        &self,
        server: &Server,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut tls = self.tls_connect(server).await;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let reading = async {
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tls.read_u8().await.expect("upgrade response"));
            }
        };
        timeout(EVENT_TIMEOUT, reading)
            .await
            .expect("upgrade response timed out");
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        tls
    }

    /// Waits until the server has counted `n` failed TLS handshakes.
    pub(crate) async fn await_tls_failures(&self, server: &Server, n: f64) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let m = self.https_get(server, "/metrics").await;
            assert_eq!(m.status, 200, "{m:?}");
            let failures = metric(
                &parse_metrics(&m.body),
                "broadcast_tls_handshake_failures_total",
                "",
            );
            if failures >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "TLS failures: {failures}, never {n}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// `GET path` over HTTPS (`Connection: close`), read to the end.
    pub(crate) async fn https_get(&self, server: &Server, path: &str) -> HttpResponse {
        let fetch = async {
            let mut tls = self.tls_connect(server).await;
            let req = get_request(&server.addr(), path);
            tls.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            // A peer may end TLS without close_notify after Connection: close.
            let _ = tls.read_to_end(&mut raw).await;
            raw
        };
        let raw = timeout(EVENT_TIMEOUT, fetch)
            .await
            .expect("HTTPS GET timed out");
        parse_http(&raw)
    }
}
