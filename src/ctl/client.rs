//! One call to the admin API with hyper-util's client, under one timeout,
//! and what its answer means: the JSON on success, a typed error otherwise.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{Command, CtlError, Target, TokenSource};

/// Largest answer read: a status with every region and event is a few
/// kilobytes, and something else answering must not fill the memory.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The body as received.
    pub body: Bytes,
    /// The body parsed.
    pub json: serde_json::Value,
}

/// Makes the call for `command` on `target`, all of it within `timeout`.
pub async fn call(
    target: &Target,
    command: &Command,
    timeout: Duration,
) -> Result<Answer, CtlError> {
    let url = format!("{}{}", target.base, command.path());
    let mut request = Request::builder()
        .method(command.method())
        .uri(&url)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("meridian-ctl/", env!("CARGO_PKG_VERSION")),
        );
    let body = match command.body() {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(json)
        }
        None => Bytes::new(),
    };
    let mut request = request
        .body(Full::new(body))
        .map_err(|e| CtlError::BadUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    if let Some((token, _)) = &target.token {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| CtlError::BadUrl {
                url: url.clone(),
                reason: "the token has characters a header cannot carry".into(),
            })?;
        // Kept out of hyper's debug output and HTTP/2 header compression.
        value.set_sensitive(true);
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }

    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(timeout));
    http.enforce_http(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(http);
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let reason = innermost(&e);
            if e.is_connect() {
                CtlError::Unreachable {
                    url: target.base.clone(),
                    reason,
                }
            } else {
                CtlError::BadAnswer {
                    url: url.clone(),
                    reason,
                }
            }
        })?;
        let (parts, body) = response.into_parts();
        let bytes = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| CtlError::BadAnswer {
                url: url.clone(),
                reason: format!("cannot read the answer: {e}"),
            })?
            .to_bytes();
        Ok::<_, CtlError>((parts.status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CtlError::Timeout {
            url: target.base.clone(),
            timeout,
        })??;
    interpret(&url, status, bytes, target.token.as_ref().map(|(_, s)| *s))
}

/// The deepest cause of `e`, which says what happened ("Connection refused")
/// where the outer ones only say where ("client error (Connect)").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// What an answer means: its JSON when successful, else the error with the
/// server's own words.
fn interpret(
    url: &str,
    status: StatusCode,
    body: Bytes,
    token: Option<TokenSource>,
) -> Result<Answer, CtlError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if status.is_success() {
        return match json {
            Some(json) => Ok(Answer { body, json }),
            None => Err(CtlError::BadAnswer {
                url: url.to_owned(),
                reason: format!(
                    "{status} with a body that is not JSON (is --admin the admin listener?)"
                ),
            }),
        };
    }
    let message = json
        .as_ref()
        .and_then(|j| j.get("error"))
        .and_then(|e| e.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "{status} without an error message (is --admin the admin listener of Meridian?)"
            )
        });
    let issues = json
        .as_ref()
        .and_then(|j| j.get("issues"))
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let message = match status {
        // An older Meridian lacks newer endpoints: say so rather than leave
        // the operator with a bare "no such endpoint".
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            if message == "no such endpoint" || message == "method not allowed here" =>
        {
            format!("{message}: this Meridian does not offer {url}")
        }
        _ => message,
    };
    Err(match status {
        StatusCode::UNAUTHORIZED => CtlError::Unauthorized { message, token },
        s if s.is_client_error() => CtlError::Refused {
            status: s.as_u16(),
            message,
            issues,
        },
        s => CtlError::Server {
            status: s.as_u16(),
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Result<Answer, CtlError> {
        interpret(
            "http://a/api/v1/x",
            StatusCode::from_u16(status).unwrap(),
            Bytes::from(body.to_owned()),
            None,
        )
    }

    #[test]
    fn answers_become_json_or_typed_errors() {
        assert_eq!(answer(200, r#"{"a": 1}"#).unwrap().json["a"], 1);
        assert!(matches!(
            answer(200, "<html>").unwrap_err(),
            CtlError::BadAnswer { .. }
        ));
        match answer(409, r#"{"error": "region \"us\" is already drained"}"#).unwrap_err() {
            e @ CtlError::Refused { status: 409, .. } => {
                assert_eq!(e.to_string(), "region \"us\" is already drained (409)")
            }
            e => panic!("{e:?}"),
        }
        match answer(
            400,
            r#"{"error": "invalid configuration", "issues": ["m.toml:3: `listen.htp`: unknown key", 5]}"#,
        )
        .unwrap_err()
        {
            CtlError::Refused { issues, .. } => {
                assert_eq!(issues, ["m.toml:3: `listen.htp`: unknown key", "5"])
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            answer(401, r#"{"error": "missing or invalid bearer token"}"#).unwrap_err(),
            CtlError::Unauthorized { token: None, .. }
        ));
        let e = answer(404, r#"{"error": "no such endpoint"}"#).unwrap_err();
        assert!(e.to_string().contains("does not offer"), "{e}");
        let e = answer(503, r#"{"error": "Meridian is shutting down"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the admin API failed (503): Meridian is shutting down"
        );
        let e = answer(502, "bad gateway").unwrap_err();
        assert!(e.to_string().contains("without an error message"), "{e}");
    }
}
