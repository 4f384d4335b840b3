//! Device tokens: Ed25519-signed claims (account, device, expiry).
//!
//! Text form: `ht1.` followed by base64url (no padding) of
//! `version:u8=1 | account:u64 | device:u32 | expires_at:u64 (Unix seconds) | signature:[u8;64]`,
//! all big-endian. The signature covers `"hearth-token-v1\0"` followed by the first 21 bytes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

const PREFIX: &str = "ht1.";
const DOMAIN: &[u8] = b"hearth-token-v1\0";
const BODY_LEN: usize = 1 + 8 + 4 + 8;
const SIG_LEN: usize = 64;

/// What a token asserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    /// The account the device belongs to.
    pub account: u64,
    /// The device id, never 0.
    pub device: u32,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a Hearth v1 token.
    #[error("token is malformed")]
    Malformed,
    /// The signature does not verify with the node's key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The expiry has passed.
    #[error("token expired")]
    Expired,
    /// The token names device 0, which is reserved.
    #[error("token names the reserved device 0")]
    InvalidDevice,
}

/// The private key that issues tokens (kept by the node operator).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> SigningKey {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("system randomness is available");
        SigningKey::from_pkcs8(doc.as_ref()).expect("ring produced a valid key")
    }

    /// A key from its PKCS#8 v2 DER bytes (as written by [`SigningKey::to_pkcs8`]).
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, TokenError> {
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| TokenError::Malformed)?;
        Ok(SigningKey { pair, pkcs8: der.to_vec() })
    }

    /// The PKCS#8 v2 DER encoding, for storing the key in a file.
    pub fn to_pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half that verifies this key's tokens.
    pub fn verifying_key(&self) -> VerifyingKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey(k)
    }

    /// Sign `claims` into a token string.
    pub fn issue(&self, claims: &TokenClaims) -> String {
        let body = body(claims);
        let sig = self.pair.sign(&signed_message(&body));
        let mut raw = Vec::with_capacity(BODY_LEN + SIG_LEN);
        raw.extend_from_slice(&body);
        raw.extend_from_slice(sig.as_ref());
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }
}

/// The public key that checks tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey(pub [u8; 32]);

impl VerifyingKey {
    /// Check `token`'s form, signature and expiry against `now_secs` (Unix seconds).
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<TokenClaims, TokenError> {
        let b64 = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        if b64.len() > 4 * (BODY_LEN + SIG_LEN) {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD.decode(b64).map_err(|_| TokenError::Malformed)?;
        if raw.len() != BODY_LEN + SIG_LEN || raw[0] != 1 {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = raw.split_at(BODY_LEN);
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&signed_message(body), sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims = TokenClaims {
            account: u64::from_be_bytes(body[1..9].try_into().expect("8 bytes")),
            device: u32::from_be_bytes(body[9..13].try_into().expect("4 bytes")),
            expires_at: u64::from_be_bytes(body[13..21].try_into().expect("8 bytes")),
        };
        if claims.device == 0 {
            return Err(TokenError::InvalidDevice);
        }
        if claims.expires_at <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn body(c: &TokenClaims) -> [u8; BODY_LEN] {
    let mut b = [0u8; BODY_LEN];
    b[0] = 1;
    b[1..9].copy_from_slice(&c.account.to_be_bytes());
    b[9..13].copy_from_slice(&c.device.to_be_bytes());
    b[13..21].copy_from_slice(&c.expires_at.to_be_bytes());
    b
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TokenClaims {
        TokenClaims { account: 42, device: 7, expires_at: 2_000_000_000 }
    }

    #[test]
    fn issued_token_verifies() {
        let k = SigningKey::generate();
        let t = k.issue(&claims());
        assert!(t.starts_with("ht1."));
        assert_eq!(k.verifying_key().verify(&t, 1_000).unwrap(), claims());
        let k2 = SigningKey::from_pkcs8(k.to_pkcs8()).unwrap();
        assert_eq!(k2.verifying_key(), k.verifying_key());
    }

    #[test]
    fn forged_expired_and_malformed_tokens_are_refused() {
        let k = SigningKey::generate();
        let other = SigningKey::generate();
        let t = k.issue(&claims());
        let v = k.verifying_key();
        assert_eq!(other.verifying_key().verify(&t, 0), Err(TokenError::BadSignature));
        assert_eq!(v.verify(&t, 2_000_000_000), Err(TokenError::Expired));
        assert_eq!(v.verify("nonsense", 0), Err(TokenError::Malformed));
        assert_eq!(v.verify("ht1.!!!", 0), Err(TokenError::Malformed));
        // Flip one bit of the account: signature must fail.
        let mut raw = URL_SAFE_NO_PAD.decode(&t[4..]).unwrap();
        raw[8] ^= 1;
        let tampered = format!("ht1.{}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(v.verify(&tampered, 0), Err(TokenError::BadSignature));
        let zero = k.issue(&TokenClaims { device: 0, ..claims() });
        assert_eq!(v.verify(&zero, 0), Err(TokenError::InvalidDevice));
    }
}
