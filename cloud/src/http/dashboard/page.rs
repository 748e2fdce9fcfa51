//! What every signed-in page shares: the operator behind the request, the
//! frame around the content (navigation, CSRF token, asset URLs), rendering,
//! and the CSRF check of dashboard forms.

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::http::auth::caller_from_headers;
use crate::http::state::AppState;
use crate::ops::{Caller, Permission};
use crate::roles::Role;
use crate::store::accounts::same_secret;

/// A signed-in operator. HTML pages that need one redirect to `/login`
/// otherwise, with the page to come back to.
pub(super) struct SignedIn {
    pub caller: Caller,
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match caller_from_headers(state, &parts.headers, false).await {
            Ok(caller) => Ok(SignedIn { caller }),
            Err(e) if e.status() == StatusCode::UNAUTHORIZED => {
                // A form posted with an ended session cannot be replayed
                // by a redirect; come back to the list instead.
                let here = if parts.method == Method::GET {
                    parts.uri.path_and_query().map_or("/", |p| p.as_str())
                } else {
                    "/devices"
                };
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", here)
                    .finish();
                Err(Redirect::to(&format!("/login?{query}")).into_response())
            }
            Err(e) => Err(e.into_response()),
        }
    }
}

impl SignedIn {
    /// The frame of a page with `nav` highlighted.
    pub fn chrome(&self, nav: &'static str) -> Chrome {
        Chrome {
            operator: self.caller.name.clone(),
            role: self.caller.role,
            has_account: self.caller.operator.is_some(),
            may_manage_team: self.caller.may(Permission::ManageTeam),
            may_decide_keys: self.caller.may(Permission::DecideKeys),
            csrf_token: self.caller.csrf_token().unwrap_or_default().to_owned(),
            nav,
            assets: super::assets::version(),
        }
    }

    /// Whether this caller's role may call `method` on a device, by the
    /// cloud's method-roles setting: pages offer only the calls that the
    /// operations layer would let through.
    pub fn may_call(&self, state: &AppState, method: &str) -> bool {
        let needed = state.ops().config().method_roles.needed_for(method);
        self.caller.may(Permission::Call(needed))
    }

    /// Whether a form's CSRF field is this session's token (constant time).
    pub fn csrf_ok(&self, presented: &str) -> bool {
        self.caller
            .csrf_token()
            .is_some_and(|token| same_secret(presented.as_bytes(), token.as_bytes()))
    }
}

/// What `base.html` needs from every page.
pub(super) struct Chrome {
    pub operator: String,
    /// Shown beside the name, so that everyone knows what the page will let them do.
    pub role: Role,
    /// Whether the caller signed in as an operator (the admin token has no
    /// account, so no password or sessions of its own).
    pub has_account: bool,
    /// Admins: the Operators page.
    pub may_manage_team: bool,
    /// Admins: accept, reject, delete and preauthorize devices.
    pub may_decide_keys: bool,
    /// Forms carry it as a hidden field; the script sends it as `X-CSRF-Token`.
    pub csrf_token: String,
    /// Which navigation entry is the current page: `devices`, `audit`,
    /// `tokens`, `operators` or `account`.
    pub nav: &'static str,
    /// Cache-busting version of the embedded assets.
    pub assets: &'static str,
}

/// Renders a page; pages are never cached, since they show live state.
pub(super) fn render(template: &impl Template) -> Response {
    render_with_status(StatusCode::OK, template)
}

pub(super) fn render_with_status(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => (
            status,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Html(html),
        )
            .into_response(),
        Err(e) => crate::http::error::AppError::internal(e).into_response(),
    }
}

/// A short page that says what went wrong, with a way back.
#[derive(Template)]
#[template(path = "message.html")]
pub(super) struct MessagePage {
    pub chrome: Chrome,
    pub title: String,
    pub message: String,
    pub back: String,
}

/// An operation's message as a sentence on the page.
pub(super) fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

/// Longest path a sign-in may go on to.
const MAX_LOCAL_PATH: usize = 2048;

/// A local path to go back to after a form, never another site: one `/`,
/// then visible ASCII without `\` (browsers drop tabs and newlines and read
/// `\` as `/`, which could make `//host`).
pub(super) fn local_path(candidate: Option<&str>, fallback: &str) -> String {
    match candidate {
        Some(path)
            if path.len() <= MAX_LOCAL_PATH
                && path.starts_with('/')
                && !path.starts_with("//")
                && path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            path.to_owned()
        }
        _ => fallback.to_owned(),
    }
}

/// The answer to a dashboard form whose CSRF field is wrong.
pub(super) fn csrf_refused(signed_in: &SignedIn, back: &str) -> Response {
    render_with_status(
        StatusCode::FORBIDDEN,
        &MessagePage {
            chrome: signed_in.chrome(""),
            title: "This form has expired".into(),
            message: "The page was older than your session. Go back, reload it and try again."
                .into(),
            back: back.to_owned(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(local_path(Some("/devices?q=a"), "/"), "/devices?q=a");
        for outside in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /evil.example",
        ] {
            assert_eq!(local_path(Some(outside), "/"), "/", "{outside}");
        }
        assert_eq!(local_path(None, "/devices"), "/devices");
    }
}
