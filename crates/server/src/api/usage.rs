//! Cost routes: a sandbox's usage (`caged usage`), its budget (raised or removed live), and the
//! account's webhook for budget alerts. Money is integer micro-dollars (`*_micros`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use caged_cost::Micros;
use caged_domain::time::{now_ms, rfc3339_from_ms};
use caged_store::{DAY_MS, SandboxRecord, SessionRecord, WebhookTarget};
use serde_json::{Value, json};

use super::ApiError;
use super::sandboxes::{one_field_body, parse_id};
use crate::auth::Caller;
use crate::controllers::budget::{format_percent, spend};
use crate::controllers::webhooks;
use crate::{AppState, sandboxes};

/// What a sandbox spent, for `inspect` (`cost`) and `usage`.
pub(crate) fn cost_view(state: &AppState, record: &SandboxRecord) -> Value {
    let spend = spend(&state.config.cost.prices, record);
    let budget = record.budget_micros.map(Micros);
    json!({
        "compute_micros": spend.compute.0,
        "llm_micros": spend.llm.0,
        "total_micros": spend.total().0,
        "budget_micros": budget.map(|b| b.0),
        "budget_percent": budget.map(|b| format_percent(spend.total(), b).parse::<f64>().unwrap_or(0.0)),
    })
}

pub(crate) async fn usage(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = sandboxes::get(&state, &account.id, parse_id(&id)?).await?;
    let (account_id, id) = (account.id.clone(), record.id);
    let (sessions, alerts) = state
        .db
        .run(move |store| -> Result<_, caged_store::StoreError> {
            Ok((
                store.sessions_of(&account_id, id)?,
                store.budget_alerts(id)?,
            ))
        })
        .await?;
    Ok(Json(usage_view(&state, &record, &sessions, &alerts)))
}

fn usage_view(
    state: &AppState,
    record: &SandboxRecord,
    sessions: &[SessionRecord],
    alerts: &[(i64, i64, i64, i64)],
) -> Value {
    let prices = &state.config.cost.prices;
    let spend = spend(prices, record);
    let resources = &record.config.resources;
    let sessions: Vec<Value> = sessions
        .iter()
        .map(|session| {
            let running_ms = caged_cost::session_running_ms(
                &record.transitions,
                record.clock_ms(),
                session.started_at_ms,
                session.ended_at_ms,
            );
            let compute = caged_cost::compute_cost(prices, &record.config.resources, running_ms);
            json!({
                "id": session.id,
                "agent_type": session.agent_type,
                "started_at": rfc3339_from_ms(session.started_at_ms),
                "ended_at": session.ended_at_ms.map(rfc3339_from_ms),
                "running_seconds": running_ms as f64 / 1000.0,
                "compute_micros": compute.0,
                "tokens_in": session.tokens_in,
                "tokens_out": session.tokens_out,
                "llm_micros": session.llm_cost_micros,
                "total_micros": compute.0 + session.llm_cost_micros,
            })
        })
        .collect();
    json!({
        "sandbox_id": record.id,
        "state": record.state,
        "running_seconds": spend.running_ms as f64 / 1000.0,
        "running_ms": spend.running_ms,
        "resources": { "cpu": resources.cpu, "memory_mb": resources.memory },
        "prices": {
            "vcpu_hour_micros": prices.compute.vcpu_hour.0,
            "gib_hour_micros": prices.compute.gib_hour.0,
        },
        "tokens_in": record.llm.tokens_in,
        "tokens_out": record.llm.tokens_out,
        "cost": cost_view(state, record),
        "budget_usd": record.budget_micros.map(|b| Micros(b).as_usd()),
        "alerts": alerts.iter().map(|(level, budget, spend, at)| json!({
            "level": caged_cost::Level::from_percent(*level).map(|l| l.as_str()),
            "percent": level,
            "budget_micros": budget,
            "spend_micros": spend,
            "at": rfc3339_from_ms(*at),
        })).collect::<Vec<_>>(),
        "sessions": sessions,
    })
}

/// Body: `{"budget_usd": 10.0}` sets the budget of a live sandbox; `null` removes it.
pub(crate) async fn set_budget(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let body = one_field_body(&body, "budget_usd", "invalid_budget")?;
    let invalid = |message: String| ApiError::bad_request("invalid_budget", message);
    let budget = match body.get("budget_usd") {
        Some(Value::Null) => None,
        Some(Value::Number(number)) => {
            let usd = number.as_f64().unwrap_or(f64::NAN);
            match Micros::from_usd(usd) {
                Some(micros) if micros.0 >= 1 && usd <= 1_000_000.0 => Some(micros),
                _ => {
                    return Err(invalid(format!(
                        "budget_usd: must be at least 0.000001 and at most 1000000 (got {usd})"
                    )));
                }
            }
        }
        Some(other) => {
            return Err(invalid(format!(
                "budget_usd: must be a number of USD or null (got {other})"
            )));
        }
        None => {
            return Err(invalid(
                "budget_usd: required (a number, or null for no limit)".into(),
            ));
        }
    };
    let (_guard, record) =
        sandboxes::live_locked(&state, &account.id, id, "; its budget can no longer change")
            .await?;
    let spend = spend(&state.config.cost.prices, &record).total();
    let payload = json!({
        "op": "set",
        "budget_micros": budget.map(|b| b.0),
        "previous_micros": record.budget_micros,
        "spend_micros": spend.0,
    });
    let account_id = account.id.clone();
    let event = state
        .db
        .run(move |store| {
            store.set_budget(id, &account_id, budget.map(|b| b.0), now_ms(), &payload)
        })
        .await?;
    state.db.publish(event);
    state.budget_checks.notify_one();
    let record = sandboxes::get(&state, &account.id, id).await?;
    Ok(Json(json!({
        "sandbox_id": id,
        "budget_usd": record.budget_micros.map(|b| Micros(b).as_usd()),
        "cost": cost_view(&state, &record),
    })))
}

fn webhook_view(target: Option<&WebhookTarget>) -> Value {
    match target {
        Some(target) => json!({ "url": target.url, "secret": target.secret }),
        None => json!({ "url": null }),
    }
}

pub(crate) async fn get_webhook(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
) -> Result<Json<Value>, ApiError> {
    let account_id = account.id.clone();
    let (target, deliveries) = state
        .db
        .run(move |store| -> Result<_, caged_store::StoreError> {
            Ok((
                store.webhook(&account_id)?,
                store.webhook_deliveries(&account_id, 20)?,
            ))
        })
        .await?;
    let mut view = webhook_view(target.as_ref());
    view["deliveries"] = deliveries
        .iter()
        .map(|delivery| {
            json!({
                "id": delivery.id,
                "type": delivery.event_type,
                "created_at": rfc3339_from_ms(delivery.created_at_ms),
                "attempts": delivery.attempts,
                "delivered_at": delivery.delivered_at_ms.map(rfc3339_from_ms),
                "next_attempt_at": delivery.next_at_ms.map(rfc3339_from_ms),
                "last_error": delivery.last_error,
            })
        })
        .collect();
    Ok(Json(view))
}

/// Body: `{"url": "https://…"}`. A new secret is made each time the webhook is set.
pub(crate) async fn set_webhook(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = one_field_body(&body, "url", "invalid_webhook")?;
    let invalid = |message: String| ApiError::bad_request("invalid_webhook", message);
    let url = body
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("url: required, a string".into()))?;
    let uri = webhooks::check_url(url).map_err(invalid)?;
    // An address written in the URL is checked now (a name is checked at each delivery).
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<std::net::IpAddr>()
        && let Some(why) = webhooks::denied(ip, state.config.cost.webhooks_to_private)
    {
        return Err(invalid(format!(
            "url: {ip} is {why}; webhooks go there only if the server runs with --webhook-allow-private"
        )));
    }
    let target = WebhookTarget {
        url: url.to_string(),
        secret: format!("whsec_{}", caged_domain::random_hex(24)),
    };
    let (account_id, stored) = (account.id.clone(), target.clone());
    state
        .db
        .run(move |store| store.set_webhook(&account_id, Some(&stored)))
        .await?;
    Ok(Json(webhook_view(Some(&target))))
}

pub(crate) async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
) -> Result<Json<Value>, ApiError> {
    let account_id = account.id.clone();
    state
        .db
        .run(move |store| store.set_webhook(&account_id, None))
        .await?;
    Ok(Json(webhook_view(None)))
}

#[derive(serde::Deserialize)]
pub(crate) struct DaysQuery {
    days: Option<String>,
}

/// Longest history `GET /v1/account/usage` reports, in days.
const MAX_DAYS: i64 = 366;

/// The account's usage per UTC day (`GET /v1/account/usage?days=N`, 30 by default): compute and
/// LLM spend, running time, and how many sandboxes ran, oldest day first.
pub(crate) async fn account_usage(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    axum::extract::Query(query): axum::extract::Query<DaysQuery>,
) -> Result<Json<Value>, ApiError> {
    let days = match query.days.as_deref() {
        None => 30,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|days| (1..=MAX_DAYS).contains(days))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("days: must be a whole number from 1 to {MAX_DAYS} (got {raw:?})"),
                )
            })?,
    };
    let now = now_ms();
    let first_day = now / DAY_MS - days + 1;
    let from_ms = first_day * DAY_MS;
    let account_id = account.id.clone();
    let (records, llm) = state
        .db
        .run(move |store| -> Result<_, caged_store::StoreError> {
            Ok((
                store.sandboxes_since(&account_id, from_ms)?,
                store.llm_cost_by_day(&account_id, from_ms)?,
            ))
        })
        .await?;
    let prices = &state.config.cost.prices;
    let days: Vec<Value> = (first_day..first_day + days)
        .map(|day| {
            let (start, end) = (day * DAY_MS, ((day + 1) * DAY_MS).min(now));
            let (mut running_ms, mut compute, mut sandboxes) = (0i64, 0i64, 0i64);
            for record in &records {
                let clock = record.clock_ms().min(end);
                let ms = caged_domain::running_millis_between(&record.transitions, start, clock);
                if ms > 0 {
                    let resources = &record.config.resources;
                    running_ms += ms;
                    sandboxes += 1;
                    compute += prices
                        .compute_cost(
                            ms,
                            caged_cost::prices::milli_cpus(resources.cpu),
                            resources.memory as i64,
                        )
                        .0;
                }
            }
            let (llm_micros, llm_calls) = llm
                .iter()
                .find(|row| row.day == day)
                .map_or((0, 0), |row| (row.cost_micros, row.calls));
            json!({
                "date": rfc3339_from_ms(start).get(..10),
                "compute_micros": compute,
                "llm_micros": llm_micros,
                "total_micros": compute + llm_micros,
                "llm_calls": llm_calls,
                "running_seconds": running_ms as f64 / 1000.0,
                "sandboxes_running": sandboxes,
            })
        })
        .collect();
    let total = |field: &str| {
        days.iter()
            .filter_map(|day| day[field].as_i64())
            .sum::<i64>()
    };
    Ok(Json(json!({
        "days": days,
        "total_micros": total("total_micros"),
        "compute_micros": total("compute_micros"),
        "llm_micros": total("llm_micros"),
    })))
}
