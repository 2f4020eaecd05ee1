//! The API's errors: JSON `{"code": "...", "error": "..."}` with a stable
//! code that scripts branch on and the text a person reads (the CLI's text
//! where the CLI has one).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    error: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed (bad time, cursor, body, field).
    pub fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no valid session or token.
    pub fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "log in first: `warren admin console-login` prints a one-time URL; programs send `Authorization: Bearer TOKEN`",
        )
    }

    /// 403: known, but not allowed.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// An operation the store or the relay refused or failed: its text is
    /// what the CLI prints after `warren: `.
    pub fn refused(e: &anyhow::Error) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "refused", format!("{e:#}"))
    }

    pub fn internal(e: &anyhow::Error) -> ApiError {
        tracing::error!(error = %format!("{e:#}"), "HTTP API");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e:#}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            code: self.code,
            error: &self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
