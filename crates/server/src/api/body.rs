//! Reading what a request names and sends, answering in the API's error shape rather than the
//! framework's; a leaf, so that every handler can use it without going through the router.

use caged_domain::SandboxId;
use serde_json::{Map, Value};

use super::error::ApiError;

pub(crate) fn parse_id(raw: &str) -> Result<SandboxId, ApiError> {
    // A malformed id cannot name any sandbox: answer as for one that does not exist.
    raw.parse().map_err(|_| {
        ApiError::not_found(format!(
            "sandbox {raw:?} not found (ids are 8 hex characters)"
        ))
    })
}

/// Parses a JSON body; an empty body is `{}`.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    // Strictly: a key given twice is refused, not won by its last value.
    caged_domain::json::from_slice_strict(body).map_err(|err| {
        ApiError::bad_request("bad_json", format!("request body is not valid JSON: {err}"))
    })
}

/// A JSON body of one field and nothing else; another field is a `code` error naming it.
pub(crate) fn one_field_body(
    body: &[u8],
    field: &str,
    code: &'static str,
) -> Result<Value, ApiError> {
    let body = json_body(body)?;
    if let Some(unknown) = body
        .as_object()
        .and_then(|fields| fields.keys().find(|key| *key != field))
    {
        return Err(ApiError::bad_request(
            code,
            format!("{unknown}: unknown field (only {field} is accepted)"),
        ));
    }
    Ok(body)
}
