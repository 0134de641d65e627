//! The native protocol's SASL exchange (SaslHandshake, SaslAuthenticate) and user
//! management (ListUsers, UpsertUser, DeleteUser). The rules are `server/sasl.rs`'s, the
//! same as the Kafka listener's; only the messages differ.

use std::cell::RefCell;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::auth::{Mechanism, ScramHash};
use crate::protocol::api::*;
use crate::protocol::{ErrorCode, WireError};
use crate::server::context::ShardContext;
use crate::server::sasl::{self, HandshakeError, SaslSession, Step};
use crate::storage::UserError;

pub(super) fn handshake(
    ctx: &ShardContext,
    session: &RefCell<SaslSession>,
    r: SaslHandshakeRequest,
) -> Result<Response, WireError> {
    let offered = &ctx.config.auth.native.mechanisms;
    let names: Vec<String> = offered.iter().map(|m| m.name().to_string()).collect();
    match session.borrow_mut().handshake(offered, &r.mechanism) {
        Ok(_) => Ok(Response::SaslHandshake(SaslHandshakeResponse {
            mechanisms: names,
        })),
        Err(HandshakeError::Unsupported(name)) => Err(WireError::new(
            ErrorCode::UnsupportedSaslMechanism,
            format!(
                "this listener does not offer {name:?}; it offers: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )),
        Err(HandshakeError::IllegalState) => Err(WireError::new(
            ErrorCode::IllegalSaslState,
            "one SASL handshake per connection, before authenticating",
        )),
    }
}

pub(super) async fn authenticate(
    ctx: &ShardContext,
    session: &RefCell<SaslSession>,
    r: SaslBytes,
    peer: Option<SocketAddr>,
) -> Result<Response, WireError> {
    let reply = match sasl::authenticate(session, &ctx.global.users, &r.bytes).await {
        Step::Challenge(reply) => reply,
        Step::Done { user, reply } => {
            tracing::debug!(?peer, %user, "native client authenticated");
            reply
        }
        Step::Failed { user, error } => {
            let delay = ctx.config.auth.failure_delay;
            sasl::failed_login("native", peer, user.as_deref(), &error, delay).await;
            return Err(WireError::new(
                ErrorCode::AuthenticationFailed,
                "authentication failed: invalid user name or password",
            ));
        }
        Step::IllegalState => {
            return Err(WireError::new(
                ErrorCode::IllegalSaslState,
                "SaslAuthenticate out of turn: SaslHandshake first, once per connection",
            ))
        }
    };
    Ok(Response::SaslAuthenticate(SaslBytes {
        bytes: Bytes::from(reply),
    }))
}

fn scram_hash(mechanism: &str) -> Result<ScramHash, WireError> {
    Mechanism::from_name(mechanism)
        .and_then(Mechanism::scram)
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::UnsupportedSaslMechanism,
                format!("{mechanism:?} is not a SCRAM mechanism: SCRAM-SHA-256 or SCRAM-SHA-512"),
            )
        })
}

fn stored(outcome: Result<(), UserError>) -> Result<Response, WireError> {
    outcome.map(|()| Response::UpsertUser).map_err(|e| {
        let code = match e {
            UserError::NotFound(_) => ErrorCode::UnknownUser,
            UserError::InvalidName(_) | UserError::Iterations(_) | UserError::EmptyCredential => {
                ErrorCode::InvalidRequest
            }
            UserError::Storage(_) => {
                tracing::error!("storing a user change failed: {e}");
                ErrorCode::StorageError
            }
        };
        WireError::new(code, e.to_string())
    })
}

/// ListUsers (the caller was checked: `authorize` in mod.rs).
pub(super) fn list_users(ctx: &ShardContext) -> Result<Response, WireError> {
    let users = ctx
        .global
        .users
        .table()
        .iter()
        .map(|(name, credentials)| UserDescription {
            name: name.clone(),
            credentials: credentials
                .values()
                .map(|c| CredentialInfo {
                    mechanism: c.hash.name().to_string(),
                    iterations: c.iterations,
                })
                .collect(),
        })
        .collect();
    Ok(Response::ListUsers(ListUsersResponse { users }))
}

/// UpsertUser (the caller was checked).
pub(super) fn upsert_user(ctx: &ShardContext, r: UpsertUserRequest) -> Result<Response, WireError> {
    let hash = scram_hash(&r.mechanism)?;
    let outcome = ctx.global.users.upsert_salted(
        &r.name,
        hash,
        r.iterations.into(),
        &r.salt,
        &r.salted_password,
    );
    if outcome.is_ok() {
        tracing::info!(user = %r.name, mechanism = %r.mechanism, "SCRAM credential set");
    }
    stored(outcome)
}

/// DeleteUser (the caller was checked).
pub(super) fn delete_user(ctx: &ShardContext, r: DeleteUserRequest) -> Result<Response, WireError> {
    let hash = if r.mechanism.is_empty() {
        None
    } else {
        Some(scram_hash(&r.mechanism)?)
    };
    let outcome = ctx.global.users.remove(&r.name, hash);
    if outcome.is_ok() {
        tracing::info!(user = %r.name, "user removed");
    }
    stored(outcome).map(|_| Response::DeleteUser)
}
