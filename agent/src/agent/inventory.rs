//! The site's devices as otad sees them: the inventory on the wire, its changes journaled as
//! reports (full only when every transport knows its whole list), and probes on request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ota_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::report;
use crate::transport::{DeviceReport, Transport};

use crate::sync::LockExt;

use super::Agent;

impl Agent {
    /// Every device of every transport, on the wire.
    pub(super) fn inventory_now(&self) -> HashMap<String, pb::DeviceReport> {
        let mut all = HashMap::new();
        for t in &self.transports {
            for d in t.inventory().borrow().iter() {
                all.insert(
                    d.local_id.clone(),
                    report::device(t.kind(), d, &self.tags_of(&d.local_id)),
                );
            }
        }
        all
    }

    pub(super) fn find_device(&self, local_id: &str) -> Option<(Arc<dyn Transport>, DeviceReport)> {
        for t in &self.transports {
            if let Some(d) = t
                .inventory()
                .borrow()
                .iter()
                .find(|d| d.local_id == local_id)
            {
                return Some((t.clone(), d.clone()));
            }
        }
        None
    }

    pub(super) fn transport_instances(&self) -> Vec<pb::TransportInstance> {
        self.transports
            .iter()
            .map(|t| {
                let inv = t.inventory();
                let devices = inv.borrow();
                pb::TransportInstance {
                    kind: report::transport(t.kind()),
                    name: t.instance().to_string(),
                    device_count: devices.len() as u32,
                    connected: true,
                    detail: String::new(),
                }
            })
            .collect()
    }

    /// Journals the inventory changes since the last report (`full`: everything).
    ///
    /// A full report tells otad that unlisted devices are gone, so it is sent only when every
    /// transport knows its whole list; until then the report is a change without removals, and
    /// the full report follows with the first change after the last transport completes.
    pub(super) async fn report_inventory(&self, full: bool) -> anyhow::Result<()> {
        let complete = self.transports.iter().all(|t| t.inventory_complete());
        let full = if complete {
            full || self.full_inventory_owed.swap(false, Ordering::SeqCst)
        } else {
            if full {
                self.full_inventory_owed.store(true, Ordering::SeqCst);
            }
            false
        };
        let now = self.inventory_now();
        let (devices, removed) = {
            let mut last = self.last_inventory.locked();
            let changed: Vec<pb::DeviceReport> = if full {
                now.values().cloned().collect()
            } else {
                now.values()
                    .filter(|d| last.get(&d.local_id) != Some(*d))
                    .cloned()
                    .collect()
            };
            let removed: Vec<String> = if full || !complete {
                Vec::new()
            } else {
                last.keys()
                    .filter(|k| !now.contains_key(*k))
                    .cloned()
                    .collect()
            };
            *last = now;
            (changed, removed)
        };
        if !full && devices.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let mut devices = devices;
        devices.sort_by(|a, b| a.local_id.cmp(&b.local_id));
        self.journal_report(pb::agent_message::Body::Inventory(pb::Inventory {
            full,
            devices,
            removed_local_ids: removed,
        }))
        .await
    }

    pub(super) async fn watch_inventory(self: Arc<Self>, shutdown: CancellationToken) {
        let mut receivers: Vec<_> = self.transports.iter().map(|t| t.inventory()).collect();
        loop {
            if receivers.is_empty() {
                shutdown.cancelled().await;
                return;
            }
            let changed =
                futures::future::select_all(receivers.iter_mut().map(|r| Box::pin(r.changed())));
            tokio::select! {
                () = shutdown.cancelled() => return,
                (res, _, _) = changed => {
                    if res.is_err() {
                        return;
                    }
                }
            }
            // Let a burst of changes settle into one report.
            tokio::time::sleep(Duration::from_millis(250)).await;
            for r in &mut receivers {
                r.borrow_and_update();
            }
            if let Err(e) = self.report_inventory(false).await {
                warn!(error = %e, "could not journal an inventory change");
            }
        }
    }

    /// Looks at `devices` now (their transports probe them) and journals what is found as an
    /// inventory change, whether or not anything changed: the server waits for the answer.
    pub(super) async fn probe(self: Arc<Self>, devices: Vec<String>) {
        let mut per_transport: Vec<(Arc<dyn Transport>, Vec<String>)> = Vec::new();
        for d in &devices {
            let Some((t, _)) = self.find_device(d) else {
                continue;
            };
            match per_transport.iter_mut().find(|(u, _)| Arc::ptr_eq(u, &t)) {
                Some((_, ids)) => ids.push(d.clone()),
                None => per_transport.push((t, vec![d.clone()])),
            }
        }
        futures::future::join_all(per_transport.iter().map(|(t, ids)| t.probe(ids))).await;
        let mut found: Vec<pb::DeviceReport> = {
            let now = self.inventory_now();
            let mut last = self.last_inventory.locked();
            devices
                .iter()
                .filter_map(|d| now.get(d).cloned())
                .inspect(|r| {
                    last.insert(r.local_id.clone(), r.clone());
                })
                .collect()
        };
        if found.is_empty() {
            return;
        }
        found.sort_by(|a, b| a.local_id.cmp(&b.local_id));
        if let Err(e) = self
            .journal_report(pb::agent_message::Body::Inventory(pb::Inventory {
                full: false,
                devices: found,
                removed_local_ids: Vec::new(),
            }))
            .await
        {
            warn!(error = %e, "could not journal a probe's answer");
        }
    }
}
