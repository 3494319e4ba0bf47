//! The identity an authenticated allow carries, packed for the cache.
//!
//! A `Vec<(HeaderName, HeaderValue)>` costs 72 bytes per pair plus one allocation per value; with
//! twelve headers that is most of a cache entry. Here every value lives in one shared buffer and
//! the twelve fixed names are implicit (their order is [`IDENTITY`]), so an entry costs its value
//! bytes plus a small fixed header. Reading a header back slices the buffer: a reference-count
//! increment, no copy.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};

use super::headers::{EMPTY, IDENTITY};

/// The twelve `X-authentik-*` values (empty ones kept), then `Authorization` and any custom headers
/// the outpost added. Never `Set-Cookie`, `Location` or `User-Agent`.
#[derive(Clone, PartialEq)]
pub struct Identity {
    values: Bytes,
    /// End offset in `values` of each fixed header, in [`IDENTITY`] order.
    ends: [u32; 12],
    /// Further headers with the end offsets of their values.
    extra: Vec<(HeaderName, u32)>,
    jwt_exp: Option<u64>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values include the access token: name the fields, never print them.
        f.debug_struct("Identity")
            .field("headers", &(IDENTITY.len() + self.extra.len()))
            .field("value_bytes", &self.values.len())
            .field("jwt_exp", &self.jwt_exp)
            .finish()
    }
}

impl Identity {
    /// Packs header pairs; a fixed identity header missing from `pairs` is kept, empty, and only
    /// the first value of a fixed one counts. `jwt_exp` is the `exp` of `X-authentik-jwt`
    /// (seconds since the epoch), if known.
    pub fn from_pairs<V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (HeaderName, V)>,
        jwt_exp: Option<u64>,
    ) -> Identity {
        let pairs: Vec<(HeaderName, V)> = pairs.into_iter().collect();
        let mut fixed: [Option<&[u8]>; 12] = [None; 12];
        let mut others = Vec::new();
        for (name, value) in &pairs {
            match IDENTITY.iter().position(|n| n == name) {
                Some(i) => {
                    fixed[i].get_or_insert(value.as_ref());
                }
                None => others.push((name.clone(), value.as_ref())),
            }
        }
        Identity::from_slots(&fixed, others, jwt_exp)
    }

    /// Packs the twelve fixed values (in [`IDENTITY`] order; `None` is kept, empty) and further
    /// headers. The values must be valid header values.
    pub fn from_slots(
        fixed: &[Option<&[u8]>; 12],
        others: Vec<(HeaderName, &[u8])>,
        jwt_exp: Option<u64>,
    ) -> Identity {
        let total = fixed
            .iter()
            .flatten()
            .chain(others.iter().map(|(_, v)| v))
            .map(|v| v.len())
            .sum();
        let mut buf = BytesMut::with_capacity(total);
        let mut ends = [0u32; 12];
        for (i, value) in fixed.iter().enumerate() {
            if let Some(v) = value {
                buf.extend_from_slice(v);
            }
            ends[i] = offset(&buf);
        }
        let extra = others
            .into_iter()
            .map(|(name, v)| {
                buf.extend_from_slice(v);
                (name, offset(&buf))
            })
            .collect();
        Identity {
            values: buf.freeze(),
            ends,
            extra,
            jwt_exp,
        }
    }

    /// Every header, the twelve fixed ones first.
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let fixed = IDENTITY.iter().cloned().zip(self.ends);
        let extra = self.extra.iter().map(|(n, end)| (n.clone(), *end));
        let mut start = 0;
        fixed.chain(extra).map(move |(name, end)| {
            let value = self.value(start, end);
            start = end;
            (name, value)
        })
    }

    /// The value of one header, if the identity has it.
    pub fn get(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.headers().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        IDENTITY.len() + self.extra.len()
    }

    /// Always false: the twelve fixed headers are always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes of header values held.
    pub fn value_bytes(&self) -> usize {
        self.values.len()
    }

    /// `exp` of `X-authentik-jwt`, seconds since the Unix epoch.
    pub fn jwt_exp(&self) -> Option<u64> {
        self.jwt_exp
    }

    fn value(&self, start: u32, end: u32) -> HeaderValue {
        if start == end {
            return EMPTY;
        }
        // The bytes came from valid header values, so this cannot fail; empty is the safe side.
        HeaderValue::from_maybe_shared(self.values.slice(start as usize..end as usize))
            .unwrap_or(EMPTY)
    }
}

impl Identity {
    /// Packs `prefix` (a cache key) and this identity into one buffer, so a cache entry is one
    /// allocation of exactly its bytes: `prefix | 12 x u32 ends | u16 extra count | (u16 name
    /// len, name, u32 end)* | values`. The JWT expiry is not kept (it only sets the entry's TTL).
    pub fn pack(&self, prefix: &[u8]) -> Box<[u8]> {
        let names: usize = self.extra.iter().map(|(n, _)| n.as_str().len() + 6).sum();
        let mut buf = Vec::with_capacity(prefix.len() + 50 + names + self.values.len());
        buf.extend_from_slice(prefix);
        for end in self.ends {
            buf.extend_from_slice(&end.to_le_bytes());
        }
        // Header maps hold far fewer than 65 535 headers; the bound only keeps the cast honest.
        let extra = &self.extra[..self.extra.len().min(usize::from(u16::MAX))];
        buf.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        for (name, end) in extra {
            let name = name.as_str().as_bytes();
            buf.extend_from_slice(&(name.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
            buf.extend_from_slice(&name[..name.len().min(usize::from(u16::MAX))]);
            buf.extend_from_slice(&end.to_le_bytes());
        }
        buf.extend_from_slice(&self.values);
        buf.into_boxed_slice()
    }

    /// One of the twelve fixed values (by its place in [`IDENTITY`]) straight from a packed
    /// buffer, without unpacking the rest. `None` if the layout does not hold.
    pub fn packed_fixed(packed: &[u8], prefix_len: usize, slot: usize) -> Option<&[u8]> {
        let mut r = Reader(packed.get(prefix_len..)?);
        let ends = r.ends()?;
        for _ in 0..r.u16()? {
            r.extra()?;
        }
        let end = *ends.get(slot)? as usize;
        let start = slot.checked_sub(1).map_or(0, |i| ends[i]) as usize;
        r.0.get(start..end)
    }

    /// Reads back what [`Identity::pack`] wrote after a prefix of `prefix_len` bytes. The
    /// values are slices of `packed`: no copy. `None` if the layout does not hold.
    pub fn unpack(packed: &Bytes, prefix_len: usize) -> Option<Identity> {
        let mut r = Reader(packed.get(prefix_len..)?);
        let ends = r.ends()?;
        let count = r.u16()?;
        let mut extra = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let (name, end) = r.extra()?;
            extra.push((HeaderName::from_bytes(name).ok()?, end));
        }
        let start = packed.len() - r.0.len();
        let values_len = extra.last().map_or(ends[11], |(_, end)| *end) as usize;
        if values_len != r.0.len() {
            return None;
        }
        let values = packed.slice(start..);
        Some(Identity {
            values,
            ends,
            extra,
            jwt_exp: None,
        })
    }
}

/// A forward-only reader over a packed identity's trailer.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    /// The twelve fixed headers' end offsets.
    fn ends(&mut self) -> Option<[u32; 12]> {
        let mut ends = [0u32; 12];
        for end in &mut ends {
            *end = self.u32()?;
        }
        Some(ends)
    }

    /// One further header: its name and the end offset of its value.
    fn extra(&mut self) -> Option<(&'a [u8], u32)> {
        let len = usize::from(self.u16()?);
        Some((self.take(len)?, self.u32()?))
    }
}

fn offset(buf: &BytesMut) -> u32 {
    u32::try_from(buf.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::headers::{X_AUTHENTIK_JWT, X_AUTHENTIK_USERNAME};

    #[test]
    fn round_trips_fixed_and_extra_headers_in_order() {
        let id = Identity::from_pairs(
            [
                (
                    HeaderName::from_static("x-custom"),
                    HeaderValue::from_static("c"),
                ),
                (X_AUTHENTIK_USERNAME, HeaderValue::from_static("alice")),
                (X_AUTHENTIK_JWT, HeaderValue::from_static("a.b.c")),
            ],
            Some(7),
        );
        let all: Vec<(HeaderName, HeaderValue)> = id.headers().collect();
        assert_eq!(all.len(), 13);
        for (i, name) in IDENTITY.iter().enumerate() {
            assert_eq!(&all[i].0, name);
        }
        assert_eq!(all[0].1, "alice");
        assert_eq!(all[6].1, "a.b.c");
        assert_eq!(all[1].1, "");
        assert_eq!(
            all[12],
            (
                HeaderName::from_static("x-custom"),
                HeaderValue::from_static("c")
            )
        );
        assert_eq!(id.get(&X_AUTHENTIK_USERNAME).unwrap(), "alice");
        assert_eq!(id.jwt_exp(), Some(7));
        assert_eq!(id.value_bytes(), "alice".len() + "a.b.c".len() + 1);
    }

    #[test]
    fn packs_behind_a_prefix_and_unpacks_to_the_same_headers() {
        let id = Identity::from_pairs(
            [
                (X_AUTHENTIK_USERNAME, HeaderValue::from_static("alice")),
                (
                    HeaderName::from_static("authorization"),
                    HeaderValue::from_static("Basic eA=="),
                ),
                (
                    HeaderName::from_static("x-custom"),
                    HeaderValue::from_static(""),
                ),
            ],
            Some(9),
        );
        let packed = Bytes::from(id.pack(b"key-bytes"));
        assert!(packed.starts_with(b"key-bytes"));
        let back = Identity::unpack(&packed, 9).expect("layout holds");
        assert_eq!(
            back.headers().collect::<Vec<_>>(),
            id.headers().collect::<Vec<_>>()
        );
        assert_eq!(back.jwt_exp(), None);
        assert!(Identity::unpack(&packed.slice(..packed.len() - 1), 9).is_none());
        assert!(Identity::unpack(&packed, 8).is_none());
        for (slot, name) in IDENTITY.iter().enumerate() {
            assert_eq!(
                Identity::packed_fixed(&packed, 9, slot),
                Some(id.get(name).unwrap().as_bytes()),
                "{name}"
            );
        }
        assert_eq!(Identity::packed_fixed(&packed, 9, 12), None);
        assert_eq!(Identity::packed_fixed(&packed, 9, 13), None);
        assert_eq!(Identity::packed_fixed(&packed[..20], 9, 0), None);
    }

    #[test]
    fn debug_never_prints_values() {
        let id = Identity::from_pairs(
            [(X_AUTHENTIK_JWT, HeaderValue::from_static("secret.token.x"))],
            None,
        );
        assert!(!format!("{id:?}").contains("secret"));
    }
}
