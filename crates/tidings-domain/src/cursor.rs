//! Opaque keyset cursors (SPEC §8), one format for every list endpoint.
//!
//! A cursor holds the position of the last item returned (its sequence number) and a
//! fingerprint of the query it belongs to, sealed with an HMAC under a key the store keeps.
//! So a cursor cannot be forged or edited, and one issued for other filters (or another
//! organization, or another order) is refused instead of silently returning a wrong page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const FINGERPRINT_LEN: usize = 8;
const MAC_LEN: usize = 12;
const BODY_LEN: usize = 1 + 8 + FINGERPRINT_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor is malformed; pass back the `meta.cursor` value exactly as received")]
    Malformed,
    #[error(
        "cursor was issued for a different query; repeat the original filters (and order) with it"
    )]
    ForeignQuery,
}

/// The secret that seals cursors. Shared by every process of a deployment (kept in the store).
#[derive(Clone)]
pub struct CursorKey([u8; 32]);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(…)")
    }
}

impl CursorKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// A cursor pointing after `position` for the query described by `scope`.
    pub fn encode(&self, scope: &str, position: u64) -> String {
        let mut buf = Vec::with_capacity(BODY_LEN + MAC_LEN);
        buf.push(VERSION);
        buf.extend_from_slice(&position.to_be_bytes());
        buf.extend_from_slice(&fingerprint(scope));
        let mac = self.mac(&buf);
        buf.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// The position a cursor points after, if it was issued by this deployment for `scope`.
    pub fn decode(&self, scope: &str, token: &str) -> Result<u64, CursorError> {
        if token.len() > 64 {
            return Err(CursorError::Malformed);
        }
        let buf = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| CursorError::Malformed)?;
        if buf.len() != BODY_LEN + MAC_LEN || buf[0] != VERSION {
            return Err(CursorError::Malformed);
        }
        let (body, mac) = buf.split_at(BODY_LEN);
        // Constant-time comparison of the seal.
        let expected = self.mac(body);
        if mac
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return Err(CursorError::Malformed);
        }
        if body[9..] != fingerprint(scope) {
            return Err(CursorError::ForeignQuery);
        }
        let mut pos = [0u8; 8];
        pos.copy_from_slice(&body[1..9]);
        Ok(u64::from_be_bytes(pos))
    }
}

fn fingerprint(scope: &str) -> [u8; FINGERPRINT_LEN] {
    let digest = Sha256::digest(scope.as_bytes());
    let mut out = [0u8; FINGERPRINT_LEN];
    out.copy_from_slice(&digest[..FINGERPRINT_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> CursorKey {
        CursorKey::new([7u8; 32])
    }

    #[test]
    fn round_trips_and_rejects_foreign_scopes() {
        let c = key().encode("events|org=A|desc", 42);
        assert!(c.len() < 64);
        assert_eq!(key().decode("events|org=A|desc", &c), Ok(42));
        assert_eq!(
            key().decode("events|org=B|desc", &c),
            Err(CursorError::ForeignQuery)
        );
        assert_eq!(
            CursorKey::new([8u8; 32]).decode("events|org=A|desc", &c),
            Err(CursorError::Malformed)
        );
        assert_eq!(
            key().decode("s", "not base64!"),
            Err(CursorError::Malformed)
        );
        assert_eq!(key().decode("s", ""), Err(CursorError::Malformed));
    }

    proptest! {
        #[test]
        fn any_single_character_edit_is_refused(pos in any::<u64>(), at in 0usize..39, ch in "[A-Za-z0-9_-]") {
            let c = key().encode("scope", pos);
            let mut chars: Vec<char> = c.chars().collect();
            let at = at % chars.len();
            let new = ch.chars().next().unwrap();
            prop_assume!(chars[at] != new);
            chars[at] = new;
            let edited: String = chars.into_iter().collect();
            // Editing the last character may only touch padding bits that base64 ignores;
            // anything that decodes must decode to the same position.
            if let Ok(p) = key().decode("scope", &edited) {
                prop_assert_eq!(p, pos);
            }
        }
    }
}
