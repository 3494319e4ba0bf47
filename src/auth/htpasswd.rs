//! The emergency realm's htpasswd file: parsing, the accepted hash formats, and verification.
//!
//! Why: during an outpost outage the only way in is a Basic credential checked against this file
//! (DESIGN.md section 4), so it must accept what operators migrate from the nginx tier and refuse
//! anything it cannot verify safely.
//!
//! Invariants:
//! - A file is accepted whole or refused whole; a refusal names the 1-based line.
//! - Formats: bcrypt (`$2y$`, `$2b$`, `$2a$`), argon2id (`$argon2id$`), and, for migration only and
//!   with a warning per user on every successful parse, `{SHA}` and `$apr1$`. Plaintext, `$1$`,
//!   DES `crypt` and every other format are refused.
//! - A user name appearing twice is an error (an ambiguous emergency file is an operator mistake).
//! - Verification of an unknown user still runs one bcrypt, so timing does not reveal who exists.
//! - Passwords and hashes never reach logs or `Debug`; no input makes this module panic.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Cost of hashes made by [`hash_password`]: about 50 ms on one core, and the remembered
/// verification (see `fallback.rs`) keeps it off the per-request path.
pub const HASH_COST: u32 = 10;

/// A bcrypt hash (cost 10, of no password anyone knows) verified for unknown users, so a miss
/// costs about as much as a hit and timing does not enumerate users.
const DUMMY_BCRYPT: &str = "$2b$10$aE7wbELzZEvnaw/ibUzrcOeBjbv/4Mdbc5YuGNlgHdnZvdM9jYVRu";

/// The `crypt(3)` base-64 alphabet used by bcrypt and `$apr1$`.
const CRYPT64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why an htpasswd file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// The file could not be read.
    #[error("cannot read htpasswd file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("htpasswd file {} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// A line is not `user:hash` in an accepted format.
    #[error("htpasswd line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it (never the hash itself).
        reason: String,
    },
}

/// Largest htpasswd file read: ample for thousands of users, and a bound on a buffer.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One stored credential, already validated at parse time.
#[derive(Clone)]
enum Hash {
    /// `$2a$`/`$2b$`/`$2y$`: the bcrypt crate verifies all three prefixes.
    Bcrypt(Box<str>),
    /// `$argon2id$`: a PHC string; its own parameters drive the verification.
    Argon2id(Box<str>),
    /// `{SHA}`: unsalted SHA-1 (weak; migration only).
    Sha1([u8; 20]),
    /// `$apr1$`: Apache MD5-crypt (weak; migration only).
    Apr1 { salt: Box<str>, digest: Box<str> },
}

impl Hash {
    /// Whether `password` matches. Slow for bcrypt and argon2id by design.
    fn verify(&self, password: &str) -> bool {
        match self {
            Hash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            Hash::Argon2id(phc) => match PasswordHash::new(phc) {
                Ok(parsed) => argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
                Err(_) => false,
            },
            Hash::Sha1(digest) => Sha1::digest(password.as_bytes()).ct_eq(digest).into(),
            Hash::Apr1 { salt, digest } => apr1(password.as_bytes(), salt.as_bytes())
                .as_bytes()
                .ct_eq(digest.as_bytes())
                .into(),
        }
    }

    /// The name of a weak format, for the migration warning.
    fn weak_name(&self) -> Option<&'static str> {
        match self {
            Hash::Sha1(_) => Some("{SHA}"),
            Hash::Apr1 { .. } => Some("$apr1$"),
            Hash::Bcrypt(_) | Hash::Argon2id(_) => None,
        }
    }
}

/// A parsed htpasswd file: user name to hash. Immutable; a reload builds a new one.
#[derive(Clone, Default)]
pub struct Htpasswd {
    users: HashMap<Arc<str>, Hash>,
}

impl fmt::Debug for Htpasswd {
    // User names only: hashes are secrets too (offline guessing).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Htpasswd {
    /// Parses htpasswd text: `user:hash` lines, blank lines and `#` comments ignored.
    ///
    /// Any malformed line refuses the whole text, naming its 1-based number. On success each user
    /// with a weak hash (`{SHA}`, `$apr1$`) is warned about once.
    pub fn parse(text: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        let mut first_seen: HashMap<Arc<str>, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (user, hash) = parse_line(trimmed).map_err(|reason| HtpasswdError::Malformed {
                line,
                reason: reason.to_owned(),
            })?;
            let user: Arc<str> = Arc::from(user);
            if let Some(first) = first_seen.insert(user.clone(), line) {
                return Err(HtpasswdError::Malformed {
                    line,
                    reason: format!("duplicate user, first defined on line {first}"),
                });
            }
            users.insert(user, hash);
        }
        let parsed = Htpasswd { users };
        parsed.warn_weak();
        Ok(parsed)
    }

    fn warn_weak(&self) {
        for (user, hash) in &self.users {
            if let Some(format) = hash.weak_name() {
                tracing::warn!(user = %user, format, "weak hash, migrate to bcrypt");
            }
        }
    }

    /// Whether `password` is right for `user`. Slow (bcrypt or argon2id): run it off the async
    /// threads. An unknown user costs one bcrypt too and answers `false`.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                // Same work as a hit, result ignored: no timing oracle for user names.
                let _ = bcrypt::verify(password, DUMMY_BCRYPT);
                false
            }
        }
    }

    /// The stored spelling of `user`, if the file has it (shared, so verdicts need not copy it).
    pub fn user(&self, user: &str) -> Option<Arc<str>> {
        self.users.get_key_value(user).map(|(name, _)| name.clone())
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users (then every attempt is denied).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Splits and validates one non-blank, non-comment line. The reason never quotes the hash.
fn parse_line(line: &str) -> Result<(&str, Hash), &'static str> {
    let (user, hash) = line.split_once(':').ok_or("expected user:hash")?;
    if user.is_empty() {
        return Err("empty user name");
    }
    if user.chars().any(char::is_control) {
        return Err("control character in user name");
    }
    // nginx's `name:hash:comment` form: no accepted hash contains a colon.
    let hash = hash.split_once(':').map_or(hash, |(hash, _comment)| hash);
    let hash = parse_hash(hash.trim())?;
    Ok((user, hash))
}

/// Recognises one hash. Anything unrecognised, plaintext included, is refused.
fn parse_hash(hash: &str) -> Result<Hash, &'static str> {
    if hash.is_empty() {
        return Err("empty hash");
    }
    if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
        return parse_bcrypt(hash);
    }
    if hash.starts_with("$argon2id$") {
        return parse_argon2id(hash);
    }
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "{SHA} hash is not base64")?;
        let digest: [u8; 20] = bytes.try_into().map_err(|_| "{SHA} hash is not 20 bytes")?;
        return Ok(Hash::Sha1(digest));
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        return parse_apr1(rest);
    }
    Err("unknown hash format (plaintext is not accepted; use bcrypt)")
}

/// `$2?$CC$` + 22 salt + 31 hash characters, cost 4..=31.
fn parse_bcrypt(hash: &str) -> Result<Hash, &'static str> {
    const BAD: &str = "malformed bcrypt hash";
    let bytes = hash.as_bytes();
    if bytes.len() != 60 || bytes[6] != b'$' {
        return Err(BAD);
    }
    let cost: u32 = hash.get(4..6).and_then(|c| c.parse().ok()).ok_or(BAD)?;
    if !(4..=31).contains(&cost) {
        return Err("bcrypt cost outside 4..=31");
    }
    if !bytes[7..].iter().all(|b| CRYPT64.contains(b)) {
        return Err(BAD);
    }
    Ok(Hash::Bcrypt(hash.into()))
}

/// A PHC string for argon2id with parameters argon2 accepts and an output present.
fn parse_argon2id(hash: &str) -> Result<Hash, &'static str> {
    const BAD: &str = "malformed argon2id hash";
    let parsed = PasswordHash::new(hash).map_err(|_| BAD)?;
    if parsed.algorithm.as_str() != "argon2id" || parsed.hash.is_none() || parsed.salt.is_none() {
        return Err(BAD);
    }
    argon2::Params::try_from(&parsed).map_err(|_| "argon2id parameters out of range")?;
    Ok(Hash::Argon2id(hash.into()))
}

/// `salt$digest` after `$apr1$`: salt of 1..=8 characters, digest of 22.
fn parse_apr1(rest: &str) -> Result<Hash, &'static str> {
    const BAD: &str = "malformed $apr1$ hash";
    let (salt, digest) = rest.split_once('$').ok_or(BAD)?;
    let in_alphabet = |s: &str| s.bytes().all(|b| CRYPT64.contains(&b));
    if salt.is_empty() || salt.len() > 8 || !in_alphabet(salt) {
        return Err(BAD);
    }
    if digest.len() != 22 || !in_alphabet(digest) {
        return Err(BAD);
    }
    Ok(Hash::Apr1 {
        salt: salt.into(),
        digest: digest.into(),
    })
}

/// Apache's MD5-crypt (`$apr1$`), as in APR's `apr_md5_encode`: returns the 22-character digest.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    let alternate = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(password)
        .chain_update(b"$apr1$")
        .chain_update(salt);
    for chunk in password.chunks(16) {
        ctx.update(&alternate[..chunk.len()]);
    }
    let mut bits = password.len();
    while bits > 0 {
        // The original feeds a zero byte or the password's first byte per bit of its length.
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut digest = ctx.finalize();
    for round in 0..1000 {
        let mut ctx = Md5::new();
        if round % 2 == 1 {
            ctx.update(password);
        } else {
            ctx.update(digest);
        }
        if round % 3 != 0 {
            ctx.update(salt);
        }
        if round % 7 != 0 {
            ctx.update(password);
        }
        if round % 2 == 1 {
            ctx.update(digest);
        } else {
            ctx.update(password);
        }
        digest = ctx.finalize();
    }
    apr1_encode(&digest)
}

/// The `crypt(3)` base-64 encoding of an MD5-crypt digest, in its permuted byte order.
fn apr1_encode(d: &[u8]) -> String {
    let mut out = String::with_capacity(22);
    let mut push = |value: u32, chars: usize| {
        let mut v = value;
        for _ in 0..chars {
            out.push(char::from(CRYPT64[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    let triple = |a: usize, b: usize, c: usize| {
        (u32::from(d[a]) << 16) | (u32::from(d[b]) << 8) | u32::from(d[c])
    };
    push(triple(0, 6, 12), 4);
    push(triple(1, 7, 13), 4);
    push(triple(2, 8, 14), 4);
    push(triple(3, 9, 15), 4);
    push(triple(4, 10, 5), 4);
    push(u32::from(d[11]), 2);
    out
}

/// Hashes `password` as bcrypt `$2y$` at [`HASH_COST`], for `portcullis hash-password`
/// (which prints `user:hash`). Passwords over 72 bytes are refused rather than truncated.
pub fn hash_password(password: &str) -> Result<String, bcrypt::BcryptError> {
    let parts = bcrypt::non_truncating_hash_with_result(password, HASH_COST)?;
    Ok(parts.format_for_version(bcrypt::Version::TwoY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};
    use proptest::prelude::*;

    fn one(line: &str) -> Htpasswd {
        Htpasswd::parse(line).expect("parses")
    }

    #[test]
    fn bcrypt_all_prefixes_verify() {
        let hash = bcrypt::hash_with_result("s3cret", 4).expect("hash");
        for version in [
            bcrypt::Version::TwoY,
            bcrypt::Version::TwoB,
            bcrypt::Version::TwoA,
        ] {
            let file = one(&format!("alice:{}", hash.format_for_version(version)));
            assert!(file.verify("alice", "s3cret"));
            assert!(!file.verify("alice", "s3cret!"));
        }
    }

    #[test]
    fn nginx_comment_field_is_ignored() {
        let hash = bcrypt::hash_with_result("s3cret", 4).expect("hash");
        let file = one(&format!(
            "alice:{}:Alice, ops team",
            hash.format_for_version(bcrypt::Version::TwoY)
        ));
        assert!(file.verify("alice", "s3cret"));
        assert!(!file.verify("alice", "s3cret:Alice, ops team"));
        let file = one("carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=:comment");
        assert!(file.verify("carol", "password"));
    }

    #[test]
    fn hash_password_makes_verifiable_2y_cost_10() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$2y$10$"), "{hash}");
        let file = one(&format!("bob:{hash}"));
        assert!(file.verify("bob", "correct horse"));
        assert!(!file.verify("bob", "correct horse "));
        assert!(hash_password(&"x".repeat(73)).is_err());
    }

    #[test]
    fn argon2id_verifies() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let params = argon2::Params::new(256, 1, 1, None).expect("params");
        let hasher =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let phc = hasher
            .hash_password(b"pw", &salt)
            .expect("hash")
            .to_string();
        let file = one(&format!("carol:{phc}"));
        assert!(file.verify("carol", "pw"));
        assert!(!file.verify("carol", "pW"));
    }

    #[test]
    fn argon2i_is_refused() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let params = argon2::Params::new(256, 1, 1, None).expect("params");
        let hasher =
            argon2::Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, params);
        let phc = hasher
            .hash_password(b"pw", &salt)
            .expect("hash")
            .to_string();
        assert!(Htpasswd::parse(&format!("carol:{phc}")).is_err());
    }

    #[test]
    fn sha_known_vector() {
        // `echo -n password | openssl dgst -sha1 -binary | base64`
        let file = one("dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=");
        assert!(file.verify("dave", "password"));
        assert!(!file.verify("dave", "Password"));
    }

    #[test]
    fn apr1_known_vectors() {
        // `openssl passwd -apr1 -salt abcdefgh password`
        let file = one("erin:$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1");
        assert!(file.verify("erin", "password"));
        assert!(!file.verify("erin", "passwore"));
        // Longer than 16 bytes and a short salt: `openssl passwd -apr1 -salt xy ...`
        let long = one("frank:$apr1$xy$ocfAJ1bERGopjW4FWZakU1");
        assert!(long.verify("frank", "a password longer than sixteen"));
        assert!(!long.verify("frank", "a password longer than sixteeN"));
    }

    #[test]
    fn empty_password_apr1_does_not_panic() {
        assert_eq!(apr1(b"", b"abc").len(), 22);
    }

    #[test]
    fn dummy_hash_is_a_valid_cost_10_bcrypt() {
        assert!(parse_bcrypt(DUMMY_BCRYPT).is_ok());
        assert!(bcrypt::verify("anything", DUMMY_BCRYPT).is_ok());
        assert!(DUMMY_BCRYPT.starts_with("$2b$10$"));
    }

    #[test]
    fn unknown_user_is_rejected() {
        let file = one("dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=");
        assert!(!file.verify("mallory", "password"));
        assert!(file.user("mallory").is_none());
        assert_eq!(file.user("dave").as_deref(), Some("dave"));
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let text = "# emergency\n\n   \n  # indented comment\r\ndave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\r\n";
        let file = one(text);
        assert_eq!(file.len(), 1);
        assert!(file.verify("dave", "password"));
    }

    fn malformed_line(text: &str) -> usize {
        match Htpasswd::parse(text) {
            Err(HtpasswdError::Malformed { line, .. }) => line,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn malformed_lines_are_named_by_number() {
        let good = "dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";
        assert_eq!(malformed_line(&format!("# c\n{good}\nno-colon-here\n")), 3);
        assert_eq!(malformed_line(&format!("\n\n:{}\n", &good[5..])), 3);
        assert_eq!(malformed_line("admin:hunter2\n"), 1); // plaintext
        assert_eq!(malformed_line(&format!("{good}\nx:$1$abc$def\n")), 2); // md5-crypt
        assert_eq!(malformed_line("x:$2y$10$short\n"), 1);
        assert_eq!(
            malformed_line("x:$2y$99$......................6k3YgFhtZOUEGVVNjhFDPb5UMlu/sCq"),
            1
        );
        assert_eq!(
            malformed_line("x:$apr1$toolongsalt$FBwExRW4dCc8aL.OvjpIE1"),
            1
        );
        assert_eq!(malformed_line("x:{SHA}AAAA"), 1);
        assert_eq!(malformed_line("x:$argon2id$garbage"), 1);
    }

    #[test]
    fn duplicate_user_is_an_error_naming_the_second_line() {
        let good = "dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";
        assert_eq!(malformed_line(&format!("{good}\n# x\n{good}\n")), 3);
    }

    #[test]
    fn error_does_not_quote_the_hash() {
        let err = Htpasswd::parse("x:$2y$10$secretsecretsecret").expect_err("malformed");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn debug_shows_no_hash() {
        let file = one("dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=");
        let shown = format!("{file:?}");
        assert!(shown.contains("dave") && !shown.contains("W6ph"), "{shown}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn parse_never_panics(lines in proptest::collection::vec(
            prop_oneof![
                any::<String>(),
                "[a-z]{0,4}:\\$(2y|2b|apr1|argon2id)\\$[./0-9A-Za-z$=,]{0,70}",
                "[a-z]{0,4}:\\{SHA\\}[A-Za-z0-9+/=]{0,30}",
            ],
            0..8,
        )) {
            let text = lines.join("\n");
            if let Ok(file) = Htpasswd::parse(&text) {
                for line in text.lines() {
                    if let Some((user, _)) = line.trim().split_once(':') {
                        // Fast formats only get here cheaply; bcrypt must be well-formed to parse.
                        let _ = file.user(user);
                    }
                }
            }
        }
    }
}
