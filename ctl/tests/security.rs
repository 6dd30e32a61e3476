//! End to end over TLS: `otactl pki` makes a CA and otad's certificate, the real `otad` serves
//! with them (and writes its first admin token), and `otactl` connects with `--ca-cert` and
//! tokens: the admin hands out a viewer token, the viewer reads but cannot upload or start a
//! rollout, a wrong token and no token are refused, and a site certificate from `otactl pki`
//! is accepted by otad's TLS listener as that site's agent.
//!
//! `otad` is built by cargo first, once per run (`ota_testkit::bins::otad`), so it is never stale.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;

use ota_testkit::bins::otad as otad_binary;

/// What an otactl run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn otactl(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_otactl"))
        .args(args)
        .env_remove("OTACTL_SERVER")
        .env_remove("OTACTL_TOKEN")
        .env_remove("OTACTL_CA_CERT")
        .stdin(Stdio::null())
        .output()
        .expect("run otactl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

struct Otad(Child);

impl Drop for Otad {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_otad(dir: &Path, pki: &Path) -> (Otad, String) {
    let log = std::fs::File::create(dir.join("otad.log")).unwrap();
    let mut child = Command::new(otad_binary())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(pki.join("server.pem"))
        .arg("--tls-key")
        .arg(pki.join("server.key"))
        .arg("--tls-client-ca")
        .arg(pki.join("ca.pem"))
        .env_remove("OTAD_INSECURE_PLAINTEXT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn otad");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            let log = std::fs::read_to_string(dir.join("otad.log")).unwrap_or_default();
            panic!("otad exited before listening:\n{log}");
        }
        if let Some(addr) = line.trim().strip_prefix("otad listening on ") {
            break addr.to_string();
        }
    };
    std::thread::spawn(move || for _ in reader.lines() {});
    (Otad(child), addr)
}

#[tokio::test]
async fn otactl_over_tls_with_tokens_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki_arg = pki.display().to_string();
    for args in [
        vec!["pki", "init-ca", "--dir", &pki_arg],
        vec![
            "pki",
            "issue-server",
            "localhost",
            "127.0.0.1",
            "--dir",
            &pki_arg,
        ],
        vec!["pki", "issue-site", "home", "--dir", &pki_arg, "-o", "json"],
    ] {
        let r = otactl(&args);
        assert_eq!(r.code, 0, "{r:#?}");
    }

    // Plaintext must be asked for.
    let refused = Command::new(otad_binary())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("plain"))
        .env_remove("OTAD_INSECURE_PLAINTEXT")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--insecure-plaintext"),
        "{refused:?}"
    );

    let (otad, addr) = start_otad(dir.path(), &pki);
    let server = format!("https://{addr}");
    let ca = pki.join("ca.pem").display().to_string();
    let admin = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let log = std::fs::read_to_string(dir.path().join("otad.log")).unwrap();
    assert!(log.contains("admin.token"), "{log}");
    assert!(
        !log.contains(admin.split_once('.').unwrap().1),
        "the log shows the token"
    );
    let ctl = |token: Option<&str>, args: &[&str]| {
        let mut all = vec!["--server", server.as_str(), "--ca-cert", ca.as_str()];
        if let Some(t) = token {
            all.extend(["--token", t]);
        }
        all.extend_from_slice(args);
        otactl(&all)
    };

    let status = ctl(Some(&admin), &["server", "status", "-o", "json"]);
    assert_eq!(status.code, 0, "{status:#?}");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["tls"], true);
    assert_eq!(json["auth_required"], true);
    assert_eq!(json["caller"]["name"], "bootstrap-admin");

    let created = ctl(
        Some(&admin),
        &["token", "create", "vera", "--role", "viewer", "-o", "json"],
    );
    assert_eq!(created.code, 0, "{created:#?}");
    let viewer = serde_json::from_str::<serde_json::Value>(&created.stdout).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();

    let table = ctl(Some(&viewer), &["server", "status"]);
    assert_eq!(table.code, 0, "{table:#?}");
    assert!(!table.stdout.contains("WARNING"), "{table:#?}");

    let no_token = ctl(None, &["server", "status"]);
    assert_eq!(no_token.code, 2);
    assert!(
        no_token.stderr.contains("otad requires a token"),
        "{no_token:#?}"
    );
    let wrong = format!("{}.{}", viewer.split_once('.').unwrap().0, "0".repeat(64));
    let bad = ctl(Some(&wrong), &["server", "status"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .contains("otad did not accept the token: missing or invalid credentials"),
        "{bad:#?}"
    );

    let fw = dir.path().join("app.bin");
    std::fs::write(
        &fw,
        EspAppBuilder::new(Chip::Esp32)
            .version("1.0.0")
            .payload_size(5000)
            .build(),
    )
    .unwrap();
    let fw_arg = fw.display().to_string();
    let upload = ctl(
        Some(&viewer),
        &[
            "firmware",
            "upload",
            &fw_arg,
            "--name",
            "app",
            "--version",
            "1.0.0",
        ],
    );
    assert_eq!(upload.code, 2);
    assert!(
        upload.stderr.contains("this needs the admin role"),
        "{upload:#?}"
    );
    let start = ctl(Some(&viewer), &["rollout", "start", "ro-0000000000000000"]);
    assert_eq!(start.code, 2);
    assert!(
        start.stderr.contains("this needs the operator role"),
        "{start:#?}"
    );
    let uploaded = ctl(
        Some(&admin),
        &[
            "firmware",
            "upload",
            &fw_arg,
            "--name",
            "app",
            "--version",
            "1.0.0",
        ],
    );
    assert_eq!(uploaded.code, 0, "{uploaded:#?}");

    // The site certificate otactl issued opens an agent session as its site at this otad.
    let cert = std::fs::read(pki.join("site-home.pem")).unwrap();
    let key = std::fs::read(pki.join("site-home.key")).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(pki.join("ca.pem")).unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(server.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let hello = |site: &str| pb::AgentMessage {
        seq: 0,
        body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
            site_id: site.into(),
            agent_id: "agent-1".into(),
            ..Default::default()
        })),
    };
    let mut agents = pb::agent_service_client::AgentServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("home")).await.unwrap();
    let mut session = agents
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let welcome = session.message().await.unwrap().unwrap();
    assert!(matches!(
        welcome.body,
        Some(pb::server_message::Body::Welcome(_))
    ));
    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    tx2.send(hello("elsewhere")).await.unwrap();
    let other = agents
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied);
    drop(tx);
    drop(otad);

    // Recovery while otad is stopped: a new admin token in a private file.
    let recovery = dir.path().join("recovery.token");
    let made = Command::new(otad_binary())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(pki.join("server.pem"))
        .arg("--tls-key")
        .arg(pki.join("server.key"))
        .arg("--create-admin-token")
        .arg(&recovery)
        .env_remove("OTAD_INSECURE_PLAINTEXT")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let token = std::fs::read_to_string(&recovery)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        !String::from_utf8_lossy(&made.stdout).contains(token.split_once('.').unwrap().1),
        "the token is printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&recovery).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (otad, addr) = start_otad(dir.path(), &pki);
    let status = otactl(&[
        "--server",
        &format!("https://{addr}"),
        "--ca-cert",
        &ca,
        "--token",
        &token,
        "server",
        "status",
        "-o",
        "json",
    ]);
    assert_eq!(status.code, 0, "{status:#?}");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["caller"]["name"], "recovery-admin");
    drop(otad);
}
