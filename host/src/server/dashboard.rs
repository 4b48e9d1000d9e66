//! The web dashboard at `/`: one static page, its script and its style,
//! compiled into the binary so that `wpool serve` needs no files beside it.
//!
//! The assets are the same for everyone and hold no data, so they are
//! served without a token (see [`is_public`]); the page asks for the token
//! itself when the API answers 401, and sends it with every API call.
//! Each asset is sent with a Content-Security-Policy that allows nothing
//! but this server: no inline script or style, no other origin, no frames.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");
const FAVICON_SVG: &str = include_str!("dashboard/favicon.svg");

/// This origin only, for scripts, styles, images and API calls (`fetch`);
/// nothing else, no inline code, and no framing of the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The dashboard's routes: the page at `/`, its assets under `/dashboard/`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/dashboard/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON_SVG) }),
        )
}

/// Whether `path` is one of the dashboard's static assets, which any
/// client may read without a token: they hold no data.
pub(crate) fn is_public(path: &str) -> bool {
    path == "/" || path.starts_with("/dashboard/")
}

/// A static asset: revalidated on every load (`no-cache`), so that a new
/// binary's page is never mixed with an old cached script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_and_its_assets_are_public() {
        assert!(is_public("/"));
        assert!(is_public("/dashboard/app.js"));
        assert!(!is_public("/v1/stats"));
        assert!(!is_public("/v1/tasks"));
        assert!(!is_public("/metrics"));
        assert!(!is_public("/dashboardx"));
    }

    /// The page loads its script and style from the paths served here,
    /// and carries no inline script the policy would block.
    #[test]
    fn the_page_names_its_assets_and_has_no_inline_script() {
        assert!(INDEX_HTML.contains("src=\"/dashboard/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/dashboard/style.css\""));
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("style=\""));
        assert!(!INDEX_HTML.contains("onclick"));
    }
}
