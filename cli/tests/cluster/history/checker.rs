//! The history of one run and its checker: what each operation asked and got, and
//! the real-time-order rules of the module doc as a **pure** function, with table
//! tests showing it can fail.

use super::*;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Write(String),
    Read,
    Delete,
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200; for a read, the value.
    Ok(Option<String>),
    /// 404; `partial` when the master marked it a miss after partial versions
    /// (`shardcache-miss: partial`).
    NotFound { partial: bool },
    /// 503.
    Unavailable,
    /// Another status, a timeout or a broken connection: no answer to go by.
    Unknown(String),
    /// The connection was refused: the request never reached a master.
    NotSent,
}

/// One operation of the history. Times are client-side, since the history began.
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub master: usize,
    pub key: String,
    pub call: Call,
    pub invoke: Duration,
    pub response: Duration,
    pub answer: Answer,
    /// The version a write was acknowledged with, or a read answered with (for the
    /// report only).
    pub version: Option<String>,
}

impl Op {
    pub(super) fn is_update(&self) -> bool {
        matches!(self.call, Call::Write(_) | Call::Delete)
    }

    /// A write or delete answered 200.
    pub(super) fn acknowledged(&self) -> bool {
        self.is_update() && matches!(self.answer, Answer::Ok(_))
    }

    /// A write or delete that may have taken effect: acknowledged or indeterminate.
    /// A delete answered 404 found nothing and wrote nothing; a refused connection
    /// sent nothing.
    pub(super) fn may_take_effect(&self) -> bool {
        !matches!(
            (&self.call, &self.answer),
            (Call::Read, _) | (_, Answer::NotSent) | (Call::Delete, Answer::NotFound { .. })
        )
    }

    /// When the operation's effect is known to be complete: its response if it was
    /// acknowledged, never (+∞) if indeterminate.
    pub(super) fn settled_at(&self) -> Duration {
        if self.acknowledged() {
            self.response
        } else {
            Duration::MAX
        }
    }

    /// A read that found nothing: a GET's 404, or a DELETE's (it reads first).
    pub(super) fn is_miss(&self) -> bool {
        matches!(self.call, Call::Read | Call::Delete)
            && matches!(self.answer, Answer::NotFound { .. })
    }
}

/// A read the history does not allow. Fields are indices into the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The value read was not written to this key by any write invoked before the
    /// read answered.
    Invented { read: usize },
    /// The read answered `source`'s value, though `newer` (an acknowledged write or
    /// delete) began after `source` was acknowledged and was acknowledged before
    /// the read began.
    Stale {
        read: usize,
        source: usize,
        newer: usize,
    },
    /// The read found nothing, though `write` was acknowledged before it began and
    /// no delete could have taken effect after `write` began.
    Lost { read: usize, write: usize },
}

impl Violation {
    pub fn read(&self) -> usize {
        match *self {
            Violation::Invented { read }
            | Violation::Stale { read, .. }
            | Violation::Lost { read, .. } => read,
        }
    }
}

/// Every violation in `history`, in history order of the reads.
pub fn check(history: &[Op]) -> Vec<Violation> {
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    // Writes by (key, value): values are meant to be unique, but need not be.
    let mut writes: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(index);
        if let Call::Write(value) = &op.call {
            writes
                .entry((op.key.as_str(), value.as_str()))
                .or_default()
                .push(index);
        }
    }
    let mut violations = Vec::new();
    for (index, read) in history.iter().enumerate() {
        let on_key = &by_key[read.key.as_str()];
        match (&read.call, &read.answer) {
            (Call::Read, Answer::Ok(Some(value))) => {
                let sources = writes
                    .get(&(read.key.as_str(), value.as_str()))
                    .map_or(&[][..], Vec::as_slice);
                if let Some(violation) = check_value(history, on_key, sources, index) {
                    violations.push(violation);
                }
            }
            _ if read.is_miss() => {
                if let Some(violation) = check_miss(history, on_key, index) {
                    violations.push(violation);
                }
            }
            _ => {}
        }
    }
    violations
}

/// A read of a value: written by a write of the key (one of `sources`, the writes
/// of that very value) invoked before the read answered, and not superseded in real
/// time before the read began.
pub(super) fn check_value(
    history: &[Op],
    on_key: &[usize],
    sources: &[usize],
    read: usize,
) -> Option<Violation> {
    let reader = &history[read];
    // Should a value have been written twice, the later-settled write is the one
    // that can be seen latest.
    let source = sources
        .iter()
        .copied()
        .filter(|&at| {
            let op = &history[at];
            op.may_take_effect() && op.invoke < reader.response
        })
        .max_by_key(|&at| history[at].settled_at());
    let Some(source) = source else {
        return Some(Violation::Invented { read });
    };
    let written = history[source].settled_at();
    on_key
        .iter()
        .copied()
        .filter(|&at| {
            let op = &history[at];
            at != source && op.acknowledged() && written < op.invoke && op.response < reader.invoke
        })
        .max_by_key(|&at| history[at].response)
        .map(|newer| Violation::Stale {
            read,
            source,
            newer,
        })
}

/// A miss: every write acknowledged before the read began must have been
/// removable by some delete that could take effect after that write began. A delete
/// acknowledged before the write began cannot (the write outranks it); one invoked
/// after the read answered cannot either.
pub(super) fn check_miss(history: &[Op], on_key: &[usize], read: usize) -> Option<Violation> {
    let reader = &history[read];
    let deletes: Vec<&Op> = on_key
        .iter()
        .map(|&at| &history[at])
        .filter(|op| op.call == Call::Delete && op.may_take_effect())
        .filter(|op| op.invoke < reader.response)
        .collect();
    on_key
        .iter()
        .copied()
        .filter(|&at| {
            let op = &history[at];
            matches!(op.call, Call::Write(_))
                && op.acknowledged()
                && op.response < reader.invoke
                && !deletes.iter().any(|delete| delete.settled_at() > op.invoke)
        })
        .max_by_key(|&at| history[at].response)
        .map(|write| Violation::Lost { read, write })
}

/// Other writes and deletes of the read's key that may have been in progress while
/// it ran: invoked before it answered and not acknowledged before it began
/// (indeterminate ones count forever). The report lists them.
pub(super) fn racing(history: &[Op], read: usize) -> Vec<usize> {
    let reader = &history[read];
    history
        .iter()
        .enumerate()
        .filter(|(_, op)| {
            op.key == reader.key
                && op.may_take_effect()
                && op.invoke < reader.response
                && op.settled_at() > reader.invoke
        })
        .map(|(at, _)| at)
        .collect()
}

/// Whether a violation is the miss README allows while writers race: a write or
/// delete of the key was still in flight when the read began (its client had no
/// answer yet), and the master marked the miss `partial` (it met only partial
/// versions through its retries). A miss behind an acknowledged write with no update
/// in flight (only leftovers of indeterminate ones, or nothing), or not marked, is
/// not allowed.
pub fn is_racing_miss(history: &[Op], violation: &Violation) -> bool {
    let Violation::Lost { read, .. } = *violation else {
        return false;
    };
    let reader = &history[read];
    reader.answer == (Answer::NotFound { partial: true })
        && racing(history, read)
            .into_iter()
            .any(|at| history[at].response > reader.invoke)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(at: u64) -> Duration {
        Duration::from_millis(at)
    }

    fn op(call: Call, (invoke, response): (u64, u64), answer: Answer) -> Op {
        Op {
            client: 0,
            master: 0,
            key: "k".into(),
            call,
            invoke: ms(invoke),
            response: ms(response),
            answer,
            version: None,
        }
    }

    fn write(value: &str, span: (u64, u64)) -> Op {
        op(Call::Write(value.into()), span, Answer::Ok(None))
    }

    fn write_503(value: &str, span: (u64, u64)) -> Op {
        op(Call::Write(value.into()), span, Answer::Unavailable)
    }

    fn delete(span: (u64, u64), answer: Answer) -> Op {
        op(Call::Delete, span, answer)
    }

    fn read(span: (u64, u64), value: Option<&str>) -> Op {
        let answer = match value {
            Some(value) => Answer::Ok(Some(value.into())),
            None => Answer::NotFound { partial: false },
        };
        op(Call::Read, span, answer)
    }

    /// A read answered 404 marked `partial`.
    fn partial_miss(span: (u64, u64)) -> Op {
        op(Call::Read, span, Answer::NotFound { partial: true })
    }

    #[test]
    fn a_stale_read_is_detected() {
        let history = [
            write("a", (0, 10)),
            write("b", (20, 30)),
            read((40, 50), Some("a")),
        ];
        assert_eq!(
            check(&history),
            [Violation::Stale {
                read: 2,
                source: 0,
                newer: 1
            }]
        );
        // The newest value is fine.
        assert_eq!(
            check(&[
                history[0].clone(),
                history[1].clone(),
                read((40, 50), Some("b"))
            ]),
            []
        );
    }

    #[test]
    fn reads_concurrent_with_a_write_may_see_either_value() {
        for seen in ["a", "b"] {
            let history = [
                write("a", (0, 10)),
                write("b", (20, 60)),
                read((40, 50), Some(seen)),
            ];
            assert_eq!(check(&history), [], "{seen}");
        }
        // Overlapping writes: either may win, whatever their order of invoke.
        let history = [
            write("a", (0, 30)),
            write("b", (10, 20)),
            read((40, 50), Some("a")),
        ];
        assert_eq!(check(&history), []);
    }

    #[test]
    fn an_indeterminate_write_may_be_seen_late_but_not_before_it_began() {
        let history = [
            write_503("a", (0, 10)),
            write("b", (20, 30)),
            read((40, 50), Some("a")),
        ];
        assert_eq!(check(&history), []);
        let history = [
            write("a", (0, 10)),
            write("b", (20, 30)),
            op(
                Call::Write("c".into()),
                (32, 34),
                Answer::Unknown("timeout".into()),
            ),
            read((40, 50), Some("c")),
        ];
        assert_eq!(check(&history), []);
        // A read answered before the write was invoked saw a value from nowhere.
        let history = [read((0, 10), Some("a")), write_503("a", (20, 30))];
        assert_eq!(check(&history), [Violation::Invented { read: 0 }]);
    }

    #[test]
    fn a_value_no_one_wrote_or_of_another_key_is_invented() {
        let mut other_key = write("a", (0, 10));
        other_key.key = "other".into();
        let history = [other_key, read((20, 30), Some("a"))];
        assert_eq!(check(&history), [Violation::Invented { read: 1 }]);
        let history = [write("a", (0, 10)), read((20, 30), Some("a "))];
        assert_eq!(check(&history), [Violation::Invented { read: 1 }]);
        // A refused request sent nothing.
        let history = [
            op(Call::Write("a".into()), (0, 1), Answer::NotSent),
            read((20, 30), Some("a")),
        ];
        assert_eq!(check(&history), [Violation::Invented { read: 1 }]);
    }

    #[test]
    fn a_miss_after_an_acknowledged_write_with_no_delete_is_flagged() {
        let history = [write("a", (0, 10)), read((20, 30), None)];
        assert_eq!(check(&history), [Violation::Lost { read: 1, write: 0 }]);
        // A DELETE answered 404 read nothing too.
        let history = [
            write("a", (0, 10)),
            delete((20, 30), Answer::NotFound { partial: false }),
        ];
        assert_eq!(check(&history), [Violation::Lost { read: 1, write: 0 }]);
        // A write still in flight, or indeterminate, proves nothing.
        assert_eq!(check(&[write("a", (0, 25)), read((20, 30), None)]), []);
        assert_eq!(check(&[write_503("a", (0, 10)), read((20, 30), None)]), []);
    }

    #[test]
    fn a_miss_is_excused_only_by_a_delete_that_could_follow_the_write() {
        let write_then_miss =
            |delete_op: Op| [write("a", (10, 20)), delete_op, read((40, 50), None)];
        // Acknowledged or indeterminate, invoked before the miss answered: fine.
        for excuse in [
            delete((25, 30), Answer::Ok(None)),
            delete((15, 30), Answer::Ok(None)),
            delete((45, 60), Answer::Ok(None)),
            delete((0, 5), Answer::Unavailable),
            delete((0, 5), Answer::Unknown("reset".into())),
        ] {
            assert_eq!(check(&write_then_miss(excuse.clone())), [], "{excuse}");
        }
        // Acknowledged before the write began, invoked after the miss, found
        // nothing, or never sent: the write should have been seen.
        for no_excuse in [
            delete((0, 5), Answer::Ok(None)),
            delete((55, 60), Answer::Ok(None)),
            delete((25, 30), Answer::NotSent),
        ] {
            assert_eq!(
                check(&write_then_miss(no_excuse.clone())),
                [Violation::Lost { read: 2, write: 0 }],
                "{no_excuse}"
            );
        }
    }

    #[test]
    fn a_value_read_after_an_acknowledged_delete_is_stale() {
        let history = [
            write("a", (0, 10)),
            delete((20, 30), Answer::Ok(None)),
            read((40, 50), Some("a")),
        ];
        assert_eq!(
            check(&history),
            [Violation::Stale {
                read: 2,
                source: 0,
                newer: 1
            }]
        );
        // A delete that found nothing deleted nothing.
        let history = [
            write("a", (0, 10)),
            delete((20, 30), Answer::NotFound { partial: false }),
            read((40, 50), Some("a")),
        ];
        assert_eq!(check(&history), [Violation::Lost { read: 1, write: 0 }]);
    }

    #[test]
    fn a_miss_is_excused_only_while_writers_race_and_marked_partial() {
        let history = [
            write("a", (0, 10)),
            write("b", (20, 45)),
            write_503("c", (5, 6)),
            write("d", (60, 70)),
            read((40, 50), None),
        ];
        assert_eq!(racing(&history, 4), [1, 2]);
        // Write 1 is in flight while the read runs, but the master did not mark the
        // miss partial: it did not come from a racing read's retries.
        let lost = Violation::Lost { read: 4, write: 0 };
        assert!(!is_racing_miss(&history, &lost));
        let mut marked = history.clone();
        marked[4] = partial_miss((40, 50));
        assert!(is_racing_miss(&marked, &lost));
        // Only an indeterminate write's leftovers, long answered: not racing.
        let history = [
            write("a", (0, 10)),
            write_503("c", (5, 6)),
            read((40, 50), None),
        ];
        let lost = Violation::Lost { read: 2, write: 0 };
        assert_eq!(check(&history), std::slice::from_ref(&lost));
        let mut marked = history.clone();
        marked[2] = partial_miss((40, 50));
        assert!(!is_racing_miss(&marked, &lost));
        // A stale value is never excused.
        let history = [
            write("a", (0, 10)),
            write("b", (20, 30)),
            write("c", (35, 60)),
            read((40, 50), Some("a")),
        ];
        let stale = check(&history);
        assert_eq!(stale.len(), 1);
        assert!(!is_racing_miss(&history, &stale[0]));
    }
}
