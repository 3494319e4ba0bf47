//! The path check every edge request passes before auth and before proxying.
//!
//! The outpost decides on the raw target (its skip prefixes, e.g. `/public`, match the text as
//! sent), while a backend may normalise it: `/public/../admin` or `/public/%2e%2e/admin` pass
//! the outpost as "public" and reach `/admin` behind a normalising backend. So any path whose
//! percent-decoded form has a `.` or `..` segment (RFC 3986 section 5.2.4), or a backslash
//! (`\` or `%5c`, a separator to Windows and some frameworks), is refused with 400 on every
//! route, whatever its `auth`.
//!
//! `%2f` inside a segment stays allowed on application paths: GitLab and other APIs put
//! `group%2Fproject` in one segment. Its decoded slash still splits segments for the dot
//! check, so `/public/..%2fadmin` and `/public%2f..%2fadmin` are refused as well. (The
//! outpost's own prefix keeps the stricter check of `router::is_ambiguous`, which also refuses
//! `%2f`, `%2e` and empty segments.) Double encodings (`%252e`) are not decoded twice: a
//! backend that double-decodes is broken on its own.

/// Whether `path` (the request path, without query) must be refused: a `.` or `..` segment or
/// a backslash once percent-decoded, a decoded `/` counting as a separator.
pub fn is_ambiguous(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    // The current segment: how many dots, and whether anything else was in it.
    let (mut dots, mut other) = (0usize, false);
    loop {
        let decoded = if i < bytes.len() {
            let (b, used) = decode_at(bytes, i);
            i += used;
            Some(b)
        } else {
            None
        };
        match decoded {
            None | Some(b'/') => {
                if !other && (dots == 1 || dots == 2) {
                    return true;
                }
                if decoded.is_none() {
                    return false;
                }
                (dots, other) = (0, false);
            }
            Some(b'\\') => return true,
            Some(b'.') => dots += 1,
            Some(_) => other = true,
        }
    }
}

/// The byte at `i`, percent-decoded: the byte and how many input bytes it took. A `%` without
/// two hex digits is itself.
fn decode_at(bytes: &[u8], i: usize) -> (u8, usize) {
    if bytes[i] == b'%' {
        if let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            return (hi << 4 | lo, 3);
        }
    }
    (bytes[i], 1)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_in_any_encoding_are_ambiguous() {
        for path in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/public/..",
            "/public/./admin",
            "/public/%2e/admin",
            "/..",
            "/public/..%2fadmin",
            "/public%2f..%2fadmin",
            "/public%2F%2E%2E%2Fadmin",
            "/public/..\\admin",
            "/public\\admin",
            "/public%5cadmin",
            "/public%5C..%5Cadmin",
        ] {
            assert!(is_ambiguous(path), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_pass_including_encoded_slashes_inside_segments() {
        for path in [
            "/",
            "",
            "/dashboard",
            "/api/v4/projects/group%2Fproject/repository/files/a%2Fb.txt",
            "/file.txt",
            "/.well-known/acme-challenge/x",
            "/a/.../b",
            "/a/..b/c",
            "/a/b../c",
            "/a//b",
            "/100%25",
            "/%",
            "/%zz",
            "/%2",
            "/%252e%252e/admin",
        ] {
            assert!(!is_ambiguous(path), "{path}");
        }
    }
}
