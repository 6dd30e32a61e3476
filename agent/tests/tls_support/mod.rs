//! A CA made with rcgen (no key is checked in), an otad serving TLS with it, and the files an
//! agent's `[tls]` section names.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey};
use ota_proto::v1 as pb;
use ota_server::config::{Config, TlsFiles};
use ota_server::core::Clock;
use ota_server::wiring::{Otad, open_store};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sha2::Digest as _;
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A CA, as `otactl pki` makes one.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// PEM certificate and key.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn issue(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn server(&self) -> Pair {
        self.issue(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    pub fn site(&self, site: &str) -> Pair {
        self.issue(
            vec![SanType::URI(format!("ota-site:{site}").try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// Writes `ca.pem`, `<stem>.pem` and `<stem>.key` into `dir`.
pub fn write_pair(dir: &Path, stem: &str, pair: &Pair) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &pair.cert).unwrap();
    std::fs::write(&key, &pair.key).unwrap();
    (cert, key)
}

/// An otad with TLS and agent client certificates of `pki`; the admin token it bootstrapped.
pub async fn start_tls_server(dir: &Path, pki: &Pki) -> (Otad, String) {
    let tls = dir.join("tls");
    let (cert, key) = write_pair(&tls, "server", &pki.server());
    std::fs::write(tls.join("ca.pem"), pki.ca_pem()).unwrap();
    let cfg = Config {
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsFiles {
            cert,
            key,
            client_ca: Some(tls.join("ca.pem")),
        }),
        insecure_plaintext: false,
        ..Config::default()
    };
    let store = open_store(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Otad::start(cfg, store, Clock::new(), listener)
        .await
        .unwrap();
    let admin = std::fs::read_to_string(dir.join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    (server, admin)
}

/// An operator's channel (TLS, no client certificate).
pub async fn operator_channel(server: &Otad, pki: &Pki) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The ed25519 signature over the raw sha256 of `bytes`, as `otactl firmware sign` makes it.
pub fn signature(key: &SigningKey, key_id: &str, bytes: &[u8]) -> pb::FirmwareSignature {
    pb::FirmwareSignature {
        key_id: key_id.into(),
        signature: key.sign(&sha2::Sha256::digest(bytes)).to_bytes().to_vec(),
        ..Default::default()
    }
}

/// Uploads an ESP application image (as admin), optionally signed.
pub async fn upload(
    ch: &Channel,
    admin: &str,
    name: &str,
    version: &str,
    bytes: &[u8],
    signature: Option<pb::FirmwareSignature>,
) -> pb::Firmware {
    let msgs = vec![
        pb::UploadFirmwareRequest {
            part: Some(pb::upload_firmware_request::Part::Metadata(
                pb::UploadMetadata {
                    name: name.into(),
                    version: version.into(),
                    format: pb::FirmwareFormat::EspApp as i32,
                    signature,
                    ..Default::default()
                },
            )),
        },
        pb::UploadFirmwareRequest {
            part: Some(pb::upload_firmware_request::Part::Chunk(bytes.to_vec())),
        },
    ];
    pb::firmware_service_client::FirmwareServiceClient::new(ch.clone())
        .upload(authed(futures::stream::iter(msgs), admin))
        .await
        .unwrap()
        .into_inner()
        .firmware
        .unwrap()
}

/// Updates a device and waits for the task to end.
pub async fn update(ch: &Channel, admin: &str, device: &str, firmware_id: &str) -> pb::Task {
    let resp = tokio::time::timeout(
        Duration::from_secs(60),
        pb::device_service_client::DeviceServiceClient::new(ch.clone()).update(authed(
            pb::UpdateDeviceRequest {
                device_id: device.into(),
                firmware_id: firmware_id.into(),
                wait: true,
                ..Default::default()
            },
            admin,
        )),
    )
    .await
    .expect("the update ends within 60 s")
    .unwrap()
    .into_inner();
    resp.task.unwrap()
}

/// Waits (on applied events, not on a timer) until `f` holds for the server's state.
pub async fn wait_for_state(
    server: &Otad,
    what: &str,
    f: impl Fn(&ota_domain::projection::FleetState) -> bool,
) {
    let app = server.app.clone();
    let mut applied = app.core.watch_applied();
    tokio::time::timeout(
        Duration::from_secs(30),
        applied.wait_for(|_| f(&app.core.read())),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    .unwrap();
}
