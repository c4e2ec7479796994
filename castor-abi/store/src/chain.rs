//! Chains and fan-ins: a task `waiting` on its parents, released when they have all
//! completed (its first argument composed from their results) or ended when one of them
//! cannot complete. The rules and the composition are here, once; a driver gives the few
//! statements they need ([`ChainStatements`]) and calls [`settle_parents`] in the same
//! transaction as every write that makes a task with dependents terminal (its completion
//! or failure, a cancel, a purge), and [`settle_child`] when a dependent is inserted or
//! retried.
//!
//! A parent row carries `has_dependents` (set when a dependent is dispatched after it), so
//! a write that ends a task without dependents runs no statement of this module.

use std::collections::VecDeque;

use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{AttemptError, ErrorKind};
use crate::state::TaskState;

/// The largest composed argument tuple (the codec's limit, 64 MiB, as castor-abi's
/// `MAX_PAYLOAD`): a dependent whose parents' results make more is discarded.
pub const MAX_COMPOSED: usize = 64 << 20;

/// A dependent's link to one parent, with the parent as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The parent's id.
    pub parent_id: Uuid,
    /// The parent's name (kept on the link, so it is known after a purge).
    pub parent_task: String,
    /// The parent's state; `None` if its row is gone (purged or pruned).
    pub state: Option<TaskState>,
    /// The parent's encoded result, once completed.
    pub result: Option<Vec<u8>>,
    /// The parent's result fingerprint as recorded with its result (`''`: unknown).
    pub result_fingerprint: String,
    /// The fingerprint the dependent's app expected of that result (`''`: unknown).
    pub expected_fingerprint: String,
}

/// A waiting dependent, locked for the rest of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingChild {
    /// Its row.
    pub seq: i64,
    /// Its own encoded arguments (every argument after the first).
    pub extra_args: Vec<u8>,
    /// Whether its first argument is the sequence of its parents' results.
    pub fan_in: bool,
    /// Its parents, in order.
    pub links: Vec<Link>,
}

/// What becomes of a waiting dependent, given its parents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A parent has not finished yet.
    Wait,
    /// Every parent completed: run with these arguments.
    Release(Vec<u8>),
    /// It will never run: end in `state` (`cancelled`, or `discarded` for a result it
    /// cannot take) with this message.
    End {
        /// `cancelled` or `discarded`.
        state: TaskState,
        /// Why, naming the parent.
        message: String,
    },
}

/// The statements the chain rules need from a driver's write transaction.
pub(crate) trait ChainStatements {
    /// The rows of the `waiting` dependents of the task `parent`.
    fn waiting_children(&mut self, parent: Uuid) -> Result<Vec<i64>, StoreError>;

    /// The dependent at `seq` if it is `waiting`, locked against other writers until the
    /// transaction ends (PostgreSQL: `FOR UPDATE`), with its links read after the lock.
    fn lock_waiting(&mut self, seq: i64) -> Result<Option<WaitingChild>, StoreError>;

    /// Moves the waiting dependent to `available` (or `scheduled`, if its start time is
    /// later than `now`) with `args`.
    fn release(&mut self, seq: i64, args: &[u8], now: i64) -> Result<(), StoreError>;

    /// Ends the waiting dependent in `state` with `error` appended; its id if it has
    /// dependents of its own, which then end too.
    fn end_waiting(
        &mut self,
        seq: i64,
        state: TaskState,
        error: &AttemptError,
        now: i64,
    ) -> Result<Option<Uuid>, StoreError>;
}

/// Settles the dependents of `parents`, tasks that just became terminal (or were
/// deleted): each is released, ended, or left waiting; ended ones' dependents are settled
/// in turn, down the chain.
pub(crate) fn settle_parents(
    tx: &mut impl ChainStatements,
    parents: impl IntoIterator<Item = Uuid>,
    now: i64,
) -> Result<(), StoreError> {
    let mut queue: VecDeque<Uuid> = parents.into_iter().collect();
    while let Some(parent) = queue.pop_front() {
        let mut children = tx.waiting_children(parent)?;
        // One order for every writer, so two settling the same dependents never deadlock.
        children.sort_unstable();
        children.dedup();
        for child in children {
            if let Some(ended) = settle_child(tx, child, now)? {
                queue.push_back(ended);
            }
        }
    }
    Ok(())
}

/// Settles one waiting dependent (just inserted, or retried); returns its id if it ended
/// and has dependents of its own, for the caller to settle.
pub(crate) fn settle_child(
    tx: &mut impl ChainStatements,
    seq: i64,
    now: i64,
) -> Result<Option<Uuid>, StoreError> {
    let Some(child) = tx.lock_waiting(seq)? else {
        return Ok(None);
    };
    match decide(&child) {
        Decision::Wait => Ok(None),
        Decision::Release(args) => {
            tx.release(seq, &args, now)?;
            Ok(None)
        }
        Decision::End { state, message } => {
            let error = AttemptError {
                attempt: 0,
                at: now,
                kind: ErrorKind::Chain,
                error: message,
                worker: None,
            };
            tx.end_waiting(seq, state, &error, now)
        }
    }
}

/// Settles a dependent just inserted and the chain below anything it ends (nothing can
/// depend on a task just inserted, but the same path serves a retried one).
pub(crate) fn settle_new(
    tx: &mut impl ChainStatements,
    seq: i64,
    now: i64,
) -> Result<(), StoreError> {
    if let Some(ended) = settle_child(tx, seq, now)? {
        settle_parents(tx, [ended], now)?;
    }
    Ok(())
}

/// The rules: a parent gone, discarded or cancelled ends the dependent `cancelled`,
/// naming it; a completed parent whose result fingerprint is not the one the dependent's
/// app expected ends it `discarded`, naming both; a parent not finished keeps it waiting;
/// otherwise it is released with its arguments composed.
pub fn decide(child: &WaitingChild) -> Decision {
    for link in &child.links {
        let named = format!("{} (`{}`)", link.parent_id, link.parent_task);
        let ended = match link.state {
            None => Some(format!(
                "its parent task {named} was purged before it completed"
            )),
            Some(TaskState::Discarded) => Some(format!("its parent task {named} was discarded")),
            Some(TaskState::Cancelled) => Some(format!("its parent task {named} was cancelled")),
            _ => None,
        };
        if let Some(message) = ended {
            return Decision::End {
                state: TaskState::Cancelled,
                message,
            };
        }
    }
    if child
        .links
        .iter()
        .any(|link| link.state != Some(TaskState::Completed))
    {
        return Decision::Wait;
    }
    for link in &child.links {
        if !link.expected_fingerprint.is_empty()
            && !link.result_fingerprint.is_empty()
            && link.expected_fingerprint != link.result_fingerprint
        {
            return Decision::End {
                state: TaskState::Discarded,
                message: format!(
                    "its parent task {} (`{}`) returned a result of another type (result \
                     fingerprint {}) than this task's app expected ({}): the worker that ran \
                     the parent and the app that dispatched this task were built from \
                     different versions of the library; nothing was passed on",
                    link.parent_id,
                    link.parent_task,
                    link.result_fingerprint,
                    link.expected_fingerprint
                ),
            };
        }
    }
    let results: Vec<&[u8]> = child
        .links
        .iter()
        .map(|link| link.result.as_deref().unwrap_or_default())
        .collect();
    match compose(&results, &child.extra_args, child.fan_in) {
        Ok(args) => Decision::Release(args),
        Err(size) => Decision::End {
            state: TaskState::Discarded,
            message: format!(
                "its parents' results and its own arguments encode to {}, over the {} \
                 limit; nothing was run",
                crate::format::format_size(size),
                crate::format::format_size(MAX_COMPOSED)
            ),
        },
    }
}

/// A dependent's encoded argument tuple: its parents' results as its first argument,
/// then its own. Bincode encodes a tuple as its fields one after the other, so a chain's
/// arguments are the parent's result followed by the dependent's own encoded arguments
/// (the tuple of its other parameters); a fan-in's first argument is a sequence, which
/// castor's codec (bincode's standard configuration) prefixes with its length as a
/// variable-length integer ([`varint`]). `Err(size)` past [`MAX_COMPOSED`].
pub fn compose(results: &[&[u8]], extra_args: &[u8], fan_in: bool) -> Result<Vec<u8>, usize> {
    let prefix = if fan_in {
        varint(results.len() as u64)
    } else {
        Vec::new()
    };
    let size = prefix.len() + results.iter().map(|r| r.len()).sum::<usize>() + extra_args.len();
    if size > MAX_COMPOSED {
        return Err(size);
    }
    let mut args = Vec::with_capacity(size);
    args.extend_from_slice(&prefix);
    for result in results {
        args.extend_from_slice(result);
    }
    args.extend_from_slice(extra_args);
    Ok(args)
}

/// A length as bincode's standard configuration writes it: below 251 one byte; else a
/// marker (251, 252, 253) and the value as a little-endian u16, u32 or u64.
pub fn varint(n: u64) -> Vec<u8> {
    if n < 251 {
        vec![n as u8]
    } else if let Ok(n) = u16::try_from(n) {
        let mut out = vec![251];
        out.extend_from_slice(&n.to_le_bytes());
        out
    } else if let Ok(n) = u32::try_from(n) {
        let mut out = vec![252];
        out.extend_from_slice(&n.to_le_bytes());
        out
    } else {
        let mut out = vec![253];
        out.extend_from_slice(&n.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encode")
    }

    #[test]
    fn a_chain_composes_the_tuple_bincode_would_encode() {
        let parent: (String, u32) = ("rendered".into(), 7);
        let extra: (u64, Vec<i16>) = (1 << 40, vec![-1, 2]);
        let composed = compose(&[&encode(&parent)], &encode(&extra), false).expect("fits");
        assert_eq!(composed, encode(&(parent, extra.0, extra.1)));
        // A task of one parameter: its own arguments are the empty tuple.
        let alone = compose(&[&encode(&5_u8)], &encode(&()), false).expect("fits");
        assert_eq!(alone, encode(&(5_u8,)));
    }

    #[test]
    fn a_fan_in_composes_a_vec_with_its_length_for_every_size() {
        for n in [0_usize, 1, 3, 250, 251, 300, 65_535, 65_536, 70_000] {
            let results: Vec<u32> = (0..n as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let encoded: Vec<Vec<u8>> = results.iter().map(encode).collect();
            let parts: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            let composed = compose(&parts, &encode(&("x".to_owned(),)), true).expect("fits");
            assert_eq!(composed, encode(&(results, "x".to_owned())), "{n} results");
        }
        for n in [
            0_u64,
            250,
            251,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
        ] {
            assert_eq!(varint(n), encode(&n), "{n}");
        }
    }

    #[test]
    fn too_large_a_composition_is_refused_with_its_size() {
        let big = vec![0_u8; MAX_COMPOSED];
        assert_eq!(compose(&[&big], &[1], false), Err(MAX_COMPOSED + 1));
    }

    fn link(state: Option<TaskState>, result: &[u8], found: &str, expected: &str) -> Link {
        Link {
            parent_id: Uuid::from_u128(7),
            parent_task: "render".into(),
            state,
            result: Some(result.to_vec()),
            result_fingerprint: found.into(),
            expected_fingerprint: expected.into(),
        }
    }

    fn child(links: Vec<Link>, fan_in: bool) -> WaitingChild {
        WaitingChild {
            seq: 1,
            extra_args: vec![9],
            fan_in,
            links,
        }
    }

    #[test]
    fn the_rules_wait_release_cancel_and_refuse_another_type() {
        let done = |r: &[u8]| link(Some(TaskState::Completed), r, "aa", "aa");
        assert_eq!(
            decide(&child(vec![done(&[1]), done(&[2])], true)),
            Decision::Release(vec![2, 1, 2, 9])
        );
        assert_eq!(
            decide(&child(vec![done(&[1])], false)),
            Decision::Release(vec![1, 9])
        );
        for waiting in [
            TaskState::Waiting,
            TaskState::Scheduled,
            TaskState::Available,
            TaskState::Running,
            TaskState::Retryable,
        ] {
            let links = vec![done(&[1]), link(Some(waiting), &[], "", "aa")];
            assert_eq!(decide(&child(links, true)), Decision::Wait, "{waiting}");
        }
        for (state, word) in [
            (Some(TaskState::Discarded), "was discarded"),
            (Some(TaskState::Cancelled), "was cancelled"),
            (None, "was purged"),
        ] {
            // A failed parent ends the dependent even while another still runs.
            let links = vec![
                link(Some(TaskState::Running), &[], "", ""),
                link(state, &[], "", ""),
            ];
            let Decision::End { state, message } = decide(&child(links, true)) else {
                panic!("ends");
            };
            assert_eq!(state, TaskState::Cancelled);
            assert!(message.contains(word), "{message}");
            assert!(
                message.contains("00000000-0000-0000-0000-000000000007 (`render`)"),
                "{message}"
            );
        }
        let Decision::End { state, message } = decide(&child(
            vec![link(Some(TaskState::Completed), &[1], "1111", "2222")],
            false,
        )) else {
            panic!("ends");
        };
        assert_eq!(state, TaskState::Discarded);
        assert!(
            message.contains("1111") && message.contains("2222"),
            "{message}"
        );
        // Unknown on either side is not checked (a result from before fingerprints).
        for (found, expected) in [("", "2222"), ("1111", "")] {
            let links = vec![link(Some(TaskState::Completed), &[1], found, expected)];
            assert_eq!(decide(&child(links, false)), Decision::Release(vec![1, 9]));
        }
    }
}
