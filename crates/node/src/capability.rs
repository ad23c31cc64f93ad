//! The node's parts a sandbox has, in the order they are set up: its link (the firewall knows
//! it before the sandbox exists), the gateway's environment on that link, its previews, its
//! observation. Each is a [`Capability`]; a node without one (observation turned off, a runtime
//! the host cannot see into) simply does not list it.

use std::sync::Arc;

use async_trait::async_trait;
use caged_domain::{SandboxId, SandboxState};
use caged_runtime::SandboxSpec;
use caged_store::SandboxRecord;

use crate::{Result, Start};

#[async_trait]
pub(crate) trait Capability: Send + Sync + 'static {
    /// Adds what the sandbox needs of this part to the spec its container is made from, before
    /// the container exists.
    async fn prepare(&self, _record: &SandboxRecord, _spec: &mut SandboxSpec) -> Result<()> {
        Ok(())
    }
    /// The sandbox's container exists (made, or restored), before the rest of the node is told
    /// that it runs: what this part keeps in its filesystem goes in now. An error fails the
    /// create.
    async fn created(&self, _record: &SandboxRecord, _handle: &str) -> Result<()> {
        Ok(())
    }
    /// The sandbox's container runs; `how` it came to.
    async fn started(&self, _record: &SandboxRecord, _how: Start) {}
    /// The sandbox's state changed.
    fn transitioned(&self, _id: SandboxId, _to: SandboxState) {}
}

/// The sandbox's link: in the registry and the firewall before the container starts, its
/// services (DNS stub, egress proxy, gateway) once it runs, gone with the sandbox.
pub(crate) struct Link(pub Arc<caged_netpolicy::Network>);

#[async_trait]
impl Capability for Link {
    async fn prepare(&self, record: &SandboxRecord, spec: &mut SandboxSpec) -> Result<()> {
        spec.link = self
            .0
            .prepare(record.id, &record.account_id, &record.config)
            .await?;
        Ok(())
    }

    async fn started(&self, record: &SandboxRecord, how: Start) {
        let started = match how {
            Start::Restarted => self.0.restarted(record).await,
            Start::Created | Start::Restored => self.0.started(record).await,
        };
        if let Err(err) = started {
            // The link is in the firewall (so nothing leaks); its services come when the healer
            // manages to start them.
            tracing::error!(sandbox = %record.id, "its network services did not start (the healer retries): {err}");
        }
    }

    fn transitioned(&self, id: SandboxId, to: SandboxState) {
        self.0.transitioned(id, to);
    }
}

/// The gateway's base URLs and the sandbox's credential in its environment, under the user's
/// own variables (what the user set explicitly wins). Only a sandbox with a link reaches it.
pub(crate) struct Gateway(pub caged_gateway::Gateway);

#[async_trait]
impl Capability for Gateway {
    async fn prepare(&self, record: &SandboxRecord, spec: &mut SandboxSpec) -> Result<()> {
        if let Some(link) = &spec.link {
            let mut env = self.0.environment(record.id, link);
            env.extend(std::mem::take(&mut spec.env));
            spec.env = env;
        }
        Ok(())
    }
}

/// The sandbox's previews: its namespace opened once it runs (again after a restart or a
/// restore: a new namespace), the proxy's fast path kept in step with its state.
pub(crate) struct Previews(pub Arc<caged_preview::Previews>);

#[async_trait]
impl Capability for Previews {
    async fn started(&self, record: &SandboxRecord, how: Start) {
        if how != Start::Created {
            self.0.forget(record.id);
        }
        self.0.refresh(record.id);
    }

    fn transitioned(&self, id: SandboxId, to: SandboxState) {
        self.0.transitioned(id, to);
    }
}

/// Observation of the sandbox from the host: watched (its sensitive files marked) before any
/// process of its can open them.
pub(crate) struct Observe(pub Arc<caged_observe::Observer>);

#[async_trait]
impl Capability for Observe {
    async fn started(&self, record: &SandboxRecord, _how: Start) {
        self.0.watch(record);
    }
}
