//! Token usage, read from what a provider answered. A [`UsageMeter`] is fed the response body
//! as it passes through the gateway (it never holds the stream up: it only looks at each piece)
//! and says at the end what the call used.

use serde_json::Value;

/// Tokens of one call. `input` excludes cached tokens, which are counted apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write: u64,
}

impl Usage {
    /// Every input token, cached or not.
    pub fn tokens_in(&self) -> u64 {
        self.input + self.cache_read + self.cache_write
    }
}

/// Which API's formats a response is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Chat Completions, Responses, Embeddings, Completions.
    OpenAi,
    /// Messages.
    Anthropic,
}

/// The most of a whole (unstreamed) response kept for reading its usage.
const MAX_BODY: usize = 16 << 20;
/// A server-sent event's line longer than this is skipped (usage lines are short).
const MAX_LINE: usize = 1 << 20;

/// Reads usage from a response body as it goes by.
#[derive(Debug)]
pub struct UsageMeter {
    protocol: Protocol,
    streamed: bool,
    /// Whole body (unstreamed) or the unfinished line (streamed).
    buffer: Vec<u8>,
    /// The current line outgrew [`MAX_LINE`]; skip to its end.
    skipping: bool,
    overflowed: bool,
    usage: Option<Usage>,
    model: Option<String>,
}

impl UsageMeter {
    /// `streamed`: the body is `text/event-stream`.
    pub fn new(protocol: Protocol, streamed: bool) -> UsageMeter {
        UsageMeter {
            protocol,
            streamed,
            buffer: Vec::new(),
            skipping: false,
            overflowed: false,
            usage: None,
            model: None,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.streamed {
            if self.buffer.len() + chunk.len() > MAX_BODY {
                self.overflowed = true;
                self.buffer = Vec::new();
            }
            if !self.overflowed {
                self.buffer.extend_from_slice(chunk);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            let (piece, after) = rest.split_at(end);
            rest = &after[1..];
            if self.skipping {
                self.skipping = false;
                self.buffer.clear();
                continue;
            }
            if self.buffer.is_empty() {
                self.line(piece);
            } else {
                let mut line = std::mem::take(&mut self.buffer);
                line.extend_from_slice(piece);
                self.line(&line);
                line.clear();
                self.buffer = line;
            }
        }
        if !self.skipping {
            if self.buffer.len() + rest.len() > MAX_LINE {
                self.skipping = true;
                self.buffer.clear();
            } else {
                self.buffer.extend_from_slice(rest);
            }
        }
    }

    /// What the call used (`None`: the response carried no usage), and the model it named.
    pub fn finish(mut self) -> (Option<Usage>, Option<String>) {
        if self.streamed {
            let last = std::mem::take(&mut self.buffer);
            if !self.skipping && !last.is_empty() {
                self.line(&last);
            }
        } else if !self.overflowed
            && let Ok(body) = serde_json::from_slice::<Value>(&self.buffer)
        {
            self.model = body["model"].as_str().map(str::to_string);
            self.usage = match self.protocol {
                Protocol::OpenAi => openai_usage(&body["usage"]),
                Protocol::Anthropic => anthropic_usage(&body["usage"], None),
            };
        }
        (self.usage, self.model)
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Most events are content deltas; parse only the ones that can carry usage.
        if !contains(data, b"usage") && !contains(data, b"\"model\"") {
            return;
        }
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match self.protocol {
            Protocol::OpenAi => {
                // Responses API: the final event holds the whole response.
                let body = if event["type"] == "response.completed" {
                    &event["response"]
                } else {
                    &event
                };
                if let Some(model) = body["model"].as_str() {
                    self.model = Some(model.to_string());
                }
                if let Some(usage) = openai_usage(&body["usage"]) {
                    self.usage = Some(usage);
                }
            }
            Protocol::Anthropic => match event["type"].as_str() {
                Some("message_start") => {
                    let message = &event["message"];
                    if let Some(model) = message["model"].as_str() {
                        self.model = Some(model.to_string());
                    }
                    self.usage = anthropic_usage(&message["usage"], self.usage);
                }
                // Cumulative counts: the last one is the call's.
                Some("message_delta") => {
                    self.usage = anthropic_usage(&event["usage"], self.usage);
                }
                _ => {}
            },
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn count(value: &Value) -> Option<u64> {
    value.as_u64()
}

/// `usage` of Chat Completions (`prompt_tokens`, `completion_tokens`), Responses
/// (`input_tokens`, `output_tokens`) or Embeddings (`prompt_tokens` only).
fn openai_usage(usage: &Value) -> Option<Usage> {
    if !usage.is_object() {
        return None;
    }
    let (prompt, cached, output) = if let Some(prompt) = count(&usage["prompt_tokens"]) {
        (
            prompt,
            count(&usage["prompt_tokens_details"]["cached_tokens"]).unwrap_or(0),
            count(&usage["completion_tokens"]).unwrap_or(0),
        )
    } else {
        (
            count(&usage["input_tokens"])?,
            count(&usage["input_tokens_details"]["cached_tokens"]).unwrap_or(0),
            count(&usage["output_tokens"]).unwrap_or(0),
        )
    };
    let cached = cached.min(prompt);
    Some(Usage {
        input: prompt - cached,
        output,
        cache_read: cached,
        cache_write: 0,
    })
}

/// Anthropic's `usage`: fields present replace those known so far (a stream's `message_delta`
/// repeats the running totals).
fn anthropic_usage(usage: &Value, known: Option<Usage>) -> Option<Usage> {
    if !usage.is_object() {
        return known;
    }
    let mut next = known.unwrap_or_default();
    if let Some(input) = count(&usage["input_tokens"]) {
        next.input = input;
    }
    if let Some(output) = count(&usage["output_tokens"]) {
        next.output = output;
    }
    if let Some(read) = count(&usage["cache_read_input_tokens"]) {
        next.cache_read = read;
    }
    if let Some(write) = count(&usage["cache_creation_input_tokens"]) {
        next.cache_write = write;
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metered(protocol: Protocol, streamed: bool, body: &str, piece: usize) -> Option<Usage> {
        let mut meter = UsageMeter::new(protocol, streamed);
        for chunk in body.as_bytes().chunks(piece) {
            meter.feed(chunk);
        }
        meter.finish().0
    }

    #[test]
    fn openai_whole_responses() {
        let body = r#"{"id":"x","model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":120,"completion_tokens":30,"prompt_tokens_details":{"cached_tokens":20}}}"#;
        let mut meter = UsageMeter::new(Protocol::OpenAi, false);
        meter.feed(body.as_bytes());
        let (usage, model) = meter.finish();
        assert_eq!(
            usage,
            Some(Usage {
                input: 100,
                output: 30,
                cache_read: 20,
                cache_write: 0
            })
        );
        assert_eq!(model.as_deref(), Some("gpt-4o-2024-08-06"));
        let responses = r#"{"model":"gpt-5","usage":{"input_tokens":7,"output_tokens":9}}"#;
        assert_eq!(
            metered(Protocol::OpenAi, false, responses, 3).map(|u| (u.input, u.output)),
            Some((7, 9))
        );
        assert_eq!(metered(Protocol::OpenAi, false, "not json", 3), None);
    }

    #[test]
    fn openai_streams_in_any_split() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}],\"model\":\"gpt-4o\",\"usage\":null}\n\n\
                      data: {\"choices\":[],\"model\":\"gpt-4o\",\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":22}}\r\n\r\n\
                      data: [DONE]\n\n";
        for piece in [1, 2, 7, 64, 4096] {
            assert_eq!(
                metered(Protocol::OpenAi, true, stream, piece).map(|u| (u.input, u.output)),
                Some((11, 22)),
                "pieces of {piece}"
            );
        }
        let responses = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}}\n\n";
        assert_eq!(
            metered(Protocol::OpenAi, true, responses, 5).map(|u| (u.input, u.output)),
            Some((3, 4))
        );
    }

    #[test]
    fn anthropic_whole_and_streamed() {
        let body = r#"{"model":"claude-sonnet-4-5","usage":{"input_tokens":50,"output_tokens":12,"cache_read_input_tokens":100,"cache_creation_input_tokens":10}}"#;
        assert_eq!(
            metered(Protocol::Anthropic, false, body, 10),
            Some(Usage {
                input: 50,
                output: 12,
                cache_read: 100,
                cache_write: 10
            })
        );
        let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
                      event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n\
                      event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n\
                      event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":40}}\n\n";
        let mut meter = UsageMeter::new(Protocol::Anthropic, true);
        for chunk in stream.as_bytes().chunks(9) {
            meter.feed(chunk);
        }
        let (usage, model) = meter.finish();
        assert_eq!(usage.map(|u| (u.input, u.output)), Some((25, 40)));
        assert_eq!(model.as_deref(), Some("claude-haiku-4-5"));
    }

    #[test]
    fn an_overlong_line_is_skipped_not_kept() {
        let long = format!("data: {}\n", "x".repeat(MAX_LINE + 10));
        let stream = format!(
            "{long}data: {{\"model\":\"m\",\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2}}}}\n"
        );
        let mut meter = UsageMeter::new(Protocol::OpenAi, true);
        for chunk in stream.as_bytes().chunks(4096) {
            meter.feed(chunk);
            assert!(meter.buffer.len() <= MAX_LINE);
        }
        assert_eq!(meter.finish().0.map(|u| u.output), Some(2));
    }
}
