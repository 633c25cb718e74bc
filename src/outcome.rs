//! What became of a request, in one word: the `reason` of the decision log and the
//! `outcome` label of `portcullis_auth_decisions_total`. One enum, so that a new way a
//! request can end gets a name in both at once (a leaf: it imports nothing of the crate).

/// Every way a request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Outcome {
    /// None of the others (never for a request that was decided).
    #[default]
    Other,
    // Forwarded.
    Public,
    Allowed,
    // The gateway's own endpoints and the login redirect.
    LoginEndpoint,
    LoginRedirect,
    /// The gateway's other endpoints on the listeners (the assertion JWKS).
    GatewayEndpoint,
    // Credentials.
    Missing,
    SessionStoreUnavailable,
    UnknownApiKey,
    InactiveToken,
    Revoked,
    AmbiguousCredential,
    MalformedCredential,
    MalformedAuthorization,
    // Tokens.
    TooLarge,
    Malformed,
    CritHeader,
    UnknownIssuer,
    AlgNotAllowed,
    UnknownKid,
    BadSignature,
    MissingExp,
    Expired,
    NotYetValid,
    IatInFuture,
    WrongAudience,
    ClaimType,
    // Requirements and origin.
    InsufficientScope,
    ClaimMismatch,
    CsrfRejected,
    /// Over the route's rate limit (429).
    RateLimited,
    /// A forward-auth request from an untrusted peer, or not describing one request.
    ForwardAuthRefused,
    // The target.
    NoRoute,
    AmbiguousPath,
    BadTarget,
    UriTooLong,
    HeadersTooLarge,
    // Bodies and the upstream.
    PayloadTooLarge,
    RequestBodyStalled,
    UpstreamUnavailable,
    UpstreamTimeout,
    UpstreamFailed,
    UpstreamTls,
    // Login flows.
    InvalidLoginState,
    LoginRefused,
    InvalidIdToken,
    IdpUnavailable,
    SessionTooLarge,
    InvalidLogoutToken,
    BackchannelNeedsServerStore,
    WrongMethod,
    LoginBusy,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Outcome; 52] = [
        Outcome::Other,
        Outcome::Public,
        Outcome::Allowed,
        Outcome::LoginEndpoint,
        Outcome::LoginRedirect,
        Outcome::GatewayEndpoint,
        Outcome::Missing,
        Outcome::SessionStoreUnavailable,
        Outcome::UnknownApiKey,
        Outcome::InactiveToken,
        Outcome::Revoked,
        Outcome::AmbiguousCredential,
        Outcome::MalformedCredential,
        Outcome::MalformedAuthorization,
        Outcome::TooLarge,
        Outcome::Malformed,
        Outcome::CritHeader,
        Outcome::UnknownIssuer,
        Outcome::AlgNotAllowed,
        Outcome::UnknownKid,
        Outcome::BadSignature,
        Outcome::MissingExp,
        Outcome::Expired,
        Outcome::NotYetValid,
        Outcome::IatInFuture,
        Outcome::WrongAudience,
        Outcome::ClaimType,
        Outcome::InsufficientScope,
        Outcome::ClaimMismatch,
        Outcome::CsrfRejected,
        Outcome::RateLimited,
        Outcome::ForwardAuthRefused,
        Outcome::NoRoute,
        Outcome::AmbiguousPath,
        Outcome::BadTarget,
        Outcome::UriTooLong,
        Outcome::HeadersTooLarge,
        Outcome::PayloadTooLarge,
        Outcome::RequestBodyStalled,
        Outcome::UpstreamUnavailable,
        Outcome::UpstreamTimeout,
        Outcome::UpstreamFailed,
        Outcome::UpstreamTls,
        Outcome::InvalidLoginState,
        Outcome::LoginRefused,
        Outcome::InvalidIdToken,
        Outcome::IdpUnavailable,
        Outcome::SessionTooLarge,
        Outcome::InvalidLogoutToken,
        Outcome::BackchannelNeedsServerStore,
        Outcome::WrongMethod,
        Outcome::LoginBusy,
    ];

    /// The stable name in logs, metrics and `explain`.
    pub fn as_label(self) -> &'static str {
        match self {
            Outcome::Other => "other",
            Outcome::Public => "public",
            Outcome::Allowed => "allowed",
            Outcome::LoginEndpoint => "login_endpoint",
            Outcome::LoginRedirect => "login_redirect",
            Outcome::GatewayEndpoint => "gateway_endpoint",
            Outcome::Missing => "missing",
            Outcome::SessionStoreUnavailable => "session_store_unavailable",
            Outcome::UnknownApiKey => "unknown_api_key",
            Outcome::InactiveToken => "inactive_token",
            Outcome::Revoked => "revoked",
            Outcome::AmbiguousCredential => "ambiguous_credential",
            Outcome::MalformedCredential => "malformed_credential",
            Outcome::MalformedAuthorization => "malformed_authorization",
            Outcome::TooLarge => "too_large",
            Outcome::Malformed => "malformed",
            Outcome::CritHeader => "crit_header",
            Outcome::UnknownIssuer => "unknown_issuer",
            Outcome::AlgNotAllowed => "alg_not_allowed",
            Outcome::UnknownKid => "unknown_kid",
            Outcome::BadSignature => "bad_signature",
            Outcome::MissingExp => "missing_exp",
            Outcome::Expired => "expired",
            Outcome::NotYetValid => "not_yet_valid",
            Outcome::IatInFuture => "iat_in_future",
            Outcome::WrongAudience => "wrong_audience",
            Outcome::ClaimType => "claim_type",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::ClaimMismatch => "claim_mismatch",
            Outcome::CsrfRejected => "csrf_rejected",
            Outcome::RateLimited => "rate_limited",
            Outcome::ForwardAuthRefused => "forward_auth_refused",
            Outcome::NoRoute => "no_route",
            Outcome::AmbiguousPath => "ambiguous_path",
            Outcome::BadTarget => "bad_target",
            Outcome::UriTooLong => "uri_too_long",
            Outcome::HeadersTooLarge => "headers_too_large",
            Outcome::PayloadTooLarge => "payload_too_large",
            Outcome::RequestBodyStalled => "request_body_stalled",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::UpstreamTls => "upstream_tls",
            Outcome::InvalidLoginState => "invalid_login_state",
            Outcome::LoginRefused => "login_refused",
            Outcome::InvalidIdToken => "invalid_id_token",
            Outcome::IdpUnavailable => "idp_unavailable",
            Outcome::SessionTooLarge => "session_too_large",
            Outcome::InvalidLogoutToken => "invalid_logout_token",
            Outcome::BackchannelNeedsServerStore => "backchannel_needs_server_store",
            Outcome::WrongMethod => "wrong_method",
            Outcome::LoginBusy => "login_busy",
        }
    }

    /// Its own `outcome` label in `portcullis_auth_decisions_total`, or `None` when it
    /// counts as "other" there (the target, body and upstream outcomes have their own
    /// metrics; the label set stays what dashboards were built on).
    pub fn is_auth_label(self) -> bool {
        match self {
            Outcome::Public
            | Outcome::Allowed
            | Outcome::LoginEndpoint
            | Outcome::LoginRedirect
            | Outcome::GatewayEndpoint
            | Outcome::Missing
            | Outcome::SessionStoreUnavailable
            | Outcome::UnknownApiKey
            | Outcome::InactiveToken
            | Outcome::Revoked
            | Outcome::AmbiguousCredential
            | Outcome::MalformedCredential
            | Outcome::MalformedAuthorization
            | Outcome::TooLarge
            | Outcome::Malformed
            | Outcome::CritHeader
            | Outcome::UnknownIssuer
            | Outcome::AlgNotAllowed
            | Outcome::UnknownKid
            | Outcome::BadSignature
            | Outcome::MissingExp
            | Outcome::Expired
            | Outcome::NotYetValid
            | Outcome::IatInFuture
            | Outcome::WrongAudience
            | Outcome::ClaimType
            | Outcome::InsufficientScope
            | Outcome::ClaimMismatch
            | Outcome::CsrfRejected
            | Outcome::RateLimited
            | Outcome::ForwardAuthRefused
            | Outcome::NoRoute
            | Outcome::AmbiguousPath
            | Outcome::Other => true,
            Outcome::BadTarget
            | Outcome::UriTooLong
            | Outcome::HeadersTooLarge
            | Outcome::PayloadTooLarge
            | Outcome::RequestBodyStalled
            | Outcome::UpstreamUnavailable
            | Outcome::UpstreamTimeout
            | Outcome::UpstreamFailed
            | Outcome::UpstreamTls
            | Outcome::InvalidLoginState
            | Outcome::LoginRefused
            | Outcome::InvalidIdToken
            | Outcome::IdpUnavailable
            | Outcome::SessionTooLarge
            | Outcome::InvalidLogoutToken
            | Outcome::BackchannelNeedsServerStore
            | Outcome::WrongMethod
            | Outcome::LoginBusy => false,
        }
    }

    /// The label `portcullis_auth_decisions_total` counts it under.
    pub fn metric(self) -> Outcome {
        if self.is_auth_label() {
            self
        } else {
            Outcome::Other
        }
    }

    /// Position in [`Outcome::ALL`]: an index into per-route counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The decision in one word, for the log.
    pub fn decision(self, status: u16) -> &'static str {
        match self {
            Outcome::Allowed => "allow",
            Outcome::Public => "public",
            _ if status < 400 => "allow",
            _ => "deny",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_and_labels_are_unique() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), i, "{outcome:?}");
        }
        let mut labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
