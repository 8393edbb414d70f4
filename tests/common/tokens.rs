//! Pulsar-style tokens for the authentication tests.

use serde_json::Value;

/// 32 random bytes, as `pulsar tokens create-secret-key` makes.
pub fn random_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 32];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut urandom, &mut secret).expect("random bytes");
    secret
}

/// An HS256 token with these claims, as `pulsar tokens create` makes.
pub fn token(secret: &[u8], claims: Value) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign a token")
}

/// A gateway on `backend` that requires tokens signed with `secret`
/// (`--auth-token-secret-file`), and the directory holding the key file,
/// kept until dropped.
pub async fn gateway_requiring_tokens(
    backend: super::BackendKind,
    secret: &[u8],
) -> (super::Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("secret.key");
    std::fs::write(&file, secret).expect("write the secret key");
    let gw = super::Gateway::builder(backend)
        .arg("--auth-token-secret-file")
        .arg(&file)
        .start()
        .await;
    (gw, dir)
}
