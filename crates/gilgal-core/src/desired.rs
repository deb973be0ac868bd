//! Desired state as a value, and its diff against what runs.
//!
//! The reconciler computes the desired instance set of an environment from the store (live
//! release × formation), lists what the runtime has, and applies [`diff`]'s actions. Start-up
//! after a crash is the same diff from whatever survived, so there is one code path.

use std::collections::{BTreeMap, BTreeSet};

/// Which slot an instance fills: release, process type and index within its formation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    /// Release number.
    pub release: u64,
    /// Process type (`web`, `worker`, …).
    pub process_type: String,
    /// 0-based index within the formation.
    pub index: u32,
}

/// An instance the runtime reports for the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Runtime instance id.
    pub id: String,
    /// The slot its labels name.
    pub slot: Slot,
    /// Whether it is running (or being restarted by its supervisor) rather than ended for good.
    pub alive: bool,
}

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Start an instance for this slot.
    Start(Slot),
    /// Stop (and then forget) this instance: not desired, a duplicate, or ended for good.
    Stop(String),
}

/// The slots of `release` for a formation `process type → count`.
pub fn slots(release: u64, formation: &BTreeMap<String, u32>) -> BTreeSet<Slot> {
    formation
        .iter()
        .flat_map(|(process_type, count)| {
            (0..*count).map(move |index| Slot {
                release,
                process_type: process_type.clone(),
                index,
            })
        })
        .collect()
}

/// Actions that turn `observed` into `desired`: every desired slot gets exactly one live
/// instance; everything else is stopped. Idempotent: applying the result and diffing again
/// yields nothing. Stops are listed after starts so capacity never dips first.
pub fn diff(desired: &BTreeSet<Slot>, observed: &[Observed]) -> Vec<Action> {
    let mut filled: BTreeSet<&Slot> = BTreeSet::new();
    let mut stops = Vec::new();
    for instance in observed {
        let keep =
            instance.alive && desired.contains(&instance.slot) && filled.insert(&instance.slot);
        if !keep {
            stops.push(Action::Stop(instance.id.clone()));
        }
    }
    let mut actions: Vec<Action> = desired
        .iter()
        .filter(|slot| !filled.contains(slot))
        .cloned()
        .map(Action::Start)
        .collect();
    stops.sort();
    actions.extend(stops);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(release: u64, process_type: &str, index: u32) -> Slot {
        Slot {
            release,
            process_type: process_type.to_owned(),
            index,
        }
    }

    fn observed(id: &str, slot: Slot, alive: bool) -> Observed {
        Observed {
            id: id.to_owned(),
            slot,
            alive,
        }
    }

    fn formation(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn startup_from_nothing_starts_every_slot() {
        let desired = slots(3, &formation(&[("web", 2), ("worker", 1)]));
        assert_eq!(
            diff(&desired, &[]),
            vec![
                Action::Start(slot(3, "web", 0)),
                Action::Start(slot(3, "web", 1)),
                Action::Start(slot(3, "worker", 0))
            ]
        );
    }

    #[test]
    fn converged_state_has_no_actions() {
        let desired = slots(3, &formation(&[("web", 1)]));
        assert!(diff(&desired, &[observed("a", slot(3, "web", 0), true)]).is_empty());
    }

    #[test]
    fn old_release_duplicates_and_dead_instances_are_stopped() {
        let desired = slots(4, &formation(&[("web", 1)]));
        let actions = diff(
            &desired,
            &[
                observed("old", slot(3, "web", 0), true),
                observed("dead", slot(4, "web", 0), false),
                observed("new", slot(4, "web", 0), true),
                observed("dup", slot(4, "web", 0), true),
            ],
        );
        assert_eq!(
            actions,
            vec![
                Action::Stop("dead".into()),
                Action::Stop("dup".into()),
                Action::Stop("old".into())
            ]
        );
    }

    #[test]
    fn scale_down_and_up_in_one_diff() {
        let desired = slots(5, &formation(&[("web", 1), ("worker", 2)]));
        let actions = diff(
            &desired,
            &[
                observed("w0", slot(5, "web", 0), true),
                observed("w1", slot(5, "web", 1), true),
                observed("k0", slot(5, "worker", 0), true),
            ],
        );
        assert_eq!(
            actions,
            vec![
                Action::Start(slot(5, "worker", 1)),
                Action::Stop("w1".into())
            ]
        );
    }

    #[test]
    fn zero_formation_stops_everything() {
        let desired = slots(5, &formation(&[("web", 0)]));
        assert_eq!(
            diff(&desired, &[observed("w0", slot(5, "web", 0), true)]),
            vec![Action::Stop("w0".into())]
        );
    }
}
