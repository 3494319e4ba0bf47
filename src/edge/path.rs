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
/// a backslash once percent-decoded, a decoded `/` counting as a separator, path parameters
/// (`..;`) and trailing blanks ignored as the servers that drop them do. The same check as a
/// forwarded URL's in the auth tier.
pub fn is_ambiguous(path: &str) -> bool {
    crate::auth::request::path_has_dot_segments(path.as_bytes())
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
            // Tomcat/Spring path parameters and trimmed blanks (the edge probe's bypasses).
            "/public/..;/admin",
            "/public/..%3b/admin",
            "/public/..;x=1/admin",
            "/public/.;/admin",
            "/public/%2e%2e;/admin",
            "/public/..%00/admin",
            "/public/..%20/admin",
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
