//! The SASL mechanisms, SCRAM's hashes, and why an authentication step fails.

use std::fmt;
use std::str::FromStr;

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    /// PLAIN (RFC 4616): the password travels in the clear; use it only under TLS or on
    /// loopback.
    Plain,
    /// SCRAM with SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
}

impl Mechanism {
    /// Every mechanism, in the order the broker lists them.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
        Mechanism::Plain,
    ];

    /// The mechanism's registered name, as SASL handshakes carry it.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism named `name` (exactly, as SASL names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The SCRAM hash of a SCRAM mechanism.
    pub fn scram(self) -> Option<ScramHash> {
        match self {
            Mechanism::Plain => None,
            Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha512 => Some(ScramHash::Sha512),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Mechanism, String> {
        Mechanism::from_name(&s.to_ascii_uppercase()).ok_or_else(|| {
            format!("unknown SASL mechanism {s:?}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        })
    }
}

/// The hash of a SCRAM mechanism; a user has at most one credential per hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramHash {
    /// SHA-256: SCRAM-SHA-256.
    Sha256,
    /// SHA-512: SCRAM-SHA-512.
    Sha512,
}

impl ScramHash {
    /// Both hashes.
    pub const ALL: [ScramHash; 2] = [ScramHash::Sha256, ScramHash::Sha512];

    /// The SCRAM mechanism of this hash.
    pub fn mechanism(self) -> Mechanism {
        match self {
            ScramHash::Sha256 => Mechanism::ScramSha256,
            ScramHash::Sha512 => Mechanism::ScramSha512,
        }
    }

    /// The mechanism's name.
    pub fn name(self) -> &'static str {
        self.mechanism().name()
    }

    /// The number Kafka's SCRAM credential APIs give this hash (1: SHA-256, 2: SHA-512).
    pub fn kafka_type(self) -> i8 {
        match self {
            ScramHash::Sha256 => 1,
            ScramHash::Sha512 => 2,
        }
    }

    /// The hash Kafka's SCRAM credential APIs number `t`.
    pub fn from_kafka_type(t: i8) -> Option<ScramHash> {
        match t {
            1 => Some(ScramHash::Sha256),
            2 => Some(ScramHash::Sha512),
            _ => None,
        }
    }
}

/// Why an authentication step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The message does not follow the mechanism's format.
    #[error("malformed SASL message: {0}")]
    Malformed(String),
    /// Unknown user or wrong password: the two are told apart only in the broker's log, so
    /// a peer cannot find out which users exist.
    #[error("authentication failed: invalid credentials")]
    InvalidCredentials,
    /// The client asked for something the broker does not offer (a SCRAM extension such
    /// as delegation tokens, channel binding).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The server's final message does not prove it knows the credential (client side).
    #[error("the server did not prove it holds the credential: {0}")]
    ServerNotVerified(String),
    /// A message arrived out of turn.
    #[error("SASL message out of order")]
    OutOfOrder,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_parse_by_name() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
            assert_eq!(m.name().to_lowercase().parse::<Mechanism>(), Ok(m));
        }
        assert_eq!(Mechanism::from_name("scram-sha-256"), None);
        assert!("GSSAPI".parse::<Mechanism>().is_err());
        for h in ScramHash::ALL {
            assert_eq!(ScramHash::from_kafka_type(h.kafka_type()), Some(h));
        }
        assert_eq!(ScramHash::from_kafka_type(0), None);
    }
}
