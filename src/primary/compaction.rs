//! The Primary's compaction cycle as a decision (the reference's protocol,
//! run every `compaction_interval` while this node is the active Primary):
//! which nodes to ask, the revision to propose, the notices to send one
//! node at a time, and either the compaction or the rollback. No I/O: the
//! node's scheduler does the calls and feeds their results back in.

/// Attempts per node for a compaction notice.
pub const NOTICE_ATTEMPTS: u32 = 2;

/// A registered node, as the cycle reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleNode {
    pub node_id: String,
    pub peer_addr: String,
}

/// What a node answered a compaction notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoticeAnswer {
    Confirmed,
    /// An active watch there still needs a revision below the proposal.
    Rejected,
    /// No answer (timeout, connection, error status).
    Failed(String),
}

/// Why a node did not confirm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unconfirmed {
    Rejected,
    Unreachable(String),
}

impl Unconfirmed {
    /// The `reason` label of the confirmation failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Unconfirmed::Rejected => "node_rejected",
            Unconfirmed::Unreachable(_) => "node_unreachable",
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to compact this interval.
    Skip(String),
    /// The cycle cannot complete; the next interval tries again.
    Abort(String),
    /// Ask every node for its minimum watch revision (all must answer).
    AskMinRevisions(Vec<CycleNode>),
    /// Send `revision` as a compaction notice to `node` (attempt 1 or 2).
    Notify {
        node: CycleNode,
        revision: i64,
        attempt: u32,
    },
    /// Every node confirmed: compact at `revision`.
    Compact(i64),
    /// `node` did not confirm: send `revision` (the compaction revision
    /// before this cycle) to each of `nodes`, which lowers their floors
    /// again; the cycle failed.
    RollBack {
        node: CycleNode,
        why: Unconfirmed,
        nodes: Vec<CycleNode>,
        revision: i64,
    },
}

/// One cycle, from the registered nodes to its outcome.
#[derive(Debug)]
pub struct CompactionCycle {
    /// The compaction revision when the cycle began.
    current: i64,
    nodes: Vec<CycleNode>,
    proposed: i64,
    /// Nodes notified so far; all but the last have confirmed.
    notified: usize,
    attempt: u32,
}

impl CompactionCycle {
    /// Starts a cycle on the registered nodes with the compaction revision
    /// `current`; only an active Primary compacts.
    pub fn start(active: bool, nodes: Vec<CycleNode>, current: i64) -> (CompactionCycle, Step) {
        let cycle = CompactionCycle {
            current,
            nodes,
            proposed: 0,
            notified: 0,
            attempt: 0,
        };
        let step = if !active {
            Step::Skip("this node is not the active Primary".into())
        } else if cycle.nodes.is_empty() {
            Step::Skip("no registered nodes".into())
        } else if let Some(n) = cycle.nodes.iter().find(|n| n.peer_addr.is_empty()) {
            Step::Abort(format!("node {} has no peer address", n.node_id))
        } else {
            Step::AskMinRevisions(cycle.nodes.clone())
        };
        (cycle, step)
    }

    /// Every node's answer to the minimum watch revision question, in
    /// any order.
    pub fn on_min_revisions(&mut self, answers: Vec<(String, Result<i64, String>)>) -> Step {
        let mut global: Option<i64> = None;
        for node in &self.nodes {
            match answers.iter().find(|(id, _)| *id == node.node_id) {
                Some((_, Ok(min))) => global = Some(global.map_or(*min, |g| g.min(*min))),
                Some((_, Err(e))) => {
                    return Step::Abort(format!("minimum watch revision of {}: {e}", node.node_id))
                }
                None => {
                    return Step::Abort(format!("no minimum watch revision from {}", node.node_id))
                }
            }
        }
        let global = global.unwrap_or(0);
        if global <= 0 {
            return Step::Skip(format!("minimum watch revision is {global}"));
        }
        // The lowest revision a watch still needs stays readable.
        let proposed = global - 1;
        if proposed <= 0 || proposed <= self.current {
            return Step::Skip(format!(
                "nothing to compact (proposed {proposed}, compaction revision {})",
                self.current
            ));
        }
        self.proposed = proposed;
        self.notify_next()
    }

    fn notify_next(&mut self) -> Step {
        let Some(node) = self.nodes.get(self.notified) else {
            return Step::Compact(self.proposed);
        };
        self.notified += 1;
        self.attempt = 1;
        Step::Notify {
            node: node.clone(),
            revision: self.proposed,
            attempt: 1,
        }
    }

    /// The answer to the last notice.
    pub fn on_notice(&mut self, answer: NoticeAnswer) -> Step {
        let Some(node) = self.notified.checked_sub(1).and_then(|i| self.nodes.get(i)) else {
            return Step::Abort("a notice answer with no notice sent".into());
        };
        let node = node.clone();
        let why = match answer {
            NoticeAnswer::Confirmed => return self.notify_next(),
            NoticeAnswer::Failed(_) if self.attempt < NOTICE_ATTEMPTS => {
                self.attempt += 1;
                return Step::Notify {
                    node,
                    revision: self.proposed,
                    attempt: self.attempt,
                };
            }
            NoticeAnswer::Failed(e) => Unconfirmed::Unreachable(e),
            NoticeAnswer::Rejected => Unconfirmed::Rejected,
        };
        let mut nodes: Vec<CycleNode> = self.nodes[..self.notified - 1].to_vec();
        // A notice whose answer was lost may still have raised the floor.
        if matches!(why, Unconfirmed::Unreachable(_)) {
            nodes.push(node.clone());
        }
        Step::RollBack {
            node,
            why,
            nodes,
            revision: self.current,
        }
    }

    /// The revision this cycle proposed (0 before the notices).
    pub fn proposed(&self) -> i64 {
        self.proposed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> CycleNode {
        CycleNode {
            node_id: id.into(),
            peer_addr: format!("{id}:2381"),
        }
    }

    fn nodes() -> Vec<CycleNode> {
        vec![node("a"), node("b"), node("c")]
    }

    fn mins(values: &[(&str, i64)]) -> Vec<(String, Result<i64, String>)> {
        values
            .iter()
            .map(|(id, v)| (id.to_string(), Ok(*v)))
            .collect()
    }

    fn notify(id: &str, revision: i64, attempt: u32) -> Step {
        Step::Notify {
            node: node(id),
            revision,
            attempt,
        }
    }

    #[test]
    fn every_node_confirms_and_the_cycle_compacts_below_the_lowest_watch() {
        let (mut cycle, step) = CompactionCycle::start(true, nodes(), 5);
        assert_eq!(step, Step::AskMinRevisions(nodes()));
        // Answers may come in any order.
        let step = cycle.on_min_revisions(mins(&[("c", 40), ("a", 30), ("b", 21)]));
        assert_eq!(step, notify("a", 20, 1), "one below the lowest");
        assert_eq!(cycle.on_notice(NoticeAnswer::Confirmed), notify("b", 20, 1));
        assert_eq!(cycle.on_notice(NoticeAnswer::Confirmed), notify("c", 20, 1));
        assert_eq!(cycle.on_notice(NoticeAnswer::Confirmed), Step::Compact(20));
        assert_eq!(cycle.proposed(), 20);
    }

    #[test]
    fn only_an_active_primary_with_registered_nodes_runs_a_cycle() {
        let (_, step) = CompactionCycle::start(false, nodes(), 0);
        assert!(matches!(step, Step::Skip(_)), "{step:?}");
        let (_, step) = CompactionCycle::start(true, vec![], 0);
        assert_eq!(step, Step::Skip("no registered nodes".into()));
        let mut listed = nodes();
        listed[1].peer_addr.clear();
        let (_, step) = CompactionCycle::start(true, listed, 0);
        assert_eq!(step, Step::Abort("node b has no peer address".into()));
    }

    #[test]
    fn any_node_without_an_answer_aborts_the_cycle() {
        let (mut cycle, _) = CompactionCycle::start(true, nodes(), 0);
        let mut answers = mins(&[("a", 30), ("c", 40)]);
        answers.push(("b".into(), Err("deadline exceeded".into())));
        assert_eq!(
            cycle.on_min_revisions(answers),
            Step::Abort("minimum watch revision of b: deadline exceeded".into())
        );
        let (mut cycle, _) = CompactionCycle::start(true, nodes(), 0);
        assert_eq!(
            cycle.on_min_revisions(mins(&[("a", 30), ("c", 40)])),
            Step::Abort("no minimum watch revision from b".into())
        );
    }

    #[test]
    fn nothing_new_to_compact_is_skipped() {
        for (lowest, current) in [(0, 0), (-1, 0), (1, 0), (11, 10), (10, 10)] {
            let (mut cycle, _) = CompactionCycle::start(true, nodes(), current);
            let step = cycle.on_min_revisions(mins(&[("a", 50), ("b", lowest), ("c", 50)]));
            assert!(
                matches!(step, Step::Skip(_)),
                "lowest {lowest}, current {current}: {step:?}"
            );
        }
        let (mut cycle, _) = CompactionCycle::start(true, nodes(), 10);
        let step = cycle.on_min_revisions(mins(&[("a", 50), ("b", 12), ("c", 50)]));
        assert_eq!(step, notify("a", 11, 1));
    }

    #[test]
    fn a_rejection_rolls_back_the_nodes_that_confirmed() {
        let (mut cycle, _) = CompactionCycle::start(true, nodes(), 7);
        cycle.on_min_revisions(mins(&[("a", 30), ("b", 30), ("c", 30)]));
        assert_eq!(cycle.on_notice(NoticeAnswer::Confirmed), notify("b", 29, 1));
        assert_eq!(cycle.on_notice(NoticeAnswer::Confirmed), notify("c", 29, 1));
        assert_eq!(
            cycle.on_notice(NoticeAnswer::Rejected),
            Step::RollBack {
                node: node("c"),
                why: Unconfirmed::Rejected,
                nodes: vec![node("a"), node("b")],
                revision: 7,
            },
            "a rejection is not retried; the rejecting node restored its own floor"
        );
    }

    #[test]
    fn a_notice_without_an_answer_is_tried_twice_then_rolled_back_too() {
        let (mut cycle, _) = CompactionCycle::start(true, nodes(), 0);
        cycle.on_min_revisions(mins(&[("a", 30), ("b", 30), ("c", 30)]));
        let failed = || NoticeAnswer::Failed("timeout".into());
        assert_eq!(cycle.on_notice(failed()), notify("a", 29, 2));
        assert_eq!(cycle.on_notice(NoticeAnswer::Confirmed), notify("b", 29, 1));
        assert_eq!(cycle.on_notice(failed()), notify("b", 29, 2));
        assert_eq!(
            cycle.on_notice(failed()),
            Step::RollBack {
                node: node("b"),
                why: Unconfirmed::Unreachable("timeout".into()),
                nodes: vec![node("a"), node("b")],
                revision: 0,
            }
        );
    }
}
