//! Who may do what: TLS with agent certificates bound to their site, operator tokens with
//! roles, the bootstrap admin token, development mode, and every refusal on the way — each
//! against a real otad on loopback. Certificates are made here with rcgen; no key is checked in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use ota_firmware::Chip;
use ota_firmware::builders::EspAppBuilder;
use ota_proto::v1 as pb;
use ota_server::config::RateLimits;
use ota_server::core::Clock;
use ota_testkit::otad::{admin_token, config, files_under, plain_channel, start_server};
use ota_testkit::pki::{Pair, Pki, tls_channel, tls_config};
use ota_testkit::session::{AgentSession, hello_message, inventory};
use ota_testkit::site::{action, esphome};
use ota_testkit::upload::{CHUNK, app_meta, authed, upload_app_as, upload_messages};
use prost::Message as _;
use rcgen::{ExtendedKeyUsagePurpose, SanType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

fn system(ch: &Channel) -> pb::system_service_client::SystemServiceClient<Channel> {
    pb::system_service_client::SystemServiceClient::new(ch.clone())
}
fn access(ch: &Channel) -> pb::access_service_client::AccessServiceClient<Channel> {
    pb::access_service_client::AccessServiceClient::new(ch.clone())
}
fn devices(ch: &Channel) -> pb::device_service_client::DeviceServiceClient<Channel> {
    pb::device_service_client::DeviceServiceClient::new(ch.clone())
}
fn firmware(ch: &Channel) -> pb::firmware_service_client::FirmwareServiceClient<Channel> {
    pb::firmware_service_client::FirmwareServiceClient::new(ch.clone())
        .max_decoding_message_size(16 << 20)
}
fn events(ch: &Channel) -> pb::event_service_client::EventServiceClient<Channel> {
    pb::event_service_client::EventServiceClient::new(ch.clone())
}

async fn create_token(ch: &Channel, admin: &str, name: &str, role: pb::Role, ttl_s: u64) -> String {
    access(ch)
        .create_token(authed(
            pb::CreateTokenRequest {
                name: name.into(),
                role: role as i32,
                ttl_s,
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .token
}

async fn all_events(ch: &Channel, token: &str) -> Vec<pb::Event> {
    let request = if token.is_empty() {
        Request::new(pb::TailEventsRequest::default())
    } else {
        authed(pb::TailEventsRequest::default(), token)
    };
    events(ch)
        .tail(request)
        .await
        .unwrap()
        .into_inner()
        .map(|e| e.unwrap())
        .collect()
        .await
}

fn assert_unauthenticated<T: std::fmt::Debug>(r: Result<T, tonic::Status>) {
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_eq!(s.message(), "missing or invalid credentials");
}

fn assert_denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, message: &str) {
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert_eq!(s.message(), message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_need_a_valid_token_and_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Test CA");
    let cfg = tls_config(dir.path(), &pki);
    let server = start_server(cfg.clone(), Clock::new()).await;

    // The bootstrap admin token: a private file in the data directory.
    let token_file = dir.path().join("data/admin.token");
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let ch = tls_channel(server.addr, &pki.ca_pem(), None).await;
    // No token, a wrong secret for a real id, garbage, another scheme: the same answer.
    assert_unauthenticated(system(&ch).status(pb::StatusRequest {}).await);
    let (admin_id, _) = admin.split_once('.').unwrap();
    let wrong = format!("{admin_id}.{}", "0".repeat(64));
    assert_unauthenticated(
        system(&ch)
            .status(authed(pb::StatusRequest {}, &wrong))
            .await,
    );
    assert_unauthenticated(
        system(&ch)
            .status(authed(pb::StatusRequest {}, "nonsense"))
            .await,
    );
    let mut basic = Request::new(pb::StatusRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
    assert_unauthenticated(system(&ch).status(basic).await);

    let status = system(&ch)
        .status(authed(pb::StatusRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(status.tls && status.auth_required);
    let me = status.caller.unwrap();
    assert_eq!(
        (me.name.as_str(), me.role.as_str()),
        ("bootstrap-admin", "admin")
    );

    let viewer = create_token(&ch, &admin, "vera", pb::Role::Viewer, 0).await;
    let operator = create_token(&ch, &admin, "oscar", pb::Role::Operator, 0).await;
    let short = create_token(&ch, &admin, "temp", pb::Role::Operator, 3600).await;
    let short_created = Clock::new().now();
    // The one-hour token works from the start.
    let temp = system(&ch)
        .status(authed(pb::StatusRequest {}, &short))
        .await
        .unwrap()
        .into_inner()
        .caller
        .unwrap();
    assert_eq!(
        (temp.name.as_str(), temp.role.as_str()),
        ("temp", "operator")
    );

    let who = system(&ch)
        .status(authed(pb::StatusRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner()
        .caller
        .unwrap();
    assert_eq!((who.name.as_str(), who.role.as_str()), ("vera", "viewer"));

    // A viewer reads, but neither uploads, updates, starts rollouts nor hands out tokens.
    let app = EspAppBuilder::new(Chip::Esp32)
        .version("1.0.0")
        .payload_size(2000)
        .build();
    assert_denied(
        firmware(&ch)
            .upload(authed(
                futures::stream::iter(upload_messages(app_meta("app", "1.0.0", None), &app, CHUNK)),
                &viewer,
            ))
            .await,
        "this needs the admin role",
    );
    assert_denied(
        pb::rollout_service_client::RolloutServiceClient::new(ch.clone())
            .create(authed(
                pb::CreateRolloutRequest {
                    spec: Some(pb::RolloutSpec {
                        name: "everyone".into(),
                        firmware_id: "fw-0".into(),
                        ..Default::default()
                    }),
                    start: true,
                },
                &viewer,
            ))
            .await,
        "this needs the operator role",
    );
    assert_denied(
        pb::rollout_service_client::RolloutServiceClient::new(ch.clone())
            .start(authed(action("ro-1", ""), &viewer))
            .await,
        "this needs the operator role",
    );
    assert_denied(
        devices(&ch)
            .update(authed(
                pb::UpdateDeviceRequest {
                    device_id: "home/lamp".into(),
                    firmware_id: "fw-0".into(),
                    ..Default::default()
                },
                &viewer,
            ))
            .await,
        "this needs the operator role",
    );
    assert_denied(
        access(&ch)
            .create_token(authed(
                pb::CreateTokenRequest {
                    name: "mallory".into(),
                    role: pb::Role::Admin as i32,
                    ttl_s: 0,
                },
                &operator,
            ))
            .await,
        "this needs the admin role",
    );
    // An operator's upload is refused too; the admin's is recorded with its name.
    assert_denied(
        firmware(&ch)
            .upload(authed(
                futures::stream::iter(upload_messages(app_meta("app", "1.0.0", None), &app, CHUNK)),
                &operator,
            ))
            .await,
        "this needs the admin role",
    );
    let fw = upload_app_as(&ch, &admin, "app", "1.0.0", &app, None).await;
    assert_eq!(fw.created_by.unwrap().name, "bootstrap-admin");

    // Revoked tokens stop working; the last admin token cannot be revoked.
    let oscar_id = operator.split_once('.').unwrap().0.to_string();
    let revoked = access(&ch)
        .revoke_token(authed(pb::RevokeTokenRequest { id: oscar_id }, &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    assert_unauthenticated(
        system(&ch)
            .status(authed(pb::StatusRequest {}, &operator))
            .await,
    );
    let last = access(&ch)
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                id: admin_id.to_string(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(last.code(), Code::FailedPrecondition, "{last:?}");

    let listed = access(&ch)
        .list_tokens(authed(pb::ListTokensRequest {}, &admin))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), 4);

    // The log holds hashes and who did what, never a secret.
    let log = all_events(&ch, &admin).await;
    let secrets: Vec<&str> = [&admin, &viewer, &operator, &short]
        .iter()
        .map(|t| t.split_once('.').unwrap().1)
        .collect();
    for e in &log {
        for s in &secrets {
            assert!(!e.payload_json.contains(s), "a secret in {e:?}");
        }
    }
    let created: Vec<&pb::Event> = log.iter().filter(|e| e.r#type == "TokenCreated").collect();
    assert_eq!(created.len(), 4);
    assert_eq!(created[0].actor, "otad (system)");
    assert_eq!(created[1].actor, "bootstrap-admin (admin)");
    assert!(log.iter().any(|e| e.r#type == "TokenRevoked"));
    let registered = log
        .iter()
        .find(|e| e.r#type == "FirmwareRegistered")
        .unwrap();
    assert_eq!(registered.actor, "bootstrap-admin (admin)");

    // 59 minutes after it was made the one-hour token still works; two hours after, it has
    // expired while the others still work, and the admin token file is left alone.
    server.shutdown().await.unwrap();
    let at_59_min = Clock::starting_at(short_created + Duration::from_secs(59 * 60));
    let server = start_server(cfg.clone(), at_59_min).await;
    let ch = tls_channel(server.addr, &pki.ca_pem(), None).await;
    assert!(
        system(&ch)
            .status(authed(pb::StatusRequest {}, &short))
            .await
            .is_ok(),
        "the one-hour token expired before its hour"
    );
    server.shutdown().await.unwrap();
    let later = Clock::starting_at(short_created + Duration::from_secs(2 * 3600));
    let server = start_server(cfg, later).await;
    let ch = tls_channel(server.addr, &pki.ca_pem(), None).await;
    assert_unauthenticated(
        system(&ch)
            .status(authed(pb::StatusRequest {}, &short))
            .await,
    );
    assert!(
        system(&ch)
            .status(authed(pb::StatusRequest {}, &viewer))
            .await
            .is_ok()
    );
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        admin,
        "an admin token exists, so no new one is written"
    );
    server.shutdown().await.unwrap();
}

async fn connect_as(
    ch: &Channel,
    site: &str,
    agent_id: &str,
) -> Result<AgentSession, tonic::Status> {
    AgentSession::connect(ch, site, agent_id, 0)
        .await
        .map(|(s, _)| s)
}

async fn version_of(ch: &Channel, admin: &str, id: &str) -> Option<String> {
    devices(ch)
        .get(authed(pb::GetDeviceRequest { id: id.into() }, admin))
        .await
        .ok()
        .map(|d| d.into_inner().current.unwrap_or_default().version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_certificates_are_bound_to_their_site() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Test CA");
    let server = start_server(tls_config(dir.path(), &pki), Clock::new()).await;
    let admin = admin_token(&dir.path().join("data"));
    let ca = pki.ca_pem();
    let op = tls_channel(server.addr, &ca, None).await;
    let home_cert = pki.site("home");
    let home = tls_channel(server.addr, &ca, Some(&home_cert)).await;
    let away = tls_channel(server.addr, &ca, Some(&pki.site("away"))).await;

    // The home agent's session, and its device.
    let mut home_agent = connect_as(&home, "home", "agent-home").await.unwrap();
    home_agent
        .send(1, inventory(vec![esphome("lamp", "1.0.0")]))
        .await;
    home_agent.acked_through(1).await;
    assert_eq!(
        version_of(&op, &admin, "home/lamp").await.as_deref(),
        Some("1.0.0")
    );

    // The home certificate cannot open a session as another site, nor call operator RPCs.
    let err = connect_as(&home, "away", "agent-x").await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "these credentials are not valid for that site"
    );
    assert_denied(
        devices(&home).list(pb::ListDevicesRequest::default()).await,
        "agent credentials cannot call this",
    );
    assert_denied(
        system(&home).status(pb::StatusRequest {}).await,
        "agent credentials cannot call this",
    );
    assert_denied(
        access(&home).list_tokens(pb::ListTokensRequest {}).await,
        "agent credentials cannot call this",
    );
    // An operator token is no agent certificate.
    let err = AgentSession::open(
        &op,
        Some(&admin),
        hello_message("home", "agent-y", 0).encode_to_vec(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(err.message(), "agent sessions need an agent certificate");
    // A certificate of our CA that names no site, and none at all, identify nobody.
    let nameless = pki.issue(
        vec![SanType::DnsName("agent.example".try_into().unwrap())],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let nobody = tls_channel(server.addr, &ca, Some(&nameless)).await;
    assert_unauthenticated(connect_as(&nobody, "home", "agent-z").await);
    assert_unauthenticated(connect_as(&op, "home", "agent-z").await);
    // A certificate of another CA does not get through the handshake: the same client with a
    // certificate of our CA reaches otad (which answers that agents cannot call this), the
    // stranger's gets no answer from otad at all, only the TLS refusal: the alert, or the
    // connection closed or broken under it (whichever the client reads first), never a status.
    let status_as = |identity: Pair| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .domain_name("localhost")
            .identity(Identity::from_pem(&identity.cert, &identity.key))
            .timeout(Duration::from_secs(10));
        let addr = server.addr;
        async move {
            let ch = Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await?;
            system(&ch)
                .status(pb::StatusRequest {})
                .await
                .map_err(|s| -> Box<dyn std::error::Error> { Box::new(s) })?;
            Ok::<_, Box<dyn std::error::Error>>(())
        }
    };
    let ours = status_as(pki.site("home")).await.unwrap_err();
    let answered = ours.downcast_ref::<tonic::Status>().unwrap();
    assert_eq!(answered.message(), "agent credentials cannot call this");
    let err = status_as(Pki::new("Somebody else").site("home"))
        .await
        .expect_err("a foreign client certificate was accepted");
    let mut chain = format!("{err}");
    let mut source = err.source();
    while let Some(e) = source {
        chain.push_str(&format!(" / {e}"));
        source = e.source();
    }
    assert!(
        chain.contains("received fatal alert: UnknownCA") || chain.contains("transport error"),
        "not the TLS refusal: {chain}"
    );

    // The away agent reports "lamp": that is away/lamp; home/lamp does not change.
    let mut away_agent = connect_as(&away, "away", "agent-away").await.unwrap();
    away_agent
        .send(1, inventory(vec![esphome("lamp", "9.9.9")]))
        .await;
    away_agent.acked_through(1).await;
    assert_eq!(
        version_of(&op, &admin, "away/lamp").await.as_deref(),
        Some("9.9.9")
    );
    assert_eq!(
        version_of(&op, &admin, "home/lamp").await.as_deref(),
        Some("1.0.0")
    );

    // A task at home: the away agent's result for it is refused; home's own result counts.
    let app = EspAppBuilder::new(Chip::Esp32)
        .version("1.1.0")
        .payload_size(3000)
        .build();
    let fw = upload_app_as(&op, &admin, "lamp-fw", "1.1.0", &app, None).await;
    let task = devices(&op)
        .update(authed(
            pb::UpdateDeviceRequest {
                device_id: "home/lamp".into(),
                firmware_id: fw.id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let command = home_agent.command().await;
    let Some(pb::server_message::Body::Update(u)) = command.body else {
        panic!("expected the update command, got {command:?}");
    };
    assert_eq!(u.task_id, task.id);
    let result = |status: pb::UpgradeStatus| {
        pb::agent_message::Body::Result(pb::TaskResult {
            task_id: task.id.clone(),
            attempt: u.attempt,
            status: status as i32,
            to: Some(pb::VersionInfo {
                version: "1.1.0".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    away_agent.send(2, result(pb::UpgradeStatus::Success)).await;
    let (seq, why) = away_agent.refused().await;
    assert_eq!(seq, 2);
    assert!(why.contains("another site"), "{why}");
    let task_now = |ch: Channel, admin: String, id: String| async move {
        devices(&ch)
            .watch_task(authed(
                pb::WatchTaskRequest {
                    task_id: id,
                    device_id: String::new(),
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap()
    };
    let t = task_now(op.clone(), admin.clone(), task.id.clone()).await;
    assert_ne!(t.status, pb::UpgradeStatus::Success as i32, "{t:?}");

    // The agent certificate may download firmware (that is what agents do).
    let mut downloaded = Vec::new();
    let mut chunks = firmware(&home)
        .download(pb::DownloadFirmwareRequest {
            firmware_id: fw.id.clone(),
            offset: 0,
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(c) = chunks.message().await.unwrap() {
        downloaded.extend_from_slice(&c.data);
    }
    assert_eq!(downloaded, app);
    // Not so for another site's agent.
    assert_denied(
        firmware(&away)
            .download(pb::DownloadFirmwareRequest {
                firmware_id: fw.id.clone(),
                offset: 0,
                task_id: task.id.clone(),
            })
            .await,
        "no task at this site installs this firmware",
    );

    // A replayed report (same seq, different content) is applied once: in the same session it
    // breaks the session's rules (FAILED_PRECONDITION, not applied); after a reconnect the
    // welcome tells the agent to start above it.
    home_agent.send(2, result(pb::UpgradeStatus::Success)).await;
    home_agent.acked_through(2).await;
    home_agent
        .send(3, inventory(vec![esphome("lamp", "1.1.1")]))
        .await;
    home_agent.acked_through(3).await;
    home_agent
        .send(3, inventory(vec![esphome("lamp", "6.6.6")]))
        .await;
    let ended = home_agent.ended_with().await.1;
    assert_eq!(ended.code(), Code::FailedPrecondition, "{ended:?}");
    let mut home_agent = connect_as(&home, "home", "agent-home").await.unwrap();
    let t = task_now(op.clone(), admin.clone(), task.id.clone()).await;
    assert_eq!(t.status, pb::UpgradeStatus::Success as i32, "{t:?}");
    assert_eq!(
        version_of(&op, &admin, "home/lamp").await.as_deref(),
        Some("1.1.1")
    );
    let log = all_events(&op, &admin).await;
    let from_home_seq3 = log
        .iter()
        .filter(|e| e.stream == "device/home/lamp" && e.r#type == "DeviceReported")
        .filter(|e| e.payload_json.contains("\"seq\":3"))
        .count();
    assert_eq!(from_home_seq3, 1, "the replayed report was applied again");
    // Agents' events carry their site as the actor.
    assert!(log.iter().any(|e| e.actor == "agent:away (agent)"));

    // A check of home/lamp: the away agent's answer does not count, home's does.
    let check = |ch: Channel, admin: String| async move {
        devices(&ch)
            .check(authed(
                pb::CheckDeviceRequest {
                    device_id: "home/lamp".into(),
                    firmware_id: String::new(),
                    timeout_ms: 1500,
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner()
    };
    let pending = tokio::spawn(check(op.clone(), admin.clone()));
    let asked = home_agent.command().await;
    let Some(pb::server_message::Body::Check(c)) = asked.body else {
        panic!("expected a check, got {asked:?}");
    };
    let answer = pb::agent_message::Body::CheckResult(pb::CheckResult {
        check_id: c.check_id.clone(),
        device_local_id: "lamp".into(),
        reachable: true,
        device: Some(esphome("lamp", "1.1.0")),
        ..Default::default()
    });
    away_agent.send(0, answer.clone()).await;
    let timed_out = pending.await.unwrap();
    assert_eq!(
        timed_out.error.map(|e| e.code),
        Some(pb::ErrorCode::BulkCheckTimeout as i32),
        "another site answered a check of home/lamp"
    );
    let pending = tokio::spawn(check(op.clone(), admin.clone()));
    let asked = home_agent.command().await;
    let Some(pb::server_message::Body::Check(c)) = asked.body else {
        panic!("expected a check, got {asked:?}");
    };
    home_agent
        .send(
            0,
            pb::agent_message::Body::CheckResult(pb::CheckResult {
                check_id: c.check_id.clone(),
                device_local_id: "lamp".into(),
                reachable: true,
                device: Some(esphome("lamp", "1.1.0")),
                ..Default::default()
            }),
        )
        .await;
    let answered = pending.await.unwrap();
    assert!(answered.error.is_none(), "{answered:?}");
    assert!(answered.reachable);

    drop(home_agent);
    drop(away_agent);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn development_mode_is_explicit_and_ends_with_the_first_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(config(dir.path()), Clock::new()).await;
    let ch = plain_channel(server.addr).await;
    let s = system(&ch)
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!s.tls && !s.auth_required);
    assert_eq!(s.caller.unwrap().name, "local");
    assert!(
        !dir.path().join("admin.token").exists(),
        "no bootstrap without TLS"
    );
    // `otactl --as bob`: an administrator named bob (four eyes without tokens); reserved and
    // malformed names are refused.
    let as_dev = |name: &str| {
        let mut r = Request::new(pb::StatusRequest {});
        r.metadata_mut()
            .insert("x-ota-dev-actor", name.parse().unwrap());
        r
    };
    let bob = system(&ch)
        .status(as_dev("bob"))
        .await
        .unwrap()
        .into_inner();
    let bob = bob.caller.unwrap();
    assert_eq!((bob.name.as_str(), bob.role.as_str()), ("bob", "admin"));
    for bad in ["local", "otad", "a b", ""] {
        let e = system(&ch).status(as_dev(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(
            e.message()
                .starts_with("--as (x-ota-dev-actor) needs a name"),
            "{e:?}"
        );
    }
    // Development agents need no certificate.
    let agent = connect_as(&ch, "home", "agent-1").await.unwrap();
    drop(agent);
    // A presented token is checked even here.
    assert_unauthenticated(
        system(&ch)
            .status(authed(pb::StatusRequest {}, "tok-1.x"))
            .await,
    );

    let token = access(&ch)
        .create_token(pb::CreateTokenRequest {
            name: "alice".into(),
            role: pb::Role::Admin as i32,
            ttl_s: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_unauthenticated(system(&ch).status(pb::StatusRequest {}).await);
    assert_unauthenticated(connect_as(&ch, "home", "agent-1").await);
    let s = system(&ch)
        .status(authed(pb::StatusRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert!(!s.tls && s.auth_required);
    assert_eq!(s.caller.unwrap().name, "alice");
    // Outside development mode only credentials say who calls.
    let e = system(&ch).status(as_dev("bob")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("only in development mode"), "{e:?}");
    server.shutdown().await.unwrap();
}

/// A message whose field 1 is a number where the real requests have a string or a message.
#[derive(Clone, PartialEq, prost::Message)]
struct Evil {
    #[prost(uint64, tag = "1")]
    one: u64,
    #[prost(uint64, tag = "2")]
    two: u64,
}

#[tokio::test]
async fn malformed_oversized_and_unknown_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_message_bytes = 64 * 1024;
    let server = start_server(cfg, Clock::new()).await;
    let ch = plain_channel(server.addr).await;

    // Malformed protobuf, unary: InvalidArgument (tonic alone says Internal).
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<Evil, Evil, _>(
            Request::new(Evil { one: 7, two: 0 }),
            http::uri::PathAndQuery::from_static("/ota.v1.DeviceService/Get"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("malformed request"), "{err:?}");

    // Malformed protobuf as the first message of an agent session.
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let err = grpc
        .streaming::<_, Evil, Evil, _>(
            Request::new(futures::stream::iter(vec![Evil { one: 1, two: 5 }])),
            http::uri::PathAndQuery::from_static("/ota.v1.AgentService/Connect"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Unknown enum values.
    let err = devices(&ch)
        .list(pb::ListDevicesRequest {
            transport: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "transport has the unknown value 42");

    // Larger than max_message_bytes.
    let err = devices(&ch)
        .batch_check(pb::BatchCheckRequest {
            device_ids: vec!["home/".to_string() + &"x".repeat(100); 1000],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Path-like names: refused, and nothing is left behind.
    let outside_log = |d: &Path| -> Vec<PathBuf> {
        files_under(d)
            .into_iter()
            .filter(|p| !p.starts_with(d.join("events")))
            .collect()
    };
    let before = outside_log(dir.path());
    let app = EspAppBuilder::new(Chip::Esp32).payload_size(1000).build();
    let err = firmware(&ch)
        .upload(futures::stream::iter(upload_messages(
            app_meta("../../etc/passwd", "1", None),
            &app,
            CHUNK,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("no paths"), "{err:?}");
    let err = firmware(&ch)
        .upload(futures::stream::iter(upload_messages(
            app_meta("ok", "../1", None),
            &app,
            CHUNK,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(outside_log(dir.path()), before);
    assert!(
        all_events(&ch, "").await.is_empty(),
        "refused requests recorded nothing"
    );

    // An oversized upload stream stops at max_firmware_bytes (4 MiB here) and leaves nothing.
    server.shutdown().await.unwrap();
    let mut cfg = config(dir.path());
    cfg.max_firmware_bytes = 100_000;
    let server = start_server(cfg, Clock::new()).await;
    let ch = plain_channel(server.addr).await;
    let big = EspAppBuilder::new(Chip::Esp32)
        .payload_size(150_000)
        .build();
    let err = firmware(&ch)
        .upload(futures::stream::iter(upload_messages(
            app_meta("big", "1", None),
            &big,
            CHUNK,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(all_events(&ch, "").await.is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn expensive_calls_are_rate_limited_per_caller() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.rate_limits = RateLimits {
        batch_check: 2,
        ..RateLimits::default()
    };
    let server = start_server(cfg, Clock::new()).await;
    let ch = plain_channel(server.addr).await;
    // Two callers: alice (the first token, made in development mode) and bob.
    let alice = access(&ch)
        .create_token(pb::CreateTokenRequest {
            name: "alice".into(),
            role: pb::Role::Admin as i32,
            ttl_s: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let bob = create_token(&ch, &alice, "bob", pb::Role::Operator, 0).await;
    async fn ask(
        ch: &Channel,
        token: &str,
    ) -> Result<tonic::Response<pb::BatchCheckResponse>, tonic::Status> {
        devices(ch)
            .batch_check(authed(
                pb::BatchCheckRequest {
                    device_ids: vec!["home/nothing".into()],
                    ..Default::default()
                },
                token,
            ))
            .await
    }
    fn not_limited<T>(r: &Result<T, tonic::Status>) -> bool {
        r.as_ref()
            .err()
            .is_none_or(|e| e.code() != Code::ResourceExhausted)
    }
    for _ in 0..2 {
        assert!(not_limited(&ask(&ch, &alice).await));
    }
    let err = ask(&ch, &alice).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        err.message(),
        "too many requests of this kind; try again in 30s"
    );
    // Another caller has buckets of its own; alice's stays empty meanwhile.
    for _ in 0..2 {
        assert!(
            not_limited(&ask(&ch, &bob).await),
            "bob was limited by alice's calls"
        );
    }
    assert_eq!(
        ask(&ch, &bob).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    assert_eq!(
        ask(&ch, &alice).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Other RPCs are not affected.
    let other = devices(&ch)
        .check(authed(
            pb::CheckDeviceRequest {
                device_id: "home/nothing".into(),
                ..Default::default()
            },
            &alice,
        ))
        .await;
    assert!(not_limited(&other), "Check was limited too");
    server.shutdown().await.unwrap();
}

fn rollouts(ch: &Channel) -> pb::rollout_service_client::RolloutServiceClient<Channel> {
    pb::rollout_service_client::RolloutServiceClient::new(ch.clone())
}

/// Four eyes (`require_approval`): a rollout starts only after an operator or admin other than
/// its creator approved it; a viewer can neither approve nor deny; a denial ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_needs_approval_starts_only_after_another_operator_approved_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Test CA");
    let mut cfg = tls_config(dir.path(), &pki);
    cfg.require_approval = true;
    let server = start_server(cfg, Clock::new()).await;
    let admin = admin_token(&dir.path().join("data"));
    let ch = tls_channel(server.addr, &pki.ca_pem(), None).await;
    let alice = create_token(&ch, &admin, "alice", pb::Role::Operator, 0).await;
    let bob = create_token(&ch, &admin, "bob", pb::Role::Operator, 0).await;
    let vera = create_token(&ch, &admin, "vera", pb::Role::Viewer, 0).await;
    let app = EspAppBuilder::new(Chip::Esp32).version("2.0.0").build();
    let fw = upload_app_as(&ch, &admin, "app", "2.0.0", &app, None).await;
    let spec = pb::RolloutSpec {
        name: "spring".into(),
        firmware_id: fw.id.clone(),
        stages: vec![pb::Stage {
            name: "all".into(),
            size: Some(pb::stage::Size::CumulativePercent(100.0)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let create = |token: &str| {
        authed(
            pb::CreateRolloutRequest {
                spec: Some(spec.clone()),
                start: true,
            },
            token,
        )
    };

    // Asked to start at once, it stays a draft that waits for approval.
    let r = rollouts(&ch)
        .create(create(&alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, pb::RolloutState::Draft as i32);
    let approval = r.approval.clone().expect("approval in the rollout");
    assert_eq!(approval.state, pb::approval::State::Pending as i32);
    assert_eq!(approval.required_by, "otad setting require_approval");
    assert!(r.spec.as_ref().unwrap().require_approval);

    let e = rollouts(&ch)
        .start(authed(action(&r.id, ""), &alice))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains("needs the approval of another operator"),
        "{e:?}"
    );

    // Not by its creator, not by a viewer, not without a reason.
    let e = rollouts(&ch)
        .approve(authed(action(&r.id, "looks fine"), &alice))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().starts_with("you created rollout"), "{e:?}");
    assert_denied(
        rollouts(&ch)
            .approve(authed(action(&r.id, "looks fine"), &vera))
            .await,
        "this needs the operator role",
    );
    assert_denied(
        rollouts(&ch).deny(authed(action(&r.id, "no"), &vera)).await,
        "this needs the operator role",
    );
    let e = rollouts(&ch)
        .approve(authed(action(&r.id, "  "), &bob))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let approved = rollouts(&ch)
        .approve(authed(action(&r.id, "release notes read"), &bob))
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(approved.state, pb::approval::State::Approved as i32);
    assert_eq!(approved.decided_by.unwrap().name, "bob");
    assert_eq!(approved.reason, "release notes read");
    let e = rollouts(&ch)
        .deny(authed(action(&r.id, "too late"), &admin))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("already approved by bob (operator)"),
        "{e:?}"
    );
    let started = rollouts(&ch)
        .start(authed(action(&r.id, ""), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(started.state, pb::RolloutState::Draft as i32);

    // A denial ends the rollout; it can never start.
    let r2 = rollouts(&ch)
        .create(create(&alice))
        .await
        .unwrap()
        .into_inner();
    let denied = rollouts(&ch)
        .deny(authed(action(&r2.id, "not before the holidays"), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.state, pb::RolloutState::Aborted as i32);
    assert_eq!(
        denied.state_reason,
        "denied by bootstrap-admin (admin): not before the holidays"
    );
    let e = rollouts(&ch)
        .start(authed(action(&r2.id, ""), &alice))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Who approved and why is in the log.
    let approvals: Vec<pb::Event> = events(&ch)
        .tail(authed(
            pb::TailEventsRequest {
                types: vec!["RolloutApproved".into(), "RolloutDenied".into()],
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .filter_map(|e| async move { e.ok() })
        .collect()
        .await;
    let seen: Vec<(&str, &str)> = approvals
        .iter()
        .map(|e| (e.r#type.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("RolloutApproved", "bob (operator)"),
            ("RolloutDenied", "bootstrap-admin (admin)")
        ]
    );
}
