//! An agent with a client certificate for its site and a trust policy, against an otad with
//! TLS: signed firmware reaches the device; unsigned, wrongly signed and tampered images are
//! refused with 5013 / 5009 and nothing reaches the device. The transport is scripted (it
//! records every image it is handed); the serial transport has the same check in front of it
//! (see `secrets.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use ota_agent::agent::Agent;
use ota_agent::tls::TlsConfig;
use ota_agent::transport::Transport;
use ota_agent::trust::TrustPolicy;
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;
use ota_testkit::agent::{ScriptedTransport, options};
use ota_testkit::otad::{update_and_wait, wait_for_state};
use ota_testkit::pki::{Pki, operator_channel, start_tls_server, write_pair};
use ota_testkit::upload::{signature, upload_app_as};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

fn app(version: &str) -> Vec<u8> {
    EspAppBuilder::new(Chip::Esp32)
        .version(version)
        .payload_size(20_000)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_untampered_firmware_reaches_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Test CA");
    let (server, admin) = start_tls_server(dir.path(), &pki).await;
    let op = operator_channel(&server, &pki).await;

    // The agent: a client certificate for "home", and one trusted key.
    let agent_tls = dir.path().join("agent");
    let (cert, key) = write_pair(&agent_tls, "site-home", &pki.site("home"));
    std::fs::write(agent_tls.join("ca.pem"), pki.ca_pem()).unwrap();
    let tls = TlsConfig {
        ca: Some("ca.pem".into()),
        cert,
        key,
        server_name: Some("localhost".into()),
    };
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls.client_config(&agent_tls).unwrap())
        .unwrap()
        .connect_lazy();
    let release = SigningKey::from_bytes(&[11; 32]);
    let stranger = SigningKey::from_bytes(&[12; 32]);
    let trust = TrustPolicy::new(
        BTreeMap::from([("release".to_string(), release.verifying_key())]),
        true,
    );
    // A transport that installs whatever it is handed, and remembers it.
    let transport = Arc::new(ScriptedTransport::esphome("1.0.0"));
    let agent = Agent::with_trust(
        options("home", &dir.path().join("agent-data")),
        vec![transport.clone() as Arc<dyn Transport>],
        trust,
    )
    .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(agent.clone().run(channel, stop.clone()));
    wait_for_state(&server, "the device over mTLS", |s| {
        s.devices.contains_key("home/lamp")
    })
    .await;

    // Signed by the trusted key: installed.
    let v1 = app("1.1.0");
    let fw = upload_app_as(
        &op,
        &admin,
        "lamp",
        "1.1.0",
        &v1,
        Some(signature(&release, "release", &v1)),
    )
    .await;
    let t = update_and_wait(&op, &admin, "home/lamp", &fw.id).await;
    assert_eq!(t.status, pb::UpgradeStatus::Success as i32, "{t:?}");
    assert_eq!(transport.images(), [Bytes::from(v1.clone())]);

    let refused = |t: &pb::Task, code: pb::ErrorCode, words: &str| {
        assert_eq!(t.status, pb::UpgradeStatus::Failure as i32, "{t:?}");
        let e = t.error.as_ref().expect("an error");
        assert_eq!(e.code, code as i32, "{t:?}");
        assert!(e.message.contains(words), "{:?} lacks {words:?}", e.message);
        assert!(e.message.contains("nothing was sent"), "{e:?}");
    };

    // Unsigned: refused before anything is downloaded or sent.
    let v2 = app("1.2.0");
    let fw = upload_app_as(&op, &admin, "lamp", "1.2.0", &v2, None).await;
    let t = update_and_wait(&op, &admin, "home/lamp", &fw.id).await;
    refused(&t, pb::ErrorCode::PrevalidationFailed, "not signed");

    // Signed by someone else under the trusted key's name: refused.
    let v3 = app("1.3.0");
    let fw = upload_app_as(
        &op,
        &admin,
        "lamp",
        "1.3.0",
        &v3,
        Some(signature(&stranger, "release", &v3)),
    )
    .await;
    let t = update_and_wait(&op, &admin, "home/lamp", &fw.id).await;
    refused(&t, pb::ErrorCode::PrevalidationFailed, "does not verify");

    // Signed only by a key this site does not trust: refused.
    let v4 = app("1.4.0");
    let fw = upload_app_as(
        &op,
        &admin,
        "lamp",
        "1.4.0",
        &v4,
        Some(signature(&stranger, "other", &v4)),
    )
    .await;
    let t = update_and_wait(&op, &admin, "home/lamp", &fw.id).await;
    refused(&t, pb::ErrorCode::PrevalidationFailed, "does not trust");

    // Properly signed, but the bytes served are not the signed ones: the hash check refuses.
    let v5 = app("1.5.0");
    let fw = upload_app_as(
        &op,
        &admin,
        "lamp",
        "1.5.0",
        &v5,
        Some(signature(&release, "release", &v5)),
    )
    .await;
    let blob = server.app.blobs.path_of(&fw.sha256);
    let mut tampered = v5.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0xff;
    std::fs::write(&blob, &tampered).unwrap();
    let t = update_and_wait(&op, &admin, "home/lamp", &fw.id).await;
    refused(&t, pb::ErrorCode::ChecksumMismatch, "sha256");

    assert_eq!(
        transport.images().len(),
        1,
        "only the signed, untampered image reached the device"
    );
    stop.cancel();
    running.await.unwrap();
    server.shutdown().await.unwrap();
}
