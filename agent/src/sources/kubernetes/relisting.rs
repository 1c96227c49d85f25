//! The re-listing watcher: kube's watcher, dropped and started over from a full
//! list after every error, with a doubling back-off (see "Errors and resync" in the
//! [parent module](super)).

use std::time::Duration;

use ::kube::api::Api;
use ::kube::runtime::watcher::{self, watcher, Event};
use ::kube::Resource;
use futures::stream::{BoxStream, StreamExt};

#[derive(Clone, Debug)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    pub(super) fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }
}

struct Relist<K: Resource> {
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    stream: Option<BoxStream<'static, watcher::Result<Event<K>>>>,
    backoff: Backoff,
}

/// kube's watcher, restarted from a full list after every error (see the module
/// docs). The stream never ends; each restart begins with [`Event::Init`].
pub(super) fn relisting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    backoff: Backoff,
) -> BoxStream<'static, Event<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let state = Relist {
        api,
        config,
        what,
        stream: None,
        backoff,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            let stream = st
                .stream
                .get_or_insert_with(|| watcher(st.api.clone(), st.config.clone()).boxed());
            match stream.next().await {
                Some(Ok(event)) => {
                    if matches!(event, Event::InitDone) {
                        st.backoff.reset();
                    }
                    return Some((event, st));
                }
                Some(Err(error)) => {
                    let delay = st.backoff.step();
                    tracing::warn!(
                        what = st.what,
                        %error,
                        retry_in = ?delay,
                        "watch failed; re-listing"
                    );
                    st.stream = None;
                    tokio::time::sleep(delay).await;
                }
                // kube's watcher does not end; if it does, start over.
                None => st.stream = None,
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let steps: Vec<_> = (0..4).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.step().as_millis(), 100);
    }
}
