//! The daemon's log: what `DEDUPFS_LOG` selects, minus lines that report nothing wrong.

use std::fmt::Debug;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Drops fuser's "Failed to send FUSE reply: ... (os error 2)" lines. ENOENT from a write to
/// /dev/fuse means the kernel no longer waits for that request: it was interrupted (its
/// caller got EINTR or was killed) and the kernel already answered it. fuser logs each at
/// ERROR, which made a healthy daemon's log look broken after every Ctrl-C of a reader. A
/// reply that fails for any other reason is still logged.
pub struct QuietLateReplies;

impl<S: Subscriber> Layer<S> for QuietLateReplies {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        !is_late_reply(event)
    }
}

fn is_late_reply(event: &Event<'_>) -> bool {
    struct Message(bool);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            if field.name() == "message" {
                let text = format!("{value:?}");
                self.0 =
                    text.starts_with("Failed to send FUSE reply") && text.ends_with("(os error 2)");
            }
        }
    }
    if *event.metadata().level() != Level::ERROR {
        return false;
    }
    let mut m = Message(false);
    event.record(&mut m);
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Collects the messages of the events that reach it.
    struct Collect(Arc<Mutex<Vec<String>>>);
    impl<S: Subscriber> Layer<S> for Collect {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            struct V(String);
            impl Visit for V {
                fn record_debug(&mut self, f: &Field, v: &dyn Debug) {
                    if f.name() == "message" {
                        self.0 = format!("{v:?}");
                    }
                }
            }
            let mut v = V(String::new());
            event.record(&mut v);
            self.0.lock().unwrap().push(v.0);
        }
    }

    #[test]
    fn only_replies_to_requests_the_kernel_dropped_are_silenced() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(QuietLateReplies)
            .with(Collect(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
            let eio = std::io::Error::from_raw_os_error(libc::EIO);
            tracing::error!("Failed to send FUSE reply: {enoent}");
            tracing::error!("Failed to send FUSE reply: {eio}");
            tracing::warn!("Failed to send FUSE reply: {enoent}");
            tracing::error!("cannot read chunk: {enoent}");
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[0].ends_with("(os error 5)"), "{seen:?}");
        assert!(
            seen[1].ends_with("(os error 2)"),
            "a warning stays: {seen:?}"
        );
        assert!(seen[2].starts_with("cannot read chunk"), "{seen:?}");
    }
}
