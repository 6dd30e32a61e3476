//! The embedded broker is a real MQTT broker: retained messages, QoS 1 delivery, username and
//! password, stop/restart on the same port (an empty broker again).

use std::time::Duration;

use ota_sim::broker::{BrokerConfig, EmbeddedBroker};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::time::timeout;

fn client(broker: &EmbeddedBroker, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, broker.host(), broker.port());
    o.set_keep_alive(Duration::from_secs(5));
    AsyncClient::new(o, 64)
}

/// Polls until a publish arrives (or the connection fails).
async fn next_publish(ev: &mut EventLoop) -> rumqttc::Publish {
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => return p,
            Ok(_) => {}
            Err(e) => panic!("connection error: {e}"),
        }
    }
}

async fn wait_connack(ev: &mut EventLoop) -> Result<(), String> {
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[tokio::test]
async fn retained_and_qos1_messages_are_delivered() {
    let broker = EmbeddedBroker::start().unwrap();
    let (publ, mut pev) = client(&broker, "publisher");
    wait_connack(&mut pev).await.unwrap();
    publ.publish(
        "z/bridge/state",
        QoS::AtLeastOnce,
        true,
        r#"{"state":"online"}"#,
    )
    .await
    .unwrap();
    // Drive the publisher until its PUBACK arrives.
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = pev.poll().await.unwrap() {
            break;
        }
    }
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });

    // A late subscriber gets the retained message, flagged retained.
    let (sub, mut sev) = client(&broker, "subscriber");
    sub.subscribe("z/#", QoS::AtLeastOnce).await.unwrap();
    let p = timeout(Duration::from_secs(10), next_publish(&mut sev))
        .await
        .unwrap();
    assert_eq!(p.topic, "z/bridge/state");
    assert!(p.retain);
    assert_eq!(&p.payload[..], br#"{"state":"online"}"#);

    // Live QoS 1 messages arrive in order, QoS 1.
    for i in 0..20 {
        publ.publish("z/n", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for i in 0..20 {
        let p = timeout(Duration::from_secs(10), next_publish(&mut sev))
            .await
            .unwrap();
        assert_eq!((p.topic.as_str(), p.qos), ("z/n", QoS::AtLeastOnce));
        assert_eq!(&p.payload[..], format!("{i}").as_bytes());
    }
}

#[tokio::test]
async fn restart_is_an_empty_broker_on_the_same_port() {
    let mut broker = EmbeddedBroker::start().unwrap();
    let port = broker.port();
    let (c, mut ev) = client(&broker, "c1");
    wait_connack(&mut ev).await.unwrap();
    c.publish("r/x", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.unwrap() {
            break;
        }
    }
    broker.stop();
    // The client sees its connection end.
    let err = timeout(Duration::from_secs(10), async {
        loop {
            if let Err(e) = ev.poll().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    drop(err);
    broker.restart().unwrap();
    assert_eq!(broker.port(), port);
    let (c2, mut ev2) = client(&broker, "c2");
    c2.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    c2.publish("r/live", QoS::AtLeastOnce, false, "new")
        .await
        .unwrap();
    let p = timeout(Duration::from_secs(10), next_publish(&mut ev2))
        .await
        .unwrap();
    // The retained message of the old broker is gone; the live one arrives.
    assert_eq!(p.topic, "r/live");
}

#[tokio::test]
async fn credentials_are_enforced() {
    let broker = EmbeddedBroker::start_with(BrokerConfig {
        credentials: Some(("agent".into(), "s3cret".into())),
        ..BrokerConfig::default()
    })
    .unwrap();
    let (_c, mut ev) = client(&broker, "anon");
    assert!(wait_connack(&mut ev).await.is_err());
    let mut o = MqttOptions::new("authed", broker.host(), broker.port());
    o.set_credentials("agent", "s3cret");
    let (_c, mut ev) = AsyncClient::new(o, 8);
    wait_connack(&mut ev).await.unwrap();
}
