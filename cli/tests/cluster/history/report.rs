//! How a violation is reported: the operations involved and the nemesis events
//! around them, in order.

use super::*;

/// `c1-42` and the length, enough to recognise a value.
pub(super) fn short(value: &str) -> String {
    let id = value.split('|').next().unwrap_or(value);
    let id: String = id.chars().take(24).collect();
    format!("{id:?} ({} B)", value.len())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match &self.call {
            Call::Write(value) => format!("write {}", short(value)),
            Call::Read => "read".to_owned(),
            Call::Delete => "delete".to_owned(),
        };
        let answer = match &self.answer {
            Answer::Ok(Some(value)) => format!("200 {}", short(value)),
            Answer::Ok(None) => "200".to_owned(),
            Answer::NotFound { partial: false } => "404".to_owned(),
            Answer::NotFound { partial: true } => "404 (partial)".to_owned(),
            Answer::Unavailable => "503".to_owned(),
            Answer::Unknown(why) => format!("no answer ({why})"),
            Answer::NotSent => "refused".to_owned(),
        };
        write!(
            f,
            "client {} via master-{}: {call} {:?} [{:.4}s .. {:.4}s] -> {answer}",
            self.client,
            self.master,
            self.key,
            self.invoke.as_secs_f64(),
            self.response.as_secs_f64()
        )?;
        match &self.version {
            Some(version) => write!(f, " version {version}"),
            None => Ok(()),
        }
    }
}

/// One thing the nemesis did, and when (since the history began).
#[derive(Clone, Debug)]
pub(super) struct Event {
    pub(super) at: Duration,
    pub(super) what: String,
}

/// A violation, the operations it involves, the updates of the key around it and
/// what the nemesis was doing.
pub(super) fn describe(history: &[Op], violation: &Violation, events: &[Event]) -> String {
    let at = violation.read();
    let read = &history[at];
    let racing_miss = if is_racing_miss(history, violation) {
        " (a miss marked partial while writers raced: README allows it)"
    } else {
        ""
    };
    let mut text = format!("{violation:?}{racing_miss}\n  read   #{at}: {read}\n");
    let involved = match *violation {
        Violation::Invented { .. } => at,
        Violation::Stale { source, newer, .. } => {
            text += &format!("  source #{source}: {}\n", history[source]);
            text += &format!("  newer  #{newer}: {}\n", history[newer]);
            source
        }
        Violation::Lost { write, .. } => {
            text += &format!("  lost   #{write}: {}\n", history[write]);
            text += &format!(
                "  the miss took {:.1} ms\n",
                (read.response - read.invoke).as_secs_f64() * 1000.0
            );
            write
        }
    };
    let racing = racing(history, at);
    text += "  updates of the key unsettled when the read began:\n";
    for &other in &racing {
        text += &format!("    #{other}: {}\n", history[other]);
    }
    let from = history[involved]
        .invoke
        .saturating_sub(Duration::from_millis(20));
    let between: Vec<usize> = (0..history.len())
        .filter(|&other| {
            let op = &history[other];
            op.key == read.key
                && op.is_update()
                && op.answer != Answer::NotSent
                && !racing.contains(&other)
                && op.response >= from
                && op.invoke <= read.response
        })
        .collect();
    text += &format!(
        "  other updates of the key from {:.4}s to the read ({}, the last 20):\n",
        from.as_secs_f64(),
        between.len()
    );
    for &other in &between[between.len().saturating_sub(20)..] {
        text += &format!("    #{other}: {}\n", history[other]);
    }
    text += "  nemesis in the 3 s before:\n";
    for event in events {
        if event.at + Duration::from_secs(3) >= from && event.at <= read.response {
            text += &format!("    {:.4}s {}\n", event.at.as_secs_f64(), event.what);
        }
    }
    text
}
