//! Bearer tokens: JWT signed with HS256 (HMAC-SHA-256).
//!
//! A token carries three claims: `sub` (a user id), `role` (`admin`,
//! `service` or `user`) and `exp` (expiry, seconds since the Unix epoch).
//! Only the `HS256` algorithm is accepted; the signature is compared in
//! constant time.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use ledger_core::{Actor, Role, UserId};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in bytes.
pub const TOKEN_LENGTH_MAX: usize = 8 * 1024;

/// Why a request was not authenticated. Every variant maps to 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authorization header is missing")]
    MissingHeader,
    #[error("authorization header must be `Bearer <token>`")]
    NotBearer,
    #[error("token is longer than {TOKEN_LENGTH_MAX} bytes")]
    TooLong,
    #[error("token is not a well-formed jwt: {0}")]
    Malformed(&'static str),
    #[error("token algorithm must be hs256")]
    UnsupportedAlgorithm,
    #[error("token signature is not valid")]
    BadSignature,
    #[error("token claims are not valid: {0}")]
    BadClaims(String),
    #[error("token has expired")]
    Expired,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: u64,
}

/// Verifies bearer tokens signed with a shared secret.
pub struct Verifier {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret`.
    ///
    /// # Panics
    /// If `secret` is empty.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        let secret = secret.into();
        assert!(!secret.is_empty(), "the token secret must not be empty");
        Self { secret }
    }

    /// Verifies `token` at `now_seconds` (seconds since the Unix epoch).
    pub fn verify_at(&self, token: &str, now_seconds: u64) -> Result<Actor, AuthError> {
        if token.len() > TOKEN_LENGTH_MAX {
            return Err(AuthError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(header_part), Some(claims_part), Some(signature_part), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("expected three dot-separated parts"));
        };

        let header_bytes = URL_SAFE_NO_PAD
            .decode(header_part)
            .map_err(|_| AuthError::Malformed("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|_| AuthError::Malformed("header is not a json object with `alg`"))?;
        if header.alg != "HS256" {
            return Err(AuthError::UnsupportedAlgorithm);
        }

        let signature = URL_SAFE_NO_PAD
            .decode(signature_part)
            .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        let mut mac = self.mac();
        mac.update(header_part.as_bytes());
        mac.update(b".");
        mac.update(claims_part.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;

        let claims_bytes = URL_SAFE_NO_PAD
            .decode(claims_part)
            .map_err(|_| AuthError::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&claims_bytes)
            .map_err(|error| AuthError::BadClaims(format!("{error}").to_lowercase()))?;
        if now_seconds >= claims.exp {
            return Err(AuthError::Expired);
        }
        let role = parse_role(&claims.role).ok_or_else(|| {
            AuthError::BadClaims("role must be `admin`, `service` or `user`".to_owned())
        })?;
        let user_id = UserId::parse(claims.sub)
            .map_err(|_| AuthError::BadClaims("sub must be a valid user id".to_owned()))?;
        Ok(Actor { role, user_id })
    }

    /// Verifies `token` against the system clock.
    pub fn verify(&self, token: &str) -> Result<Actor, AuthError> {
        self.verify_at(token, now_seconds())
    }

    /// Reads `Authorization: Bearer <token>` from `headers` and verifies it.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Actor, AuthError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::MissingHeader)?;
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::NotBearer);
        }
        self.verify(token)
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.secret).expect("hmac accepts keys of any length")
    }
}

fn parse_role(role: &str) -> Option<Role> {
    match role {
        "admin" => Some(Role::Admin),
        "service" => Some(Role::Service),
        "user" => Some(Role::User),
        _ => None,
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Service => "service",
        Role::User => "user",
    }
}

/// Seconds since the Unix epoch, from the system clock.
pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Issues an HS256 token for `sub` with `role`, valid for `ttl_seconds` after
/// `now_seconds`.
pub fn issue_token(
    secret: &[u8],
    role: Role,
    sub: &UserId,
    ttl_seconds: u64,
    now_seconds: u64,
) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "sub": sub.as_str(),
        "role": role_name(role),
        "iat": now_seconds,
        "exp": now_seconds.saturating_add(ttl_seconds),
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac accepts keys of any length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(claims.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{claims}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_700_000_000;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn sign(header: &str, claims: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(header);
        let claims = URL_SAFE_NO_PAD.encode(claims);
        let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
        mac.update(format!("{header}.{claims}").as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{claims}.{signature}")
    }

    #[test]
    fn issued_tokens_round_trip() {
        let verifier = Verifier::new(SECRET);
        for role in [Role::Admin, Role::Service, Role::User] {
            let token = issue_token(SECRET, role, &alice(), 60, NOW);
            assert_eq!(
                verifier.verify_at(&token, NOW),
                Ok(Actor {
                    role,
                    user_id: alice()
                })
            );
            assert_eq!(
                verifier.verify_at(&token, NOW + 59).map(|actor| actor.role),
                Ok(role)
            );
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let verifier = Verifier::new(SECRET);
        let token = issue_token(SECRET, Role::User, &alice(), 60, NOW);
        assert_eq!(
            verifier.verify_at(&token, NOW + 60),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verifier.verify_at(&token, NOW + 3_600),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let verifier = Verifier::new(SECRET);
        let token = issue_token(SECRET, Role::User, &alice(), 60, NOW);
        let (signed, signature) = token.rsplit_once('.').unwrap();

        // Another signature.
        let mut flipped = signature.as_bytes().to_vec();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let forged = format!("{signed}.{}", String::from_utf8(flipped).unwrap());
        assert_eq!(
            verifier.verify_at(&forged, NOW),
            Err(AuthError::BadSignature)
        );

        // Claims promoted to admin, original signature kept.
        let (header, _) = signed.split_once('.').unwrap();
        let promoted = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"alice","role":"admin","exp":{}}}"#,
            NOW + 60
        ));
        assert_eq!(
            verifier.verify_at(&format!("{header}.{promoted}.{signature}"), NOW),
            Err(AuthError::BadSignature)
        );

        // Signed with another secret.
        let other = issue_token(b"other-secret", Role::User, &alice(), 60, NOW);
        assert_eq!(
            verifier.verify_at(&other, NOW),
            Err(AuthError::BadSignature)
        );

        // Truncated signature.
        assert_eq!(
            verifier.verify_at(&format!("{signed}.{}", &signature[..8]), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn only_hs256_is_accepted() {
        let verifier = Verifier::new(SECRET);
        let claims = format!(r#"{{"sub":"alice","role":"admin","exp":{}}}"#, NOW + 60);
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{header}.{}.", URL_SAFE_NO_PAD.encode(&claims));
        assert_eq!(
            verifier.verify_at(&unsigned, NOW),
            Err(AuthError::UnsupportedAlgorithm)
        );
        let hs512 = sign(r#"{"alg":"HS512"}"#, &claims);
        assert_eq!(
            verifier.verify_at(&hs512, NOW),
            Err(AuthError::UnsupportedAlgorithm)
        );
        let lowercase = sign(r#"{"alg":"hs256"}"#, &claims);
        assert_eq!(
            verifier.verify_at(&lowercase, NOW),
            Err(AuthError::UnsupportedAlgorithm)
        );
        assert!(verifier
            .verify_at(&sign(r#"{"alg":"HS256"}"#, &claims), NOW)
            .is_ok());
    }

    #[test]
    fn claims_are_checked() {
        let verifier = Verifier::new(SECRET);
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let exp = NOW + 60;
        for claims in [
            format!(r#"{{"sub":"alice","role":"root","exp":{exp}}}"#),
            format!(r#"{{"sub":"not a user","role":"user","exp":{exp}}}"#),
            format!(r#"{{"sub":"","role":"user","exp":{exp}}}"#),
            format!(r#"{{"role":"user","exp":{exp}}}"#),
            r#"{"sub":"alice","role":"user"}"#.to_owned(),
            format!(r#"{{"sub":"alice","role":"user","exp":"{exp}"}}"#),
            format!(r#"{{"sub":"alice","role":"user","exp":{exp}.5}}"#),
        ] {
            let result = verifier.verify_at(&sign(header, &claims), NOW);
            assert!(
                matches!(result, Err(AuthError::BadClaims(_))),
                "{claims}: {result:?}"
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let verifier = Verifier::new(SECRET);
        for token in ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
            assert!(verifier.verify_at(token, NOW).is_err(), "{token}");
        }
        assert_eq!(
            verifier.verify_at(&"a".repeat(TOKEN_LENGTH_MAX + 1), NOW),
            Err(AuthError::TooLong)
        );
    }

    #[test]
    fn authorization_header_must_be_bearer() {
        let verifier = Verifier::new(SECRET);
        let token = issue_token(SECRET, Role::User, &alice(), 3_600, now_seconds());
        let mut headers = HeaderMap::new();
        assert_eq!(
            verifier.authenticate(&headers),
            Err(AuthError::MissingHeader)
        );
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        assert_eq!(verifier.authenticate(&headers), Err(AuthError::NotBearer));
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(verifier.authenticate(&headers), Err(AuthError::NotBearer));
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert_eq!(
            verifier.authenticate(&headers).map(|actor| actor.user_id),
            Ok(alice())
        );
    }
}
