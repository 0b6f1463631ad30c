//! Calls gathered into one: a script that decides many items at once
//! (KEYS[i] and ARGV[i] are item i's; it answers `width` integers per
//! item) runs once for everything a worker asked while its previous call
//! was on the wire. Nothing waits for company: with no call in flight an
//! item is sent at once; only what arrives meanwhile shares the next call.
//! Under load that is one round trip, one script run and one wake-up for
//! many checks instead of one each.
//!
//! No item waits past `redis.timeout` from when it was asked: a call's
//! time limit is what is left of its oldest item's; items queued behind a
//! call that failed fail at once (the worker's connection is down), so the
//! caller's fallback answers them.

use std::{
    mem,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ::redis::{ErrorKind, Script, ServerErrorKind};
use tokio::sync::oneshot;

use super::{Redis, RedisError};

const NOSCRIPT: ErrorKind = ErrorKind::Server(ServerErrorKind::NoScript);

/// A script that decides a batch of items in one call.
pub struct BatchScript {
    script: Script,
    /// Integers per item in the answer.
    width: usize,
    /// Items per call at most (one script run is bounded).
    max_items: usize,
}

impl BatchScript {
    pub fn new(code: &str, width: usize, max_items: usize) -> Self {
        Self {
            script: Script::new(code),
            width,
            max_items: max_items.max(1),
        }
    }

    fn id(&'static self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

/// One worker's items for one script.
pub(super) struct Queue {
    script: &'static BatchScript,
    waiting: Vec<Item>,
    /// A call is on the wire (its task takes what waits when it ends).
    in_flight: bool,
}

struct Item {
    key: Vec<u8>,
    arg: bytes::Bytes,
    asked: Instant,
    answer: oneshot::Sender<Result<Vec<i64>, RedisError>>,
}

/// Every script's queue of one worker.
#[derive(Default)]
pub(super) struct Queues(Mutex<Vec<Queue>>);

impl Queues {
    /// Queues an item; true when no call is in flight (the caller starts
    /// one).
    fn push(&self, script: &'static BatchScript, item: Item) -> bool {
        let mut queues = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let queue = match queues.iter().position(|q| q.script.id() == script.id()) {
            Some(i) => &mut queues[i],
            None => {
                queues.push(Queue {
                    script,
                    waiting: Vec::new(),
                    in_flight: false,
                });
                queues.last_mut().expect("just pushed")
            }
        };
        queue.waiting.push(item);
        !mem::replace(&mut queue.in_flight, true)
    }

    /// The sender ended without taking the rest (its task was dropped
    /// with its runtime, or panicked): the waiting items fail, and the next
    /// item starts a call again.
    fn abandon(&self, script: &'static BatchScript) {
        let mut queues = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.iter_mut().find(|q| q.script.id() == script.id()) {
            queue.in_flight = false;
            for item in queue.waiting.drain(..) {
                let _ = item.answer.send(Err(RedisError::Down));
            }
        }
    }

    /// The next call's items (oldest first), or none: then no call is in
    /// flight any more.
    fn take(&self, script: &'static BatchScript) -> Vec<Item> {
        let mut queues = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = queues.iter_mut().find(|q| q.script.id() == script.id()) else {
            return Vec::new();
        };
        if queue.waiting.is_empty() {
            queue.in_flight = false;
            return Vec::new();
        }
        let n = queue.waiting.len().min(script.max_items);
        let rest = queue.waiting.split_off(n);
        mem::replace(&mut queue.waiting, rest)
    }
}

/// Ends the in-flight state however a sender ends (dropped with its
/// runtime, or panicking): then the waiting items fail.
struct Abandon<'a> {
    queues: &'a Queues,
    script: &'static BatchScript,
    done: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.queues.abandon(self.script);
        }
    }
}

impl Redis {
    /// Runs `script` for one item (`key`, `arg`) together with the other
    /// items the calling worker has waiting: its `width` integers. Fails
    /// at once while the worker's connection is down; never waits past
    /// `redis.timeout`.
    pub async fn batched(
        &self,
        script: &'static BatchScript,
        key: Vec<u8>,
        arg: bytes::Bytes,
    ) -> Result<Vec<i64>, RedisError> {
        let (index, slot) = self.slot();
        if slot.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RedisError::Down);
        }
        let (answer, answered) = oneshot::channel();
        let item = Item {
            key,
            arg,
            asked: Instant::now(),
            answer,
        };
        if slot.queues.push(script, item) {
            let Some(me) = self.me.upgrade() else {
                return Err(RedisError::Down);
            };
            tokio::spawn(async move { me.send_batches(index, script).await });
        }
        answered.await.unwrap_or(Err(RedisError::Down))
    }

    /// Sends the worker's waiting items, a call at a time, until none is
    /// left.
    async fn send_batches(self: Arc<Self>, index: usize, script: &'static BatchScript) {
        let slot = &self
            .slots
            .get()
            .expect("an item was queued, so slots exist")[index];
        let mut guard = Abandon {
            queues: &slot.queues,
            script,
            done: false,
        };
        loop {
            let items = slot.queues.take(script);
            if items.is_empty() {
                // `take` saw nothing waiting and ended the in-flight state.
                guard.done = true;
                return;
            }
            if slot.down.load(std::sync::atomic::Ordering::Relaxed) {
                for item in items {
                    let _ = item.answer.send(Err(RedisError::Down));
                }
                continue;
            }
            self.metrics.batch_items.observe(items.len() as f64);
            let left =
                (items[0].asked + self.settings.timeout).saturating_duration_since(Instant::now());
            let answers = self.send_batch(script, &items, left).await;
            match answers {
                Ok(values) => {
                    for (item, chunk) in items.into_iter().zip(values.chunks(script.width)) {
                        let _ = item.answer.send(Ok(chunk.to_vec()));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for item in items {
                        let _ = item.answer.send(Err(RedisError::Batch(e.clone())));
                    }
                }
            }
        }
    }

    /// One call for `items`, within `left`.
    async fn send_batch(
        &self,
        script: &'static BatchScript,
        items: &[Item],
        left: Duration,
    ) -> Result<Vec<i64>, RedisError> {
        if left.is_zero() {
            // Queued behind a call that took the whole time: answered
            // without Redis (which did answer, so it stays up).
            return Err(RedisError::Timeout(self.settings.timeout));
        }
        // EVALSHA built directly (a ScriptInvocation copies every key and
        // argument once more), and the script loaded on NOSCRIPT.
        let mut command = ::redis::cmd("EVALSHA");
        command.arg(script.script.get_hash()).arg(items.len());
        for item in items {
            command.arg(item.key.as_slice());
        }
        for item in items {
            command.arg(item.arg.as_ref());
        }
        let values: Vec<i64> = self
            .call_within(left, |mut connection| async move {
                match command.query_async(&mut connection).await {
                    Err(e) if e.kind() == NOSCRIPT => {
                        script.script.load_async(&mut connection).await?;
                        command.query_async(&mut connection).await
                    }
                    answer => answer,
                }
            })
            .await?;
        if values.len() != items.len() * script.width {
            tracing::warn!(
                items = items.len(),
                values = values.len(),
                "unexpected answer from a batched Redis script"
            );
            return Err(RedisError::Unexpected);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SCRIPT: std::sync::LazyLock<BatchScript> =
        std::sync::LazyLock::new(|| BatchScript::new("return {}", 1, 3));

    fn item(key: &str) -> (Item, oneshot::Receiver<Result<Vec<i64>, RedisError>>) {
        let (answer, answered) = oneshot::channel();
        let item = Item {
            key: key.as_bytes().to_vec(),
            arg: bytes::Bytes::new(),
            asked: Instant::now(),
            answer,
        };
        (item, answered)
    }

    /// The first item starts a call, the others wait for it; a call takes
    /// at most `max_items`, oldest first; when nothing waits, the next
    /// item starts a call again.
    #[test]
    fn the_first_item_starts_a_call_and_the_rest_wait_for_it() {
        let queues = Queues::default();
        let mut receivers = Vec::new();
        let mut started = Vec::new();
        for key in ["a", "b", "c", "d", "e"] {
            let (item, rx) = item(key);
            receivers.push(rx);
            started.push(queues.push(&SCRIPT, item));
        }
        assert_eq!(started, [true, false, false, false, false]);
        let keys =
            |items: Vec<Item>| -> Vec<Vec<u8>> { items.into_iter().map(|i| i.key).collect() };
        assert_eq!(keys(queues.take(&SCRIPT)), [b"a", b"b", b"c"]);
        let (late, _rx) = item("f");
        assert!(!queues.push(&SCRIPT, late), "a call is still in flight");
        assert_eq!(keys(queues.take(&SCRIPT)), [b"d", b"e", b"f"]);
        assert!(queues.take(&SCRIPT).is_empty());
        let (next, _rx) = item("g");
        assert!(
            queues.push(&SCRIPT, next),
            "nothing in flight: sent at once"
        );
    }
}
