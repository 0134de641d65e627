//! SCRAM (RFC 5802) with SHA-256 and SHA-512 (RFC 7677): credentials, the server's and the
//! client's state machines.
//!
//! An exchange is four messages: client-first (`n,,n=USER,r=CNONCE`), server-first
//! (`r=CNONCE+SNONCE,s=SALT,i=ITERATIONS`), client-final (`c=biws,r=NONCE,p=PROOF`) and
//! server-final (`v=SIGNATURE`). The server keeps only the stored key and the server key:
//! enough to check a proof and to prove itself, never enough to log in as the user.
//!
//! A user the broker does not know is answered like a known one, with a salt derived from
//! the name and a secret of this process, and fails at the proof as a wrong password does:
//! a peer cannot learn which users exist. No SASLprep: passwords are taken as their UTF-8
//! bytes (as Kafka does), so a client must not normalise them either.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use super::mechanism::{AuthError, ScramHash};

/// The fewest iterations a credential may have (Kafka's floor).
pub const MIN_ITERATIONS: u32 = 4096;
/// The most iterations a credential may have (Kafka's ceiling): PBKDF2 runs on the broker
/// for every PLAIN login, so the count bounds that work.
pub const MAX_ITERATIONS: u32 = 16384;
/// Iterations of the credentials the broker and the CLI create.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Bytes of a fresh salt.
const SALT_LEN: usize = 32;
/// Random bytes in each side's nonce.
const NONCE_LEN: usize = 24;

/// A user's SCRAM credential for one hash: what the broker stores.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The hash.
    pub hash: ScramHash,
    /// The salt the password was salted with.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("Credential")
            .field("hash", &self.hash)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A new credential for `password`, with a fresh random salt.
    pub fn new(hash: ScramHash, password: &str, iterations: u32) -> Credential {
        let salt = random_bytes(SALT_LEN);
        let salted = salted_password(hash, password.as_bytes(), &salt, iterations);
        Credential::from_salted_password(hash, salt, iterations, &salted)
    }

    /// The credential of a salted password (what Kafka's AlterUserScramCredentials sends:
    /// the client salts, the password never reaches the broker).
    pub fn from_salted_password(
        hash: ScramHash,
        salt: Vec<u8>,
        iterations: u32,
        salted: &[u8],
    ) -> Credential {
        let client_key = hmac(hash, salted, b"Client Key");
        Credential {
            hash,
            salt,
            iterations,
            stored_key: digest(hash, &client_key),
            server_key: hmac(hash, salted, b"Server Key"),
        }
    }

    /// Whether `password` is this credential's (PLAIN logins), in time that does not depend
    /// on where the keys differ.
    pub fn verify_password(&self, password: &str) -> bool {
        let salted = salted_password(self.hash, password.as_bytes(), &self.salt, self.iterations);
        let client_key = hmac(self.hash, &salted, b"Client Key");
        constant_time_eq(&digest(self.hash, &client_key), &self.stored_key)
    }
}

/// Hi(password, salt, i): PBKDF2 with HMAC of the hash.
pub fn salted_password(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    match hash {
        ScramHash::Sha256 => {
            let mut out = vec![0; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            out
        }
        ScramHash::Sha512 => {
            let mut out = vec![0; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
            out
        }
    }
}

fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length: new_from_slice cannot fail.
    match hash {
        ScramHash::Sha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha512 => {
            let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key).expect("any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

fn digest(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        ScramHash::Sha512 => Sha512::digest(data).to_vec(),
    }
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    // The kernel's random source; a machine without one cannot run the broker safely.
    getrandom::getrandom(&mut out).expect("the kernel's random source (getrandom) failed");
    out
}

fn nonce() -> String {
    BASE64.encode(random_bytes(NONCE_LEN))
}

/// The credential a user the broker does not know appears to have: the same salt for the
/// same name for the life of the process, so two attempts cannot tell it from a real one.
fn decoy(hash: ScramHash, user: &str) -> Credential {
    static SECRET: OnceLock<Vec<u8>> = OnceLock::new();
    let secret = SECRET.get_or_init(|| random_bytes(32));
    let salt = hmac(hash, secret, user.as_bytes())[..SALT_LEN].to_vec();
    let keys = hmac(hash, secret, &salt);
    Credential {
        hash,
        salt,
        iterations: DEFAULT_ITERATIONS,
        stored_key: keys.clone(),
        server_key: keys,
    }
}

/// `k=v` attributes of a SCRAM message, in order.
fn attributes(message: &str) -> Result<Vec<(char, &str)>, AuthError> {
    message
        .split(',')
        .map(|part| {
            let mut chars = part.chars();
            match (chars.next(), chars.next()) {
                (Some(k), Some('=')) if k.is_ascii_alphabetic() => Ok((k, &part[2..])),
                _ => Err(AuthError::Malformed(format!(
                    "SCRAM: {part:?} is not an attribute"
                ))),
            }
        })
        .collect()
}

/// A SCRAM name as sent: `=2C` for `,` and `=3D` for `=`.
fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_name(sent: &str) -> Result<String, AuthError> {
    let mut out = String::with_capacity(sent.len());
    let mut rest = sent;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => {
                return Err(AuthError::Malformed(
                    "SCRAM: a user name with a bad '=' escape".into(),
                ))
            }
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn utf8(message: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(message).map_err(|_| AuthError::Malformed("SCRAM: not UTF-8".into()))
}

/// The broker's side of one SCRAM exchange.
pub struct ScramServer {
    hash: ScramHash,
    state: ServerState,
}

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        user: String,
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        /// `None`: the user is unknown (the exchange runs on a decoy and fails).
        credential: Option<Credential>,
    },
    Finished,
}

impl ScramServer {
    /// A server for one exchange with `hash`.
    pub fn new(hash: ScramHash) -> ScramServer {
        ScramServer {
            hash,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// The user named in the client-first message, once it has arrived.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            ServerState::AwaitingClientFinal { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Reads the client-first message and returns the server-first. `lookup` gives the
    /// named user's credential for this hash, if there is one.
    pub fn client_first(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<Credential>,
    ) -> Result<Vec<u8>, AuthError> {
        self.client_first_with_nonce(message, lookup, &nonce())
    }

    fn client_first_with_nonce(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<Credential>,
        server_nonce: &str,
    ) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, ServerState::AwaitingClientFirst) {
            return Err(AuthError::OutOfOrder);
        }
        self.state = ServerState::Finished;
        let text = utf8(message)?;
        // gs2-header: a channel-binding flag, an optional authzid, then the bare message.
        let mut split = text.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (split.next(), split.next(), split.next())
        else {
            return Err(AuthError::Malformed("SCRAM: no gs2 header".into()));
        };
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => {
                return Err(AuthError::Unsupported("SCRAM channel binding".into()))
            }
            _ => return Err(AuthError::Malformed("SCRAM: bad gs2 header".into())),
        }
        // `n=USER,r=NONCE`, then extensions: Kafka clients send `tokenauth=true` for
        // delegation tokens, which the broker does not have.
        let (required, extensions) = match bare.match_indices(',').nth(1) {
            Some((at, _)) => (&bare[..at], Some(&bare[at + 1..])),
            None => (bare, None),
        };
        let attrs = attributes(required)?;
        let (Some(('n', sent_name)), Some(('r', client_nonce))) =
            (attrs.first().copied(), attrs.get(1).copied())
        else {
            return Err(AuthError::Malformed(
                "SCRAM: client-first must start n=USER,r=NONCE".into(),
            ));
        };
        if client_nonce.is_empty() {
            return Err(AuthError::Malformed("SCRAM: empty client nonce".into()));
        }
        if let Some(extensions) = extensions {
            return Err(AuthError::Unsupported(format!(
                "SCRAM extensions {extensions:?}"
            )));
        }
        let user = unescape_name(sent_name)?;
        if !authzid.is_empty() && unescape_name(authzid.trim_start_matches("a="))? != user {
            return Err(AuthError::Unsupported(
                "SCRAM: acting as another user (an authorization identity)".into(),
            ));
        }
        let credential = lookup(&user).filter(|c| c.hash == self.hash);
        let shown = credential
            .clone()
            .unwrap_or_else(|| decoy(self.hash, &user));
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&shown.salt),
            shown.iterations
        );
        self.state = ServerState::AwaitingClientFinal {
            user,
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            credential,
        };
        Ok(server_first.into_bytes())
    }

    /// Reads the client-final message: on a valid proof, returns the authenticated user and
    /// the server-final message.
    pub fn client_final(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), AuthError> {
        let ServerState::AwaitingClientFinal {
            user,
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
            credential,
        } = std::mem::replace(&mut self.state, ServerState::Finished)
        else {
            return Err(AuthError::OutOfOrder);
        };
        let text = utf8(message)?;
        let Some(proof_at) = text.rfind(",p=") else {
            return Err(AuthError::Malformed(
                "SCRAM: client-final without a proof".into(),
            ));
        };
        let without_proof = &text[..proof_at];
        let attrs = attributes(without_proof)?;
        let (Some(('c', binding)), Some(('r', sent_nonce))) =
            (attrs.first().copied(), attrs.get(1).copied())
        else {
            return Err(AuthError::Malformed(
                "SCRAM: client-final must start c=BINDING,r=NONCE".into(),
            ));
        };
        if BASE64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
            return Err(AuthError::Malformed(
                "SCRAM: channel binding does not match the gs2 header".into(),
            ));
        }
        // librdkafka 2.0 (Debian 12's) sends its own nonce again before the combined one.
        // Kafka accepts a nonce that ends with the combined one, and so does the broker:
        // the server's part, fresh for this exchange, is still bound to the proof.
        if !sent_nonce.ends_with(&nonce) {
            return Err(AuthError::Malformed("SCRAM: nonce does not match".into()));
        }
        let proof = BASE64
            .decode(&text[proof_at + 3..])
            .map_err(|_| AuthError::Malformed("SCRAM: proof is not base64".into()))?;
        let Some(credential) = credential else {
            return Err(AuthError::InvalidCredentials);
        };
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(self.hash, &credential.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(AuthError::InvalidCredentials);
        }
        let client_key = xor(&proof, &client_signature);
        if !constant_time_eq(&digest(self.hash, &client_key), &credential.stored_key) {
            return Err(AuthError::InvalidCredentials);
        }
        let server_signature = hmac(self.hash, &credential.server_key, auth_message.as_bytes());
        let server_final = format!("v={}", BASE64.encode(server_signature));
        Ok((user, server_final.into_bytes()))
    }
}

/// A client's side of one SCRAM exchange.
pub struct ScramClient {
    hash: ScramHash,
    user: String,
    password: String,
    client_nonce: String,
    state: ClientState,
}

enum ClientState {
    Start,
    SentFirst { client_first_bare: String },
    SentFinal { server_signature: Vec<u8> },
    Finished,
}

impl ScramClient {
    /// A client that logs in as `user` with `password`.
    pub fn new(hash: ScramHash, user: &str, password: &str) -> ScramClient {
        ScramClient::with_nonce(hash, user, password, nonce())
    }

    fn with_nonce(hash: ScramHash, user: &str, password: &str, nonce: String) -> ScramClient {
        ScramClient {
            hash,
            user: user.to_string(),
            password: password.to_string(),
            client_nonce: nonce,
            state: ClientState::Start,
        }
    }

    /// The client-first message.
    pub fn client_first(&mut self) -> Vec<u8> {
        let bare = format!("n={},r={}", escape_name(&self.user), self.client_nonce);
        let message = format!("n,,{bare}");
        self.state = ClientState::SentFirst {
            client_first_bare: bare,
        };
        message.into_bytes()
    }

    /// Reads the server-first message and returns the client-final.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ClientState::SentFirst { client_first_bare } =
            std::mem::replace(&mut self.state, ClientState::Finished)
        else {
            return Err(AuthError::OutOfOrder);
        };
        let server_first = utf8(server_first)?;
        let attrs = attributes(server_first)?;
        let (Some(('r', nonce)), Some(('s', salt)), Some(('i', iterations))) = (
            attrs.first().copied(),
            attrs.get(1).copied(),
            attrs.get(2).copied(),
        ) else {
            return Err(AuthError::Malformed(
                "SCRAM: server-first must be r=NONCE,s=SALT,i=ITERATIONS".into(),
            ));
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(AuthError::ServerNotVerified(
                "its nonce does not extend ours".into(),
            ));
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| AuthError::Malformed("SCRAM: salt is not base64".into()))?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
            .ok_or_else(|| {
                AuthError::Malformed(format!(
                    "SCRAM: iteration count {iterations} outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
                ))
            })?;
        let salted = salted_password(self.hash, self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(self.hash, &salted, b"Client Key");
        let stored_key = digest(self.hash, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(self.hash, &stored_key, auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        let server_key = hmac(self.hash, &salted, b"Server Key");
        self.state = ClientState::SentFinal {
            server_signature: hmac(self.hash, &server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server proved it holds the credential.
    pub fn verify_server_final(&mut self, server_final: &[u8]) -> Result<(), AuthError> {
        let ClientState::SentFinal { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Finished)
        else {
            return Err(AuthError::OutOfOrder);
        };
        let text = utf8(server_final)?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(AuthError::ServerNotVerified(format!("it answered {error}")));
        }
        let sent = text
            .strip_prefix("v=")
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or_else(|| AuthError::Malformed("SCRAM: server-final must be v=…".into()))?;
        if !constant_time_eq(&sent, &server_signature) {
            return Err(AuthError::ServerNotVerified(
                "its signature does not match".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange (user "user", password "pencil").
    #[test]
    fn the_rfc_7677_exchange_checks_out_on_both_sides() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(ScramHash::Sha256, b"pencil", &salt, 4096);
        let credential = Credential::from_salted_password(ScramHash::Sha256, salt, 4096, &salted);

        let mut client = ScramClient::with_nonce(
            ScramHash::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        let first = client.client_first();
        assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");

        let mut server = ScramServer::new(ScramHash::Sha256);
        let server_first = server
            .client_first_with_nonce(
                &first,
                |u| (u == "user").then(|| credential.clone()),
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&server_first).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        assert_eq!(server.user(), Some("user"));
        let client_final = client.client_final(&server_first).unwrap();
        assert_eq!(
            std::str::from_utf8(&client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let (user, server_final) = server.client_final(&client_final).unwrap();
        assert_eq!(user, "user");
        assert_eq!(
            std::str::from_utf8(&server_final).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        client.verify_server_final(&server_final).unwrap();
        assert!(credential.verify_password("pencil"));
        assert!(!credential.verify_password("pencil "));
    }

    fn exchange(
        hash: ScramHash,
        stored: &Credential,
        user: &str,
        password: &str,
    ) -> Result<String, AuthError> {
        let mut client = ScramClient::new(hash, user, password);
        let mut server = ScramServer::new(hash);
        let server_first = server.client_first(&client.client_first(), |u| {
            (u == "alice,=x").then(|| stored.clone())
        })?;
        let client_final = client.client_final(&server_first)?;
        let (user, server_final) = server.client_final(&client_final)?;
        client.verify_server_final(&server_final)?;
        Ok(user)
    }

    #[test]
    fn both_hashes_accept_the_password_and_refuse_others_and_unknown_users_alike() {
        for hash in ScramHash::ALL {
            let stored = Credential::new(hash, "correct horse", DEFAULT_ITERATIONS);
            assert_eq!(
                exchange(hash, &stored, "alice,=x", "correct horse").unwrap(),
                "alice,=x"
            );
            assert_eq!(
                exchange(hash, &stored, "alice,=x", "wrong"),
                Err(AuthError::InvalidCredentials)
            );
            assert_eq!(
                exchange(hash, &stored, "mallory", "correct horse"),
                Err(AuthError::InvalidCredentials)
            );
        }
        // A credential of the other hash is not used.
        let stored = Credential::new(ScramHash::Sha512, "pw", DEFAULT_ITERATIONS);
        assert_eq!(
            exchange(ScramHash::Sha256, &stored, "alice,=x", "pw"),
            Err(AuthError::InvalidCredentials)
        );
    }

    #[test]
    fn an_unknown_user_sees_a_stable_salt_like_a_known_one() {
        let first = |user: &str| {
            let mut server = ScramServer::new(ScramHash::Sha256);
            let msg = format!("n,,n={user},r=abc");
            let reply = server.client_first(msg.as_bytes(), |_| None).unwrap();
            let text = String::from_utf8(reply).unwrap();
            text.split(',').skip(1).collect::<Vec<_>>().join(",")
        };
        assert_eq!(first("ghost"), first("ghost"));
        assert_ne!(first("ghost"), first("phantom"));
        assert!(first("ghost").ends_with(",i=4096"));
    }

    #[test]
    fn malformed_and_unsupported_messages_are_refused() {
        let lookup = |_: &str| None;
        for bad in [
            &b""[..],
            b"n,,",
            b"n,,r=abc",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"x,,n=user,r=abc",
            b"n,,n=us=er,r=abc",
            b"\xff",
        ] {
            let mut server = ScramServer::new(ScramHash::Sha256);
            assert!(
                matches!(
                    server.client_first(bad, lookup),
                    Err(AuthError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        let mut server = ScramServer::new(ScramHash::Sha256);
        assert!(matches!(
            server.client_first(b"n,,n=user,r=abc,tokenauth=true", lookup),
            Err(AuthError::Unsupported(_))
        ));
        let mut server = ScramServer::new(ScramHash::Sha256);
        assert!(matches!(
            server.client_first(b"p=tls-unique,,n=user,r=abc", lookup),
            Err(AuthError::Unsupported(_))
        ));
        let mut server = ScramServer::new(ScramHash::Sha256);
        assert_eq!(
            server.client_final(b"c=biws,r=abc,p=AAAA"),
            Err(AuthError::OutOfOrder)
        );

        // A client-final with another nonce, or no proof, fails before any key is touched.
        let stored = Credential::new(ScramHash::Sha256, "pw", DEFAULT_ITERATIONS);
        let mut server = ScramServer::new(ScramHash::Sha256);
        server
            .client_first(b"n,,n=user,r=abc", |_| Some(stored.clone()))
            .unwrap();
        assert!(matches!(
            server.client_final(b"c=biws,r=abcOTHER,p=AAAA"),
            Err(AuthError::Malformed(_))
        ));
        let mut server = ScramServer::new(ScramHash::Sha256);
        server
            .client_first(b"n,,n=user,r=abc", |_| Some(stored.clone()))
            .unwrap();
        assert!(matches!(
            server.client_final(b"c=biws,r=abc"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn names_with_commas_and_equals_signs_are_escaped() {
        assert_eq!(escape_name("a,b=c"), "a=2Cb=3Dc");
        assert_eq!(unescape_name("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(unescape_name("a=2").is_err());
        assert!(unescape_name("a=41").is_err());
    }
}
