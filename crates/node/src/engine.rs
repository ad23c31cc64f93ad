//! Watches the container engine: the node starts whether or not the engine answers, says
//! clearly when it does not, and picks it up again when it comes back.

use std::sync::Arc;
use std::time::Duration;

use caged_runtime::{EngineInfo, Runtime};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub enum EngineStatus {
    /// Not probed yet.
    Starting,
    Up(Arc<EngineInfo>),
    Down {
        reason: String,
    },
}

const RETRY: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_secs(5);

/// With `probe_gvisor`, each time the engine comes up a test sandbox checks that gVisor works;
/// without, gVisor is checked on its first use.
pub(crate) async fn watch(
    runtime: Arc<dyn Runtime>,
    probe_gvisor: bool,
    tx: Arc<watch::Sender<EngineStatus>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let pause = |wait| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = tokio::time::sleep(wait) => true,
                () = stop.cancelled() => false,
            }
        }
    };
    loop {
        let up = matches!(*tx.borrow(), EngineStatus::Up(_));
        if up {
            if !pause(HEARTBEAT).await {
                return;
            }
            if let Err(err) = runtime.ping().await {
                tracing::error!(
                    "container engine went away: {err}; API calls that need it answer 503 until it is back"
                );
                tx.send_replace(EngineStatus::Down {
                    reason: err.to_string(),
                });
            }
            continue;
        }
        match runtime.probe().await {
            Ok(info) => {
                tracing::info!(
                    "container engine up: version {} (API {}), storage driver {}",
                    info.version,
                    info.api_version,
                    info.storage_driver
                );
                let level_disk = if info.disk_limits.available {
                    "enforced"
                } else {
                    "NOT ENFORCED"
                };
                tracing::info!("disk limits {level_disk}: {}", info.disk_limits.detail);
                tx.send_replace(EngineStatus::Up(Arc::new(info)));
                if probe_gvisor {
                    refresh_gvisor(runtime.clone(), tx.clone());
                }
            }
            Err(err) => {
                let first = matches!(*tx.borrow(), EngineStatus::Starting);
                if first {
                    tracing::error!(
                        "{err}. The API is up; calls that need the engine answer 503 until it is. \
                             Start it with `sudo scripts/engine-up`; retrying every {}s",
                        RETRY.as_secs()
                    );
                }
                tx.send_replace(EngineStatus::Down {
                    reason: err.to_string(),
                });
                if !pause(RETRY).await {
                    return;
                }
            }
        }
    }
}

/// Finds out (in the background: it starts a test sandbox) whether gVisor works, and records
/// the answer in the engine status.
pub(crate) fn refresh_gvisor(runtime: Arc<dyn Runtime>, tx: Arc<watch::Sender<EngineStatus>>) {
    tokio::spawn(async move {
        let support = runtime
            .isolation_support(caged_domain::Isolation::Gvisor)
            .await;
        if support.available {
            tracing::info!("isolation gvisor available: {}", support.detail);
        } else {
            tracing::warn!("isolation gvisor unavailable: {}", support.detail);
        }
        tx.send_modify(|status| {
            if let EngineStatus::Up(info) = status {
                Arc::make_mut(info).gvisor = support;
            }
        });
    });
}
