//! Device tokens: Ed25519-signed claims (account, device, expiry; v2 adds network and zone).
//!
//! v1 text form: `ht1.` followed by base64url (no padding) of
//! `version:u8=1 | account:u64 | device:u32 | expires_at:u64 (Unix seconds) | signature:[u8;64]`,
//! all big-endian. The signature covers `"hearth-token-v1\0"` followed by the first 21 bytes.
//!
//! v2 text form: `ht2.` + base64url of the v1 body with version 2, then
//! `network_len:u8 | network | zone_len:u8 | zone` (UTF-8, at most 64 bytes each), then the
//! signature over `"hearth-token-v2\0"` followed by everything before it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

const PREFIX: &str = "ht1.";
const DOMAIN: &[u8] = b"hearth-token-v1\0";
const PREFIX_V2: &str = "ht2.";
const DOMAIN_V2: &[u8] = b"hearth-token-v2\0";
/// Longest network or zone name in a token, in bytes.
pub const MAX_SCOPE_NAME: usize = 64;
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

/// Where a device belongs: the app network it speaks for and the residency zone of its account.
/// Empty strings mean the node's defaults (and are what v1 tokens carry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The network (app) name, e.g. `chat`.
    pub network: String,
    /// The residency zone, e.g. `eu`.
    pub zone: String,
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

/// DER of a PKCS#8 v1 (RFC 5208, RFC 8410) Ed25519 private key before its 32-byte seed:
/// SEQUENCE { INTEGER 0, AlgorithmIdentifier { id-Ed25519 }, OCTET STRING { OCTET STRING } }.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// Bytes of a PKCS#8 v1 Ed25519 key file: the prefix and the seed.
const PKCS8_V1_LEN: usize = 16 + 32;

/// The private key that issues tokens (kept by the node operator).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    /// The PKCS#8 v1 encoding (prefix and seed).
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
        use ring::rand::SecureRandom;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .expect("system randomness is available");
        SigningKey::from_seed(&seed).expect("any 32 bytes are an Ed25519 seed")
    }

    fn from_seed(seed: &[u8]) -> Result<SigningKey, TokenError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| TokenError::Malformed)?;
        let mut pkcs8 = Vec::with_capacity(PKCS8_V1_LEN);
        pkcs8.extend_from_slice(&PKCS8_V1_PREFIX);
        pkcs8.extend_from_slice(seed);
        Ok(SigningKey { pair, pkcs8 })
    }

    /// A key from its PKCS#8 DER bytes: version 1 (RFC 5208, as [`SigningKey::to_pkcs8`] and
    /// `openssl genpkey -algorithm ed25519` write it) or version 2 (RFC 5958, with the public
    /// key, as earlier versions of Hearth and ring wrote it; the public key must match).
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, TokenError> {
        if der.len() == PKCS8_V1_LEN && der[..16] == PKCS8_V1_PREFIX {
            return SigningKey::from_seed(&der[16..]);
        }
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| TokenError::Malformed)?;
        // ring's v2 layout: the same AlgorithmIdentifier and seed at bytes 16..48, then the
        // public key. Keep the seed only, in the v1 form.
        let seed = der.get(16..48).ok_or(TokenError::Malformed)?;
        let key = SigningKey::from_seed(seed)?;
        if key.pair.public_key().as_ref() != pair.public_key().as_ref() {
            return Err(TokenError::Malformed);
        }
        Ok(key)
    }

    /// The PKCS#8 v1 (RFC 5208) DER encoding, for storing the key in a file: 48 bytes, the
    /// fixed prefix `302e020100300506032b657004220420` then the 32-byte seed. OpenSSL reads it
    /// (`openssl pkey -inform DER`).
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

impl SigningKey {
    /// Sign `claims` with a network and zone into a v2 token string. Names longer than 64
    /// bytes are refused as [`TokenError::Malformed`].
    pub fn issue_scoped(&self, claims: &TokenClaims, scope: &Scope) -> Result<String, TokenError> {
        if scope.network.len() > MAX_SCOPE_NAME || scope.zone.len() > MAX_SCOPE_NAME {
            return Err(TokenError::Malformed);
        }
        let mut raw = body(claims).to_vec();
        raw[0] = 2;
        for name in [&scope.network, &scope.zone] {
            raw.push(name.len() as u8);
            raw.extend_from_slice(name.as_bytes());
        }
        let mut msg = DOMAIN_V2.to_vec();
        msg.extend_from_slice(&raw);
        let sig = self.pair.sign(&msg);
        raw.extend_from_slice(sig.as_ref());
        Ok(format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(raw)))
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
        let raw = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() != BODY_LEN + SIG_LEN || raw[0] != 1 {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = raw.split_at(BODY_LEN);
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&signed_message(body), sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims = claims_of(body);
        if claims.device == 0 {
            return Err(TokenError::InvalidDevice);
        }
        if claims.expires_at <= now_secs {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

impl VerifyingKey {
    /// Check a v1 or v2 token and return its claims and scope (empty for v1).
    pub fn verify_scoped(
        &self,
        token: &str,
        now_secs: u64,
    ) -> Result<(TokenClaims, Scope), TokenError> {
        let Some(b64) = token.strip_prefix(PREFIX_V2) else {
            return self.verify(token, now_secs).map(|c| (c, Scope::default()));
        };
        let max = BODY_LEN + 2 + 2 * MAX_SCOPE_NAME + SIG_LEN;
        if b64.len() > max.div_ceil(3) * 4 {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() < BODY_LEN + 2 + SIG_LEN || raw[0] != 2 {
            return Err(TokenError::Malformed);
        }
        let (signed, sig) = raw.split_at(raw.len() - SIG_LEN);
        let mut msg = DOMAIN_V2.to_vec();
        msg.extend_from_slice(signed);
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&msg, sig)
            .map_err(|_| TokenError::BadSignature)?;
        let mut rest = &signed[BODY_LEN..];
        let mut names = Vec::with_capacity(2);
        for _ in 0..2 {
            let (&len, tail) = rest.split_first().ok_or(TokenError::Malformed)?;
            let len = len as usize;
            if tail.len() < len || len > MAX_SCOPE_NAME {
                return Err(TokenError::Malformed);
            }
            let name = std::str::from_utf8(&tail[..len]).map_err(|_| TokenError::Malformed)?;
            names.push(name.to_string());
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return Err(TokenError::Malformed);
        }
        let claims = claims_of(&signed[..BODY_LEN]);
        if claims.device == 0 {
            return Err(TokenError::InvalidDevice);
        }
        if claims.expires_at <= now_secs {
            return Err(TokenError::Expired);
        }
        let zone = names.pop().expect("two names");
        let network = names.pop().expect("two names");
        Ok((claims, Scope { network, zone }))
    }
}

fn claims_of(body: &[u8]) -> TokenClaims {
    TokenClaims {
        account: u64::from_be_bytes(body[1..9].try_into().expect("8 bytes")),
        device: u32::from_be_bytes(body[9..13].try_into().expect("4 bytes")),
        expires_at: u64::from_be_bytes(body[13..21].try_into().expect("8 bytes")),
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
        TokenClaims {
            account: 42,
            device: 7,
            expires_at: 2_000_000_000,
        }
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
    fn key_files_are_pkcs8_v1_and_v2_files_still_load() {
        let k = SigningKey::generate();
        let der = k.to_pkcs8();
        assert_eq!(der.len(), 48);
        assert_eq!(der[..16], PKCS8_V1_PREFIX);
        // A v2 document as ring (and earlier Hearth versions) wrote it loads as the same key,
        // and is then written as v1.
        let rng = ring::rand::SystemRandom::new();
        let v2 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let from_v2 = SigningKey::from_pkcs8(v2.as_ref()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(v2.as_ref()).unwrap();
        assert_eq!(from_v2.verifying_key().0, pair.public_key().as_ref());
        assert_eq!(from_v2.to_pkcs8()[16..], v2.as_ref()[16..48]);
        let again = SigningKey::from_pkcs8(from_v2.to_pkcs8()).unwrap();
        assert_eq!(again.verifying_key(), from_v2.verifying_key());
        // A v2 document whose public key does not match its seed is refused.
        let mut bad = v2.as_ref().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(SigningKey::from_pkcs8(&bad).is_err());
        assert!(SigningKey::from_pkcs8(&der[..47]).is_err());
    }

    #[test]
    fn openssl_reads_the_key_file() {
        let dir = std::env::temp_dir().join(format!("hearth-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token.key");
        let key = SigningKey::generate();
        std::fs::write(&path, key.to_pkcs8()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-inform", "DER", "-noout", "-in"])
            .arg(&path)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        match out {
            Err(e) => eprintln!("skipped: openssl is not installed ({e})"),
            Ok(out) => assert!(
                out.status.success(),
                "openssl pkey refused the key file: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    #[test]
    fn scoped_tokens_carry_network_and_zone_and_v1_tokens_have_none() {
        let k = SigningKey::generate();
        let v = k.verifying_key();
        let scope = Scope {
            network: "photos".into(),
            zone: "eu".into(),
        };
        let t2 = k.issue_scoped(&claims(), &scope).unwrap();
        assert!(t2.starts_with("ht2."));
        assert_eq!(v.verify_scoped(&t2, 0).unwrap(), (claims(), scope.clone()));
        assert_eq!(
            v.verify(&t2, 0),
            Err(TokenError::Malformed),
            "v1 verify refuses v2"
        );
        let t1 = k.issue(&claims());
        assert_eq!(
            v.verify_scoped(&t1, 0).unwrap(),
            (claims(), Scope::default())
        );
        // Tampering with the zone breaks the signature.
        let mut raw = URL_SAFE_NO_PAD.decode(&t2[4..]).unwrap();
        let zone_at = BODY_LEN + 1 + "photos".len() + 1;
        raw[zone_at] = b'u';
        let forged = format!("ht2.{}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(v.verify_scoped(&forged, 0), Err(TokenError::BadSignature));
        let long = Scope {
            network: "n".repeat(65),
            zone: String::new(),
        };
        assert_eq!(k.issue_scoped(&claims(), &long), Err(TokenError::Malformed));
        assert_eq!(
            v.verify_scoped(&t2, 2_000_000_000),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn forged_expired_and_malformed_tokens_are_refused() {
        let k = SigningKey::generate();
        let other = SigningKey::generate();
        let t = k.issue(&claims());
        let v = k.verifying_key();
        assert_eq!(
            other.verifying_key().verify(&t, 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(v.verify(&t, 2_000_000_000), Err(TokenError::Expired));
        assert_eq!(v.verify("nonsense", 0), Err(TokenError::Malformed));
        assert_eq!(v.verify("ht1.!!!", 0), Err(TokenError::Malformed));
        // Flip one bit of the account: signature must fail.
        let mut raw = URL_SAFE_NO_PAD.decode(&t[4..]).unwrap();
        raw[8] ^= 1;
        let tampered = format!("ht1.{}", URL_SAFE_NO_PAD.encode(&raw));
        assert_eq!(v.verify(&tampered, 0), Err(TokenError::BadSignature));
        let zero = k.issue(&TokenClaims {
            device: 0,
            ..claims()
        });
        assert_eq!(v.verify(&zero, 0), Err(TokenError::InvalidDevice));
    }
}
