//! Authentication: the SASL mechanisms the broker offers on its listeners and the clients
//! speak (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), free of I/O.
//!
//! Users are kept only as SCRAM credentials (salt, iteration count, stored key, server
//! key): a password is never stored, nor anything it can be read back from. PLAIN is
//! checked against the same credentials by salting the password it carries, so one user
//! store serves every mechanism. The broker's user store and the per-connection sessions
//! live in `server/`; this module is the mechanisms' state machines and formats, shared by
//! the broker and the client library, the ACL model ([`acl`]) the authorizer checks, and
//! the client-quota model ([`quota`]) the broker meters requests against.

pub mod acl;
mod mechanism;
pub mod quota;
pub mod scram;

pub use mechanism::{AuthError, Mechanism, ScramHash};
pub use scram::{Credential, ScramClient, ScramServer};

/// A user name the broker accepts: 1–256 characters, none of them a control character.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a user name must not be empty".into());
    }
    if name.chars().count() > 256 {
        return Err("a user name must be at most 256 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("a user name must not contain control characters".into());
    }
    Ok(())
}

/// Reads a PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`. Returns the user
/// (authcid) and the password. An authorization identity other than the user's own is
/// refused: the broker does not let one user act as another.
pub fn parse_plain(message: &[u8]) -> Result<(&str, &str), AuthError> {
    let malformed = |why: &str| AuthError::Malformed(format!("PLAIN: {why}"));
    let text = std::str::from_utf8(message).map_err(|_| malformed("not UTF-8"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected authzid NUL user NUL password"));
    };
    if user.is_empty() {
        return Err(malformed("empty user name"));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(AuthError::Unsupported(
            "PLAIN: acting as another user (an authorization identity)".into(),
        ));
    }
    Ok((user, password))
}

/// The PLAIN message a client sends.
pub fn plain_message(user: &str, password: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(user.len() + password.len() + 2);
    out.push(0);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages_round_trip_and_bad_ones_are_refused() {
        let msg = plain_message("alice", "s3cret");
        assert_eq!(parse_plain(&msg).unwrap(), ("alice", "s3cret"));
        assert_eq!(parse_plain(b"alice\0alice\0pw").unwrap(), ("alice", "pw"));
        assert!(matches!(
            parse_plain(b"bob\0alice\0pw"),
            Err(AuthError::Unsupported(_))
        ));
        assert!(matches!(
            parse_plain(b"\0\0pw"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            parse_plain(b"alice"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            parse_plain(b"\0a\0b\0c"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            parse_plain(b"\0a\xff\0b"),
            Err(AuthError::Malformed(_))
        ));
    }
}
