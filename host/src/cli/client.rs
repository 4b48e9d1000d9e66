//! A small blocking HTTP client for the daemon's API, and the `--server`
//! and `--token` flags every client subcommand shares.

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Failure, exit};
use crate::server::ErrorBody;

/// Where the daemon is.
#[derive(Clone, Debug, Args)]
pub(crate) struct ServerArgs {
    /// The daemon's URL. Default: http://127.0.0.1:7878; when neither this
    /// nor WPOOL_SERVER is given and no daemon answers there, commands that
    /// can (`submit`, `modules`) use the data directory directly, and say so.
    #[arg(long, env = "WPOOL_SERVER", value_name = "URL", value_parser = parse_server)]
    pub(crate) server: Option<String>,
    /// The bearer token, when the daemon requires one.
    #[arg(long, env = "WPOOL_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Print JSON (one document, or JSON lines) instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The daemon's address when none is given.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:7878";

impl ServerArgs {
    /// The daemon's URL, given or the default.
    pub(crate) fn url(&self) -> &str {
        self.server.as_deref().unwrap_or(DEFAULT_SERVER)
    }

    /// Whether a daemon was named (`--server` or `WPOOL_SERVER`): then a
    /// daemon that does not answer is an error, never a reason to use a
    /// local data directory instead.
    pub(crate) fn given(&self) -> bool {
        self.server.is_some()
    }
}

/// `--server`: an `http://` or `https://` URL with a host.
fn parse_server(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(|| format!("`{text}` is not a server URL: write e.g. http://127.0.0.1:7878"))?;
    if rest.split(['/', '?']).next().unwrap_or("").is_empty() {
        return Err(format!(
            "`{text}` names no host: write e.g. http://127.0.0.1:7878"
        ));
    }
    Ok(text.to_string())
}

/// What a call to the daemon can end with, besides success.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No daemon answered at the address.
    Unreachable(String),
    /// The daemon answered with an error.
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// Anything else (a broken answer, an I/O error mid-way).
    Other(anyhow::Error),
}

impl CallError {
    /// The error as a [`Failure`], with its exit code and a hint.
    /// A refusal for backpressure, worth trying again later: a full queue
    /// (429), a busy server or an unavailable store (503).
    pub(crate) fn is_backpressure(&self) -> bool {
        matches!(
            self,
            CallError::Api {
                status: 429 | 503,
                ..
            }
        )
    }

    pub(crate) fn into_failure(self, server: &str) -> Failure {
        match self {
            CallError::Unreachable(cause) => Failure::new(
                exit::UNREACHABLE,
                anyhow!(
                    "no wpool server at {server} ({cause}); start one with `wpool serve`, \
                     or point --server / WPOOL_SERVER at it"
                ),
            ),
            CallError::Api {
                status,
                code,
                message,
            } => {
                let exit = match status {
                    400 | 413 => exit::BAD_INPUT,
                    404 => exit::NOT_FOUND,
                    _ => exit::REFUSED,
                };
                Failure::new(exit, anyhow!("{message} (HTTP {status}, {code})"))
            }
            CallError::Other(e) => Failure::new(exit::INTERNAL, e),
        }
    }
}

/// A client of one daemon.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A successful answer: its status and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            CallError::Other(anyhow!(
                "the server's answer is not what this wpool expects: {e}"
            ))
        })
    }
}

impl Client {
    pub(crate) fn new(args: &ServerArgs) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(120)))
            .max_idle_connections_per_host(64)
            .build();
        Self {
            base: args.url().trim_end_matches('/').to_string(),
            token: args.token.clone(),
            agent: config.into(),
        }
    }

    /// The daemon's URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, CallError> {
        let mut response = result.map_err(|e| match e {
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                CallError::Unreachable(e.to_string())
            }
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::AddrNotAvailable
                ) =>
            {
                CallError::Unreachable(io.to_string())
            }
            ureq::Error::Timeout(_) => CallError::Unreachable(e.to_string()),
            other => CallError::Other(anyhow!(other).context("talking to the server")),
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 31)
            .read_to_vec()
            .map_err(|e| CallError::Other(anyhow!(e).context("reading the server's answer")))?;
        if status >= 400 {
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(error) => CallError::Api {
                    status,
                    code: error.error.code,
                    message: error.error.message,
                },
                Err(_) => CallError::Api {
                    status,
                    code: "http".into(),
                    message: format!(
                        "the server answered {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ),
                },
            });
        }
        Ok(Answer { status, body })
    }

    fn auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    pub(crate) fn get(&self, path: &str) -> Result<Answer, CallError> {
        self.finish(self.auth(self.agent.get(self.url(path))).call())
    }

    /// GETs `path` and copies the body to `out` as it arrives (for
    /// outputs of any size); the number of bytes copied.
    pub(crate) fn get_to(
        &self,
        path: &str,
        out: &mut impl std::io::Write,
    ) -> Result<u64, CallError> {
        let response = self.auth(self.agent.get(self.url(path))).call();
        let mut response = match response {
            Ok(response) if response.status().as_u16() < 400 => response,
            other => {
                return Err(self.finish(other).err().unwrap_or_else(|| {
                    CallError::Other(anyhow!(
                        "the server's answer to GET {path} was not an error"
                    ))
                }));
            }
        };
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut reader, out)
            .map_err(|e| CallError::Other(anyhow!(e).context(format!("reading {path}"))))
    }

    /// GETs `path` with no overall timeout (an event stream never ends)
    /// and hands each line of the body to `line` until it says stop or the
    /// server closes the stream.
    pub(crate) fn stream_lines(
        &self,
        path: &str,
        mut line: impl FnMut(&str) -> bool,
    ) -> Result<(), CallError> {
        use std::io::BufRead as _;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut response = match self.auth(agent.get(self.url(path))).call() {
            Ok(response) if response.status().as_u16() < 400 => response,
            other => {
                return Err(self.finish(other).err().unwrap_or_else(|| {
                    CallError::Other(anyhow!(
                        "the server's answer to GET {path} was not an error"
                    ))
                }));
            }
        };
        let reader =
            std::io::BufReader::new(response.body_mut().with_config().limit(u64::MAX).reader());
        for text in reader.lines() {
            let text =
                text.map_err(|e| CallError::Other(anyhow!(e).context(format!("reading {path}"))))?;
            if !line(&text) {
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn delete(&self, path: &str) -> Result<Answer, CallError> {
        self.finish(self.auth(self.agent.delete(self.url(path))).call())
    }

    pub(crate) fn post_json(&self, path: &str, body: &impl Serialize) -> Result<Answer, CallError> {
        let bytes = serde_json::to_vec(body).map_err(|e| CallError::Other(e.into()))?;
        self.finish(
            self.auth(self.agent.post(self.url(path)))
                .header("Content-Type", "application/json")
                .send(&bytes[..]),
        )
    }

    pub(crate) fn put_json(&self, path: &str, body: &impl Serialize) -> Result<Answer, CallError> {
        let bytes = serde_json::to_vec(body).map_err(|e| CallError::Other(e.into()))?;
        self.finish(
            self.auth(self.agent.put(self.url(path)))
                .header("Content-Type", "application/json")
                .send(&bytes[..]),
        )
    }

    pub(crate) fn post_bytes(&self, path: &str, body: &[u8]) -> Result<Answer, CallError> {
        self.finish(
            self.auth(self.agent.post(self.url(path)))
                .header("Content-Type", "application/wasm")
                .send(body),
        )
    }
}

/// Whether `url` names this machine (so that, with no daemon there, the
/// local data directory is the daemon's own).
pub(crate) fn is_local(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
