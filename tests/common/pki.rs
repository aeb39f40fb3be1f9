//! Throw-away certificate authorities for the TLS tests, made with the `openssl` command: a CA
//! and the certificates it issues for `localhost` and 127.0.0.1, in a directory removed when
//! the CA is dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::unique;

/// A CA of the test's own: `ca.pem` and its key, in a directory of their own.
pub struct TestCa {
    pub dir: PathBuf,
}

/// A certificate the CA issued, with its key, both PEM files.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = std::env::temp_dir().join(unique(&format!("{name}-")));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa { dir };
        ca.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
        ]);
        ca
    }

    /// The CA's certificate (what a client trusts).
    pub fn cert(&self) -> String {
        self.path("ca.pem")
    }

    /// Issues a certificate for `localhost` and 127.0.0.1; `name` tells the files apart.
    pub fn issue(&self, name: &str) -> Issued {
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN=localhost {name}"),
        ]);
        let extensions = self.path(&format!("{name}.ext"));
        std::fs::write(&extensions, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &extensions,
        ]);
        // A broker started as root reads its files after dropping to its own user
        // (Mosquitto does): the throw-away key may be read by anyone.
        let key = self.path(&key);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        Issued {
            cert: self.path(&cert),
            key,
        }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The SHA-256 of a PEM certificate's DER form, in lower-case hex (as a client sees it).
pub fn fingerprint(cert: &Path) -> String {
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8(output.stdout).unwrap();
    let hex = text.trim().rsplit('=').next().unwrap();
    hex.replace(':', "").to_lowercase()
}

/// `curl --cacert CA https://localhost:PORT/PATH`: the status and body, or curl's error.
pub fn https_get(ca: &str, port: u16, path: &str) -> Result<(u16, String), String> {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca,
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    Ok((status.parse().unwrap(), body.to_owned()))
}
