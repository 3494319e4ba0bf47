//! Minimal HS256 JSON Web Tokens for the fake outpost: the signed OAuth `state` and the access token
//! that ends up in `X-authentik-jwt`.
//!
//! Only what the outpost itself does: HMAC-SHA256 over `base64url(header).base64url(payload)` with a
//! shared secret. Verification checks `alg` and the MAC (constant time, via `hmac`'s `verify_slice`);
//! claim checks (issuer, `sid`, `exp`) are left to the caller.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// `{"alg":"HS256","typ":"JWT"}`, the only header this module writes or accepts.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Signs `claims` (a JSON object) with HS256 under `secret`.
pub fn sign(claims: &Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// Verifies an HS256 token under `secret` and returns its claims, or `None` for anything malformed,
/// any other algorithm, or a bad signature.
pub fn verify(token: &str, secret: &[u8]) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header_json: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header_json.get("alg")?.as_str()? != "HS256" {
        return None;
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut m = HmacSha256::new_from_slice(secret).ok()?;
    m.update(header.as_bytes());
    m.update(b".");
    m.update(payload.as_bytes());
    m.verify_slice(&signature).ok()?;
    match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn mac(secret: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC would simply never verify.
    match HmacSha256::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signed_token_verifies_and_tampering_fails() {
        let token = sign(
            &json!({"sid": "abc", "redirect": "http://app/x"}),
            b"secret",
        );
        let claims = verify(&token, b"secret").unwrap();
        assert_eq!(claims["sid"], "abc");
        assert!(verify(&token, b"other").is_none());
        let mut tampered = token.clone();
        tampered.insert(token.find('.').unwrap() + 2, 'x');
        assert!(verify(&tampered, b"secret").is_none());
        assert!(verify("a.b", b"secret").is_none());
    }

    #[test]
    fn alg_none_is_rejected() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sid":"x"}"#);
        assert!(verify(&format!("{header}.{payload}."), b"secret").is_none());
    }
}
