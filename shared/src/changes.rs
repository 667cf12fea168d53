//! What changed between two encoded snapshots, found by comparing their bytes: a proxy that keeps
//! the content it serves can tell that a new snapshot differs only in a few routers and services,
//! and decode just those instead of the whole snapshot (see the proxy's table patch).
//!
//! The controller encodes every list sorted by name, one element per field, and the same object
//! always encodes to the same bytes (the version is a hash of them): two elements with the same
//! name and the same bytes are the same object.

use std::cmp::Ordering;

use crate::{
    delta::{self, Field},
    pb::{self, delta_part::Kind},
    snapshot::{self, Router, Service, SnapshotError},
    wire::{self, Value},
};

/// `Snapshot` field numbers compared element by element; every other field must be identical.
const ROUTERS_FIELD: u32 = 2;
const SERVICES_FIELD: u32 = 3;

/// The routers and services that differ between two snapshots whose other fields are identical.
/// A router or service whose definition changed appears in both lists of its kind: its old form
/// among the removed, its new form among the added.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Old routers that are gone or changed, decoded as served.
    pub routers_removed: Vec<Router>,
    /// New or changed routers, decoded as served.
    pub routers_added: Vec<Router>,
    /// Names of services that are gone or changed.
    pub services_removed: Vec<String>,
    /// New or changed services.
    pub services_added: Vec<Service>,
    /// Routers in the new snapshot.
    pub router_count: usize,
}

impl Changes {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.routers_removed.is_empty()
            && self.routers_added.is_empty()
            && self.services_removed.is_empty()
            && self.services_added.is_empty()
    }
}

/// The changes from `old` to `new` (encoded `Snapshot`s), or `None` when they cannot be described
/// as router and service changes: another field differs (entry points, middlewares, TLS, ACME
/// challenges), a list is not in strict name order, more than `max_changed` elements differ, or
/// something does not decode. `None` is never wrong, only slower: the caller decodes `new` whole,
/// which reports any error properly.
pub fn between(old: &[u8], new: &[u8], max_changed: usize) -> Option<Changes> {
    let old = Fields::split(old)?;
    let new = Fields::split(new)?;
    if old.rest != new.rest {
        return None;
    }
    let routers = Pairing::of(&old.routers, &new.routers, max_changed)?;
    let services = Pairing::of(
        &old.services,
        &new.services,
        max_changed.checked_sub(routers.len())?,
    )?;
    decoded(routers, services, new.routers.len())
}

/// The changes a delta makes to its base: `base` is the base's content and `fields` its top-level
/// fields, `parts` the delta. The base's routers and services that no part copies are the removed
/// (or changed) ones, those the parts insert the added (or changed) ones — [`between`] the base
/// and the rebuilt content, read from the parts instead of comparing the two contents element by
/// element. Call it only once the rebuilt content is verified against its version.
///
/// `None` where `between` would say so, and also when the parts do what a diff never does (copy a
/// field twice, insert or reorder a field that is not a router or service), so `None` is never
/// wrong here either. The base's lists are taken to be in strict name order — it is a snapshot
/// served, verified against the version the controller published — and the new content's order
/// is checked only where it can differ from the base's: where copied runs and inserted elements
/// meet.
pub(crate) fn of_delta(
    base: &[u8],
    fields: &[Field],
    parts: &[pb::DeltaPart],
    max_changed: usize,
) -> Option<Changes> {
    let mut copied = vec![false; fields.len()];
    // The base's other fields, which the new content must copy, all of them and in order.
    let mut rest =
        (0..fields.len()).filter(|&i| !matches!(fields[i].number, ROUTERS_FIELD | SERVICES_FIELD));
    let mut routers = Pairing::default();
    let mut services = Pairing::default();
    // The last name seen in each list of the new content.
    let mut last: [Option<&str>; 2] = [None, None];
    let mut router_count = 0usize;
    let list = |number: u32| match number {
        ROUTERS_FIELD => Some(0),
        SERVICES_FIELD => Some(1),
        _ => None,
    };
    for part in parts {
        match part.kind.as_ref()? {
            Kind::Copy(run) => {
                let run = delta::run_fields(run, fields.len())?;
                for i in run.clone() {
                    if std::mem::replace(&mut copied[i], true) {
                        return None;
                    }
                    let field = &fields[i];
                    let Some(l) = list(field.number) else {
                        if rest.next() != Some(i) {
                            return None;
                        }
                        continue;
                    };
                    router_count += usize::from(l == 0);
                    // Inside a run, consecutive elements of one list keep the base's order: only
                    // the first of a stretch is compared with what precedes it, and the last one's
                    // name is remembered.
                    let same = |j: usize| run.contains(&j) && fields[j].number == field.number;
                    let (first, final_) = (!i.checked_sub(1).is_some_and(same), !same(i + 1));
                    if first || final_ {
                        let current = element_name(base, field)?;
                        if first && last[l] >= Some(current) {
                            return None;
                        }
                        if final_ {
                            last[l] = Some(current);
                        }
                    }
                }
            }
            Kind::Insert(bytes) => {
                for field in wire::fields(bytes) {
                    let (number, Value::Bytes(element)) = field.ok()? else {
                        return None;
                    };
                    let l = list(number)?;
                    let current = name(element)?;
                    if last[l] >= Some(current) {
                        return None;
                    }
                    last[l] = Some(current);
                    router_count += usize::from(l == 0);
                    [&mut routers, &mut services][l].added.push(element);
                }
            }
        }
    }
    if rest.next().is_some() {
        return None;
    }
    for (field, _) in fields.iter().zip(&copied).filter(|(_, copied)| !**copied) {
        let element = element_bytes(base, field)?;
        match field.number {
            ROUTERS_FIELD => routers.removed.push(element),
            _ => services.removed.push(element),
        }
    }
    if routers.len() > max_changed || services.len() > max_changed.checked_sub(routers.len())? {
        return None;
    }
    decoded(routers, services, router_count)
}

/// An element of a list field of `content`: its bytes without the key and length.
fn element_bytes<'a>(content: &'a [u8], field: &Field) -> Option<&'a [u8]> {
    match wire::fields(content.get(field.span())?).next()?.ok()? {
        (_, Value::Bytes(element)) => Some(element),
        _ => None,
    }
}

fn element_name<'a>(content: &'a [u8], field: &Field) -> Option<&'a str> {
    name(element_bytes(content, field)?)
}

/// The changes, with the changed elements decoded.
fn decoded(routers: Pairing<'_>, services: Pairing<'_>, router_count: usize) -> Option<Changes> {
    let decode_routers = |list: &[&[u8]]| -> Result<Vec<Router>, SnapshotError> {
        list.iter()
            .map(|b| snapshot::decode_router_to_serve(b))
            .collect()
    };
    Some(Changes {
        routers_removed: decode_routers(&routers.removed).ok()?,
        routers_added: decode_routers(&routers.added).ok()?,
        services_removed: services
            .removed
            .iter()
            .map(|b| name(b).map(str::to_owned))
            .collect::<Option<_>>()?,
        services_added: services
            .added
            .iter()
            .map(|b| snapshot::decode_service(b))
            .collect::<Result<_, _>>()
            .ok()?,
        router_count,
    })
}

/// An encoded snapshot's routers and services (element bytes, in order) and its other fields.
struct Fields<'a> {
    routers: Vec<&'a [u8]>,
    services: Vec<&'a [u8]>,
    rest: Vec<(u32, Value<'a>)>,
}

impl<'a> Fields<'a> {
    fn split(content: &'a [u8]) -> Option<Self> {
        let mut out = Fields {
            routers: Vec::new(),
            services: Vec::new(),
            rest: Vec::new(),
        };
        for field in wire::fields(content) {
            match field.ok()? {
                (ROUTERS_FIELD, Value::Bytes(b)) => out.routers.push(b),
                (SERVICES_FIELD, Value::Bytes(b)) => out.services.push(b),
                (ROUTERS_FIELD | SERVICES_FIELD, _) => return None,
                other => out.rest.push(other),
            }
        }
        Some(out)
    }
}

/// Two name-ordered lists of encoded elements matched by name.
#[derive(Default)]
struct Pairing<'a> {
    removed: Vec<&'a [u8]>,
    added: Vec<&'a [u8]>,
}

impl<'a> Pairing<'a> {
    fn len(&self) -> usize {
        self.removed.len().max(self.added.len())
    }

    fn of(old: &[&'a [u8]], new: &[&'a [u8]], max_changed: usize) -> Option<Self> {
        let mut out = Pairing {
            removed: Vec::new(),
            added: Vec::new(),
        };
        let (mut i, mut j) = (0, 0);
        let (mut last_old, mut last_new): (Option<&str>, Option<&str>) = (None, None);
        loop {
            let (o, n) = (old.get(i).copied(), new.get(j).copied());
            let (o_name, n_name) = (o.map(name), n.map(name));
            let order = match (o_name, n_name) {
                (None, None) => break,
                (Some(None), _) | (_, Some(None)) => return None,
                (Some(Some(_)), None) => Ordering::Less,
                (None, Some(Some(_))) => Ordering::Greater,
                (Some(Some(a)), Some(Some(b))) => a.cmp(b),
            };
            // Strictly ascending names on both sides, or the lists cannot be matched this way.
            if order != Ordering::Greater {
                let current = o_name.flatten();
                if last_old >= current {
                    return None;
                }
                last_old = current;
            }
            if order != Ordering::Less {
                let current = n_name.flatten();
                if last_new >= current {
                    return None;
                }
                last_new = current;
            }
            match (order, o, n) {
                (Ordering::Less, Some(o), _) => {
                    out.removed.push(o);
                    i += 1;
                }
                (Ordering::Greater, _, Some(n)) => {
                    out.added.push(n);
                    j += 1;
                }
                (Ordering::Equal, Some(o), Some(n)) => {
                    if o != n {
                        out.removed.push(o);
                        out.added.push(n);
                    }
                    i += 1;
                    j += 1;
                }
                _ => return None,
            }
            if out.len() > max_changed {
                return None;
            }
        }
        Some(out)
    }
}

/// The `name` (field 1) of an encoded router or service: `""` when the field is absent (proto3
/// leaves empty strings out); `None` when the element is malformed or the name is not UTF-8.
fn name(element: &[u8]) -> Option<&str> {
    for field in wire::fields(element) {
        if let (1, Value::Bytes(b)) = field.ok()? {
            return std::str::from_utf8(b).ok();
        }
    }
    Some("")
}

#[cfg(test)]
mod tests;
