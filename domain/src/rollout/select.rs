//! Which devices a selector picks.
//!
//! Every non-empty field of a [`Selector`] must match; a list field matches when the device has
//! any of its values (all of them, for tags). Removed devices never match.

use crate::model::compare_versions;
use crate::projection::DeviceView;
use crate::rollout::spec::Selector;

/// Whether the selector picks the device.
pub fn matches(sel: &Selector, d: &DeviceView) -> bool {
    !d.removed && matches_ignoring_removal(sel, d)
}

/// Whether the selector would pick the device if its site still reported it (planning lists
/// removed devices the selector names, rather than dropping them silently).
pub fn matches_ignoring_removal(sel: &Selector, d: &DeviceView) -> bool {
    let f = &d.facts;
    let any = |list: &[String], value: &str| {
        list.is_empty() || list.iter().any(|v| v.eq_ignore_ascii_case(value))
    };
    if !any(&sel.site_ids, &d.site_id)
        || !any(&sel.models, &f.model)
        || !any(&sel.vendors, &f.vendor)
        || !any(&sel.chips, &f.chip)
        || !any(&sel.networks, &f.network)
    {
        return false;
    }
    if !sel.device_ids.is_empty() && !sel.device_ids.contains(&d.id) {
        return false;
    }
    if sel.exclude_device_ids.contains(&d.id) {
        return false;
    }
    if !sel.transports.is_empty() && !f.transport.is_some_and(|t| sel.transports.contains(&t)) {
        return false;
    }
    if let Some(code) = sel.manufacturer_code
        && f.manufacturer_code != Some(code)
    {
        return false;
    }
    if let Some(ty) = sel.image_type
        && f.image_type != Some(ty)
    {
        return false;
    }
    if !sel.tags.iter().all(|t| f.tags.iter().any(|have| have == t)) {
        return false;
    }
    let current = match f.current.file_version {
        Some(v) => v.to_string(),
        None => f.current.version.clone(),
    };
    if let Some(min) = &sel.min_version
        && (current.is_empty() || compare_versions(&current, min) == std::cmp::Ordering::Less)
    {
        return false;
    }
    if let Some(max) = &sel.max_version
        && (current.is_empty() || compare_versions(&current, max) == std::cmp::Ordering::Greater)
    {
        return false;
    }
    true
}

/// True when the selector has no field set (it would pick every device).
pub fn is_empty(sel: &Selector) -> bool {
    *sel == Selector::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceFacts, Transport, VersionInfo};

    fn device(id: &str, transport: Transport, version: &str, tags: &[&str]) -> DeviceView {
        let facts = DeviceFacts {
            transport: Some(transport),
            model: "m1".into(),
            current: VersionInfo {
                version: version.into(),
                ..Default::default()
            },
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        crate::fixture::device_view(id, facts)
    }

    #[test]
    fn fields_combine() {
        let d = device(
            "home/a",
            Transport::Esphome,
            "1.2.0",
            &["floor-1", "kitchen"],
        );
        assert!(matches(&Selector::default(), &d));
        let sel = Selector {
            site_ids: vec!["home".into()],
            transports: vec![Transport::Esphome],
            tags: vec!["kitchen".into()],
            min_version: Some("1.0".into()),
            max_version: Some("1.2.0".into()),
            ..Default::default()
        };
        assert!(matches(&sel, &d));
        let sel2 = Selector {
            max_version: Some("1.1.9".into()),
            ..sel.clone()
        };
        assert!(!matches(&sel2, &d));
        let sel3 = Selector {
            tags: vec!["kitchen".into(), "garage".into()],
            ..sel.clone()
        };
        assert!(!matches(&sel3, &d));
        let sel4 = Selector {
            exclude_device_ids: vec!["home/a".into()],
            ..sel
        };
        assert!(!matches(&sel4, &d));
        let only = Selector {
            device_ids: vec!["home/b".into()],
            ..Default::default()
        };
        assert!(!matches(&only, &d));
        let mut removed = d.clone();
        removed.removed = true;
        assert!(!matches(&Selector::default(), &removed));
    }
}
