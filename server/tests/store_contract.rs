//! The `EventStore` contract (the cases in `ota_testkit::store_contract`), run against the
//! memory store and sled. The conformance tier runs the same cases against PostgreSQL
//! (`conformance/tests/postgres_store.rs`).
//!
//! Sled-only behaviour (durability, recovery, corruption, crashes) is in `store_sled.rs`.

use std::sync::Arc;

use ota_server::store::{
    EventStore, ExpectedVersion, MemEventStore, SledEventStore, SledOptions, StoreError,
};
use ota_testkit::store_contract::{next_event, one};
use tempfile::TempDir;

struct Fixture {
    store: Arc<dyn EventStore>,
    _dir: Option<TempDir>,
}

impl Fixture {
    fn mem() -> Self {
        Fixture {
            store: Arc::new(MemEventStore::new()),
            _dir: None,
        }
    }

    fn sled() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SledEventStore::open(dir.path().join("events"), SledOptions::default()).unwrap();
        Fixture {
            store: Arc::new(store),
            _dir: Some(dir),
        }
    }
}

mod mem {
    ota_testkit::store_contract_tests!(super::Fixture::mem());
}

mod sled {
    ota_testkit::store_contract_tests!(super::Fixture::sled());
}

/// Dropping the store ends its subscriptions with `Closed` (mem: the last handle).
#[tokio::test]
async fn mem_subscription_ends_when_store_dropped() {
    let store = MemEventStore::new();
    store
        .append(one("a", ExpectedVersion::Any, b""))
        .await
        .unwrap();
    let mut sub = store.subscribe(0);
    assert_eq!(next_event(&mut sub).await.seq, 1);
    drop(store);
    assert!(matches!(sub.next().await, Some(Err(StoreError::Closed))));
    assert!(sub.next().await.is_none());
}
