//! The browser demo (`web-demo/`), embedded in the binary and served at `/` on the `--http`
//! address.
//!
//! The page is plain HTML, CSS and JavaScript with no build step: the files are compiled in
//! with `include_str!`, so the binary serves them without touching the disk. Every response
//! carries `Cache-Control: no-cache` (a new binary serves a new page at once) and a strict
//! Content-Security-Policy: scripts, styles and images from this origin only, network
//! connections to this origin and WebSockets only, no framing, no inline code.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The Content-Security-Policy of every demo response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self' ws: wss:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its URL path, content type and body.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file of the demo. `/` serves `index.html`.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../../web-demo/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../web-demo/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../../web-demo/style.css"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../../web-demo/favicon.svg"),
    },
];

fn respond(asset: &'static Asset) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        asset.body,
    )
}

/// The routes of the demo: `/`, `/app.js`, `/style.css`, `/favicon.svg`.
pub fn routes() -> Router {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { respond(asset) }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serves the demo on a loopback port and returns the raw HTTP response to `GET path`.
    fn get_raw(path: &str) -> String {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("local address");
        rt.spawn(async move { axum::serve(listener, routes()).await });
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out.to_ascii_lowercase()
    }

    #[test]
    fn serves_every_file_with_type_cache_and_csp() {
        for (path, ty, marker) in [
            ("/", "text/html", "<!doctype html>"),
            ("/app.js", "text/javascript", "turnpikedemo"),
            ("/style.css", "text/css", "prefers-color-scheme"),
            ("/favicon.svg", "image/svg+xml", "<svg"),
        ] {
            let r = get_raw(path);
            assert!(r.starts_with("http/1.1 200"), "{path}: {r}");
            assert!(r.contains(&format!("content-type: {ty}")), "{path}: {r}");
            assert!(r.contains("cache-control: no-cache"), "{path}");
            assert!(
                r.contains("content-security-policy: default-src 'none'; script-src 'self'"),
                "{path}"
            );
            assert!(r.contains("connect-src 'self' ws: wss:"), "{path}");
            assert!(r.contains(marker), "{path} body");
        }
        assert!(get_raw("/nope.js").starts_with("http/1.1 404"));
    }

    #[test]
    fn page_loads_nothing_from_elsewhere_and_has_no_inline_code() {
        let html = include_str!("../../../web-demo/index.html");
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("<script>") && !html.contains("<style"));
        assert!(!html.contains(" style=") && !html.contains(" onclick="));
        let js = include_str!("../../../web-demo/app.js");
        assert!(!js.contains("http://") && !js.contains("https://"));
        assert!(!js.contains("eval(") && !js.contains("new Function"));
    }
}
