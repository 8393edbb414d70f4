//! Client authentication with Pulsar-compatible JWTs: the one
//! [`Authenticator`] every protocol handler calls when token
//! authentication is on, so a token Pulsar accepts works on every listener.
//!
//! What Pulsar's `AuthenticationProviderToken` does, with its defaults:
//! - HMAC tokens (HS256, and HS384/HS512) are checked against a secret key
//!   file; RSA (RS256/384/512) and ECDSA (ES256/ES384) tokens against a
//!   public key file. The token's own `alg` picks the key: a token signed
//!   with an algorithm of no configured key family is refused.
//! - The role is the `sub` claim; a token without one is refused.
//! - `exp` and `nbf` are checked when present, with no clock leeway
//!   (Pulsar's `allowedClockSkewSeconds` is 0); a token without `exp` never
//!   expires, as Pulsar's `tokens create` makes them by default.
//! - `aud` is not checked (Pulsar checks it only when configured to).
//!
//! Key files, read once at start-up ([`JwtAuthenticator::from_files`]):
//! - The secret key file holds the raw key bytes, exactly, as
//!   `pulsar tokens create-secret-key --output FILE` writes them (Pulsar's
//!   `tokenSecretKey=file://FILE`); or the text `data:;base64,<base64>`,
//!   Pulsar's inline form, surrounding whitespace ignored. Nothing else is
//!   guessed: a text key is used with its trailing newline, as Pulsar would.
//! - The public key file is PEM (`-----BEGIN PUBLIC KEY-----`, RSA or EC
//!   P-256/P-384), or the DER bytes `pulsar tokens create-key-pair` writes.
//!
//! Credentials: a bearer token, or a user name and password where the
//! password is `token:<jwt>` or the bare JWT and the user name is ignored
//! (as Pulsar's and KoP's SASL/PLAIN do). No secret (key or token) is ever
//! logged or put in an error.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine;
use gateway_api::{AuthError, Authenticator, Credentials, Principal};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The prefix of Pulsar's inline base64 key form.
const BASE64_KEY_PREFIX: &str = "data:;base64,";

/// The prefix SASL/PLAIN passwords carry a token behind (Pulsar, KoP).
const TOKEN_PASSWORD_PREFIX: &str = "token:";

/// HMAC keys shorter than this are weak (HS256's output size); Pulsar's
/// `create-secret-key` makes 32 bytes.
const MIN_SECRET_BYTES: usize = 32;

/// Why a key file cannot be used. Each message names the file and never
/// shows its content.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read {key} {path}: {source}")]
    Read {
        /// The configuration key that named it.
        key: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("{key} {path} is empty")]
    Empty {
        /// The configuration key that named it.
        key: &'static str,
        /// The configured path.
        path: PathBuf,
    },
    /// The file does not hold a key of a supported form.
    #[error("{key} {path} is not usable: {message}")]
    Invalid {
        /// The configuration key that named it.
        key: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// A verification key with the algorithms it checks.
struct Key {
    /// The key itself.
    decoding: DecodingKey,
    /// What a token signed for this key must satisfy; its `algorithms`
    /// are the ones this key's family verifies.
    validation: Validation,
}

/// Checks Pulsar-style JWTs (see the module doc).
pub struct JwtAuthenticator {
    /// The secret key file's key, for HS* tokens.
    secret: Option<Key>,
    /// The public key file's key, for RS* or ES* tokens.
    public: Option<Key>,
}

/// The claims the gateway reads; `exp` and `nbf` are checked by the
/// library, from the raw claims.
#[derive(Deserialize)]
struct Claims {
    /// Pulsar's role claim.
    sub: Option<String>,
    /// When the token expires (s since the epoch), if it does; already
    /// checked by the validation, kept for the principal. Read as any JSON
    /// value, so a malformed one is reported by the validation.
    exp: Option<serde_json::Value>,
}

impl JwtAuthenticator {
    /// Reads the configured key files; at least one must be given.
    pub fn from_files(
        secret_file: Option<&Path>,
        public_key_file: Option<&Path>,
    ) -> Result<JwtAuthenticator, KeyFileError> {
        let secret = secret_file.map(read_secret_key).transpose()?;
        let public = public_key_file.map(read_public_key).transpose()?;
        Ok(JwtAuthenticator { secret, public })
    }

    /// An authenticator checking HMAC tokens with `secret` (raw bytes).
    pub fn with_secret(secret: &[u8]) -> JwtAuthenticator {
        JwtAuthenticator {
            secret: Some(hmac_key(secret)),
            public: None,
        }
    }

    /// An authenticator checking RSA or ECDSA tokens with the PEM (or DER)
    /// public key `key`.
    pub fn with_public_key(key: &[u8]) -> Result<JwtAuthenticator, String> {
        Ok(JwtAuthenticator {
            secret: None,
            public: Some(public_key(key)?),
        })
    }

    /// The role of a valid token.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(e.kind()))?;
        let key = [&self.secret, &self.public]
            .into_iter()
            .flatten()
            .find(|k| k.validation.algorithms.contains(&header.alg))
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "tokens signed with {:?} are not accepted",
                    header.alg
                ))
            })?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation)
            .map_err(|e| refusal(e.kind()))?;
        match data.claims.sub {
            Some(role) if !role.trim().is_empty() => Ok(Principal {
                role,
                forward_token: None,
                expires_at: data
                    .claims
                    .exp
                    .as_ref()
                    .and_then(serde_json::Value::as_f64)
                    // Whole or fractional seconds; `as` saturates.
                    .map(|s| (s * 1000.0) as u64),
            }),
            _ => Err(AuthError::Invalid(
                "the token has no sub (role) claim".into(),
            )),
        }
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        match credentials {
            Credentials::Anonymous => Err(AuthError::Missing),
            Credentials::Token(token) => self.verify(token),
            Credentials::UsernamePassword { password, .. } => {
                let token = password
                    .strip_prefix(TOKEN_PASSWORD_PREFIX)
                    .unwrap_or(password);
                self.verify(token)
            }
        }
    }
}

/// Why a token was refused, in words that hold nothing of the token.
fn refusal(kind: &ErrorKind) -> AuthError {
    let reason = match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".to_owned(),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's {claim} claim is malformed"),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => "the token is malformed".to_owned(),
        // Key problems were caught at start-up; anything else is still a
        // refusal, without detail that might echo the token.
        _ => "the token cannot be verified".to_owned(),
    };
    AuthError::Invalid(reason)
}

/// Pulsar's checks for a key family: `exp`/`nbf` when present, no leeway,
/// no required claim, audience ignored.
fn validation(algorithms: &[Algorithm]) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms.to_vec();
    v.required_spec_claims.clear();
    v.leeway = 0;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = false;
    v
}

fn hmac_key(secret: &[u8]) -> Key {
    Key {
        decoding: DecodingKey::from_secret(secret),
        validation: validation(&[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]),
    }
}

/// An RSA or EC public key from PEM, or from DER (SubjectPublicKeyInfo, as
/// Pulsar writes key pairs), which is wrapped as PEM to be parsed the same.
fn public_key(bytes: &[u8]) -> Result<Key, String> {
    let pem = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        bytes.to_vec()
    } else {
        let body = base64::engine::general_purpose::STANDARD.encode(bytes);
        format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n").into_bytes()
    };
    if let Ok(decoding) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            decoding,
            validation: validation(&[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]),
        });
    }
    if let Ok(decoding) = DecodingKey::from_ec_pem(&pem) {
        // The curve decides which of the two verifies; the other fails
        // its signature check.
        return Ok(Key {
            decoding,
            validation: validation(&[Algorithm::ES256, Algorithm::ES384]),
        });
    }
    Err("not an RSA or EC public key in PEM or DER form".into())
}

/// Reads the secret key file (see the module doc for the forms).
fn read_secret_key(path: &Path) -> Result<Key, KeyFileError> {
    const KEY: &str = "auth_token_secret_file";
    let bytes = read_key_file(KEY, path)?;
    let secret = match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.trim().strip_prefix(BASE64_KEY_PREFIX))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| KeyFileError::Invalid {
                key: KEY,
                path: path.to_owned(),
                message: format!("{BASE64_KEY_PREFIX} is not followed by base64 ({e})"),
            })?,
        None => bytes,
    };
    if secret.is_empty() {
        return Err(KeyFileError::Empty {
            key: KEY,
            path: path.to_owned(),
        });
    }
    if secret.len() < MIN_SECRET_BYTES {
        tracing::warn!(
            "{KEY} {} holds a key of {} bytes; HS256 keys should have at least {MIN_SECRET_BYTES}",
            path.display(),
            secret.len()
        );
    }
    Ok(hmac_key(&secret))
}

/// Reads the public key file (PEM or DER).
fn read_public_key(path: &Path) -> Result<Key, KeyFileError> {
    const KEY: &str = "auth_token_public_key_file";
    let bytes = read_key_file(KEY, path)?;
    public_key(&bytes).map_err(|message| KeyFileError::Invalid {
        key: KEY,
        path: path.to_owned(),
        message,
    })
}

/// A key file's bytes; an empty file is an error.
fn read_key_file(key: &'static str, path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
        key,
        path: path.to_owned(),
        source,
    })?;
    if bytes.trim_ascii().is_empty() {
        return Err(KeyFileError::Empty {
            key,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::process::Command;
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn hs256(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn password(password: String) -> Credentials {
        Credentials::UsernamePassword {
            username: "ignored".into(),
            password,
        }
    }

    fn refused_with(auth: &JwtAuthenticator, token: &str, why: &str) {
        match auth.verify(token) {
            Err(AuthError::Invalid(reason)) => {
                assert!(reason.contains(why), "{reason:?} should say {why:?}");
                assert!(
                    token.len() < 8 || !reason.contains(token),
                    "the reason echoes the token"
                );
            }
            other => panic!("expected a refusal saying {why:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_hs256_token_authenticates_as_its_sub_in_every_credential_form() {
        let auth = JwtAuthenticator::with_secret(SECRET);
        let token = hs256(SECRET, json!({"sub": "orders-service"}));
        for credentials in [
            Credentials::Token(token.clone()),
            password(format!("token:{token}")),
            password(token.clone()),
        ] {
            let principal = block_on(auth.authenticate(&credentials)).unwrap();
            assert_eq!(principal.role, "orders-service", "{credentials:?}");
        }
        assert_eq!(auth.verify(&token).unwrap().expires_at, None);
        let later = hs256(SECRET, json!({"sub": "a", "exp": now() + 3600}));
        let principal = auth.verify(&later).unwrap();
        assert_eq!(principal.role, "a");
        assert_eq!(principal.expires_at, Some((now() + 3600) * 1000));
    }

    #[test]
    fn bad_tokens_are_refused_without_echoing_them() {
        let auth = JwtAuthenticator::with_secret(SECRET);
        let wrong_key = hs256(b"another secret, also 32 bytes...", json!({"sub": "a"}));
        refused_with(&auth, &wrong_key, "signature");
        let expired = hs256(SECRET, json!({"sub": "a", "exp": now() - 10}));
        refused_with(&auth, &expired, "expired");
        let early = hs256(SECRET, json!({"sub": "a", "nbf": now() + 3600}));
        refused_with(&auth, &early, "not valid yet");
        let exp_as_text = hs256(SECRET, json!({"sub": "a", "exp": "never"}));
        refused_with(&auth, &exp_as_text, "exp claim is malformed");
        let no_sub = hs256(SECRET, json!({"role": "a"}));
        refused_with(&auth, &no_sub, "no sub");
        let blank_sub = hs256(SECRET, json!({"sub": " "}));
        refused_with(&auth, &blank_sub, "no sub");
        refused_with(&auth, "not-a-jwt", "malformed");
        refused_with(&auth, "a.b.c", "malformed");
        let mut tampered = hs256(SECRET, json!({"sub": "a"}));
        tampered.insert(tampered.len() - 3, 'x');
        assert!(auth.verify(&tampered).is_err());
    }

    #[test]
    fn missing_credentials_are_missing_not_invalid() {
        let auth = JwtAuthenticator::with_secret(SECRET);
        for credentials in [
            Credentials::Anonymous,
            Credentials::Token(String::new()),
            password(String::new()),
            password("token:".into()),
        ] {
            assert_eq!(
                block_on(auth.authenticate(&credentials)),
                Err(AuthError::Missing),
                "{credentials:?}"
            );
        }
    }

    #[test]
    fn an_unsigned_token_or_one_of_another_family_is_refused() {
        let auth = JwtAuthenticator::with_secret(SECRET);
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "admin"}))
        );
        refused_with(&auth, &none, "malformed");
        let rs = format!(
            "{}.{}.c2ln",
            b64(json!({"alg": "RS256", "typ": "JWT"})),
            b64(json!({"sub": "admin"}))
        );
        refused_with(&auth, &rs, "RS256 are not accepted");
    }

    /// A key pair made by the `openssl` binary: (private PEM, public PEM,
    /// public DER).
    fn openssl_key_pair(dir: &Path, genpkey_args: &[&str]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let private = dir.join("private.pem");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("the openssl binary");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let private_path = private.to_str().unwrap();
        let mut args = vec!["genpkey"];
        args.extend_from_slice(genpkey_args);
        args.extend_from_slice(&["-out", private_path]);
        run(&args);
        let public_pem = run(&["pkey", "-in", private_path, "-pubout"]);
        let public_der = run(&["pkey", "-in", private_path, "-pubout", "-outform", "DER"]);
        (std::fs::read(&private).unwrap(), public_pem, public_der)
    }

    fn check_key_pair(alg: Algorithm, genpkey_args: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let (private, public_pem, public_der) = openssl_key_pair(dir.path(), genpkey_args);
        let signing = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => EncodingKey::from_ec_pem(&private).unwrap(),
        };
        let token = jsonwebtoken::encode(&Header::new(alg), &json!({"sub": "analytics"}), &signing)
            .unwrap();
        for public in [&public_pem, &public_der] {
            let auth = JwtAuthenticator::with_public_key(public).unwrap();
            assert_eq!(auth.verify(&token).unwrap().role, "analytics", "{alg:?}");
            // A token signed with the public key as an HMAC secret (the
            // classic algorithm confusion) is refused.
            let confused = hs256(public, json!({"sub": "admin"}));
            refused_with(&auth, &confused, "HS256 are not accepted");
        }
        let (_, other_public, _) = openssl_key_pair(dir.path(), genpkey_args);
        let other = JwtAuthenticator::with_public_key(&other_public).unwrap();
        refused_with(&other, &token, "signature");
    }

    #[test]
    fn rs256_tokens_verify_with_a_pem_or_der_public_key() {
        check_key_pair(
            Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
    }

    #[test]
    fn es256_tokens_verify_with_a_pem_or_der_public_key() {
        check_key_pair(
            Algorithm::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
    }

    #[test]
    fn secret_key_files_are_raw_bytes_or_pulsars_base64_form() {
        let dir = tempfile::tempdir().unwrap();
        let token = hs256(SECRET, json!({"sub": "a"}));
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, SECRET).unwrap();
        let encoded = dir.path().join("b64.key");
        let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        std::fs::write(&encoded, format!("{BASE64_KEY_PREFIX}{b64}\n")).unwrap();
        for file in [&raw, &encoded] {
            let auth = JwtAuthenticator::from_files(Some(file), None).unwrap();
            assert_eq!(auth.verify(&token).unwrap().role, "a", "{file:?}");
        }
        // Raw means exactly the bytes: a newline is part of the key.
        let newline = dir.path().join("newline.key");
        std::fs::write(&newline, [SECRET, b"\n"].concat()).unwrap();
        let auth = JwtAuthenticator::from_files(Some(&newline), None).unwrap();
        assert!(auth.verify(&token).is_err());
    }

    #[test]
    fn unusable_key_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.key");
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "\n").unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN PUBLIC KEY-----\nnope\n").unwrap();
        let bad_b64 = dir.path().join("bad.key");
        std::fs::write(&bad_b64, "data:;base64,%%%").unwrap();
        let cases = [
            (Some(&missing), None, "cannot read auth_token_secret_file"),
            (Some(&empty), None, "is empty"),
            (Some(&bad_b64), None, "not followed by base64"),
            (None, Some(&garbage), "auth_token_public_key_file"),
            (None, Some(&empty), "is empty"),
        ];
        for (secret, public, wanted) in cases {
            let err = JwtAuthenticator::from_files(
                secret.map(PathBuf::as_path),
                public.map(PathBuf::as_path),
            )
            .err()
            .unwrap()
            .to_string();
            let file = secret.or(public).unwrap().display().to_string();
            assert!(err.contains(wanted), "{err:?} should say {wanted:?}");
            assert!(err.contains(&file), "{err:?} should name {file}");
        }
    }
}
