//! Extractors whose every rejection is a problem+json answer (axum's default
//! plain-text rejections never reach a client).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::problem::Problem;

/// Largest request body accepted, in bytes (1 MiB).
pub const BODY_BYTES_MAX: usize = 1024 * 1024;

/// Whether the request declares a JSON body (`application/json` or `application/*+json`).
pub fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Problem> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::payload_too_large(format!(
                    "request body is larger than {BODY_BYTES_MAX} bytes"
                ))
            } else {
                Problem::malformed_request("request body could not be read")
            }
        })
}

/// Parses a request body that must be one JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, Problem> {
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        let message = error.to_string();
        if message.starts_with("number out of range") {
            Problem::validation(format!(
                "a number in the request body is out of range ({message})"
            ))
        } else {
            Problem::malformed_request(format!("request body is not valid json: {message}"))
        }
    })?;
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(Problem::validation("request body must be a json object")),
    }
}

/// Reads the fields of a request object into `T` (a struct with
/// `#[serde(deny_unknown_fields)]`): unknown and missing fields are 422.
pub fn fields<T: DeserializeOwned>(object: Map<String, Value>) -> Result<T, Problem> {
    serde_json::from_value(Value::Object(object))
        .map_err(|error| Problem::validation(error.to_string()))
}

/// A request body that is one JSON object, sent as `application/json`.
#[derive(Debug, Clone)]
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        if !has_json_content_type(request.headers()) {
            return Err(Problem::malformed_request(
                "content-type must be application/json",
            ));
        }
        let bytes = read_body(request, state).await?;
        parse_object(&bytes).map(JsonObject)
    }
}

/// A body that must be absent, or an empty JSON object (for actions without fields).
#[derive(Debug, Clone, Copy)]
pub struct NoFields;

impl<S: Send + Sync> FromRequest<S> for NoFields {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let json = has_json_content_type(request.headers());
        let bytes = read_body(request, state).await?;
        // Absent means no bytes at all: whitespace alone is not a JSON document.
        if bytes.is_empty() {
            return Ok(NoFields);
        }
        if !json {
            return Err(Problem::malformed_request(
                "content-type must be application/json",
            ));
        }
        let object = parse_object(&bytes)?;
        match object.keys().next() {
            None => Ok(NoFields),
            Some(field) => Err(Problem::validation(format!(
                "unknown field `{field}`, this action takes no fields"
            ))),
        }
    }
}

/// One path segment (e.g. `{item_id}`), as a string.
#[derive(Debug, Clone)]
pub struct PathSegment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathSegment {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(segment)| PathSegment(segment))
            .map_err(|_| Problem::malformed_request("the path is not valid utf-8"))
    }
}

/// Query-string parameters, in order. Each name may appear at most once.
#[derive(Debug, Clone, Default)]
pub struct QueryParameters(pub Vec<(String, String)>);

impl QueryParameters {
    /// The value of `name`, if given; 422 if given more than once.
    pub fn get(&self, name: &str) -> Result<Option<&str>, Problem> {
        let mut values = self
            .0
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(Problem::validation(format!(
                "query parameter `{name}` is given more than once"
            )));
        }
        Ok(first)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParameters {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|Query(pairs)| QueryParameters(pairs))
            .map_err(|_| Problem::malformed_request("the query string is malformed"))
    }
}
