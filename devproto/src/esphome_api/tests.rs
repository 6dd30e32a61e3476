//! Tests across the API modules: golden bytes of both framings, a two-party exchange over every
//! combination of keys, an independent Noise initiator (snow, driven by hand) against the
//! device machine, and properties (arbitrary bytes never panic either machine; arbitrary
//! chunking never changes the outcome).

use bytes::BytesMut;
use proptest::prelude::*;

use super::client::{ApiError, Client, ClientConfig, ClientEvent, ClientState};
use super::frame;
use super::message::{
    DeviceInfoResponse, ListEntitiesSensorResponse, Message, SensorStateResponse,
};
use super::noise;
use super::server::{Server, ServerConfig, ServerEvent, ServerState};
use crate::esphome::NoiseKey;

const CLIENT_ENTROPY: [u8; 32] = [0xC1; 32];
const SERVER_ENTROPY: [u8; 32] = [0xD2; 32];
const KEY: [u8; 32] = [0x42; 32];
const MAC: [u8; 6] = [0xAC, 0xBC, 0x32, 0x89, 0x0E, 0xA9];

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).expect("hex in a test")
}

fn server_config(key: Option<[u8; 32]>) -> ServerConfig {
    ServerConfig {
        name: "kitchen".into(),
        mac: MAC,
        server_info: "2026.10.0".into(),
        noise_key: key.map(NoiseKey::new),
        device_info: DeviceInfoResponse {
            esphome_version: "2026.10.0".into(),
            compilation_time: "Nov 24 2026, 08:00:00".into(),
            model: "esp32dev".into(),
            project_name: "acme.plug".into(),
            project_version: "1.2.3".into(),
            manufacturer: "Espressif".into(),
            friendly_name: "Kitchen".into(),
            ..DeviceInfoResponse::default()
        },
        sensors: vec![ListEntitiesSensorResponse {
            object_id: "uptime".into(),
            key: 77,
            name: "Uptime".into(),
            unit_of_measurement: "s".into(),
            device_class: "duration".into(),
            state_class: 2,
            entity_category: 2,
            ..Default::default()
        }],
    }
}

fn client_config(key: Option<[u8; 32]>) -> ClientConfig {
    ClientConfig {
        client_info: "ota-agent".into(),
        noise_key: key.map(NoiseKey::new),
    }
}

fn drain_client(c: &mut Client) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = c.poll_transmit() {
        out.extend_from_slice(&b);
    }
    out
}

fn drain_server(s: &mut Server) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = s.poll_transmit() {
        out.extend_from_slice(&b);
    }
    out
}

/// What a probe ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Info(Box<DeviceInfoResponse>),
    Failed(ApiError),
}

/// Runs a whole probe (hello, device info, disconnect) between the two machines, handing the
/// bytes over in pieces of `chunk` bytes. Returns the outcome and the full transcript.
fn probe(client: ClientConfig, server: ServerConfig, chunk: usize) -> (Outcome, Vec<u8>, Vec<u8>) {
    let mut c = Client::new(client, CLIENT_ENTROPY);
    let mut s = Server::new(server, SERVER_ENTROPY);
    let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
    let mut info = None;
    for _round in 0..50 {
        let out = drain_client(&mut c);
        c2s.extend_from_slice(&out);
        for piece in out.chunks(chunk.max(1)) {
            s.handle_input(piece);
        }
        let back = drain_server(&mut s);
        s2c.extend_from_slice(&back);
        for piece in back.chunks(chunk.max(1)) {
            if let Err(e) = c.handle_input(piece) {
                return (Outcome::Failed(e), c2s, s2c);
            }
        }
        if s.is_closed() && back.is_empty() {
            match c.handle_eof() {
                Ok(()) => {}
                Err(e) => return (Outcome::Failed(e), c2s, s2c),
            }
        }
        while let Some(ev) = c.poll_event() {
            match ev {
                ClientEvent::Connected(_) => c.send(&Message::DeviceInfoRequest).unwrap(),
                ClientEvent::Message(Message::DeviceInfoResponse(i)) => {
                    info = Some(i);
                    c.disconnect();
                }
                ClientEvent::Disconnected => {
                    return (
                        Outcome::Info(info.expect("device info before the disconnect")),
                        c2s,
                        s2c,
                    );
                }
                _ => {}
            }
        }
    }
    panic!("no outcome after 50 rounds: client {:?}, server {:?}", c, s);
}

#[test]
fn plaintext_transcript_byte_for_byte() {
    let (outcome, c2s, s2c) = probe(client_config(None), server_config(None), usize::MAX);
    let Outcome::Info(info) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(info.project_version, "1.2.3");
    assert_eq!(info.mac_address, "AC:BC:32:89:0E:A9");
    assert!(!info.api_encryption_supported);
    assert_eq!(
        c2s,
        h("00 0f 01  0a 09 6f74612d6167656e74 10 01 18 13
           00 00 09
           00 00 05")
    );
    let hello_response = h("00 18 02  08 01 10 13 1a 09 323032362e31302e30 22 07 6b69746368656e");
    assert!(s2c.starts_with(&hello_response), "{}", hex::encode(&s2c));
    let rest = &s2c[hello_response.len()..];
    let mut b = BytesMut::from(rest);
    let info_frame = frame::decode_plaintext(&mut b).unwrap().unwrap();
    assert_eq!(info_frame.msg_type, 10);
    assert_eq!(&b[..], &[0x00, 0x00, 0x06], "then the DisconnectResponse");
}

#[test]
fn noise_transcript_is_deterministic_and_framed_as_esphome_does() {
    let (outcome, c2s, s2c) = probe(
        client_config(Some(KEY)),
        server_config(Some(KEY)),
        usize::MAX,
    );
    let Outcome::Info(info) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(info.project_version, "1.2.3");
    assert!(info.api_encryption_supported);
    // Client: empty client hello, then `00 ‖ message 1` (32-byte ephemeral key + 16-byte tag).
    assert_eq!(&c2s[..6], &h("01 00 00  01 00 31")[..]);
    assert_eq!(c2s[6], 0x00);
    // Device: server hello with name and MAC, then `00 ‖ message 2`.
    let server_hello = h("01 00 16 01 6b69746368656e 00 616362633332383930656139 00");
    assert_eq!(&s2c[..server_hello.len()], &server_hello[..]);
    assert_eq!(&s2c[25..29], &h("01 00 31 00")[..]);
    // Fixed entropy, fixed key: the same bytes on every run.
    let (_, c2s_again, s2c_again) = probe(
        client_config(Some(KEY)),
        server_config(Some(KEY)),
        usize::MAX,
    );
    assert_eq!((c2s_again, s2c_again), (c2s.clone(), s2c.clone()));
    assert_eq!(hex::encode(&c2s[7..55]), GOLDEN_NOISE_MSG1);
    // Encrypted HelloRequest: 4-byte header + 15-byte payload + 16-byte tag.
    assert_eq!(&c2s[55..58], &h("01 00 23")[..]);
}

/// Noise message 1 of the client with [`CLIENT_ENTROPY`] and [`KEY`]: a regression pin of the
/// ephemeral key derivation and the handshake hash.
const GOLDEN_NOISE_MSG1: &str = "e87095cefa415dbf4efbcaccd7ea128f754ccdf291a83ded5d128e6a3711787f6ead3fc2b9faeba046e8704a2cbceac1";

#[test]
fn every_key_combination() {
    let other = [0x24; 32];
    type Key = Option<[u8; 32]>;
    let cases: [(Key, Key, Result<(), ApiError>); 5] = [
        (None, None, Ok(())),
        (Some(KEY), Some(KEY), Ok(())),
        (Some(other), Some(KEY), Err(ApiError::WrongKey)),
        (None, Some(KEY), Err(ApiError::EncryptionRequired)),
        (Some(KEY), None, Err(ApiError::DevicePlaintextOnly)),
    ];
    for (client_key, server_key, want) in cases {
        for chunk in [1, 2, 3, 7, usize::MAX] {
            let (outcome, _, _) =
                probe(client_config(client_key), server_config(server_key), chunk);
            match (&want, outcome) {
                (Ok(()), Outcome::Info(info)) => assert_eq!(info.name, "kitchen"),
                (Err(e), Outcome::Failed(got)) => assert_eq!(&got, e, "chunk {chunk}"),
                (want, got) => panic!(
                    "{client_key:?}/{server_key:?} chunk {chunk}: want {want:?}, got {got:?}"
                ),
            }
        }
    }
}

#[test]
fn errors_say_what_to_do_and_never_show_the_key() {
    for e in [
        ApiError::WrongKey,
        ApiError::EncryptionRequired,
        ApiError::DevicePlaintextOnly,
    ] {
        let text = e.to_string();
        assert!(text.contains("key"), "{text}");
        assert!(!text.contains("42424242"), "{text}");
    }
    let c = Client::new(client_config(Some(KEY)), CLIENT_ENTROPY);
    assert!(!format!("{c:?}").contains("42"), "{c:?}");
}

/// An initiator written directly against snow (not the client machine) completes the
/// handshake with the device machine and reads its answers: the prologue, the frame layout and
/// the data header are what any Noise NNpsk0 client would use.
#[test]
fn independent_initiator_against_the_device() {
    let params: snow::params::NoiseParams = noise::PROTOCOL.parse().unwrap();
    let mut init = snow::Builder::new(params)
        .psk(0, &KEY)
        .unwrap()
        .prologue(b"NoiseAPIInit\x00\x00")
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut msg1 = vec![0u8; 64];
    let n = init.write_message(&[], &mut msg1).unwrap();
    let mut wire = vec![0x01, 0x00, 0x00, 0x01, 0x00, (n + 1) as u8, 0x00];
    wire.extend_from_slice(&msg1[..n]);
    let mut s = Server::new(server_config(Some(KEY)), SERVER_ENTROPY);
    s.handle_input(&wire);
    let mut back = BytesMut::from(&drain_server(&mut s)[..]);
    let hello = frame::decode_noise_frame(&mut back, 128).unwrap().unwrap();
    assert_eq!(&hello[..], b"\x01kitchen\x00acbc32890ea9\x00");
    let hs = frame::decode_noise_frame(&mut back, 128).unwrap().unwrap();
    assert_eq!(hs[0], 0x00);
    let mut scratch = vec![0u8; 64];
    init.read_message(&hs[1..], &mut scratch).unwrap();
    let mut t = init.into_transport_mode().unwrap();
    let mut send = |plain: &[u8]| {
        let mut ct = vec![0u8; plain.len() + 16];
        let n = t.write_message(plain, &mut ct).unwrap();
        let mut f = BytesMut::new();
        frame::encode_noise_frame(&ct[..n], &mut f);
        f
    };
    let hello_req = send(&frame::noise_data(
        1,
        &Message::HelloRequest(Default::default()).payload(),
    ));
    let info_req = send(&frame::noise_data(9, &[]));
    s.handle_input(&hello_req);
    s.handle_input(&info_req);
    assert_eq!(s.state(), ServerState::Connected);
    let mut back = BytesMut::from(&drain_server(&mut s)[..]);
    let mut types = Vec::new();
    while let Some(ct) = frame::decode_noise_frame(&mut back, 0xFFFF).unwrap() {
        let mut pt = vec![0u8; ct.len()];
        let n = t.read_message(&ct, &mut pt).unwrap();
        let raw = frame::parse_noise_data(&pt[..n]).unwrap();
        types.push(raw.msg_type);
        if raw.msg_type == 10 {
            let Message::DeviceInfoResponse(info) = Message::decode(10, &raw.payload).unwrap()
            else {
                unreachable!()
            };
            assert_eq!(info.project_version, "1.2.3");
        }
    }
    assert_eq!(types, vec![2, 10]);
}

#[test]
fn device_answers_wrong_or_plaintext_clients_like_esphome() {
    // A plaintext client at an encrypted device: a reject frame, then close.
    let mut s = Server::new(server_config(Some(KEY)), SERVER_ENTROPY);
    s.handle_input(&h("00 00 09"));
    assert!(s.is_closed());
    assert_eq!(
        drain_server(&mut s),
        b"\x01\x00\x13\x01Bad indicator byte".to_vec()
    );
    // An encrypting client at a plaintext device: `00` and a hint, then close.
    let mut s = Server::new(server_config(None), SERVER_ENTROPY);
    s.handle_input(&h("01 00 00"));
    assert!(s.is_closed());
    assert_eq!(drain_server(&mut s), b"\x00Bad indicator byte".to_vec());
    // Device info before hello: closed without an answer.
    let mut s = Server::new(server_config(None), SERVER_ENTROPY);
    s.handle_input(&h("00 00 09"));
    assert!(s.is_closed());
    assert!(drain_server(&mut s).is_empty());
    // A ping is answered at any time; unknown messages after hello are ignored.
    let mut s = Server::new(server_config(None), SERVER_ENTROPY);
    s.handle_input(&h("00 00 07  00 00 01  00 00 0b  00 00 07"));
    assert_eq!(s.state(), ServerState::Connected);
    let out = drain_server(&mut s);
    assert!(out.starts_with(&h("00 00 08  00 18 02")));
    assert!(out.ends_with(&h("00 00 08")));
}

#[test]
fn client_answers_pings_and_device_disconnects() {
    let mut c = Client::new(client_config(None), CLIENT_ENTROPY);
    drain_client(&mut c);
    c.handle_input(&h("00 00 07")).unwrap();
    assert_eq!(drain_client(&mut c), h("00 00 08"), "pong before the hello");
    c.handle_input(&h("00 04 02 08 01 10 13")).unwrap();
    assert!(c.is_ready());
    c.handle_input(&h("00 00 05")).unwrap();
    assert_eq!(drain_client(&mut c), h("00 00 06"));
    assert_eq!(c.state(), ClientState::Closed);
    assert!(c.handle_eof().is_ok());
    // A device that refuses before the hello (provisioning closed).
    let mut c = Client::new(client_config(None), CLIENT_ENTROPY);
    assert_eq!(
        c.handle_input(&h("00 02 05 08 07")),
        Err(ApiError::Refused { reason: 7 })
    );
    // API major version 2 is refused.
    let mut c = Client::new(client_config(None), CLIENT_ENTROPY);
    assert!(matches!(
        c.handle_input(&h("00 02 02 08 02")),
        Err(ApiError::ApiVersion { major: 2, .. })
    ));
    // A close or a timeout before the answer.
    let mut c = Client::new(client_config(None), CLIENT_ENTROPY);
    assert_eq!(
        c.handle_eof(),
        Err(ApiError::ConnectionClosed {
            waiting: ClientState::AwaitHelloResponse
        })
    );
    let mut c = Client::new(client_config(Some(KEY)), CLIENT_ENTROPY);
    assert_eq!(
        c.handle_timeout(),
        Err(ApiError::Timeout {
            waiting: ClientState::AwaitServerHello
        })
    );
    assert!(c.send(&Message::DeviceInfoRequest).is_err());
}

#[test]
fn sensors_are_listed_and_states_sent_by_the_driver() {
    let mut c = Client::new(client_config(None), CLIENT_ENTROPY);
    let mut s = Server::new(server_config(None), SERVER_ENTROPY);
    let exchange = |c: &mut Client, s: &mut Server| {
        s.handle_input(&drain_client(c));
        c.handle_input(&drain_server(s)).unwrap();
        let mut got = Vec::new();
        while let Some(ev) = c.poll_event() {
            got.push(ev);
        }
        got
    };
    exchange(&mut c, &mut s);
    assert!(matches!(s.poll_event(), Some(ServerEvent::Hello(_))));
    c.send(&Message::ListEntitiesRequest).unwrap();
    let got = exchange(&mut c, &mut s);
    let [
        ClientEvent::Message(Message::ListEntitiesSensorResponse(sensor)),
        ClientEvent::Message(Message::ListEntitiesDoneResponse),
    ] = got.as_slice()
    else {
        panic!("{got:?}");
    };
    assert!(sensor.is_uptime());
    c.send(&Message::SubscribeStatesRequest).unwrap();
    assert!(exchange(&mut c, &mut s).is_empty());
    assert_eq!(
        s.poll_event(),
        Some(ServerEvent::Served("ListEntitiesRequest"))
    );
    assert_eq!(s.poll_event(), Some(ServerEvent::SubscribeStates));
    s.send_state(SensorStateResponse {
        key: 77,
        state: 42.0,
        missing_state: false,
    });
    c.handle_input(&drain_server(&mut s)).unwrap();
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Message(Message::SensorStateResponse(
            SensorStateResponse {
                key: 77,
                state: 42.0,
                missing_state: false,
            }
        )))
    );
}

proptest! {
    #[test]
    fn machines_never_panic_on_arbitrary_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        noise in any::<bool>(),
        prefix_hello in any::<bool>(),
    ) {
        let key = noise.then_some(KEY);
        let mut c = Client::new(client_config(key), CLIENT_ENTROPY);
        let _ = c.handle_input(&data);
        let _ = c.handle_eof();
        let mut s = Server::new(server_config(key), SERVER_ENTROPY);
        if prefix_hello {
            let mut real = Client::new(client_config(key), CLIENT_ENTROPY);
            s.handle_input(&drain_client(&mut real));
        }
        s.handle_input(&data);
        s.handle_eof();
        prop_assert!(s.is_closed());
    }

    #[test]
    fn chunking_never_changes_the_outcome(chunk in 1usize..80, noise in any::<bool>()) {
        let key = noise.then_some(KEY);
        let (whole, _, _) = probe(client_config(key), server_config(key), usize::MAX);
        let (pieces, _, _) = probe(client_config(key), server_config(key), chunk);
        prop_assert_eq!(whole, pieces);
    }
}
