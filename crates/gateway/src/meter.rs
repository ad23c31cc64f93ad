//! The provider's answer on its way back to the sandbox, and the charge of the call once it
//! ends, however it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use caged_activity::Busy;
use caged_cost::{Protocol, Usage, UsageMeter};
use caged_domain::SandboxId;
use caged_domain::time::now_ms;
use caged_store::NewLlmCall;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::json;

use crate::{Inner, provider_name};

/// One call in flight; it is charged once, however it ends.
pub(crate) struct Call {
    pub ctx: Arc<Inner>,
    pub sandbox: SandboxId,
    pub account_id: String,
    pub timeout: u64,
    pub session: Option<String>,
    pub protocol: Protocol,
    pub path: String,
    pub asked_model: Option<String>,
    pub started: Instant,
    pub started_at_ms: i64,
    /// The sandbox does not fall asleep while its agent waits on a model.
    pub _busy: Busy,
}

impl Call {
    pub(crate) fn finish(
        self,
        usage: Option<Usage>,
        answered_model: Option<String>,
        status: u16,
        ttfb: Option<Duration>,
        streamed: bool,
        outcome: &'static str,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the server is going away
        };
        let model = answered_model
            .or(self.asked_model.clone())
            .unwrap_or_else(|| "unknown".into());
        let prices = &self.ctx.config.prices;
        let (priced_as, price) = prices.model(&model);
        let usage = usage.unwrap_or_default();
        let cost = price.cost(&usage);
        let latency = self.started.elapsed();
        let now = now_ms();
        let payload = json!({
            "provider": provider_name(self.protocol),
            "path": self.path,
            "model": model,
            "priced_as": priced_as.unwrap_or("default"),
            "tokens_in": usage.tokens_in(),
            "tokens_out": usage.output,
            "cache_read_tokens": usage.cache_read,
            "cache_write_tokens": usage.cache_write,
            "cost_micros": cost.0,
            "status": status,
            "streamed": streamed,
            "outcome": outcome,
            "ttfb_ms": ttfb.map(|t| t.as_secs_f64() * 1000.0),
            "latency_ms": latency.as_secs_f64() * 1000.0,
        });
        self.ctx.activity.touch(self.sandbox, now, self.timeout);
        self.ctx.charge_pending(self.sandbox, cost.0);
        runtime.spawn(async move {
            let (id, account, session) =
                (self.sandbox, self.account_id.clone(), self.session.clone());
            let provider = provider_name(self.protocol);
            let inner = self.ctx.clone();
            let recorded = self
                .ctx
                .db
                .run(move |store| {
                    inner.store_charge(id, cost.0, || {
                        store.record_llm_call(NewLlmCall {
                            sandbox_id: id,
                            account_id: &account,
                            session_id: session.as_deref(),
                            at_ms: self.started_at_ms,
                            provider,
                            model: &model,
                            tokens_in: usage.tokens_in() as i64,
                            tokens_out: usage.output as i64,
                            cost_micros: cost.0,
                            status,
                            payload: &payload,
                        })
                    })
                })
                .await;
            match recorded {
                Ok(event) => self.ctx.db.publish(event),
                Err(err) => tracing::error!(sandbox = %id, "could not record an LLM call: {err}"),
            }
            self.ctx.prune_pending();
            self.ctx.charged.notify_one();
        });
    }
}

pub(crate) struct Finish {
    pub call: Call,
    pub status: u16,
    pub ttfb: Duration,
    pub streamed: bool,
}

/// The provider's answer on its way back: every piece is passed on as it comes and shown to
/// the usage meter; when the body ends (or the caller goes away) the call is charged.
pub(crate) struct MeteredBody {
    inner: Incoming,
    meter: Option<UsageMeter>,
    finish: Option<Finish>,
    /// What the provider sent after the data gathered into the last frame: its end, an
    /// error or trailers, handed on at the next poll.
    held: Option<Option<Result<Frame<Bytes>, hyper::Error>>>,
}

/// Pieces already waiting are sent on together, up to this much (a provider that streams
/// faster than the caller reads is relayed in fewer, larger writes; nothing waits for more).
const GATHER: usize = 64 << 10;

impl MeteredBody {
    pub(crate) fn new(inner: Incoming, meter: UsageMeter, finish: Finish) -> MeteredBody {
        MeteredBody {
            inner,
            meter: Some(meter),
            held: None,
            finish: Some(finish),
        }
    }

    fn complete(&mut self, outcome: &'static str) {
        let (Some(meter), Some(finish)) = (self.meter.take(), self.finish.take()) else {
            return;
        };
        let (usage, model) = meter.finish();
        finish.call.finish(
            usage,
            model,
            finish.status,
            Some(finish.ttfb),
            finish.streamed,
            outcome,
        );
    }

    /// Hands on what followed the data: the end (the call is charged), an error, trailers.
    fn pass(
        &mut self,
        held: Option<Result<Frame<Bytes>, hyper::Error>>,
    ) -> Option<Result<Frame<Bytes>, hyper::Error>> {
        match &held {
            None => self.complete("completed"),
            Some(Err(_)) => self.complete("upstream_error"),
            Some(Ok(_)) => {}
        }
        held
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            return Poll::Ready(this.pass(held));
        }
        let mut gathered: Option<bytes::BytesMut> = None;
        let mut first: Option<Bytes> = None;
        loop {
            let next = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(next) => next,
            };
            let data = match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(other) => {
                        this.held = Some(Some(Ok(other)));
                        break;
                    }
                },
                other => {
                    this.held = Some(other);
                    break;
                }
            };
            if let Some(meter) = this.meter.as_mut() {
                meter.feed(&data);
            }
            match (&mut gathered, first.take()) {
                (Some(buffer), _) => buffer.extend_from_slice(&data),
                (None, None) => first = Some(data),
                (None, Some(earlier)) => {
                    let mut buffer = bytes::BytesMut::with_capacity(earlier.len() + data.len());
                    buffer.extend_from_slice(&earlier);
                    buffer.extend_from_slice(&data);
                    gathered = Some(buffer);
                }
            }
            let size =
                gathered.as_ref().map_or(0, |b| b.len()) + first.as_ref().map_or(0, |b| b.len());
            if size >= GATHER || this.inner.is_end_stream() {
                break;
            }
        }
        let data = gathered.map(bytes::BytesMut::freeze).or(first);
        // The last piece of a sized body: charge before the caller has it, so its next call
        // already sees this one's cost.
        if this.inner.is_end_stream() && this.held.is_none() {
            this.held = Some(None);
        }
        if matches!(this.held, Some(None)) {
            this.complete("completed");
        }
        match data {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => match this.held.take() {
                Some(held) => Poll::Ready(this.pass(held)),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.held, Some(None)) || (self.held.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // An empty body may be dropped without being polled to its end.
        let outcome = if self.inner.is_end_stream() || matches!(self.held, Some(None)) {
            "completed"
        } else {
            "client_closed"
        };
        self.complete(outcome);
    }
}
