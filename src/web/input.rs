//! Request input: query strings and JSON bodies parsed strictly (unknown
//! fields refused), with the API's 400 errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::MAX_BODY;
use super::error::ApiError;

/// A query string parsed into `T` (declare it `deny_unknown_fields`).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q)
            .map(Query)
            .map_err(|e| ApiError::bad("bad_query", format!("query string: {e}")))
    }
}

/// A JSON body parsed into `T` (declare it `deny_unknown_fields`); bodies
/// over [`MAX_BODY`] are refused.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::bad(
                "body_too_large",
                format!("request body over {MAX_BODY} bytes"),
            )
        })?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::bad("bad_body", format!("request body: {e}")))
    }
}
