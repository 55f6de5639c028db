//! Throw-away TLS certificates made with openssl.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::process::{text, Proc};

/// The SAN of a server certificate valid for this machine's loopback.
pub const LOCALHOST_SAN: &str = "DNS:localhost,IP:127.0.0.1";

/// Makes, in `dir`, a CA named `ca_name` (`ca.pem`, `ca.key`), a server certificate valid for
/// `san` (`server.pem`, `server.key`) and a client certificate with CN "gw" (`client.pem`,
/// `client.key`), both signed by the CA.
pub fn make_certs(dir: &Path, ca_name: &str, san: &str) {
    let run = |args: &str| {
        let out = Proc::run(
            "openssl",
            Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(dir),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "openssl {args}: {}", text(&out));
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    run(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN={ca_name}"
    ));
    // x509v3 extensions also make them version 3 certificates, which rustls requires.
    let exts = [
        ("server", format!("subjectAltName={san}\n")),
        ("client", "extendedKeyUsage=clientAuth\n".to_string()),
    ];
    for (name, ext) in exts {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    }
    for (name, cn) in [("server", "localhost"), ("client", "gw")] {
        run(&format!(
            "req {ec} -keyout {name}.key -out {name}.csr -subj /CN={cn}"
        ));
        run(&format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext"
        ));
    }
}
