//! One call through the gateway: whose it is, whether its budget allows it, and the request
//! the provider gets.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use caged_cost::{Micros, Protocol, UsageMeter};
use caged_domain::time::now_ms;
use caged_domain::{EventKind, SandboxId, SandboxState};
use caged_store::{NewEvent, SandboxRecord};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use serde_json::{Value, json};

use crate::meter::{Call, Finish, MeteredBody};
use crate::{GatewayBody, Inner, Refusal, presented_credential, provider_name, refuse, route};

/// The largest request body forwarded (the providers' own limit is of this order).
const MAX_REQUEST: usize = 32 << 20;

/// A refused call is logged as an event at most this often per sandbox.
const REFUSAL_EVENT_EVERY_MS: i64 = 10_000;

/// What a call asked for, read from its body.
struct Asked {
    model: Option<String>,
    body: Bytes,
}

/// Reads the request body; for a streamed Chat Completion, asks the provider to include the
/// usage in the stream (without it a stream carries no token counts).
fn read_request(protocol: Protocol, rest: &str, body: Bytes) -> Asked {
    let Ok(mut json) = serde_json::from_slice::<Value>(&body) else {
        return Asked { model: None, body };
    };
    let model = json["model"].as_str().map(str::to_string);
    let wants_usage = protocol == Protocol::OpenAi
        && json["stream"] == Value::Bool(true)
        && rest.ends_with("chat/completions")
        && json["stream_options"]["include_usage"] != Value::Bool(true);
    if wants_usage && let Some(object) = json.as_object_mut() {
        let options = object.entry("stream_options").or_insert_with(|| json!({}));
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".into(), Value::Bool(true));
            return Asked {
                model,
                body: Bytes::from(json.to_string()),
            };
        }
    }
    Asked { model, body }
}

pub(crate) async fn forward(
    ctx: &Arc<Inner>,
    link: SandboxId,
    protocol: Protocol,
    request: Request<Incoming>,
) -> Result<Response<GatewayBody>, Refusal> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let (_, rest) = route(&path).expect("routed before");
    if rest
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the path has dot segments",
        ));
    }
    let (record, session) = authenticate(ctx, link, &parts.headers).await?;
    check_budget(ctx, &record, session.as_deref(), protocol).await?;
    let outgoing = upstream_request(ctx, protocol, rest, parts, body).await?;
    let asked_model = outgoing.1;
    let outgoing = outgoing.0;
    let id = record.id;
    let call = Call {
        ctx: ctx.clone(),
        sandbox: id,
        account_id: record.account_id.clone(),
        timeout: record.config.timeout,
        session,
        protocol,
        path: format!("/{rest}"),
        asked_model,
        started: Instant::now(),
        started_at_ms: now_ms(),
        _busy: ctx.activity.busy(id),
    };
    let response = match ctx.client.request(outgoing).await {
        Ok(response) => response,
        Err(err) => {
            let message = format!("the provider could not be reached: {err}");
            call.finish(None, None, 0, None, false, "unreachable");
            return Err(refuse(StatusCode::BAD_GATEWAY, "api_error", message));
        }
    };
    let ttfb = call.started.elapsed();
    let (mut parts, body) = response.into_parts();
    let streamed = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    caged_network::http::strip_hop_by_hop(&mut parts.headers, false);
    let metered = MeteredBody::new(
        body,
        UsageMeter::new(protocol, streamed),
        Finish {
            call,
            status: parts.status.as_u16(),
            ttfb,
            streamed,
        },
    );
    Ok(Response::from_parts(parts, metered.boxed()))
}

/// Whose call it is: the credential must be this link's sandbox's, and the sandbox alive.
async fn authenticate(
    ctx: &Arc<Inner>,
    link: SandboxId,
    headers: &hyper::HeaderMap,
) -> Result<(SandboxRecord, Option<String>), Refusal> {
    let credential = presented_credential(headers).ok_or_else(|| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "no API key; use the sandbox's $OPENAI_API_KEY or $ANTHROPIC_API_KEY",
        )
    })?;
    let session = match crate::keys::check(&ctx.credential_key, credential) {
        Some((sandbox, session)) if sandbox == link => session,
        _ => {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "this API key is not this sandbox's gateway key",
            ));
        }
    };
    let id = link;
    let record = ctx
        .db
        .run(move |store| store.sandbox_by_id(id))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "unknown sandbox",
            )
        })?;
    if record.state == SandboxState::Destroyed {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            format!("sandbox {id} was destroyed; its gateway key is void"),
        ));
    }
    Ok((record, session))
}

/// Refuses a call once the sandbox's spend (charges still being stored included) has reached
/// its budget.
async fn check_budget(
    ctx: &Arc<Inner>,
    seen: &SandboxRecord,
    session: Option<&str>,
    protocol: Protocol,
) -> Result<(), Refusal> {
    let id = seen.id;
    let inner = ctx.clone();
    // Read again together with the pending charges, so each charge counts exactly once.
    let (pending, record) = ctx
        .db
        .run(move |store| {
            let (pending, record) = inner.spent_with(id, || store.sandbox_by_id(id));
            (pending, record.ok().flatten())
        })
        .await;
    let record = record.unwrap_or_else(|| seen.clone());
    let spend = caged_cost::spend(
        &ctx.config.prices,
        &record.transitions,
        record.clock_ms(),
        &record.config.resources,
        record.llm.cost_micros,
    )
    .total()
        + Micros(pending);
    if let Some(budget) = record.budget_micros
        && spend.0 >= budget
    {
        let refusal = refuse(
            StatusCode::PAYMENT_REQUIRED,
            "budget_exceeded",
            format!(
                "sandbox {id} has spent {} of its {} budget; raise it with `caged budget {id} USD`",
                spend,
                Micros(budget)
            ),
        );
        note_refusal(ctx, &record, session, protocol, &refusal);
        return Err(refusal);
    }
    Ok(())
}

/// The request the provider gets: the call's own, to the provider's URL, with the operator's
/// key instead of the sandbox's credential; and the model it asks for.
async fn upstream_request(
    ctx: &Arc<Inner>,
    protocol: Protocol,
    rest: &str,
    parts: hyper::http::request::Parts,
    body: Incoming,
) -> Result<(Request<Full<Bytes>>, Option<String>), Refusal> {
    let upstream = match protocol {
        Protocol::OpenAi => &ctx.config.openai,
        Protocol::Anthropic => &ctx.config.anthropic,
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let uri: Uri = format!("{}/{rest}{query}", upstream.base_url.trim_end_matches('/'))
        .parse()
        .map_err(|err| {
            refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("cannot form the provider's URL: {err}"),
            )
        })?;
    let body = Limited::new(body, MAX_REQUEST)
        .collect()
        .await
        .map_err(|err| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!(
                    "the request body could not be read whole (at most {MAX_REQUEST} bytes): {err}"
                ),
            )
        })?
        .to_bytes();
    let asked = read_request(protocol, rest, body);
    let mut outgoing = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(Full::new(asked.body))
        .map_err(|err| {
            refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                err.to_string(),
            )
        })?;
    let mut headers = parts.headers;
    caged_network::http::strip_hop_by_hop(&mut headers, false);
    for dropped in [
        header::HOST,
        header::AUTHORIZATION,
        HeaderName::from_static("x-api-key"),
        // Identity encoding, so the usage can be read on the way.
        header::ACCEPT_ENCODING,
        header::CONTENT_LENGTH,
    ] {
        headers.remove(dropped);
    }
    *outgoing.headers_mut() = headers;
    if let Some(key) = &upstream.api_key {
        let (name, value) = match protocol {
            Protocol::OpenAi => (header::AUTHORIZATION, format!("Bearer {key}")),
            Protocol::Anthropic => (HeaderName::from_static("x-api-key"), key.clone()),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            outgoing.headers_mut().insert(name, value);
        }
    }
    Ok((outgoing, asked.model))
}

/// Records a refused call, at most once per [`REFUSAL_EVENT_EVERY_MS`] per sandbox.
fn note_refusal(
    ctx: &Arc<Inner>,
    record: &caged_store::SandboxRecord,
    session: Option<&str>,
    protocol: Protocol,
    refusal: &Refusal,
) {
    let now = now_ms();
    {
        let mut refused = ctx.refused.lock();
        match refused.get(&record.id) {
            Some(last) if now - last < REFUSAL_EVENT_EVERY_MS => return,
            _ => refused.insert(record.id, now),
        };
    }
    let payload = json!({
        "provider": provider_name(protocol),
        "status": refusal.status.as_u16(),
        "refused": refusal.kind,
        "message": refusal.message,
    });
    let (ctx, id, account, session) = (
        ctx.clone(),
        record.id,
        record.account_id.clone(),
        session.map(str::to_string),
    );
    tokio::spawn(async move {
        let recorded = ctx
            .db
            .run(move |store| {
                let new = NewEvent::new(id, account, now, EventKind::Llm, payload);
                store.record_event(&new.in_session(session), false)
            })
            .await;
        if let Ok(event) = recorded {
            ctx.db.publish(event);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_chat_completions_ask_for_usage() {
        let asked = read_request(
            Protocol::OpenAi,
            "v1/chat/completions",
            Bytes::from_static(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#),
        );
        let body: Value = serde_json::from_slice(&asked.body).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(asked.model.as_deref(), Some("gpt-4o"));
        // Unstreamed, or already asked: the body is passed as it came.
        let original = Bytes::from_static(br#"{"model":"gpt-4o","messages":[]}"#);
        assert_eq!(
            read_request(Protocol::OpenAi, "v1/chat/completions", original.clone()).body,
            original
        );
        let anthropic = Bytes::from_static(br#"{"model":"claude-sonnet-4-5","stream":true}"#);
        assert_eq!(
            read_request(Protocol::Anthropic, "v1/messages", anthropic.clone()).body,
            anthropic
        );
    }
}
