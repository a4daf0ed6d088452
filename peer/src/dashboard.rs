//! The web dashboard: one page, built into the binary, that the control
//! server hands out at `/dashboard?token=…` (the link `cloudchain dashboard`
//! prints). The page holds no data: its script reads everything from the
//! control API with the same token, every two seconds. Nothing is fetched from
//! anywhere else (the content security policy says so to the browser).

use std::sync::LazyLock;

const INDEX: &str = include_str!("dashboard/index.html");
const STYLE: &str = include_str!("dashboard/style.css");
const SCRIPT: &str = include_str!("dashboard/app.js");

/// What the browser may load and run: the page's own inline style and
/// script, and requests to the control server; nothing else.
pub const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page with its style and script inlined.
pub fn page() -> &'static str {
    static PAGE: LazyLock<String> = LazyLock::new(|| {
        INDEX
            .replacen("/*STYLE*/", STYLE, 1)
            .replacen("//SCRIPT", SCRIPT, 1)
    });
    &PAGE
}

/// What a browser without the token (or with a wrong one) gets.
pub const REFUSED: &str = "<!doctype html><meta charset=utf-8><title>CloudChain</title>\
     <p>The control token is missing or wrong. Open the link that \
     <code>cloudchain dashboard</code> prints.</p>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_its_style_and_script_and_loads_nothing_else() {
        let p = page();
        assert!(!p.contains("/*STYLE*/") && !p.contains("//SCRIPT"));
        assert!(p.contains(STYLE.trim()) && p.contains(SCRIPT.trim()));
        // SVG's namespace is a name, not something loaded.
        let p = p.replace("http://www.w3.org/2000/svg", "");
        for remote in ["http://", "https://", "src=", "@import", "url("] {
            assert!(!p.contains(remote), "the page refers to {remote}");
        }
    }
}
