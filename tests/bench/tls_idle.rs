//! The TLS row: what one idle connection costs callwire with `--tls-cert`, beside the same
//! number of plain ones, in the same sitting.
//!
//! For plain, then TLS: a private Mosquitto feeds a release callwire (so its source is
//! connected, as in the fan-out phases); N Blackhole clients connect one after another (TLS:
//! rustls's client, trusting a throw-away CA made with `openssl`), each subscribes to
//! `call.#` and reads its reply; after `SETTLE` idle, VmRSS minus VmRSS before the first
//! client, over N. No event is published: this is the idle cost, handshake buffers included
//! where rustls keeps them.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tungstenite::{Message, WebSocket};

use super::{Args, SETTLE, Server, TempDir, free_port, rss_kib};

/// Resident KiB per idle client, plain and TLS.
pub struct IdleRow {
    pub clients: usize,
    pub plain_kib: f64,
    pub tls_kib: f64,
}

pub fn measure(args: &Args, clients: usize) -> Result<IdleRow, String> {
    let dir = TempDir::new()?;
    let (cert, key, ca) = make_pki(&dir.0)?;
    let trust = client_config(&ca)?;
    let mqtt_port = free_port();
    let _mosquitto = Server::mosquitto(&dir.0, mqtt_port, free_port())?;
    eprintln!("fanout: TLS row: {clients} idle clients, plain then TLS");
    let plain_kib = idle_kib(&dir.0, mqtt_port, args, clients, None)?;
    let tls_flags = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let tls_kib = idle_kib(&dir.0, mqtt_port, args, clients, Some((&tls_flags, &trust)))?;
    Ok(IdleRow {
        clients,
        plain_kib,
        tls_kib,
    })
}

pub fn report(row: &IdleRow) {
    println!();
    println!(
        "== TLS row: {} idle Blackhole clients subscribed to call.#, resident memory per connection",
        row.clients
    );
    println!("  plain ws://     {:>7.1} KiB", row.plain_kib);
    println!(
        "  TLS wss://      {:>7.1} KiB  (+{:.1} KiB for rustls; the budget's worst case is {} KiB)",
        row.tls_kib,
        row.tls_kib - row.plain_kib,
        callwire::tls::PER_CONNECTION / 1024
    );
}

/// One callwire with `clients` idle sockets: KiB of VmRSS per socket.
fn idle_kib(
    dir: &Path,
    mqtt_port: u16,
    args: &Args,
    clients: usize,
    tls: Option<(&[&str], &Arc<ClientConfig>)>,
) -> Result<f64, String> {
    let flags = tls.map(|(flags, _)| flags).unwrap_or_default();
    let mut server = Server::start_callwire(dir, mqtt_port, args, clients, flags)?;
    server.wait_log("callwire", "mqtt: connected to")?;
    let pid = server.pid();
    thread::sleep(SETTLE);
    let before = rss_kib(pid)?;
    // Kept open until the sample is taken.
    let (mut plain, mut secured) = (Vec::new(), Vec::new());
    for i in 0..clients {
        let tcp = TcpStream::connect(("127.0.0.1", server.port))
            .map_err(|e| format!("client {i}: connect: {e}"))?;
        match tls {
            None => plain.push(subscribed(tcp, "ws", i)?),
            Some((_, trust)) => {
                let name = ServerName::try_from("localhost").unwrap();
                let connection = ClientConnection::new(trust.clone(), name)
                    .map_err(|e| format!("client {i}: {e}"))?;
                secured.push(subscribed(StreamOwned::new(connection, tcp), "wss", i)?);
            }
        }
    }
    thread::sleep(SETTLE);
    server.check_alive("callwire")?;
    let after = rss_kib(pid)?;
    drop((plain, secured));
    Ok((after as f64 - before as f64) / clients as f64)
}

/// Upgrades, subscribes to `call.#` and reads the reply.
fn subscribed<S: std::io::Read + std::io::Write>(
    stream: S,
    scheme: &str,
    i: usize,
) -> Result<WebSocket<S>, String> {
    let url = format!("{scheme}://localhost/");
    let (mut socket, _) =
        tungstenite::client(url, stream).map_err(|e| format!("client {i}: upgrade: {e}"))?;
    let request = r#"{"action":"subscribe","request_id":"idle","data":{"binding":"call.#"}}"#;
    socket
        .send(Message::text(request))
        .map_err(|e| format!("client {i}: subscribe: {e}"))?;
    match socket.read() {
        Ok(Message::Text(reply)) if reply.contains("\"success\"") => Ok(socket),
        other => Err(format!("client {i}: expected the reply, got {other:?}")),
    }
}

/// A throw-away CA and a certificate for localhost, made with `openssl` in `dir`: the
/// certificate's file, its key's, and the CA's.
fn make_pki(dir: &Path) -> Result<(String, String, String), String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = [
        "req", "-x509", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
    ];
    run(&[&ca[..], &ec, &["-subj", "/CN=fanout CA"]].concat())?;
    let csr = [
        "req",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        "/CN=localhost",
    ];
    run(&[&csr[..], &ec].concat())?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .map_err(|e| e.to_string())?;
    run(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])?;
    let path = |file: &str| dir.join(file).to_string_lossy().into_owned();
    Ok((path("cert.pem"), path("key.pem"), path("ca.pem")))
}

fn client_config(ca: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        roots
            .add(cert.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    let config = ClientConfig::builder_with_provider(callwire::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
