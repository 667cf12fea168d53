//! ACME challenges the controller publishes in the snapshot, answered by whichever proxy the CA
//! reaches: HTTP-01 (`GET /.well-known/acme-challenge/<token>` on the challenge entry point,
//! before routing and before entry-point redirection) and TLS-ALPN-01 (a handshake offering only
//! `acme-tls/1` for a challenged name gets the challenge certificate, then the connection ends).
//! Nothing here touches the network; the listener and the handler call in.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use switchyard_shared::snapshot::AcmeHttpChallenge;

use crate::proxy::Body;

/// The HTTP-01 path prefix (RFC 8555 §8.3).
pub const HTTP_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// HTTP-01 answers: token → (entry point, key authorization).
#[derive(Debug, Default)]
pub struct HttpChallenges {
    tokens: HashMap<String, (String, String)>,
}

impl HttpChallenges {
    pub fn new(list: &[AcmeHttpChallenge]) -> Self {
        Self {
            tokens: list
                .iter()
                .map(|c| {
                    (
                        c.token.clone(),
                        (c.entry_point.clone(), c.key_authorization.clone()),
                    )
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The answer to `path` on `entry_point`, if it is a challenge this proxy holds.
    pub fn respond(&self, entry_point: &str, path: &str) -> Option<Response<Body>> {
        if self.tokens.is_empty() {
            return None;
        }
        let token = path.strip_prefix(HTTP_CHALLENGE_PREFIX)?;
        let (ep, key_authorization) = self.tokens.get(token)?;
        if ep != entry_point {
            return None;
        }
        tracing::info!(%token, entry_point, "answering an ACME HTTP-01 challenge");
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(
            key_authorization.clone(),
        ))));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        Some(response)
    }
}

/// Does this ClientHello ask for TLS-ALPN-01 (ALPN offers `acme-tls/1`)?
pub fn wants_tls_alpn<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>) -> bool {
    alpn.is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_known_tokens_on_their_entry_point() {
        let c = HttpChallenges::new(&[AcmeHttpChallenge {
            token: "tok".into(),
            key_authorization: "tok.thumb".into(),
            domain: "a.test".into(),
            entry_point: "web".into(),
        }]);
        let r = c.respond("web", "/.well-known/acme-challenge/tok").unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            c.respond("websecure", "/.well-known/acme-challenge/tok")
                .is_none()
        );
        assert!(
            c.respond("web", "/.well-known/acme-challenge/other")
                .is_none()
        );
        assert!(c.respond("web", "/tok").is_none());
        let offered: [&[u8]; 2] = [b"h2", ACME_TLS_ALPN];
        assert!(wants_tls_alpn(Some(offered.into_iter())));
        let plain: [&[u8]; 1] = [b"h2"];
        assert!(!wants_tls_alpn(Some(plain.into_iter())));
    }
}
