//! Who is asking, and may they: the authorizer both front ends call before they serve a
//! request.
//!
//! A [`Caller`] is made once per request from the connection's session: with the
//! authorizer off, or for a superuser, it allows everything and costs nothing more; else it
//! holds the ACL set as it was when the request arrived (one atomic reference count, no
//! lock) and checks each resource the request names against it.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use super::context::ShardContext;
use super::sasl::{is_superuser, SaslSession, ANONYMOUS};
use crate::auth::acl::{Acls, Operation, ResourceType, CLUSTER_NAME};
use crate::protocol::{ErrorCode, WireError};

/// The principal of one request and what it may do.
pub(crate) struct Caller {
    /// The authenticated user (`None`: anonymous).
    user: Option<Rc<str>>,
    ip: Option<IpAddr>,
    /// `None`: everything is allowed (authorizer off, or a superuser).
    acls: Option<Arc<Acls>>,
    /// Whether the caller may manage users and ACLs without an ACL saying so.
    superuser: bool,
}

impl Caller {
    /// The caller of a request on a connection with `session` from `peer`.
    pub(crate) fn new(
        ctx: &ShardContext,
        session: &SaslSession,
        peer: Option<SocketAddr>,
    ) -> Caller {
        let auth = &ctx.config.auth;
        let superuser = is_superuser(auth, session);
        // No allocation per request: the session's name is shared.
        let user = session.user().cloned();
        let named_superuser = session
            .user()
            .is_some_and(|u| auth.superusers.iter().any(|s| **s == **u));
        let acls = (auth.authorizer && !named_superuser).then(|| ctx.global.acls.current());
        Caller {
            user,
            ip: peer.map(|p| p.ip()),
            acls,
            superuser,
        }
    }

    /// The user's name.
    pub(crate) fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(ANONYMOUS)
    }

    /// Whether every check passes (authorizer off, or a superuser): callers skip their
    /// splitting of requests then.
    pub(crate) fn allows_all(&self) -> bool {
        self.acls.is_none()
    }

    /// Whether the caller may create the topic `name` (Create on the cluster or the topic).
    pub(crate) fn may_create_topic(&self, name: &str) -> bool {
        self.may(Operation::Create, ResourceType::Cluster, CLUSTER_NAME)
            || self.may(Operation::Create, ResourceType::Topic, name)
    }

    /// Whether the caller may do `operation` to the resource.
    pub(crate) fn may(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        match &self.acls {
            None => true,
            Some(acls) => acls.authorize(self.user(), self.ip, operation, resource_type, name),
        }
    }

    /// Whether the caller may manage users and ACLs (`Alter`) or see them (`Describe`):
    /// with the authorizer off, a superuser (anyone, when the broker names none); with it
    /// on, a superuser or whom an ACL on the cluster allows.
    pub(crate) fn may_manage(&self, operation: Operation) -> bool {
        match &self.acls {
            None => self.superuser,
            Some(_) => self.may(operation, ResourceType::Cluster, CLUSTER_NAME),
        }
    }

    /// `Ok` if the caller may do `operation` to the resource, else the native error that
    /// says what it may not do.
    pub(crate) fn check(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), WireError> {
        if self.may(operation, resource_type, name) {
            Ok(())
        } else {
            Err(self.denied(operation, resource_type, name))
        }
    }

    /// The native error for an operation the caller may not do.
    pub(crate) fn denied(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> WireError {
        WireError::new(
            ErrorCode::NotAuthorized,
            format!(
                "User:{} may not {operation} {resource_type} {name}",
                self.user()
            ),
        )
    }
}
