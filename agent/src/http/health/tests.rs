use super::*;
use std::sync::atomic::AtomicBool;

#[derive(Default)]
struct FakeKernel {
    detached: AtomicBool,
}

impl KernelProbe for FakeKernel {
    fn missing_programs(&self) -> Result<Vec<&'static str>, String> {
        Ok(if self.detached.load(Ordering::SeqCst) {
            vec!["pia_connect4"]
        } else {
            vec![]
        })
    }
    fn maps_reachable(&self) -> Result<(), String> {
        Ok(())
    }
}

fn synced(flag: Arc<AtomicBool>) -> SourcesCheck {
    Arc::new(move || (!flag.load(Ordering::SeqCst)).then(|| "sources not synced".to_owned()))
}

#[tokio::test]
async fn readiness_follows_sources_programs_and_the_listener() {
    // A listener that answers like the agent's (any HTTP status).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let answering = Arc::new(AtomicBool::new(true));
    {
        let answering = answering.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                if answering.load(Ordering::SeqCst) {
                    let _ = s
                        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                        .await;
                } else {
                    // Wedged: hold the connection, say nothing.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        drop(s);
                    });
                }
            }
        });
    }
    let sources = Arc::new(AtomicBool::new(false));
    let kernel = Arc::new(FakeKernel::default());
    let h = Health::new(synced(sources.clone()), kernel.clone(), Some(addr));
    assert_eq!(h.ready().await.unwrap_err(), "sources not synced");
    sources.store(true, Ordering::SeqCst);
    // Cached for a second.
    assert!(h.ready().await.is_err());
    tokio::time::sleep(READY_CACHE).await;
    assert_eq!(h.ready().await, Ok(()));

    kernel.detached.store(true, Ordering::SeqCst);
    tokio::time::sleep(READY_CACHE).await;
    assert_eq!(
        h.ready().await.unwrap_err(),
        "programs not attached: pia_connect4"
    );
    kernel.detached.store(false, Ordering::SeqCst);

    // One slow self-check is tolerated, two in a row are not.
    answering.store(false, Ordering::SeqCst);
    tokio::time::sleep(READY_CACHE).await;
    assert_eq!(h.ready().await, Ok(()));
    tokio::time::sleep(READY_CACHE).await;
    let err = h.ready().await.unwrap_err();
    assert!(err.contains("no answer within"), "{err}");
    answering.store(true, Ordering::SeqCst);
    tokio::time::sleep(READY_CACHE).await;
    assert_eq!(h.ready().await, Ok(()));
    // Liveness is the heartbeat only.
    assert_eq!(h.live(), Ok(()));
}
