//! Watch streams against the final history: the events of one watch must
//! be exactly the history's writes in the watched range from the start
//! revision on — in revision order, none twice, none skipped up to the last
//! one received, each with the value written and the key's previous state
//! as prev_kv. A stream may be cancelled (compaction, the client), but then
//! it ends; it never skips silently.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::operation::{ClientId, Kv, Revision};
use super::write_log::{Change, Write, WriteLog};
use super::{Check, Violation};

/// What one watch received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStream {
    pub client: ClientId,
    pub watched: Watched,
    /// The first revision asked for (a watch from "now" records the
    /// revision it started after, plus one).
    pub start_revision: Revision,
    /// Whether the watch asked for prev_kv.
    pub prev_kv: bool,
    /// In the order received.
    pub events: Vec<WatchEvent>,
    pub cancelled: Option<WatchCancel>,
    /// A revision the stream confirmed it had delivered everything up to (a
    /// progress notification's header revision), if any.
    #[serde(default)]
    pub caught_up_to: Option<Revision>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Watched {
    Key { key: String },
    Prefix { prefix: String },
}

/// One event as etcd sends it: a delete's `kv` has the key and the
/// delete's revision as mod_revision, and nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: Kv,
    pub prev_kv: Option<Kv>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Put,
    Delete,
}

/// The server cancelled the watch; `compact_revision` is non-zero when it
/// was because the history the watch needed was compacted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCancel {
    pub compact_revision: Revision,
    pub reason: String,
}

impl Watched {
    pub fn contains(&self, key: &str) -> bool {
        match self {
            Watched::Key { key: watched } => key == watched,
            Watched::Prefix { prefix } => key.starts_with(prefix.as_str()),
        }
    }
}

/// How many missed revisions a gap message lists.
const MISSED_SHOWN: usize = 8;

/// The stream (number `index` in the recording) against the history.
pub fn check(index: usize, stream: &WatchStream, log: &WriteLog) -> Vec<Violation> {
    let mut problems: Vec<String> = Vec::new();
    let mut received: HashSet<(Revision, &str)> = HashSet::new();
    let mut last: Option<Revision> = None;
    let mut last_per_key: HashMap<&str, Revision> = HashMap::new();
    for (n, event) in stream.events.iter().enumerate() {
        let revision = event.kv.mod_revision;
        let key = event.kv.key.as_str();
        let name = format!("event {n} ({event})");
        if !stream.watched.contains(key) {
            problems.push(format!("{name} is outside the watched {}", stream.watched));
        }
        if revision < stream.start_revision {
            problems.push(format!(
                "{name} is before the start revision {}",
                stream.start_revision
            ));
        }
        if !received.insert((revision, key)) {
            problems.push(format!("{name} is a duplicate"));
            continue;
        }
        if let Some(last) = last.filter(|&last| revision < last) {
            problems.push(format!("{name} came after revision {last}"));
        }
        if let Some(&before) = last_per_key.get(key).filter(|&&before| revision <= before) {
            problems.push(format!("{name} came after {key}'s revision {before}"));
        }
        last = last.max(Some(revision));
        last_per_key.insert(key, revision);
        if let Some(problem) = event_problem(event, stream.prev_kv, log) {
            problems.push(format!("{name} {problem}"));
        }
    }

    // Everything in range up to the last event (or a confirmed progress
    // revision) must have arrived.
    let end = last.max(stream.caught_up_to);
    if let Some(end) = end {
        let missed: Vec<&Write> = log
            .between(stream.start_revision, end)
            .filter(|w| stream.watched.contains(&w.key))
            .filter(|w| !received.contains(&(w.revision, w.key.as_str())))
            .collect();
        if !missed.is_empty() {
            let shown: Vec<String> = missed
                .iter()
                .take(MISSED_SHOWN)
                .map(|w| w.to_string())
                .collect();
            let more = missed.len().saturating_sub(MISSED_SHOWN);
            problems.push(format!(
                "missed {} events between revisions {} and {end}: {}{}",
                missed.len(),
                stream.start_revision,
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
    }

    if let Some(cancel) = stream.cancelled.as_ref().filter(|c| c.compact_revision > 0) {
        let next = last.map_or(stream.start_revision, |last| last + 1);
        if next >= cancel.compact_revision {
            problems.push(format!(
                "was cancelled for compaction at {} though the next revision it needed, {next}, is not compacted ({})",
                cancel.compact_revision, cancel.reason
            ));
        }
    }

    problems
        .into_iter()
        .map(|problem| Violation {
            check: Check::Watch,
            operations: Vec::new(),
            watch: Some(index),
            message: format!(
                "watch #{index} (client {}, {} from revision {}): {problem}",
                stream.client, stream.watched, stream.start_revision
            ),
        })
        .collect()
}

/// Whether the event is the history's write at its revision, with the
/// right prev_kv.
fn event_problem(event: &WatchEvent, wants_prev_kv: bool, log: &WriteLog) -> Option<String> {
    let revision = event.kv.mod_revision;
    let Some(write) = log.at(revision) else {
        return Some(format!(
            "is not in the history, which has no write at {revision}"
        ));
    };
    let matches = write.key == event.kv.key
        && match (&write.change, event.kind) {
            (Change::Put { value }, EventKind::Put) => *value == event.kv.value,
            (Change::Delete, EventKind::Delete) => true,
            _ => false,
        };
    if !matches {
        return Some(format!("differs from the history's {write}"));
    }
    if event.kind == EventKind::Put {
        let expected = log.kv_written_at(revision);
        if expected.as_ref() != Some(&event.kv) {
            let expected = expected.map_or_else(|| "nothing".to_string(), |kv| kv.to_string());
            return Some(format!("has kv {}, the history {expected}", event.kv));
        }
    }
    // prev_kv is checked when asked for, and whenever sent.
    if wants_prev_kv || event.prev_kv.is_some() {
        let expected = log.kv_before(revision);
        if event.prev_kv != expected {
            let shown =
                |kv: Option<&Kv>| kv.map_or_else(|| "none".to_string(), |kv| kv.to_string());
            return Some(format!(
                "has prev_kv {}, but the key's previous write left {}",
                shown(event.prev_kv.as_ref()),
                shown(expected.as_ref())
            ));
        }
    }
    None
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Watched::Key { key } => write!(f, "key {key}"),
            Watched::Prefix { prefix } => write!(f, "prefix {prefix}"),
        }
    }
}

impl fmt::Display for WatchEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            EventKind::Put => write!(
                f,
                "put {} = {:?} at {}",
                self.kv.key, self.kv.value, self.kv.mod_revision
            ),
            EventKind::Delete => write!(f, "delete {} at {}", self.kv.key, self.kv.mod_revision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn log() -> WriteLog {
        WriteLog::new(vec![
            log_put(2, "/a", "1"),
            log_put(3, "/b", "1"),
            log_put(4, "/a", "2"),
            log_put(5, "other", "1"),
            log_delete(6, "/a"),
            log_put(7, "/b", "2"),
        ])
        .unwrap()
    }

    fn put_event(
        key: &str,
        value: &str,
        revision: Revision,
        create: Revision,
        version: i64,
        prev: Option<Kv>,
    ) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Put,
            kv: kv(key, value, revision, create, version),
            prev_kv: prev,
        }
    }

    fn delete_event(key: &str, revision: Revision, prev: Option<Kv>) -> WatchEvent {
        WatchEvent {
            kind: EventKind::Delete,
            kv: Kv {
                key: key.into(),
                value: String::new(),
                mod_revision: revision,
                create_revision: 0,
                version: 0,
            },
            prev_kv: prev,
        }
    }

    /// The correct events for a watch on "/" with prev_kv, from revision 3.
    fn events() -> Vec<WatchEvent> {
        vec![
            put_event("/b", "1", 3, 3, 1, None),
            put_event("/a", "2", 4, 2, 2, Some(kv("/a", "1", 2, 2, 1))),
            delete_event("/a", 6, Some(kv("/a", "2", 4, 2, 2))),
            put_event("/b", "2", 7, 3, 2, Some(kv("/b", "1", 3, 3, 1))),
        ]
    }

    fn stream(events: Vec<WatchEvent>) -> WatchStream {
        WatchStream {
            client: 7,
            watched: Watched::Prefix { prefix: "/".into() },
            start_revision: 3,
            prev_kv: true,
            events,
            cancelled: None,
            caught_up_to: None,
        }
    }

    fn messages(stream: &WatchStream) -> Vec<String> {
        check(0, stream, &log())
            .into_iter()
            .map(|v| v.message)
            .collect()
    }

    #[test]
    fn a_complete_stream_is_accepted() {
        assert_eq!(messages(&stream(events())), Vec::<String>::new());
        // A key watch sees only its key.
        let mut only_b = stream(vec![events()[0].clone(), events()[3].clone()]);
        only_b.watched = Watched::Key { key: "/b".into() };
        assert_eq!(messages(&only_b), Vec::<String>::new());
    }

    #[test]
    fn a_stream_cut_short_by_cancellation_is_accepted() {
        let mut cancelled = stream(events()[..2].to_vec());
        cancelled.cancelled = Some(WatchCancel {
            compact_revision: 0,
            reason: "cancelled by the client".into(),
        });
        assert_eq!(messages(&cancelled), Vec::<String>::new());
        // Fell behind a compaction to 6: it still needed revision 5.
        let mut compacted = stream(events()[..2].to_vec());
        compacted.cancelled = Some(WatchCancel {
            compact_revision: 6,
            reason: "required revision has been compacted".into(),
        });
        assert_eq!(messages(&compacted), Vec::<String>::new());
        // Cancelled "for compaction" at 5 when it needed 5, still there.
        compacted.cancelled = Some(WatchCancel {
            compact_revision: 5,
            reason: "required revision has been compacted".into(),
        });
        let problems = messages(&compacted);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("next revision it needed, 5, is not compacted"));
    }

    #[test]
    fn a_duplicated_event_is_rejected() {
        let mut events = events();
        events.insert(2, events[1].clone());
        let problems = messages(&stream(events));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("watch #0 (client 7, prefix / from revision 3): event 2 (put /a = \"2\" at 4) is a duplicate"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn a_gap_is_rejected() {
        let mut events = events();
        events.remove(1);
        let problems = messages(&stream(events));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("missed 1 events between revisions 3 and 7: put /a = \"2\" at 4"),
            "{}",
            problems[0]
        );
        // A progress notification at 7 makes a stream that stopped at 4
        // responsible for 6 and 7.
        let mut stopped = stream(self::events()[..2].to_vec());
        stopped.caught_up_to = Some(7);
        let problems = messages(&stopped);
        assert!(problems[0].contains("missed 2 events"), "{problems:?}");
    }

    #[test]
    fn a_wrong_prev_kv_is_rejected() {
        let mut events = events();
        events[2].prev_kv = Some(kv("/a", "1", 2, 2, 1));
        let problems = messages(&stream(events));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("event 2 (delete /a at 6) has prev_kv /a = \"1\" (mod 2, create 2, version 1), but the key's previous write left /a = \"2\" (mod 4"),
            "{}",
            problems[0]
        );
        // A missing prev_kv, when asked for, too.
        let mut events = self::events();
        events[1].prev_kv = None;
        assert_eq!(messages(&stream(events)).len(), 1);
    }

    #[test]
    fn out_of_order_and_wrong_values_are_rejected() {
        let mut events = events();
        events.swap(1, 2);
        let problems = messages(&stream(events));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("event 2 (put /a = \"2\" at 4) came after revision 6")),
            "{problems:?}"
        );

        let mut events = self::events();
        events[3].kv.value = "3".into();
        let problems = messages(&stream(events));
        assert!(
            problems[0].contains("differs from the history's put /b = \"2\" at 7"),
            "{problems:?}"
        );

        let mut events = self::events();
        events.push(put_event("/c", "1", 8, 8, 1, None));
        let problems = messages(&stream(events));
        assert!(problems[0].contains("not in the history"), "{problems:?}");
    }
}
