//! The OpenAPI document: valid by the official validator, and true of the answers the server
//! really gives (each checked against its route's schema, key by key and type by type).

use std::process::Command;

use caged_client::ExecEvent;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_is_valid_and_describes_the_answers() {
    let server = caged_testkit::spawn().await;
    let client = &server.client;
    let anonymous = caged_client::Client::new(&server.url, None);
    let (status, document) = anonymous
        .raw(Method::GET, "/v1/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["title"], "Caged API");
    validate(&document);

    let answers = Answers {
        document: &document,
        client,
    };
    answers.get("/v1/system", "/v1/system").await;

    // The answer of `POST /v1/sandboxes` has exactly the keys its schema names.
    let (status, created) = client
        .raw(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({ "template": "busybox", "env": { "A": "1" } })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let schema = response_schema(&document, "/v1/sandboxes", "post", "201");
    let named = property_names(&document, schema);
    let keys: Vec<&String> = created.as_object().expect("an object").keys().collect();
    for key in &keys {
        assert!(named.contains(key), "{key} is not in the 201 schema");
    }
    for name in &named {
        assert!(
            keys.contains(&name),
            "the 201 schema names {name}, not sent"
        );
    }
    answers.check("/v1/sandboxes", "post", "201", &created);
    let id = created["id"].as_str().unwrap().to_string();
    let at = |rest: &str| format!("/v1/sandboxes/{id}{rest}");

    answers.get("/v1/sandboxes", "/v1/sandboxes?all=true").await;
    answers.get("/v1/sandboxes/{id}", &at("")).await;

    let (status, ran) = client
        .raw(
            Method::POST,
            &at("/exec"),
            Some(json!({ "cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"] })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{ran}");
    answers.check("/v1/sandboxes/{id}/exec", "post", "200", &ran);

    let written = client
        .write_file(&id, "/workspace/a.txt", "a", Some(0o600))
        .await
        .unwrap();
    // The client read the answer into its type; the type as JSON must meet the schema too.
    let written = serde_json::to_value(&written).unwrap();
    answers.check("/v1/sandboxes/{id}/files", "put", "200", &written);
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "b.txt", &b"b"[..]).unwrap();
    let extracted = client
        .write_tar(&id, "/workspace/dir", tar.into_inner().unwrap())
        .await
        .unwrap();
    let extracted = serde_json::to_value(&extracted).unwrap();
    answers.check("/v1/sandboxes/{id}/files", "put", "200", &extracted);

    // A streaming exec opens a session.
    let mut stream = client
        .exec_stream(&id, &json!({ "cmd": ["echo", "hi"] }))
        .await
        .unwrap();
    while let Some(event) = stream.output.next_event().await {
        if let ExecEvent::Exit { .. } = event.unwrap() {
            break;
        }
    }
    let sessions = answers
        .get("/v1/sandboxes/{id}/sessions", &at("/sessions?settle=true"))
        .await;
    let sid = sessions["sessions"][0]["id"]
        .as_str()
        .expect("a session")
        .to_string();
    answers
        .get(
            "/v1/sessions/{sid}",
            &format!("/v1/sessions/{sid}?settle=true"),
        )
        .await;
    answers
        .get(
            "/v1/sessions/{sid}/events",
            &format!("/v1/sessions/{sid}/events"),
        )
        .await;
    answers
        .get("/v1/sandboxes/{id}/events", &at("/events"))
        .await;
    answers
        .get("/v1/sandboxes/{id}/network", &at("/network"))
        .await;
    answers
        .get("/v1/sandboxes/{id}/network/learn", &at("/network/learn"))
        .await;
    answers
        .get("/v1/sandboxes/{id}/previews", &at("/previews"))
        .await;

    let (_, budget) = client
        .raw(
            Method::PUT,
            &at("/budget"),
            Some(json!({ "budget_usd": 5 })),
        )
        .await
        .unwrap();
    answers.check("/v1/sandboxes/{id}/budget", "put", "200", &budget);
    answers.get("/v1/sandboxes/{id}/usage", &at("/usage")).await;
    answers
        .get("/v1/account/usage", "/v1/account/usage?days=2")
        .await;

    let (_, webhook) = client
        .raw(
            Method::PUT,
            "/v1/account/webhook",
            Some(json!({ "url": "https://hooks.example.com/caged" })),
        )
        .await
        .unwrap();
    answers.check("/v1/account/webhook", "put", "200", &webhook);
    answers
        .get("/v1/account/webhook", "/v1/account/webhook")
        .await;
    let (_, deleted) = client
        .raw(Method::DELETE, "/v1/account/webhook", None)
        .await
        .unwrap();
    answers.check("/v1/account/webhook", "delete", "200", &deleted);

    let (status, snapshot) = client
        .raw(
            Method::POST,
            &at("/snapshots"),
            Some(json!({ "name": "first" })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{snapshot}");
    answers.check("/v1/sandboxes/{id}/snapshots", "post", "201", &snapshot);
    answers
        .get("/v1/sandboxes/{id}/snapshots", &at("/snapshots"))
        .await;
    let snapshot_id = snapshot["id"].as_str().unwrap().to_string();
    answers
        .get(
            "/v1/snapshots/{sid}",
            &format!("/v1/snapshots/{snapshot_id}"),
        )
        .await;

    let (_, paused) = client.raw(Method::POST, &at("/pause"), None).await.unwrap();
    answers.check("/v1/sandboxes/{id}/pause", "post", "200", &paused);
    let (_, resumed) = client
        .raw(Method::POST, &at("/resume"), None)
        .await
        .unwrap();
    answers.check("/v1/sandboxes/{id}/resume", "post", "200", &resumed);

    answers.get("/v1/templates", "/v1/templates").await;
    let (status, account) = client
        .raw(
            Method::POST,
            "/v1/accounts",
            Some(json!({ "name": "documented" })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{account}");
    answers.check("/v1/accounts", "post", "201", &account);
    answers.get("/v1/accounts", "/v1/accounts").await;

    let (_, gone) = client
        .raw(
            Method::DELETE,
            &format!("/v1/snapshots/{snapshot_id}"),
            None,
        )
        .await
        .unwrap();
    answers.check("/v1/snapshots/{sid}", "delete", "200", &gone);
    let (_, destroyed) = client.raw(Method::DELETE, &at(""), None).await.unwrap();
    answers.check("/v1/sandboxes/{id}", "delete", "200", &destroyed);

    // Failures answer the error schema.
    let (status, missing) = client
        .raw(Method::GET, "/v1/sandboxes/00000000", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    answers.check("/v1/sandboxes/{id}", "get", "4XX", &missing);
}

/// Runs the official validator on the document.
fn validate(document: &Value) {
    let file = tempfile::Builder::new()
        .suffix(".json")
        .tempfile()
        .expect("a temp file");
    std::fs::write(file.path(), document.to_string()).expect("the document written");
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named openapi_spec_validator") {
        panic!(
            "the OpenAPI validator is missing; install it with: pip install openapi-spec-validator"
        );
    }
    assert!(
        output.status.success(),
        "the document is not valid OpenAPI:\n{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
}

struct Answers<'a> {
    document: &'a Value,
    client: &'a caged_client::Client,
}

impl Answers<'_> {
    /// `GET url` (of the documented `path`), checked against its 200 schema.
    async fn get(&self, path: &str, url: &str) -> Value {
        let (status, value) = self.client.raw(Method::GET, url, None).await.unwrap();
        assert_eq!(status, StatusCode::OK, "GET {url}: {value}");
        self.check(path, "get", "200", &value);
        value
    }

    fn check(&self, path: &str, method: &str, status: &str, value: &Value) {
        let schema = response_schema(self.document, path, method, status);
        if let Err(err) = check(self.document, schema, value, "") {
            panic!("{method} {path} {status} differs from its schema: {err}\nanswer: {value}");
        }
    }
}

fn response_schema<'a>(document: &'a Value, path: &str, method: &str, status: &str) -> &'a Value {
    let schema = &document["paths"][path][method]["responses"][status]["content"]["application/json"]
        ["schema"];
    assert!(
        !schema.is_null(),
        "no JSON schema for {method} {path} {status}"
    );
    schema
}

/// The schema a `$ref` names, or the schema itself.
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            document
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} is not in the document"))
        }
        None => schema,
    }
}

/// An `allOf` (what `#[serde(flatten)]` makes) as one object schema: its parts' properties and
/// required keys together.
fn merged(document: &Value, schema: &Value) -> Value {
    let schema = resolve(document, schema);
    let Some(parts) = schema["allOf"].as_array() else {
        return schema.clone();
    };
    let (mut properties, mut required) = (serde_json::Map::new(), Vec::new());
    for part in parts {
        let part = merged(document, part);
        if let Some(more) = part["properties"].as_object() {
            properties.extend(more.clone());
        }
        if let Some(more) = part["required"].as_array() {
            required.extend(more.iter().cloned());
        }
    }
    json!({ "type": "object", "properties": properties, "required": required })
}

fn property_names(document: &Value, schema: &Value) -> Vec<String> {
    merged(document, schema)["properties"]
        .as_object()
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
}

/// Whether `value` is what `schema` says, for the parts of JSON Schema the document uses:
/// `$ref`, `allOf`, `oneOf`, `type`, `enum`, `properties`, `required`, `additionalProperties`,
/// `items`. A key the schema does not name is a difference, as is an integer where it says
/// number or a `null` it does not allow.
fn check(document: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = merged(document, schema);
    if let Some(variants) = schema["oneOf"].as_array() {
        let errors: Vec<String> = variants
            .iter()
            .filter_map(|variant| check(document, variant, value, at).err())
            .collect();
        return if errors.len() < variants.len() {
            Ok(())
        } else {
            Err(format!("{at}: no variant fits ({})", errors.join("; ")))
        };
    }
    if let Some(types) = match &schema["type"] {
        Value::String(one) => Some(vec![one.as_str()]),
        Value::Array(many) => Some(many.iter().filter_map(Value::as_str).collect()),
        _ => None,
    } {
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        // An integer is also a number; a float is not an integer.
        let fits = types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
        if !fits {
            return Err(format!("{at}: found {kind}, the schema says {types:?}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Value::Object(fields) = value {
        let properties = schema["properties"].as_object();
        for (key, field) in fields {
            let at = format!("{at}.{key}");
            match properties.and_then(|properties| properties.get(key)) {
                Some(property) => check(document, property, field, &at)?,
                None if schema["additionalProperties"].is_object() => {
                    check(document, &schema["additionalProperties"], field, &at)?
                }
                None if properties.is_some() => {
                    return Err(format!("{at}: not in the schema"));
                }
                None => {}
            }
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            let key = required.as_str().unwrap_or_default();
            if !fields.contains_key(key) {
                return Err(format!("{at}.{key}: required, not sent"));
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(document, item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}
