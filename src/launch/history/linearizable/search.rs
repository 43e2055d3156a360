//! The search for a linearization of one key's operations: Wing & Gong's
//! depth-first search over which pending operation takes effect next, with
//! Lowe's memoisation of (operations linearized, state) as porcupine does,
//! plus two prunings that keep it near linear on etcd histories (revision
//! ceilings, and reads that change nothing taken greedily).

use std::collections::{BTreeSet, HashSet};

use super::super::operation::{describe, Operation, Revision};
use super::super::{Check, Violation};
use super::model::{step, Action, KeyHistory, KeyOp, KeyState, StateShown};
use super::SearchLimits;

/// An invocation or a return, in a doubly linked list in time order.
#[derive(Clone, Copy, Debug)]
struct Node {
    prev: usize,
    next: usize,
    op: usize,
    is_call: bool,
    /// A call's return node (none for an unknown outcome).
    partner: Option<usize>,
}

const HEAD: usize = 0;
const TAIL: usize = 1;

fn event_list(ops: &[KeyOp]) -> Vec<Node> {
    // At equal instants calls come first: operations that touch are
    // treated as concurrent.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, false, i));
        if let Some(returned) = op.returned {
            events.push((returned.max(op.invoked), true, i));
        }
    }
    events.sort();
    let sentinel = Node {
        prev: HEAD,
        next: TAIL,
        op: usize::MAX,
        is_call: false,
        partner: None,
    };
    let mut nodes = vec![sentinel; 2];
    let mut call_node = vec![0; ops.len()];
    for (_, is_return, op) in events {
        let index = nodes.len();
        let prev = nodes[TAIL].prev;
        nodes.push(Node {
            prev,
            next: TAIL,
            op,
            is_call: !is_return,
            partner: None,
        });
        nodes[prev].next = index;
        nodes[TAIL].prev = index;
        if is_return {
            nodes[call_node[op]].partner = Some(index);
        } else {
            call_node[op] = index;
        }
    }
    nodes
}

fn unlink(nodes: &mut [Node], node: usize) {
    let Node { prev, next, .. } = nodes[node];
    nodes[prev].next = next;
    nodes[next].prev = prev;
}

/// Undoes `unlink`, valid while unlinks are undone in reverse order.
fn relink(nodes: &mut [Node], node: usize) {
    let Node { prev, next, .. } = nodes[node];
    nodes[prev].next = node;
    nodes[next].prev = node;
}

fn lift(nodes: &mut [Node], call: usize) {
    unlink(nodes, call);
    if let Some(partner) = nodes[call].partner {
        unlink(nodes, partner);
    }
}

fn unlift(nodes: &mut [Node], call: usize) {
    if let Some(partner) = nodes[call].partner {
        relink(nodes, partner);
    }
    relink(nodes, call);
}

#[derive(Debug)]
pub(super) enum SearchFailure {
    /// The deepest point the search reached: operations linearized in
    /// order, the state they left, and an operation that returned with no
    /// way to place it.
    NotLinearizable {
        prefix: Vec<usize>,
        state: KeyState,
        stuck: usize,
        /// (ceiling, operation): a pending operation that needs the store
        /// at or below `ceiling`, which `stuck` would take it past.
        blocking: Option<(Revision, usize)>,
    },
    StepLimit {
        steps: u64,
    },
}

/// The highest revision the store may have reached when each operation
/// not yet linearized takes effect: a read at R needs the store at R at
/// most, a write at r below r. Revisions only grow along an order, so an
/// order that has gone past one of these can never place that operation,
/// and is dropped at once instead of when the operation returns (which
/// may be many operations later).
struct Ceilings {
    /// (ceiling, index of the operation) for every required operation not
    /// yet linearized.
    pending: BTreeSet<(Revision, usize)>,
}

impl Ceilings {
    fn new(ops: &[KeyOp]) -> Ceilings {
        let mut ceilings = Ceilings {
            pending: BTreeSet::new(),
        };
        for (index, op) in ops.iter().enumerate() {
            ceilings.restore(index, op);
        }
        ceilings
    }

    /// Operations with unknown outcomes need not take effect: no ceiling.
    fn ceiling(op: &KeyOp) -> Option<Revision> {
        if !op.required {
            return None;
        }
        match op.action {
            Action::Read { revision, .. } => Some(revision),
            Action::Write { revision, .. } => revision.map(|r| r - 1),
        }
    }

    /// Takes operation `index` out of the pending ones if the revision it
    /// leaves the store at leaves room for all the others.
    fn admit(&mut self, index: usize, op: &KeyOp, reached: Revision) -> bool {
        let fits = self
            .lowest_other(index)
            .is_none_or(|(lowest, _)| lowest >= reached);
        if fits {
            if let Some(own) = Ceilings::ceiling(op) {
                self.pending.remove(&(own, index));
            }
        }
        fits
    }

    /// Puts operation `index` back among the pending ones.
    fn restore(&mut self, index: usize, op: &KeyOp) {
        if let Some(own) = Ceilings::ceiling(op) {
            self.pending.insert((own, index));
        }
    }

    /// The lowest ceiling of a pending operation other than `index`.
    fn lowest_other(&self, index: usize) -> Option<(Revision, usize)> {
        self.pending.iter().find(|(_, i)| *i != index).copied()
    }
}

/// A linearized operation: its call node, the state before it, and whether
/// it was a read that changed nothing.
struct Choice {
    call: usize,
    before: KeyState,
    no_op_read: bool,
}

pub(super) fn search(history: &KeyHistory, limits: SearchLimits) -> Result<(), SearchFailure> {
    let ops = &history.ops;
    let mut nodes = event_list(ops);
    let required = ops.iter().filter(|op| op.required).count();
    let mut done = 0;
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut explored: HashSet<(Vec<u64>, KeyState)> = HashSet::new();
    let mut stack: Vec<Choice> = Vec::new();
    let mut ceilings = Ceilings::new(ops);
    let mut state = KeyState::initial();
    let mut deepest: Option<SearchFailure> = None;
    let mut cursor = nodes[HEAD].next;
    let mut steps = 0u64;
    while done < required {
        steps += 1;
        if steps > limits.max_steps_per_key {
            return Err(SearchFailure::StepLimit { steps });
        }
        let node = nodes[cursor];
        if cursor != TAIL && node.is_call {
            let action = &ops[node.op].action;
            let next = step(&state, action)
                .filter(|next| ceilings.admit(node.op, &ops[node.op], next.revision_reached()));
            if let Some(next) = next {
                let (word, bit) = (node.op / 64, 1u64 << (node.op % 64));
                linearized[word] |= bit;
                if explored.insert((linearized.clone(), next.clone())) {
                    let no_op_read = matches!(action, Action::Read { .. }) && next == state;
                    stack.push(Choice {
                        call: cursor,
                        before: std::mem::replace(&mut state, next),
                        no_op_read,
                    });
                    if ops[node.op].required {
                        done += 1;
                    }
                    lift(&mut nodes, cursor);
                    cursor = nodes[HEAD].next;
                    continue;
                }
                linearized[word] &= !bit;
                ceilings.restore(node.op, &ops[node.op]);
            }
            cursor = node.next;
            continue;
        }
        // An operation returned (or the list ran out) with nothing
        // explaining it: undo the latest choice.
        let depth = stack.len();
        let deeper = match &deepest {
            Some(SearchFailure::NotLinearizable { prefix, .. }) => depth > prefix.len(),
            _ => true,
        };
        if deeper && cursor != TAIL {
            // When the operation could take effect but for another one's
            // ceiling, that one is the likelier culprit.
            let blocking = step(&state, &ops[node.op].action).and_then(|next| {
                ceilings
                    .lowest_other(node.op)
                    .filter(|(ceiling, _)| *ceiling < next.revision_reached())
            });
            deepest = Some(SearchFailure::NotLinearizable {
                prefix: stack.iter().map(|choice| nodes[choice.call].op).collect(),
                state: state.clone(),
                stuck: node.op,
                blocking,
            });
        }
        loop {
            let Some(choice) = stack.pop() else {
                return Err(deepest.unwrap_or(SearchFailure::StepLimit { steps }));
            };
            state = choice.before;
            let op = nodes[choice.call].op;
            linearized[op / 64] &= !(1u64 << (op % 64));
            if ops[op].required {
                done -= 1;
            }
            unlift(&mut nodes, choice.call);
            ceilings.restore(op, &ops[op]);
            // A read that left the state as it was needs no alternatives:
            // in any order that works from here it can move to the front
            // (it read at the current floor, so only reads at that same
            // revision, which commute with it, can precede it), so if the
            // orders with it first failed, all fail. Without this, k
            // concurrent reads of one revision cost 2^k states.
            if !choice.no_op_read {
                cursor = nodes[choice.call].next;
                break;
            }
        }
    }
    Ok(())
}

/// How many operations of the explained prefix a message shows.
const PREFIX_SHOWN: usize = 6;

impl SearchFailure {
    pub(super) fn violation(
        &self,
        key: &str,
        history: &KeyHistory,
        ops: &[Operation],
    ) -> Violation {
        match self {
            SearchFailure::StepLimit { steps } => Violation::new(
                Check::SearchLimit,
                Vec::new(),
                format!(
                    "key {key}: gave up after {steps} search steps over its {} operations (undecided; fewer concurrent operations per key keep the search small)",
                    history.ops.len()
                ),
            ),
            SearchFailure::NotLinearizable {
                prefix,
                state,
                stuck,
                blocking,
            } => {
                let original = |i: usize| history.ops[i].op;
                let shown = &prefix[prefix.len().saturating_sub(PREFIX_SHOWN)..];
                let mut named: Vec<usize> = shown.iter().map(|&i| original(i)).collect();
                named.push(original(*stuck));
                let order = if prefix.is_empty() {
                    "nothing".to_string()
                } else {
                    let omitted = prefix.len() - shown.len();
                    let mut order = if omitted > 0 {
                        format!("{omitted} earlier operations, then ")
                    } else {
                        String::new()
                    };
                    let steps: Vec<String> = shown
                        .iter()
                        .map(|&i| describe(original(i), &ops[original(i)]))
                        .collect();
                    order.push_str(&steps.join(", then "));
                    order
                };
                let stuck_shown = describe(original(*stuck), &ops[original(*stuck)]);
                let after = match blocking {
                    None => format!("{stuck_shown} cannot take effect"),
                    Some((ceiling, other)) => {
                        named.push(original(*other));
                        let neither = if step(state, &history.ops[*other].action).is_none() {
                            ", and that cannot take effect there either"
                        } else {
                            ""
                        };
                        format!(
                            "{stuck_shown} cannot take effect without taking the store past revision {ceiling}, which {} needs{neither}",
                            describe(original(*other), &ops[original(*other)])
                        )
                    }
                };
                Violation::new(
                    Check::Linearizable,
                    named,
                    format!(
                        "key {key}: not linearizable: no order of its operations fits real time, the revisions and etcd's semantics. The longest order found explains {} of {} operations: {order}; leaving {key} {}. After that, {after}.",
                        prefix.len(),
                        history.ops.len(),
                        StateShown(state, &history.values)
                    ),
                )
            }
        }
    }
}
