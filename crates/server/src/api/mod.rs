//! The HTTP API under `/v1`: JSON in and out (as the `caged_wire` types), `Authorization:
//! Bearer <key>`, errors as `{"error": {"code", "message"}}`. Handlers are thin: they parse,
//! authorize and call the lifecycle in `crate::sandboxes`.
//!
//! The routes are one table ([`routes`]) that the router is built from, so that the test below
//! can hold the OpenAPI document to every one of them.

mod accounts;
pub(crate) mod auth;
mod body;
mod docs;
pub(crate) mod error;
mod events;
mod exec;
mod files;
mod network;
mod openapi;
mod previews;
mod sandboxes;
pub(crate) mod serve;
mod sessions;
mod snapshots;
mod templates;
mod usage;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::state::AppState;
use error::ApiError;

/// What a JSON body may take; uploads set their own limit.
pub(crate) const JSON_BODY_LIMIT: usize = 2 << 20;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for route in routes() {
        // Routes of one path merge into one method router.
        router = router.route(route.path, route.handler);
    }
    router
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::map_response(error::log_failures))
        .with_state(state)
}

/// One method of one path, and what answers it.
struct Route {
    /// What `handler`'s method filter is, by name: the filter routes, and the test reads this.
    #[cfg_attr(not(test), allow(dead_code))]
    verb: Verb,
    path: &'static str,
    handler: MethodRouter<Arc<AppState>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
            Verb::Delete => MethodFilter::DELETE,
        }
    }

    /// As the OpenAPI document's path items name it.
    #[cfg(test)]
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Delete => "delete",
        }
    }
}

fn route<H, T>(verb: Verb, path: &'static str, handler: H) -> Route
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    Route {
        verb,
        path,
        handler: on(verb.filter(), handler),
    }
}

impl Route {
    /// Uploads of any size, or up to `limit`, rather than the framework's default.
    fn body_limit(mut self, limit: DefaultBodyLimit) -> Route {
        self.handler = self.handler.layer(limit);
        self
    }
}

/// Every route of the API.
fn routes() -> Vec<Route> {
    use Verb::{Delete, Get, Post, Put};
    vec![
        route(Get, "/v1/openapi.json", openapi::document),
        route(Get, "/v1/system", sandboxes::system),
        route(Post, "/v1/sandboxes", sandboxes::create),
        route(Get, "/v1/sandboxes", sandboxes::list),
        route(Get, "/v1/sandboxes/{id}", sandboxes::inspect),
        route(Delete, "/v1/sandboxes/{id}", sandboxes::destroy),
        route(Post, "/v1/sandboxes/{id}/pause", sandboxes::pause),
        route(Post, "/v1/sandboxes/{id}/resume", sandboxes::resume),
        route(Post, "/v1/sandboxes/{id}/init", sandboxes::init),
        route(Get, "/v1/sandboxes/{id}/events", events::list),
        route(Post, "/v1/sandboxes/{id}/exec", exec::run),
        route(Get, "/v1/sandboxes/{id}/exec/ws", exec::websocket),
        route(Get, "/v1/sandboxes/{id}/files", files::read),
        // Read as a stream and capped by the files service as it arrives.
        route(Put, "/v1/sandboxes/{id}/files", files::write)
            .body_limit(DefaultBodyLimit::disable()),
        route(Post, "/v1/sandboxes/{id}/snapshots", snapshots::create),
        route(Get, "/v1/sandboxes/{id}/snapshots", snapshots::list),
        route(Post, "/v1/sandboxes/{id}/restore", snapshots::restore),
        route(Get, "/v1/sandboxes/{id}/sessions", sessions::list),
        route(Get, "/v1/sessions/{sid}", sessions::inspect),
        route(Get, "/v1/sessions/{sid}/events", sessions::session_events),
        route(Get, "/v1/sandboxes/{id}/network", network::inspect),
        route(Get, "/v1/sandboxes/{id}/network/learn", network::learn),
        route(
            Put,
            "/v1/sandboxes/{id}/network/allowed-hosts",
            network::set_allowed_hosts,
        ),
        route(Get, "/v1/sandboxes/{id}/previews", previews::list),
        route(Put, "/v1/sandboxes/{id}/previews/{port}", previews::protect),
        route(Get, "/v1/snapshots/{sid}", snapshots::inspect),
        route(Delete, "/v1/snapshots/{sid}", snapshots::delete),
        route(Get, "/v1/snapshots/{sid}/download", snapshots::download),
        route(Post, "/v1/snapshots/{sid}/fork", snapshots::fork),
        route(Get, "/v1/templates", templates::list),
        route(Post, "/v1/templates/{name}", templates::import)
            .body_limit(DefaultBodyLimit::disable()),
        route(Get, "/v1/templates/{name}", templates::inspect),
        route(Post, "/v1/templates/{name}/build", templates::build)
            .body_limit(DefaultBodyLimit::disable()),
        route(Delete, "/v1/templates/{name}", templates::remove),
        route(Get, "/v1/sandboxes/{id}/usage", usage::usage),
        route(Put, "/v1/sandboxes/{id}/budget", usage::set_budget),
        route(Get, "/v1/account/webhook", usage::get_webhook),
        route(Put, "/v1/account/webhook", usage::set_webhook),
        route(Delete, "/v1/account/webhook", usage::delete_webhook),
        route(Get, "/v1/account/usage", usage::account_usage),
        route(Post, "/v1/accounts", accounts::create),
        route(Get, "/v1/accounts", accounts::list),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A route added without a `#[utoipa::path]` (or one listed in `openapi::ApiDoc`) fails
    /// here, as does a documented route that no longer exists.
    #[test]
    fn the_document_describes_every_route_and_no_other() {
        let routed: BTreeSet<(String, String)> = routes()
            .iter()
            .map(|route| (route.verb.as_str().to_string(), route.path.to_string()))
            .collect();
        let document = openapi::build();
        let mut documented = BTreeSet::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                if ["get", "post", "put", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    documented.insert((method.clone(), path.clone()));
                }
            }
        }
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the OpenAPI document: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented routes the router does not have: {unrouted:?}"
        );
    }

    #[test]
    fn operation_ids_are_unique() {
        let document = openapi::build();
        let mut seen = BTreeSet::new();
        for item in document["paths"].as_object().expect("paths").values() {
            for operation in item.as_object().expect("a path item").values() {
                let id = operation["operationId"].as_str().expect("an operationId");
                assert!(seen.insert(id.to_string()), "operationId {id} twice");
            }
        }
    }

    #[test]
    fn each_route_is_listed_once() {
        let mut seen = BTreeSet::new();
        for route in routes() {
            assert!(
                seen.insert((route.verb, route.path)),
                "{:?} {} twice",
                route.verb,
                route.path
            );
        }
    }
}
