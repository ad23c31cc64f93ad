//! The API's answers made from the store's and the node's records: each conversion to a
//! `caged_wire` type is explicit, so that a change to a record is a decision about the answer.

use caged_cost::Micros;
use caged_domain::running_millis;
use caged_domain::time::rfc3339_from_ms;
use caged_node::EngineStatus;
use caged_store::{Event, SandboxRecord, SessionRecord, SnapshotRecord, StoreError};
use caged_wire as wire;

use crate::controllers::budget::{format_percent, spend};
use crate::state::AppState;

pub(crate) fn sandbox(state: &AppState, record: &SandboxRecord) -> wire::Sandbox {
    let config = &record.config;
    // A destroyed sandbox's clock stopped at its last transition.
    let running_ms = running_millis(&record.transitions, record.clock_ms());
    wire::Sandbox {
        allowed_hosts: config.allowed_hosts.clone(),
        // The budget now (it may have been changed since the config).
        budget_usd: budget_usd(record),
        cost: Some(cost(state, record)),
        created_at: rfc3339_from_ms(record.created_at_ms),
        destroyed_reason: record.destroyed_reason.clone(),
        env: config.env.clone(),
        id: record.id.to_string(),
        init: record.init_result.clone(),
        init_script: config.init_script.clone(),
        isolation: config.isolation.as_str().to_string(),
        name: config.name.clone(),
        network_mode: config.network_mode.as_str().to_string(),
        resources: wire::Resources {
            cpu: config.resources.cpu,
            disk_enforced: record.disk_enforced,
            disk_gb: config.resources.disk,
            memory_mb: config.resources.memory,
        },
        running_seconds: running_ms as f64 / 1000.0,
        state: record.state.as_str().to_string(),
        template: config.template.clone(),
        timeout_seconds: config.timeout,
        transitions: record
            .transitions
            .iter()
            .map(|transition| wire::TransitionView {
                at: rfc3339_from_ms(transition.at_ms),
                state: transition.state.as_str().to_string(),
            })
            .collect(),
        user: config.user.clone(),
    }
}

pub(crate) fn budget_usd(record: &SandboxRecord) -> Option<f64> {
    record.budget_micros.map(|b| Micros(b).as_usd())
}

/// What a sandbox spent, for its view (`cost`) and `usage`.
pub(crate) fn cost(state: &AppState, record: &SandboxRecord) -> wire::Cost {
    let spend = spend(&state.config.cost.prices, record);
    let budget = record.budget_micros.map(Micros);
    wire::Cost {
        budget_micros: budget.map(|b| b.0),
        budget_percent: budget.map(|b| {
            format_percent(spend.total(), b)
                .parse::<f64>()
                .unwrap_or(0.0)
        }),
        compute_micros: spend.compute.0,
        llm_micros: spend.llm.0,
        total_micros: spend.total().0,
    }
}

/// The score of what was charged `points`, and its band.
pub(crate) fn trust_summary(points: u64) -> wire::TrustSummary {
    let score = caged_trust::score(points);
    wire::TrustSummary {
        trust_rating: caged_trust::Rating::of(score).as_str().to_string(),
        trust_score: score,
    }
}

/// A sandbox's trust: its worst session (or its activity outside sessions), and each charged
/// session's score.
pub(crate) async fn sandbox_trust(
    state: &AppState,
    id: caged_domain::SandboxId,
) -> Result<wire::SandboxTrust, StoreError> {
    let charged = state
        .db
        .run(move |store| store.charged_by_session(id))
        .await?;
    let worst = charged.iter().map(|c| c.points).max().unwrap_or(0);
    let score = caged_trust::score(worst);
    Ok(wire::SandboxTrust {
        charged: charged
            .into_iter()
            .map(|c| wire::ChargedSession {
                score: caged_trust::score(c.points),
                session_id: c.session_id,
            })
            .collect(),
        rating: caged_trust::Rating::of(score).as_str().to_string(),
        score,
    })
}

/// A session's score and rating, and the penalties with their evidence that made them.
pub(crate) async fn session_trust(
    state: &AppState,
    account: &str,
    session: &str,
) -> Result<(wire::TrustSummary, Vec<wire::Penalty>), StoreError> {
    let (account, session) = (account.to_string(), session.to_string());
    let penalties = state
        .db
        .run(move |store| store.session_penalties(&account, &session))
        .await?;
    let points: u64 = penalties.iter().map(|p| u64::from(p.points)).sum();
    let penalties = penalties
        .into_iter()
        .map(|p| wire::Penalty {
            at: rfc3339_from_ms(p.at_ms),
            event_seq: p.event_seq,
            evidence: p.evidence,
            key: p.key,
            points: p.points,
            reason: p.reason,
            rule: p.rule,
        })
        .collect();
    Ok((trust_summary(points), penalties))
}

pub(crate) fn session(session: &SessionRecord) -> wire::Session {
    let now = caged_domain::time::now_ms();
    let end = session.ended_at_ms.unwrap_or(now);
    wire::Session {
        agent_type: session.agent_type.clone(),
        channel: session.channel.clone(),
        command: session.command.clone(),
        duration_seconds: (end - session.started_at_ms).max(0) as f64 / 1000.0,
        end_reason: session.end_reason.clone(),
        ended_at: session.ended_at_ms.map(rfc3339_from_ms),
        id: session.id.clone(),
        llm_cost_micros: session.llm_cost_micros,
        sandbox_id: session.sandbox_id.to_string(),
        started_at: rfc3339_from_ms(session.started_at_ms),
        state: if session.ended_at_ms.is_some() {
            wire::sessions::SessionState::Ended
        } else {
            wire::sessions::SessionState::Open
        },
        tokens_in: session.tokens_in,
        tokens_out: session.tokens_out,
    }
}

pub(crate) fn event(event: &Event) -> wire::Event {
    wire::Event {
        at: rfc3339_from_ms(event.at_ms),
        id: event.seq.to_string(),
        kind: event.kind.clone(),
        payload: event.payload.clone(),
        sandbox_id: event.sandbox_id.to_string(),
        seq: event.seq,
        session_id: event.session_id.clone(),
    }
}

pub(crate) fn snapshot(snapshot: &SnapshotRecord) -> wire::Snapshot {
    wire::Snapshot {
        created_at: rfc3339_from_ms(snapshot.created_at_ms),
        entries: snapshot.entries,
        id: snapshot.id.clone(),
        kind: snapshot.kind.clone(),
        name: snapshot.name.clone(),
        raw_bytes: snapshot.raw_bytes,
        sandbox_id: snapshot.sandbox_id.to_string(),
        sha256: snapshot.sha256.clone(),
        size_bytes: snapshot.size_bytes,
        template: snapshot.template.clone(),
    }
}

pub(crate) fn preview(preview: caged_preview::Preview) -> wire::Preview {
    wire::Preview {
        address: preview.address,
        listening: preview.listening,
        opened_at: preview.opened_at,
        port: preview.port,
        protected: preview.protected,
        url: preview.url,
    }
}

pub(crate) fn previews(previews: Vec<caged_preview::Preview>) -> Vec<wire::Preview> {
    previews.into_iter().map(preview).collect()
}

pub(crate) fn learned_hosts(hosts: Vec<caged_netpolicy::LearnedHost>) -> Vec<wire::LearnedHost> {
    hosts
        .into_iter()
        .map(|host| wire::LearnedHost {
            allowed: host.allowed,
            attempts: host.attempts,
            host: host.host,
        })
        .collect()
}

pub(crate) fn link(link: &caged_network::LinkSpec) -> wire::Link {
    wire::Link {
        host_address: link.host_addr.to_string(),
        host_interface: link.host_ifname.clone(),
        resolver: link.host_addr.to_string(),
        sandbox_address: link.sandbox_addr.to_string(),
    }
}

pub(crate) fn template(template: caged_runtime::TemplateInfo) -> wire::Template {
    let manifest = template.manifest.unwrap_or_default();
    wire::Template {
        created_at: template.created_at,
        image_id: template.image_id,
        name: template.name,
        size_bytes: template.size_bytes,
        description: manifest.description,
        built_from: manifest.built_from,
        tools: manifest.tools,
        built_at: manifest.built_at,
        recipe: manifest.recipe,
    }
}

/// What this server and its engine can do.
pub(crate) fn system(state: &AppState) -> wire::System {
    let engine = match &*state.engine.borrow() {
        EngineStatus::Up(info) => wire::EngineStatus::Up {
            info: wire::EngineInfo {
                api_version: info.api_version.clone(),
                disk_limits: support(&info.disk_limits),
                gvisor: support(&info.gvisor),
                sandbox_filesystems: info
                    .sandbox_filesystems
                    .as_ref()
                    .map(|path| path.to_string_lossy().into_owned()),
                storage_driver: info.storage_driver.clone(),
                version: info.version.clone(),
            },
        },
        EngineStatus::Starting => wire::EngineStatus::Starting,
        EngineStatus::Down { reason } => wire::EngineStatus::Down {
            reason: reason.clone(),
        },
    };
    let observation = state.node.observation();
    wire::System {
        engine,
        installation_id: state.installation_id.clone(),
        observation: wire::ObservationStatus {
            detail: observation.detail,
            enabled: observation.enabled,
            file_events: observation.file_events,
            lost: observation.lost,
            processes: observation.processes,
            unread_processes: observation.unread_processes,
        },
        sandbox_ca: state.node.sandbox_ca().map(|ca| wire::SandboxCa {
            certificates: ca.certificates(),
            file: ca.file().to_string_lossy().into_owned(),
        }),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn support(support: &caged_runtime::Support) -> wire::Support {
    wire::Support {
        available: support.available,
        detail: support.detail.clone(),
    }
}
