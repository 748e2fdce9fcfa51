//! The calls one end made and awaits answers to, by JSON-RPC id.
//!
//! Generic over what waits (a channel's sending half, in practice), so that
//! this crate needs no runtime: the table hands out ids, gives back the
//! waiter an answer belongs to, and on close every waiter still waiting,
//! each end failing them in its own way.

use std::collections::HashMap;

use serde_json::Value;

#[derive(Debug)]
pub struct CallTable<W> {
    /// Starts every id, so that a log tells whose call it was.
    prefix: &'static str,
    issued: u64,
    /// `None` once closed, so that no call starts waiting on a dead connection.
    waiting: Option<HashMap<String, W>>,
}

impl<W> CallTable<W> {
    /// An open table whose calls are `<prefix>1`, `<prefix>2`, ….
    pub fn new(prefix: &'static str) -> Self {
        CallTable {
            prefix,
            issued: 0,
            waiting: Some(HashMap::new()),
        }
    }

    /// Registers a call awaited by `waiter` and returns its id; `None` once
    /// the table is closed (the waiter is dropped).
    pub fn start(&mut self, waiter: W) -> Option<String> {
        let waiting = self.waiting.as_mut()?;
        self.issued += 1;
        let id = format!("{}{}", self.prefix, self.issued);
        waiting.insert(id.clone(), waiter);
        Some(id)
    }

    /// Takes the waiter of the call a response with `id` answers; `None` for
    /// an id no call awaits (unknown, already answered, or given up).
    pub fn answer(&mut self, id: &Value) -> Option<W> {
        self.waiting.as_mut()?.remove(id.as_str()?)
    }

    /// Forgets the call `id`, which gave up waiting: a late answer to it is
    /// then an unknown one.
    pub fn forget(&mut self, id: &str) {
        if let Some(waiting) = self.waiting.as_mut() {
            waiting.remove(id);
        }
    }

    /// Forgets every call whose waiter `gave_up`, for an end whose waiters
    /// give up without saying which call they were.
    pub fn forget_if(&mut self, gave_up: impl Fn(&W) -> bool) {
        if let Some(waiting) = self.waiting.as_mut() {
            waiting.retain(|_, waiter| !gave_up(waiter));
        }
    }

    /// Closes the table when the connection ends: no call starts from now
    /// on, and every call still waiting is handed back to be failed.
    pub fn close(&mut self) -> Vec<W> {
        self.waiting
            .take()
            .map(|waiting| waiting.into_values().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_answer_reaches_the_waiter_of_its_call_once() {
        let mut calls = CallTable::new("c-");
        let first = calls.start("first").unwrap();
        let second = calls.start("second").unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("c-1", "c-2"));
        assert_eq!(calls.answer(&json!("c-2")), Some("second"));
        assert_eq!(calls.answer(&json!("c-2")), None, "answered already");
        assert_eq!(calls.answer(&json!("c-1")), Some("first"));
    }

    #[test]
    fn an_answer_to_no_call_is_dropped() {
        let mut calls = CallTable::new("c-");
        calls.start("waiting").unwrap();
        for unknown in [json!("c-9"), json!("d-1"), json!(1), json!(null)] {
            assert_eq!(calls.answer(&unknown), None, "{unknown}");
        }
        assert_eq!(calls.close(), ["waiting"], "the call still waits");
    }

    #[test]
    fn a_forgotten_call_is_not_answered() {
        let mut calls = CallTable::new("d-");
        let gave_up = calls.start(1).unwrap();
        let waits = calls.start(2).unwrap();
        calls.forget(&gave_up);
        assert_eq!(calls.answer(&json!(gave_up)), None);

        let abandoned = calls.start(3).unwrap();
        calls.forget_if(|waiter| *waiter == 3);
        assert_eq!(calls.answer(&json!(abandoned)), None);
        assert_eq!(calls.answer(&json!(waits)), Some(2));
    }

    #[test]
    fn closing_hands_back_every_waiter_and_starts_no_more_calls() {
        let mut calls = CallTable::new("c-");
        let answered = calls.start('a').unwrap();
        calls.start('b').unwrap();
        calls.start('c').unwrap();
        calls.answer(&json!(answered));
        let mut failed = calls.close();
        failed.sort();
        assert_eq!(failed, ['b', 'c']);
        assert_eq!(calls.start('d'), None);
        assert!(calls.close().is_empty());
        assert_eq!(calls.answer(&json!("c-2")), None);
    }
}
