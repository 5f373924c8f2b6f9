//! A connection's wake-up when its close state changes: its own task and
//! its flush task each wait in a slot of their own.
//!
//! The connection lives on one shard thread, so a slot is a
//! `Cell<Option<Waker>>`: no lock, no waiter list, and nothing kept in the
//! waiting future. tokio's `Notify` kept a 64-byte `Notified` in the task
//! of every idle connection, which took it past jemalloc's 384-byte class
//! (docs/benchmarks.md, "Idle connections").

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Who waits: at most one future of each at a time.
#[derive(Debug, Clone, Copy)]
pub(super) enum Waiter {
    /// The connection's own task (`serve`).
    Task = 0,
    /// Its flush task.
    Flush = 1,
}

#[derive(Default)]
pub(super) struct Signal {
    slots: [Cell<Option<Waker>>; 2],
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = |slot: &Cell<Option<Waker>>| {
            let waker = slot.take();
            let some = waker.is_some();
            slot.set(waker);
            some
        };
        f.debug_struct("Signal")
            .field("task", &waiting(&self.slots[0]))
            .field("flush", &waiting(&self.slots[1]))
            .finish()
    }
}

impl Signal {
    /// Wakes whoever waits; each checks its condition again.
    pub(super) fn notify(&self) {
        for slot in &self.slots {
            if let Some(waker) = slot.take() {
                waker.wake();
            }
        }
    }

    /// Resolves once `done()` holds: checked at once, then whenever the
    /// task is polled after a [`Signal::notify`] (or anything else woke it).
    /// When it resolves or is dropped, it takes its waker out of the slot,
    /// so that no waker keeps a finished task's memory alive.
    pub(super) fn until<F: FnMut() -> bool + Unpin>(&self, who: Waiter, done: F) -> Until<'_, F> {
        Until {
            signal: self,
            who,
            done,
        }
    }

    fn register(&self, who: Waiter, cx: &Context<'_>) {
        let slot = &self.slots[who as usize];
        match slot.take() {
            Some(waker) if waker.will_wake(cx.waker()) => slot.set(Some(waker)),
            _ => slot.set(Some(cx.waker().clone())),
        }
    }
}

/// The future of [`Signal::until`]: a small struct, not an `async fn`
/// (which would keep its arguments twice).
pub(super) struct Until<'a, F> {
    signal: &'a Signal,
    who: Waiter,
    done: F,
}

impl<F: FnMut() -> bool + Unpin> Future for Until<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if (this.done)() {
            return Poll::Ready(());
        }
        this.signal.register(this.who, cx);
        Poll::Pending
    }
}

impl<F> Drop for Until<'_, F> {
    fn drop(&mut self) {
        // One waiter per slot: what is there is this future's own waker.
        drop(self.signal.slots[self.who as usize].take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_wakes_on_notify_once_its_condition_holds() {
        let signal = Rc::new(Signal::default());
        let flag = Rc::new(Cell::new(false));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (s, f) = (signal.clone(), flag.clone());
                let task = tokio::task::spawn_local(async move {
                    s.until(Waiter::Task, || f.get()).await;
                });
                let (s, f) = (signal.clone(), flag.clone());
                let flush = tokio::task::spawn_local(async move {
                    s.until(Waiter::Flush, || f.get()).await;
                });
                tokio::task::yield_now().await;
                // A notify with the condition false wakes them to wait again.
                signal.notify();
                tokio::task::yield_now().await;
                assert!(!task.is_finished() && !flush.is_finished());
                flag.set(true);
                signal.notify();
                task.await.unwrap();
                flush.await.unwrap();
            })
            .await;
        // Both slots are empty again: no waker outlives its wait.
        assert_eq!(
            format!("{:?}", signal),
            "Signal { task: false, flush: false }"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_wait_given_up_leaves_no_waker_behind() {
        let signal = Signal::default();
        let never = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            signal.until(Waiter::Flush, || false),
        );
        assert!(never.await.is_err());
        assert_eq!(
            format!("{signal:?}"),
            "Signal { task: false, flush: false }"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_condition_already_true_resolves_at_once() {
        let signal = Signal::default();
        signal.until(Waiter::Task, || true).await;
        assert_eq!(
            format!("{signal:?}"),
            "Signal { task: false, flush: false }"
        );
    }
}
