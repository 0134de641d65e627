//! SaslHandshake, SaslAuthenticate, DescribeUserScramCredentials and
//! AlterUserScramCredentials: the Kafka side of authentication and user management.
//!
//! After SaslHandshake v1 the exchange travels in SaslAuthenticate requests; after v0 (still
//! what some clients check the broker offers) as bare length-prefixed tokens
//! ([`raw_token`]). A failed authentication is answered SASL_AUTHENTICATION_FAILED after
//! the failure delay (a bare exchange is closed instead), and the connection serves nothing
//! more.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::auth::acl::Operation;
use crate::auth::ScramHash;
use crate::protocol::kafka::error as code;
use crate::server::authorizer::Caller;
use crate::server::context::ShardContext;
use crate::server::sasl::{self, HandshakeError, SaslSession, Step, NOT_SUPERUSER};
use crate::storage::UserError;

/// SaslHandshake: chooses the mechanism and lists the ones offered.
pub(super) fn handshake(
    ctx: &ShardContext,
    session: &RefCell<SaslSession>,
    request: SaslHandshakeRequest,
    version: i16,
) -> SaslHandshakeResponse {
    let offered = &ctx.config.auth.kafka.mechanisms;
    let mut session = session.borrow_mut();
    let error_code = match session.handshake(offered, request.mechanism.as_str()) {
        Ok(_) => {
            if version == 0 {
                session.expect_raw_tokens();
            }
            code::NONE
        }
        Err(HandshakeError::Unsupported(name)) => {
            tracing::info!(mechanism = %name, "kafka SASL handshake: mechanism not offered");
            code::UNSUPPORTED_SASL_MECHANISM
        }
        Err(HandshakeError::IllegalState) => code::ILLEGAL_SASL_STATE,
    };
    SaslHandshakeResponse::default()
        .with_error_code(error_code)
        .with_mechanisms(
            offered
                .iter()
                .map(|m| StrBytes::from_static_str(m.name()))
                .collect(),
        )
}

/// SaslAuthenticate: one message of the exchange.
pub(super) async fn authenticate(
    ctx: &ShardContext,
    session: &RefCell<SaslSession>,
    request: SaslAuthenticateRequest,
    peer: Option<SocketAddr>,
) -> SaslAuthenticateResponse {
    let response = SaslAuthenticateResponse::default();
    match sasl::authenticate(session, &ctx.global.users, &request.auth_bytes).await {
        Step::Challenge(reply) => response.with_auth_bytes(Bytes::from(reply)),
        Step::Done { user, reply } => {
            tracing::debug!(?peer, %user, "kafka client authenticated");
            response.with_auth_bytes(Bytes::from(reply))
        }
        Step::Failed { user, error } => {
            let delay = ctx.config.auth.failure_delay;
            sasl::failed_login("kafka", peer, user.as_deref(), &error, delay).await;
            response
                .with_error_code(code::SASL_AUTHENTICATION_FAILED)
                .with_error_message(Some(StrBytes::from_static_str(
                    "Authentication failed: invalid user name or password",
                )))
        }
        Step::IllegalState => response
            .with_error_code(code::ILLEGAL_SASL_STATE)
            .with_error_message(Some(StrBytes::from_static_str(
                "SaslAuthenticate out of turn: SaslHandshake first, once per connection",
            ))),
    }
}

/// One bare token of an exchange after SaslHandshake v0: the framed reply, or `None` when
/// the client failed (after the failure delay) and the connection must close.
pub(crate) async fn raw_token(
    ctx: &ShardContext,
    session: &RefCell<SaslSession>,
    token: &[u8],
    peer: Option<SocketAddr>,
) -> Option<Bytes> {
    let reply = match sasl::authenticate(session, &ctx.global.users, token).await {
        Step::Challenge(reply) => reply,
        Step::Done { user, reply } => {
            tracing::debug!(?peer, %user, "kafka client authenticated (SaslHandshake v0)");
            reply
        }
        Step::Failed { user, error } => {
            let delay = ctx.config.auth.failure_delay;
            sasl::failed_login("kafka", peer, user.as_deref(), &error, delay).await;
            return None;
        }
        Step::IllegalState => return None,
    };
    let mut framed = Vec::with_capacity(4 + reply.len());
    framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
    framed.extend_from_slice(&reply);
    Some(Bytes::from(framed))
}

/// DescribeUserScramCredentials: every user's mechanisms and iteration counts (never a
/// salt or a key), or the named users'.
pub(super) fn describe_user_scram_credentials(
    ctx: &ShardContext,
    caller: &Caller,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let response = DescribeUserScramCredentialsResponse::default();
    if !caller.may_manage(Operation::Describe) {
        return response
            .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(Some(StrBytes::from_static_str(NOT_SUPERUSER)));
    }
    let table = ctx.global.users.table();
    let info = |name: &str| {
        table.get(name).map(|credentials| {
            credentials
                .values()
                .map(|c| {
                    CredentialInfo::default()
                        .with_mechanism(c.hash.kafka_type())
                        .with_iterations(c.iterations as i32)
                })
                .collect::<Vec<_>>()
        })
    };
    let names: Vec<String> = match &request.users {
        Some(users) if !users.is_empty() => users.iter().map(|u| u.name.to_string()).collect(),
        _ => table.keys().cloned().collect(),
    };
    let mut seen = BTreeSet::new();
    let results = names
        .into_iter()
        .map(|name| {
            let result = DescribeUserScramCredentialsResult::default()
                .with_user(StrBytes::from_string(name.clone()));
            if !seen.insert(name.clone()) {
                return result
                    .with_error_code(code::DUPLICATE_RESOURCE)
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "user {name} named twice"
                    ))));
            }
            match info(&name) {
                Some(infos) => result.with_credential_infos(infos),
                None => result
                    .with_error_code(code::RESOURCE_NOT_FOUND)
                    .with_error_message(Some(StrBytes::from_string(format!("no user {name}")))),
            }
        })
        .collect();
    response.with_results(results)
}

/// AlterUserScramCredentials: adds, replaces and removes credentials. The client sends a
/// salted password (the password itself never reaches the broker); each change is durable
/// before it is answered.
pub(super) fn alter_user_scram_credentials(
    ctx: &ShardContext,
    caller: &Caller,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let allowed = caller.may_manage(Operation::Alter);
    let users = &ctx.global.users;
    // Kafka refuses a user named twice in one request (in either list) as a whole.
    let mut count = std::collections::BTreeMap::<String, usize>::new();
    for name in request
        .deletions
        .iter()
        .map(|d| &d.name)
        .chain(request.upsertions.iter().map(|u| &u.name))
    {
        *count.entry(name.to_string()).or_default() += 1;
    }
    let result = |name: &StrBytes, outcome: Result<(), (i16, String)>| {
        let result = AlterUserScramCredentialsResult::default().with_user(name.clone());
        match outcome {
            Ok(()) => result,
            Err((error, message)) => result
                .with_error_code(error)
                .with_error_message(Some(StrBytes::from_string(message))),
        }
    };
    let precheck = |name: &StrBytes, mechanism: i8| -> Result<ScramHash, (i16, String)> {
        if !allowed {
            return Err((code::CLUSTER_AUTHORIZATION_FAILED, NOT_SUPERUSER.into()));
        }
        if count.get(name.as_str()).copied().unwrap_or(0) > 1 {
            return Err((
                code::DUPLICATE_RESOURCE,
                format!("user {name} named more than once in one request"),
            ));
        }
        ScramHash::from_kafka_type(mechanism).ok_or_else(|| {
            (
                code::UNSUPPORTED_SASL_MECHANISM,
                format!("unknown SCRAM mechanism {mechanism}"),
            )
        })
    };
    let stored = |outcome: Result<(), UserError>| {
        outcome.map_err(|e| match e {
            UserError::NotFound(_) => (code::RESOURCE_NOT_FOUND, e.to_string()),
            UserError::InvalidName(_) | UserError::Iterations(_) | UserError::EmptyCredential => {
                (code::UNACCEPTABLE_CREDENTIAL, e.to_string())
            }
            UserError::Storage(_) => {
                tracing::error!("storing a user change failed: {e}");
                (code::UNKNOWN_SERVER_ERROR, e.to_string())
            }
        })
    };
    let mut results = Vec::new();
    for deletion in &request.deletions {
        let outcome = precheck(&deletion.name, deletion.mechanism)
            .and_then(|hash| stored(users.remove(deletion.name.as_str(), Some(hash))));
        if outcome.is_ok() {
            tracing::info!(user = %deletion.name, mechanism = deletion.mechanism, "SCRAM credential removed");
        }
        results.push(result(&deletion.name, outcome));
    }
    for upsertion in &request.upsertions {
        let outcome = precheck(&upsertion.name, upsertion.mechanism).and_then(|hash| {
            stored(users.upsert_salted(
                upsertion.name.as_str(),
                hash,
                upsertion.iterations.into(),
                &upsertion.salt,
                &upsertion.salted_password,
            ))
        });
        if outcome.is_ok() {
            tracing::info!(user = %upsertion.name, mechanism = upsertion.mechanism, "SCRAM credential set");
        }
        results.push(result(&upsertion.name, outcome));
    }
    AlterUserScramCredentialsResponse::default().with_results(results)
}

/// The session a connection's requests share.
pub(crate) type Session = Rc<RefCell<SaslSession>>;
