//! Bearer tokens: JWT signed with HS256 (HMAC-SHA-256), verified with the
//! `jsonwebtoken` crate.
//!
//! A token carries the claims `sub` (a user id), `role` (`admin`, `service`
//! or `user`), `iat` (issued at) and `exp` (expiry), both in seconds since the
//! Unix epoch. Only the `HS256` algorithm is accepted.
//!
//! Rotation without downtime: a [`Verifier`] holds the current secret and,
//! during a rotation, the previous one; a token signed with either verifies,
//! and new tokens are signed with the current one. Secrets are held as
//! [`SecretSlice`]s and never appear in `Debug` output.
//!
//! A verified token's claims are remembered until it expires (at most
//! [`VERIFIED_TOKENS_MAX`] tokens), so a client that sends the same token
//! with every request (the storefront's service token) costs one HMAC and
//! one JSON parse per token, not per request. Only the exact bytes of a
//! token that verified are remembered; its expiry is checked on every use.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use ledger_core::{Actor, Role, UserId};
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};

/// Longest token accepted, in bytes.
pub const TOKEN_LENGTH_MAX: usize = 8 * 1024;
/// Verified tokens remembered at once (at most 8 MiB of tokens); when
/// full, all are forgotten and verified again as they come.
pub const VERIFIED_TOKENS_MAX: usize = 1_024;

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
struct JoseHeader {
    alg: String,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    exp: u64,
}

/// Verifies bearer tokens signed with the current or the previous secret.
pub struct Verifier {
    /// The current secret's key first, then the previous secret's, if any.
    keys: Vec<DecodingKey>,
    validation: Validation,
    /// Tokens that verified: who they name and when they expire.
    verified: RwLock<HashMap<Box<str>, (Actor, u64)>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret`.
    ///
    /// # Panics
    /// If `secret` is empty.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self::with_previous(SecretSlice::from(secret.into()), None)
    }

    /// A verifier for tokens signed with `current` or, during a rotation,
    /// with `previous`.
    ///
    /// # Panics
    /// If a secret is empty.
    pub fn with_previous(current: SecretSlice<u8>, previous: Option<SecretSlice<u8>>) -> Self {
        let mut keys = Vec::with_capacity(2);
        for secret in std::iter::once(&current).chain(previous.as_ref()) {
            let bytes = secret.expose_secret();
            assert!(!bytes.is_empty(), "a token secret must not be empty");
            keys.push(
                DecodingKey::from_secret(bytes)
                    .expect("an hmac key is refused only when empty, checked above"),
            );
        }
        // Expiry is checked here, at a given instant and without leeway;
        // the claims are read into `Claims`, which requires them.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        Self {
            keys,
            validation,
            verified: RwLock::new(HashMap::new()),
        }
    }

    /// Verifies `token` at `now_seconds` (seconds since the Unix epoch).
    pub fn verify_at(&self, token: &str, now_seconds: u64) -> Result<Actor, AuthError> {
        let remembered = self
            .verified
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned();
        if let Some((actor, expires_at_seconds)) = remembered {
            if now_seconds >= expires_at_seconds {
                return Err(AuthError::Expired);
            }
            return Ok(actor);
        }
        let (actor, expires_at_seconds) = self.verify_signed(token, now_seconds)?;
        let mut verified = self
            .verified
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_TOKENS_MAX {
            verified.clear();
        }
        verified.insert(token.into(), (actor.clone(), expires_at_seconds));
        Ok(actor)
    }

    /// Tokens remembered now (for tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.verified
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Checks `token`'s form, signature and claims at `now_seconds`: who it
    /// names and when it expires.
    fn verify_signed(&self, token: &str, now_seconds: u64) -> Result<(Actor, u64), AuthError> {
        if token.len() > TOKEN_LENGTH_MAX {
            return Err(AuthError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(header_part), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("expected three dot-separated parts"));
        };
        // The algorithm is checked before any key is tried, so `none` and
        // the other algorithms get their own answer.
        let header_bytes = URL_SAFE_NO_PAD
            .decode(header_part)
            .map_err(|_| AuthError::Malformed("header is not base64url"))?;
        let header: JoseHeader = serde_json::from_slice(&header_bytes)
            .map_err(|_| AuthError::Malformed("header is not a json object with `alg`"))?;
        if header.alg != "HS256" {
            return Err(AuthError::UnsupportedAlgorithm);
        }

        let mut claims = None;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(error) => match error.kind() {
                    ErrorKind::InvalidSignature => continue,
                    ErrorKind::Json(error) => {
                        return Err(AuthError::BadClaims(format!("{error}").to_lowercase()))
                    }
                    ErrorKind::Base64(_) => {
                        return Err(AuthError::Malformed("a part is not base64url"))
                    }
                    ErrorKind::Utf8(_) => return Err(AuthError::Malformed("claims are not utf-8")),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        return Err(AuthError::UnsupportedAlgorithm)
                    }
                    _ => return Err(AuthError::Malformed("token could not be decoded")),
                },
            }
        }
        let claims = claims.ok_or(AuthError::BadSignature)?;
        if now_seconds >= claims.exp {
            return Err(AuthError::Expired);
        }
        let role = parse_role(&claims.role).ok_or_else(|| {
            AuthError::BadClaims("role must be `admin`, `service` or `user`".to_owned())
        })?;
        let user_id = UserId::parse(claims.sub)
            .map_err(|_| AuthError::BadClaims("sub must be a valid user id".to_owned()))?;
        Ok((Actor { role, user_id }, claims.exp))
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
/// `now_seconds`, signed with `secret` (the current one, during a rotation).
///
/// # Panics
/// If `secret` is empty.
pub fn issue_token(
    secret: &[u8],
    role: Role,
    sub: &UserId,
    ttl_seconds: u64,
    now_seconds: u64,
) -> String {
    let claims = Claims {
        sub: sub.as_str().to_owned(),
        role: role_name(role).to_owned(),
        iat: Some(now_seconds),
        exp: now_seconds.saturating_add(ttl_seconds),
    };
    // Every caller's secret is checked non-empty first (at least 16
    // characters in `ledger`), the one case where a key is refused.
    let key = EncodingKey::from_secret(secret).expect("the token secret must not be empty");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
        .expect("hs256 signs any claims that serialize, and these are strings and integers")
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::*;

    type HmacSha256 = Hmac<Sha256>;

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
    fn a_verified_token_is_remembered_and_still_expires() {
        let verifier = Verifier::new(SECRET);
        let token = issue_token(SECRET, Role::User, &alice(), 60, NOW);
        let tampered = issue_token(b"another-secret", Role::User, &alice(), 60, NOW);
        assert_eq!(
            verifier.verify_at(&tampered, NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(verifier.remembered(), 0);
        assert_eq!(
            verifier.verify_at(&token, NOW).map(|actor| actor.role),
            Ok(Role::User)
        );
        assert_eq!(verifier.remembered(), 1);
        assert_eq!(
            verifier
                .verify_at(&token, NOW + 59)
                .map(|actor| actor.user_id),
            Ok(alice())
        );
        assert_eq!(
            verifier.verify_at(&token, NOW + 60),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verifier.verify_at(&tampered, NOW),
            Err(AuthError::BadSignature)
        );
        // Bounded: past the limit the remembered tokens are forgotten, and
        // every token still verifies.
        for user in 0..=VERIFIED_TOKENS_MAX {
            let user_id = UserId::parse(format!("user-{user}")).unwrap();
            let token = issue_token(SECRET, Role::User, &user_id, 60, NOW);
            assert_eq!(
                verifier.verify_at(&token, NOW).map(|actor| actor.user_id),
                Ok(user_id)
            );
            assert!(verifier.remembered() <= VERIFIED_TOKENS_MAX);
        }
        assert_eq!(
            verifier.verify_at(&token, NOW).map(|actor| actor.role),
            Ok(Role::User)
        );
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
    fn a_token_signed_with_the_previous_secret_verifies_during_a_rotation() {
        let rotating = Verifier::with_previous(
            SecretSlice::from(b"new-secret".to_vec()),
            Some(SecretSlice::from(SECRET.to_vec())),
        );
        let old = issue_token(SECRET, Role::User, &alice(), 60, NOW);
        let new = issue_token(b"new-secret", Role::Admin, &alice(), 60, NOW);
        assert_eq!(
            rotating.verify_at(&old, NOW).map(|a| a.role),
            Ok(Role::User)
        );
        assert_eq!(
            rotating.verify_at(&new, NOW).map(|a| a.role),
            Ok(Role::Admin)
        );
        let other = issue_token(b"other-secret", Role::User, &alice(), 60, NOW);
        assert_eq!(
            rotating.verify_at(&other, NOW),
            Err(AuthError::BadSignature)
        );
        // After the rotation, the previous secret is dropped: its tokens stop verifying.
        let rotated = Verifier::new(b"new-secret".to_vec());
        assert_eq!(rotated.verify_at(&old, NOW), Err(AuthError::BadSignature));
        assert!(rotated.verify_at(&new, NOW).is_ok());
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let verifier = Verifier::with_previous(
            SecretSlice::from(b"current-secret-0123".to_vec()),
            Some(SecretSlice::from(b"previous-secret-4567".to_vec())),
        );
        let shown = format!("{verifier:?} {verifier:#?}");
        assert!(!shown.contains("current-secret"), "{shown}");
        assert!(!shown.contains("previous-secret"), "{shown}");
        assert!(!shown.contains("99, 117, 114"), "{shown}");
    }

    #[test]
    fn issued_tokens_are_standard_jwts() {
        let token = issue_token(SECRET, Role::Service, &alice(), 60, NOW);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let (_, claims) = token.split_once('.').unwrap();
        let claims = claims.split('.').next().unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"sub": "alice", "role": "service", "iat": NOW, "exp": NOW + 60})
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
