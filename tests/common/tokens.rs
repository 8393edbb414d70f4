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

/// A gateway option pair and the directory holding its secret key file
/// (kept until dropped): `--auth-token-secret-file <file>`.
pub fn secret_file(secret: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("secret.key");
    std::fs::write(&file, secret).expect("write the secret key");
    (dir, file)
}
