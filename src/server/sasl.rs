//! One connection's authentication, for both front ends: which SASL mechanism the client
//! chose, the exchange in progress, and the user it authenticated as.
//!
//! The front ends (`kafka/sasl.rs`, `native/sasl.rs`) only translate their wire messages;
//! the rules live here. A connection moves Open → Chosen (handshake) → Scram (SCRAM's first
//! message) → Authenticated, or to Failed, from which nothing but closing is left. SCRAM
//! costs the shard a few HMACs; PLAIN salts the password it carries (thousands of PBKDF2
//! rounds, milliseconds), so that check runs on a blocking thread, off the shard.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::Global;
use crate::auth::{parse_plain, AuthError, Credential, Mechanism, ScramHash, ScramServer};
use crate::config::AuthConfig;
use crate::storage::Users;

/// The user name of a client that has not authenticated (Kafka's principal for it is
/// `User:ANONYMOUS`).
pub(crate) const ANONYMOUS: &str = "ANONYMOUS";

enum State {
    /// No handshake yet.
    Open,
    /// The client chose a mechanism; its first message is next.
    Chosen(Mechanism),
    /// A SCRAM exchange waits for the client's final message.
    Scram(Box<ScramServer>),
    /// A PLAIN check runs off the shard.
    Checking,
    /// The client is `user`.
    Authenticated(Rc<str>),
    /// Authentication failed: the connection is closed at its next request.
    Failed,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HandshakeError {
    /// The listener does not offer the mechanism.
    Unsupported(String),
    /// A handshake after another one, or after authenticating.
    IllegalState,
}

/// What one authentication message led to.
#[derive(Debug)]
pub(crate) enum Step {
    /// The exchange goes on: send these bytes, expect another message.
    Challenge(Vec<u8>),
    /// The client is `user`; send these bytes (SCRAM's server-final, empty for PLAIN).
    Done { user: Rc<str>, reply: Vec<u8> },
    /// The client failed to authenticate: answer it with a generic message (the reason
    /// and the user it named are for the broker's log only), after the failure delay, and
    /// close.
    Failed {
        /// The user the client named, if it got that far.
        user: Option<String>,
        /// What failed.
        error: AuthError,
    },
    /// An authentication message without a handshake, or after the exchange ended.
    IllegalState,
}

/// One connection's authentication state.
pub(crate) struct SaslSession {
    required: bool,
    state: State,
    /// The exchange travels as bare length-prefixed tokens, not in requests (Kafka's
    /// SaslHandshake v0).
    raw_tokens: bool,
    /// When the client must have authenticated (listeners that require it).
    deadline: Option<Instant>,
    /// The connection's place among the unauthenticated ones, given up on success.
    slot: Option<UnauthenticatedSlot>,
    /// The user was named by a TLS client certificate: a SASL exchange may still log the
    /// connection in as another (as Kafka's SASL_SSL listeners let it).
    by_certificate: bool,
}

/// A connection counted against the bound on unauthenticated connections; uncounted when
/// dropped.
pub(crate) struct UnauthenticatedSlot(Arc<Global>);

impl UnauthenticatedSlot {
    /// Counts one more unauthenticated connection, unless `limit` are open already.
    pub(crate) fn take(global: &Arc<Global>, limit: usize) -> Option<UnauthenticatedSlot> {
        let slot = UnauthenticatedSlot(global.clone());
        (global.unauthenticated.fetch_add(1, Ordering::SeqCst) < limit).then_some(slot)
    }
}

impl Drop for UnauthenticatedSlot {
    fn drop(&mut self) {
        self.0.unauthenticated.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SaslSession {
    /// A session on a listener that does not require authentication.
    pub(crate) fn optional() -> SaslSession {
        SaslSession {
            required: false,
            state: State::Open,
            raw_tokens: false,
            deadline: None,
            slot: None,
            by_certificate: false,
        }
    }

    /// A session authenticated by a verified TLS client certificate naming `user`.
    pub(crate) fn certified(user: &str) -> SaslSession {
        SaslSession {
            required: false,
            state: State::Authenticated(Rc::from(user)),
            raw_tokens: false,
            deadline: None,
            slot: None,
            by_certificate: true,
        }
    }

    /// A session on a listener that requires authentication by `deadline`, holding its
    /// `slot` among the unauthenticated connections until then.
    pub(crate) fn required(deadline: Instant, slot: UnauthenticatedSlot) -> SaslSession {
        SaslSession {
            required: true,
            state: State::Open,
            raw_tokens: false,
            deadline: Some(deadline),
            slot: Some(slot),
            by_certificate: false,
        }
    }

    /// Gives up the connection's place among the unauthenticated ones: the broker is
    /// closing it. Called before the socket closes, so a client that sees the close may
    /// take the place at once.
    pub(crate) fn release_slot(&mut self) {
        self.slot = None;
    }

    /// When the connection must be closed unless it has authenticated.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The authenticated user, if any.
    pub(crate) fn user(&self) -> Option<&Rc<str>> {
        match &self.state {
            State::Authenticated(user) => Some(user),
            _ => None,
        }
    }

    /// Whether requests other than the handshake's may be served now: after
    /// authenticating, or on a listener that does not require it when no exchange is under
    /// way (a client that started one must finish it first).
    pub(crate) fn admits_requests(&self) -> bool {
        match self.state {
            State::Authenticated(_) => true,
            State::Open => !self.required,
            State::Chosen(_) | State::Scram(_) | State::Checking | State::Failed => false,
        }
    }

    /// Marks the exchange as one of bare tokens (after a successful Kafka SaslHandshake v0).
    pub(crate) fn expect_raw_tokens(&mut self) {
        self.raw_tokens = true;
    }

    /// Whether the next frame is a bare token of the exchange, not a request.
    pub(crate) fn takes_raw_tokens(&self) -> bool {
        self.raw_tokens && matches!(self.state, State::Chosen(_) | State::Scram(_))
    }

    /// Chooses `name` among the `offered` mechanisms.
    pub(crate) fn handshake(
        &mut self,
        offered: &[Mechanism],
        name: &str,
    ) -> Result<Mechanism, HandshakeError> {
        let certified = self.by_certificate && matches!(self.state, State::Authenticated(_));
        if !matches!(self.state, State::Open) && !certified {
            return Err(HandshakeError::IllegalState);
        }
        match Mechanism::from_name(name).filter(|m| offered.contains(m)) {
            Some(mechanism) => {
                self.state = State::Chosen(mechanism);
                Ok(mechanism)
            }
            None => Err(HandshakeError::Unsupported(name.to_string())),
        }
    }
}

/// Logs a failed login (with the peer's address and the user it named) and waits the
/// failure delay before the caller answers it. `listener`: `kafka` or `native`.
pub(crate) async fn failed_login(
    listener: &'static str,
    peer: Option<SocketAddr>,
    user: Option<&str>,
    error: &AuthError,
    delay: Duration,
) {
    tracing::warn!(
        ?peer,
        user = user.unwrap_or("?"),
        "{listener} authentication failed: {error}"
    );
    compio::time::sleep(delay).await;
}

/// What a client that may not manage users is told.
pub(crate) const NOT_SUPERUSER: &str =
    "managing users needs a superuser (--superuser) or, with --authorizer on, an ACL on the cluster";

/// Whether the session's user is a superuser — or anyone is, on a broker that names no
/// superuser (as Kafka without an authorizer lets every client alter credentials).
pub(crate) fn is_superuser(auth: &AuthConfig, session: &SaslSession) -> bool {
    auth.superusers.is_empty()
        || session
            .user()
            .is_some_and(|u| auth.superusers.iter().any(|s| **s == **u))
}

/// Takes one authentication message of the exchange on `session`.
pub(crate) async fn authenticate(
    session: &RefCell<SaslSession>,
    users: &Users,
    message: &[u8],
) -> Step {
    let state = std::mem::replace(&mut session.borrow_mut().state, State::Failed);
    let step = match state {
        State::Chosen(Mechanism::Plain) => {
            session.borrow_mut().state = State::Checking;
            check_plain(users, message).await
        }
        State::Chosen(mechanism) => {
            let Some(hash) = mechanism.scram() else {
                return Step::IllegalState;
            };
            let mut server = ScramServer::new(hash);
            match server.client_first(message, |user| users.credential(user, hash)) {
                Ok(reply) => {
                    session.borrow_mut().state = State::Scram(Box::new(server));
                    return Step::Challenge(reply);
                }
                Err(error) => Step::Failed {
                    user: server.user().map(str::to_string),
                    error,
                },
            }
        }
        State::Scram(mut server) => {
            let user = server.user().map(str::to_string);
            match server.client_final(message) {
                Ok((user, reply)) => Step::Done {
                    user: user.into(),
                    reply,
                },
                Err(error) => Step::Failed { user, error },
            }
        }
        other @ (State::Open | State::Checking | State::Authenticated(_)) => {
            // Out of turn: the state stays as it was.
            session.borrow_mut().state = other;
            return Step::IllegalState;
        }
        State::Failed => return Step::IllegalState,
    };
    let mut session = session.borrow_mut();
    session.state = match &step {
        Step::Done { user, .. } => {
            session.deadline = None;
            session.slot = None;
            State::Authenticated(user.clone())
        }
        _ => State::Failed,
    };
    step
}

/// Checks a PLAIN message against the user's SCRAM credential (either hash), on a blocking
/// thread. An unknown user costs the same work as a known one.
async fn check_plain(users: &Users, message: &[u8]) -> Step {
    let (user, password) = match parse_plain(message) {
        Ok(parsed) => parsed,
        Err(error) => return Step::Failed { user: None, error },
    };
    let credential = ScramHash::ALL
        .into_iter()
        .find_map(|hash| users.credential(user, hash));
    let known = credential.is_some();
    // An unknown user's check salts the password all the same, against keys that match
    // no password.
    let credential = credential.unwrap_or_else(|| Credential {
        hash: ScramHash::Sha256,
        salt: vec![0; 32],
        iterations: crate::auth::scram::DEFAULT_ITERATIONS,
        stored_key: Vec::new(),
        server_key: Vec::new(),
    });
    let password = password.to_string();
    let checked =
        compio::runtime::spawn_blocking(move || credential.verify_password(&password)).await;
    if known && checked.unwrap_or(false) {
        Step::Done {
            user: user.into(),
            reply: Vec::new(),
        }
    } else {
        Step::Failed {
            user: Some(user.to_string()),
            error: AuthError::InvalidCredentials,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::DEFAULT_ITERATIONS;
    use crate::auth::ScramClient;

    fn users() -> (tempfile::TempDir, Users) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("meta")).unwrap();
        let users = Users::open(dir.path()).unwrap();
        users
            .upsert(
                "alice",
                Credential::new(ScramHash::Sha512, "pw", DEFAULT_ITERATIONS),
            )
            .unwrap();
        (dir, users)
    }

    #[test]
    fn scram_and_plain_sessions_authenticate_and_fail_for_good() {
        compio::runtime::Runtime::new()
            .unwrap()
            .block_on(sessions());
    }

    async fn sessions() {
        let (_dir, users) = users();
        let global = Arc::new(Global::new(
            1,
            crate::storage::Runs::default(),
            Arc::new(Users::open(_dir.path()).unwrap()),
            Arc::new(crate::storage::AclStore::open(_dir.path()).unwrap()),
            Arc::new(crate::storage::QuotaStore::open(_dir.path()).unwrap()),
        ));
        let offered = [Mechanism::ScramSha512, Mechanism::Plain];

        let session = RefCell::new(SaslSession::required(
            Instant::now(),
            UnauthenticatedSlot::take(&global, 10).unwrap(),
        ));
        assert!(!session.borrow().admits_requests());
        assert_eq!(
            session.borrow_mut().handshake(&offered, "SCRAM-SHA-256"),
            Err(HandshakeError::Unsupported("SCRAM-SHA-256".into()))
        );
        session
            .borrow_mut()
            .handshake(&offered, "SCRAM-SHA-512")
            .unwrap();
        let mut client = ScramClient::new(ScramHash::Sha512, "alice", "pw");
        let Step::Challenge(first) = authenticate(&session, &users, &client.client_first()).await
        else {
            panic!("no challenge")
        };
        let last = client.client_final(&first).unwrap();
        let Step::Done { user, reply } = authenticate(&session, &users, &last).await else {
            panic!("not authenticated")
        };
        assert_eq!(&*user, "alice");
        client.verify_server_final(&reply).unwrap();
        assert!(session.borrow().admits_requests());
        assert_eq!(session.borrow().user().map(|u| &**u), Some("alice"));
        assert_eq!(session.borrow().deadline(), None);
        assert_eq!(global.unauthenticated.load(Ordering::SeqCst), 0);
        assert_eq!(
            session.borrow_mut().handshake(&offered, "PLAIN"),
            Err(HandshakeError::IllegalState)
        );

        for (password, ok) in [("pw", true), ("wrong", false)] {
            let session = RefCell::new(SaslSession::optional());
            assert!(session.borrow().admits_requests());
            session.borrow_mut().handshake(&offered, "PLAIN").unwrap();
            assert!(!session.borrow().admits_requests());
            let step = authenticate(
                &session,
                &users,
                &crate::auth::plain_message("alice", password),
            )
            .await;
            assert_eq!(matches!(step, Step::Done { .. }), ok, "{step:?}");
            assert_eq!(session.borrow().admits_requests(), ok);
        }
        let session = RefCell::new(SaslSession::optional());
        session.borrow_mut().handshake(&offered, "PLAIN").unwrap();
        let step = authenticate(&session, &users, &crate::auth::plain_message("bob", "")).await;
        assert!(matches!(
            step,
            Step::Failed {
                error: AuthError::InvalidCredentials,
                ..
            }
        ));
        assert!(matches!(
            authenticate(&session, &users, b"").await,
            Step::IllegalState
        ));

        let session = RefCell::new(SaslSession::required(
            Instant::now(),
            UnauthenticatedSlot::take(&global, 10).unwrap(),
        ));
        assert!(matches!(
            authenticate(&session, &users, b"n,,n=alice,r=x").await,
            Step::IllegalState
        ));
        assert_eq!(global.unauthenticated.load(Ordering::SeqCst), 1);
        assert!(UnauthenticatedSlot::take(&global, 1).is_none());
        drop(session);
        assert_eq!(global.unauthenticated.load(Ordering::SeqCst), 0);

        // A connection being closed gives its place up before it is dropped.
        let session = RefCell::new(SaslSession::required(
            Instant::now(),
            UnauthenticatedSlot::take(&global, 1).unwrap(),
        ));
        assert!(UnauthenticatedSlot::take(&global, 1).is_none());
        session.borrow_mut().release_slot();
        assert_eq!(global.unauthenticated.load(Ordering::SeqCst), 0);
        assert!(!session.borrow().admits_requests());
    }
}
