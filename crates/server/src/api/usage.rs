//! Cost routes: a sandbox's usage (`caged usage`), its budget (raised or removed live), and the
//! account's webhook for budget alerts. Money is integer micro-dollars (`*_micros`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use caged_cost::Micros;
use caged_domain::time::{now_ms, rfc3339_from_ms};
use caged_store::{DAY_MS, SandboxRecord, SessionRecord, WebhookTarget};
use caged_wire as wire;
use serde_json::{Value, json};

use super::auth::Caller;
use super::body::{one_field_body, parse_id};
use super::docs::{Failures, SandboxPath};
use super::error::ApiError;
use super::view;
use crate::controllers::budget::spend;
use crate::controllers::webhooks;
use crate::sandboxes;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/usage",
    operation_id = "usage",
    summary = "What a sandbox spent",
    description = "Running time, compute, tokens, LLM cost (integer micro-dollars), its budget \
                   and the alerts sent, and each session's share.",
    params(SandboxPath),
    responses((status = 200, description = "OK", body = wire::Usage), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn usage(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
) -> Result<Json<wire::Usage>, ApiError> {
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
) -> wire::Usage {
    let prices = &state.config.cost.prices;
    let spend = spend(prices, record);
    let resources = &record.config.resources;
    let sessions = sessions
        .iter()
        .map(|session| {
            let running_ms = caged_cost::session_running_ms(
                &record.transitions,
                record.clock_ms(),
                session.started_at_ms,
                session.ended_at_ms,
            );
            let compute = caged_cost::compute_cost(prices, &record.config.resources, running_ms);
            wire::SessionUsage {
                agent_type: session.agent_type.clone(),
                compute_micros: compute.0,
                ended_at: session.ended_at_ms.map(rfc3339_from_ms),
                id: session.id.clone(),
                llm_micros: session.llm_cost_micros,
                running_seconds: running_ms as f64 / 1000.0,
                started_at: rfc3339_from_ms(session.started_at_ms),
                tokens_in: session.tokens_in,
                tokens_out: session.tokens_out,
                total_micros: compute.0 + session.llm_cost_micros,
            }
        })
        .collect();
    wire::Usage {
        alerts: alerts
            .iter()
            .map(|&(level, budget, spend, at)| wire::BudgetAlert {
                at: rfc3339_from_ms(at),
                budget_micros: budget,
                level: caged_cost::Level::from_percent(level).map(|l| l.as_str().to_string()),
                percent: level,
                spend_micros: spend,
            })
            .collect(),
        budget_usd: view::budget_usd(record),
        cost: view::cost(state, record),
        prices: wire::Prices {
            gib_hour_micros: prices.compute.gib_hour.0,
            vcpu_hour_micros: prices.compute.vcpu_hour.0,
        },
        resources: wire::UsageResources {
            cpu: resources.cpu,
            memory_mb: resources.memory,
        },
        running_ms: spend.running_ms,
        running_seconds: spend.running_ms as f64 / 1000.0,
        sandbox_id: record.id.to_string(),
        sessions,
        state: record.state.as_str().to_string(),
        tokens_in: record.llm.tokens_in,
        tokens_out: record.llm.tokens_out,
    }
}

/// Body: `{"budget_usd": 10.0}` sets the budget of a live sandbox; `null` removes it.
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/budget",
    operation_id = "set_budget",
    summary = "Set a live sandbox's budget, or remove it",
    description = "`{\"budget_usd\": 10.0}` sets it, `{\"budget_usd\": null}` removes it; the \
                   budget guard looks at once.",
    params(SandboxPath),
    request_body = wire::SetBudget,
    responses((status = 200, description = "The budget now", body = wire::Budget), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn set_budget(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<wire::Budget>, ApiError> {
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
    Ok(Json(wire::Budget {
        budget_usd: view::budget_usd(&record),
        cost: view::cost(&state, &record),
        sandbox_id: id.to_string(),
    }))
}

fn webhook_view(target: Option<&WebhookTarget>) -> wire::Webhook {
    wire::Webhook {
        secret: target.map(|target| target.secret.clone()),
        url: target.map(|target| target.url.clone()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/account/webhook",
    operation_id = "get_webhook",
    summary = "The account's webhook for budget alerts and its latest deliveries",
    responses((status = 200, description = "OK", body = wire::WebhookStatus), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn get_webhook(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
) -> Result<Json<wire::WebhookStatus>, ApiError> {
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
    Ok(Json(wire::WebhookStatus {
        deliveries: deliveries
            .into_iter()
            .map(|delivery| wire::WebhookDelivery {
                attempts: delivery.attempts,
                created_at: rfc3339_from_ms(delivery.created_at_ms),
                delivered_at: delivery.delivered_at_ms.map(rfc3339_from_ms),
                id: delivery.id,
                last_error: delivery.last_error,
                next_attempt_at: delivery.next_at_ms.map(rfc3339_from_ms),
                event_type: delivery.event_type,
            })
            .collect(),
        webhook: webhook_view(target.as_ref()),
    }))
}

/// Body: `{"url": "https://…"}`. A new secret is made each time the webhook is set.
#[utoipa::path(
    put,
    path = "/v1/account/webhook",
    operation_id = "set_webhook",
    summary = "Send budget alerts to a URL",
    description = "Answers the new signing secret (HMAC-SHA256 of each delivery); a new one is \
                   made each time the webhook is set.",
    request_body = wire::SetWebhook,
    responses((status = 200, description = "Set", body = wire::Webhook), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn set_webhook(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    body: Bytes,
) -> Result<Json<wire::Webhook>, ApiError> {
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

#[utoipa::path(
    delete,
    path = "/v1/account/webhook",
    operation_id = "delete_webhook",
    summary = "Stop sending webhooks",
    responses((status = 200, description = "No webhook (`url` is null)", body = wire::Webhook), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
) -> Result<Json<wire::Webhook>, ApiError> {
    let account_id = account.id.clone();
    state
        .db
        .run(move |store| store.set_webhook(&account_id, None))
        .await?;
    Ok(Json(webhook_view(None)))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DaysQuery {
    /// How many days back, today included: 1 to 366 (30 by default). A string here, so that a
    /// bad value gets the API's error rather than the framework's.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 366)]
    days: Option<String>,
}

/// Longest history `GET /v1/account/usage` reports, in days.
const MAX_DAYS: i64 = 366;

/// The account's usage per UTC day (`GET /v1/account/usage?days=N`, 30 by default): compute and
/// LLM spend, running time, and how many sandboxes ran, oldest day first.
#[utoipa::path(
    get,
    path = "/v1/account/usage",
    operation_id = "account_usage",
    summary = "The account's spend and running sandboxes per UTC day",
    description = "Compute and LLM spend (integer micro-dollars), running time and how many \
                   sandboxes ran, per UTC day, oldest first, and the totals.",
    params(DaysQuery),
    responses((status = 200, description = "OK", body = wire::AccountUsage), Failures),
    security(("bearer" = [])),
)]
pub(crate) async fn account_usage(
    State(state): State<Arc<AppState>>,
    Caller(account): Caller,
    axum::extract::Query(query): axum::extract::Query<DaysQuery>,
) -> Result<Json<wire::AccountUsage>, ApiError> {
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
    let days: Vec<wire::DayUsage> = (first_day..first_day + days)
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
            // An RFC 3339 time starts with its `YYYY-MM-DD` date.
            let mut date = rfc3339_from_ms(start);
            date.truncate(10);
            wire::DayUsage {
                compute_micros: compute,
                date,
                llm_calls,
                llm_micros,
                running_seconds: running_ms as f64 / 1000.0,
                sandboxes_running: sandboxes,
                total_micros: compute + llm_micros,
            }
        })
        .collect();
    Ok(Json(wire::AccountUsage {
        compute_micros: days.iter().map(|day| day.compute_micros).sum(),
        llm_micros: days.iter().map(|day| day.llm_micros).sum(),
        total_micros: days.iter().map(|day| day.total_micros).sum(),
        days,
    }))
}
