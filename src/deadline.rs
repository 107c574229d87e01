//! Deadlines on a reusable, lazily moved timer.
//!
//! A tokio timer costs two timer-wheel updates each time it is armed and disarmed. On the
//! request path a deadline is almost never reached, so Keyway keeps one timer per thing
//! that waits again and again (an upstream connection waiting for response heads, a relayed
//! body waiting for chunks) and leaves it armed between waits. When it fires before the
//! current wait's deadline it is moved there; when it is armed later than that deadline it
//! is moved back. A wait that ends in time touches no wheel at all.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

/// A timer that is made on first use and then kept.
pub type LazyTimer = Option<Pin<Box<Sleep>>>;

/// Whether `deadline` has passed. If not, `timer` is armed no later than `deadline` and
/// wakes `cx` when it fires (the caller then asks again).
pub fn passed(timer: &mut LazyTimer, deadline: Instant, cx: &mut Context<'_>) -> bool {
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if sleep.deadline() > deadline {
        sleep.as_mut().reset(deadline);
    }
    loop {
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        // It fired at its own deadline: that is this one, or an earlier wait's.
        if deadline <= sleep.deadline() {
            return true;
        }
        sleep.as_mut().reset(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use std::time::Duration;

    async fn check(timer: &mut LazyTimer, deadline: Instant) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(passed(timer, deadline, cx))).await
    }

    async fn ms(n: u64) {
        tokio::time::advance(Duration::from_millis(n)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_armed_for_an_earlier_wait_is_moved_not_obeyed() {
        let start = Instant::now();
        let mut timer = None;
        assert!(!check(&mut timer, start + Duration::from_millis(1000)).await);
        // A later wait on the same timer, with a later deadline.
        ms(500).await;
        let second = start + Duration::from_millis(1500);
        assert!(!check(&mut timer, second).await);
        ms(600).await; // the first deadline has passed; the second has not
        assert!(
            !check(&mut timer, second).await,
            "cut at an earlier wait's deadline"
        );
        ms(399).await;
        assert!(!check(&mut timer, second).await);
        ms(1).await;
        assert!(
            check(&mut timer, second).await,
            "not cut at its own deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_armed_later_than_the_deadline_is_moved_back() {
        let start = Instant::now();
        let mut timer = None;
        assert!(!check(&mut timer, start + Duration::from_secs(300)).await);
        // A shorter limit (a reload): this wait's deadline comes first.
        let short = start + Duration::from_millis(200);
        assert!(!check(&mut timer, short).await);
        ms(200).await;
        assert!(check(&mut timer, short).await, "kept the later deadline");
    }

    /// The timer wakes the waiting task when the deadline passes: nothing has to poll it.
    #[tokio::test(start_paused = true)]
    async fn the_waiting_task_is_woken_at_the_deadline() {
        let mut timer = None;
        let deadline = Instant::now() + Duration::from_millis(300);
        let waited = std::future::poll_fn(|cx| {
            if passed(&mut timer, deadline, cx) {
                Poll::Ready(Instant::now())
            } else {
                Poll::Pending
            }
        });
        let mut waited = std::pin::pin!(waited);
        let woke = tokio::time::timeout(Duration::from_secs(5), waited.as_mut()).await;
        assert_eq!(woke.expect("never woken"), deadline);
    }
}
