//! What the handlers' `#[utoipa::path]` attributes share: the failures every route may answer
//! and the path parameters that name things. A leaf, beside the handlers that use it.

use caged_wire::ErrorBody;
use utoipa::{IntoParams, IntoResponses};

/// Any route's failure: the status says which kind, the body's `code` exactly what.
#[derive(IntoResponses)]
#[allow(dead_code)] // only its documentation is used; answers are made by `ApiError`
pub(crate) enum Failures {
    /// The request was refused: bad input (400), no or a wrong key (401), not allowed (403),
    /// not found (404), the wrong state (409), over a limit (413, 422).
    #[response(status = "4XX")]
    Refused(ErrorBody),
    /// The server, its database or its container engine failed (500, 502), or the engine is
    /// not reachable (503).
    #[response(status = "5XX")]
    Failed(ErrorBody),
}

/// A sandbox named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its documentation is used; handlers take `Path<String>`
pub(crate) struct SandboxPath {
    /// The sandbox's id: 8 hex characters.
    id: String,
}

/// A session named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its documentation is used; handlers take `Path<String>`
pub(crate) struct SessionPath {
    /// The session's id.
    sid: String,
}

/// A snapshot named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its documentation is used; handlers take `Path<String>`
pub(crate) struct SnapshotPath {
    /// The snapshot's id.
    sid: String,
}

/// A body of raw bytes (a file, a tar), described as such rather than as JSON.
pub(crate) struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("Raw bytes"))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}
