//! Access control lists in Kafka's model, free of I/O: who (a principal, from a host) may
//! do what (an operation) to which resource (a topic, a group, the cluster), allowed or
//! denied. The broker's authorizer ([`Acls::authorize`]) lets a request through when an
//! ACL allows it and none denies it: deny wins, and what no ACL allows is denied.
//!
//! As in Kafka, an allowed Read, Write, Delete or Alter implies Describe of the same
//! resource, and an allowed AlterConfigs implies DescribeConfigs. A resource name `*` with
//! a literal pattern matches every resource of its type; a prefixed pattern matches the
//! names that start with it. Principal `User:*` and host `*` match everyone.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The kinds of resource an ACL protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// A topic.
    Topic,
    /// A consumer or share group.
    Group,
    /// The broker itself (topic creation, user and ACL management).
    Cluster,
}

/// How an ACL's resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatternType {
    /// The name exactly (`*`: every name).
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

/// What a request does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Every operation (in an ACL only).
    All,
    /// Fetch from a topic; join, commit to or fetch from a group.
    Read,
    /// Produce to a topic.
    Write,
    /// Create a topic.
    Create,
    /// Delete a topic or group.
    Delete,
    /// Add partitions; manage users and ACLs (cluster).
    Alter,
    /// See a topic, group or the cluster.
    Describe,
    /// Read a topic's configs.
    DescribeConfigs,
    /// Change a topic's configs.
    AlterConfigs,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Grants the operation unless a deny matches too.
    Allow,
    /// Refuses the operation, whatever allows it.
    Deny,
}

/// One access control entry bound to a resource pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Acl {
    /// The resource type.
    pub resource_type: ResourceType,
    /// The resource name, or `*` (literal) for every resource of the type. The cluster's
    /// name is `kafka-cluster`, as in Kafka.
    pub resource_name: String,
    /// How `resource_name` matches.
    pub pattern: PatternType,
    /// `User:NAME`, or `User:*` for everyone.
    pub principal: String,
    /// An IP address, or `*` for any.
    pub host: String,
    /// The operation.
    pub operation: Operation,
    /// Allow or deny.
    pub permission: Permission,
}

/// The cluster resource's name.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The principal prefix of users.
pub const USER_PREFIX: &str = "User:";

/// A filter over ACLs (Kafka's DescribeAcls and DeleteAcls): `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFilter {
    /// The resource type.
    pub resource_type: Option<ResourceType>,
    /// The resource name, as stored.
    pub resource_name: Option<String>,
    /// The pattern type.
    pub pattern: Option<PatternType>,
    /// The principal, as stored.
    pub principal: Option<String>,
    /// The host, as stored.
    pub host: Option<String>,
    /// The operation.
    pub operation: Option<Operation>,
    /// The permission.
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// Whether `acl` passes the filter (every given field equal).
    pub fn matches(&self, acl: &Acl) -> bool {
        self.resource_type.is_none_or(|t| t == acl.resource_type)
            && self
                .resource_name
                .as_deref()
                .is_none_or(|n| n == acl.resource_name)
            && self.pattern.is_none_or(|p| p == acl.pattern)
            && self.principal.as_deref().is_none_or(|p| p == acl.principal)
            && self.host.as_deref().is_none_or(|h| h == acl.host)
            && self.operation.is_none_or(|o| o == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

impl Acl {
    /// Checks the fields a stored ACL must have: a `User:` principal, a name, an operation
    /// that applies to the resource type.
    pub fn validate(&self) -> Result<(), String> {
        let Some(user) = self.principal.strip_prefix(USER_PREFIX) else {
            return Err(format!(
                "principal {:?} must be User:NAME or User:*",
                self.principal
            ));
        };
        if user.is_empty() {
            return Err("an empty principal name".into());
        }
        if self.resource_name.is_empty() {
            return Err("an empty resource name".into());
        }
        if self.host.is_empty() {
            return Err("an empty host (use * for any)".into());
        }
        if self.resource_type == ResourceType::Cluster && self.resource_name != CLUSTER_NAME {
            return Err(format!("the cluster's name is {CLUSTER_NAME}"));
        }
        let fits = match self.resource_type {
            ResourceType::Topic => true,
            ResourceType::Group => matches!(
                self.operation,
                Operation::All | Operation::Read | Operation::Delete | Operation::Describe
            ),
            ResourceType::Cluster => matches!(
                self.operation,
                Operation::All
                    | Operation::Create
                    | Operation::Alter
                    | Operation::Describe
                    | Operation::DescribeConfigs
                    | Operation::AlterConfigs
            ),
        };
        if !fits {
            return Err(format!(
                "{} does not apply to a {}",
                self.operation, self.resource_type
            ));
        }
        Ok(())
    }

    fn matches_resource(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern {
                PatternType::Literal => self.resource_name == "*" || self.resource_name == name,
                PatternType::Prefixed => name.starts_with(&self.resource_name),
            }
    }

    fn matches_who(&self, user: &str, host: Option<IpAddr>) -> bool {
        let principal = self.principal.strip_prefix(USER_PREFIX);
        (principal == Some("*") || principal == Some(user))
            && (self.host == "*"
                || host.is_some_and(|h| self.host.parse::<IpAddr>().is_ok_and(|a| a == h)))
    }
}

/// Whether an ACL granting `granted` lets `wanted` through (Kafka's implications).
fn implies(granted: Operation, wanted: Operation) -> bool {
    granted == Operation::All
        || granted == wanted
        || (wanted == Operation::Describe
            && matches!(
                granted,
                Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
            ))
        || (wanted == Operation::DescribeConfigs && granted == Operation::AlterConfigs)
}

/// A set of ACLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acls {
    acls: Vec<Acl>,
}

impl Acls {
    /// The set of `acls` (duplicates dropped).
    pub fn new(mut acls: Vec<Acl>) -> Acls {
        acls.sort();
        acls.dedup();
        Acls { acls }
    }

    /// Every ACL, sorted.
    pub fn all(&self) -> &[Acl] {
        &self.acls
    }

    /// Whether `user` (the name in `User:NAME`) from `host` may do `operation` to the
    /// resource: an ACL allows it and none denies it.
    pub fn authorize(
        &self,
        user: &str,
        host: Option<IpAddr>,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        let mut allowed = false;
        for acl in &self.acls {
            if !acl.matches_resource(resource_type, name) || !acl.matches_who(user, host) {
                continue;
            }
            match acl.permission {
                // A deny of Describe does not take away Read: only the operation itself or
                // All denies.
                Permission::Deny
                    if acl.operation == Operation::All || acl.operation == operation =>
                {
                    return false
                }
                Permission::Deny => {}
                Permission::Allow if implies(acl.operation, operation) => allowed = true,
                Permission::Allow => {}
            }
        }
        allowed
    }
}

/// The number Kafka's ACL APIs use for "any" in a filter, for every enum.
pub const ANY_CODE: i8 = 1;

macro_rules! names {
    ($ty:ident { $($variant:ident => $name:literal = $code:literal,)* }) => {
        impl $ty {
            /// Every value.
            pub const ALL_VALUES: &'static [$ty] = &[$($ty::$variant),*];

            /// The name Kafka's tools print.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)*
                }
            }

            /// The number Kafka's ACL APIs (and the native ones) give it.
            pub fn code(self) -> i8 {
                match self {
                    $($ty::$variant => $code,)*
                }
            }

            /// The value numbered `code`.
            pub fn from_code(code: i8) -> Option<$ty> {
                match code {
                    $($code => Some($ty::$variant),)*
                    _ => None,
                }
            }

            /// A filter's field: `None` for [`ANY_CODE`], an error for an unknown number.
            pub fn filter_code(code: i8) -> Result<Option<$ty>, String> {
                if code == ANY_CODE {
                    return Ok(None);
                }
                $ty::from_code(code)
                    .map(Some)
                    .ok_or_else(|| format!("unknown {} code {code}", stringify!($ty)))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<$ty, String> {
                let wanted: String = s.chars().filter(|c| *c != '_' && *c != '-').collect();
                $ty::ALL_VALUES
                    .iter()
                    .copied()
                    .find(|v| v.name().eq_ignore_ascii_case(&wanted))
                    .ok_or_else(|| {
                        let names: Vec<&str> = $ty::ALL_VALUES.iter().map(|v| v.name()).collect();
                        format!("unknown {} {s:?}: one of {}", stringify!($ty), names.join(", "))
                    })
            }
        }
    };
}

names!(ResourceType {
    Topic => "Topic" = 2,
    Group => "Group" = 3,
    Cluster => "Cluster" = 4,
});
names!(PatternType {
    Literal => "Literal" = 3,
    Prefixed => "Prefixed" = 4,
});
names!(Operation {
    All => "All" = 2,
    Read => "Read" = 3,
    Write => "Write" = 4,
    Create => "Create" = 5,
    Delete => "Delete" = 6,
    Alter => "Alter" = 7,
    Describe => "Describe" = 8,
    DescribeConfigs => "DescribeConfigs" = 10,
    AlterConfigs => "AlterConfigs" = 11,
});
names!(Permission {
    Deny => "Deny" = 2,
    Allow => "Allow" = 3,
});

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} on {}:{}{} from {} ({})",
            self.permission,
            self.principal,
            self.resource_type,
            self.resource_name,
            if self.pattern == PatternType::Prefixed {
                "*"
            } else {
                ""
            },
            self.host,
            self.operation,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        resource_type: ResourceType,
        name: &str,
        pattern: PatternType,
        principal: &str,
        operation: Operation,
        permission: Permission,
    ) -> Acl {
        Acl {
            resource_type,
            resource_name: name.into(),
            pattern,
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        }
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn nothing_is_allowed_without_an_acl_and_deny_wins() {
        let acls = Acls::new(vec![
            acl(Topic, "orders", Literal, "User:alice", Read, Allow),
            acl(Topic, "orders", Literal, "User:*", Write, Allow),
            acl(Topic, "orders", Literal, "User:mallory", All, Deny),
        ]);
        let ip = Some("10.0.0.1".parse().unwrap());
        let may = |who: &str, op| acls.authorize(who, ip, op, Topic, "orders");
        assert!(may("alice", Read));
        assert!(may("alice", Write));
        assert!(may("alice", Describe), "Read implies Describe");
        assert!(!may("alice", Delete));
        assert!(!may("alice", DescribeConfigs));
        assert!(may("bob", Write));
        assert!(!may("bob", Read));
        assert!(!may("mallory", Write), "deny wins over User:*");
        assert!(!acls.authorize("alice", None, Read, Topic, "payments"));
        assert!(!acls.authorize("alice", None, Read, Group, "orders"));
    }

    #[test]
    fn prefixed_and_wildcard_patterns_and_hosts_match() {
        let mut only_host = acl(Group, "*", Literal, "User:carol", Read, Allow);
        only_host.host = "127.0.0.1".into();
        let acls = Acls::new(vec![
            acl(Topic, "billing.", Prefixed, "User:bob", All, Allow),
            acl(Topic, "billing.secret", Literal, "User:bob", Read, Deny),
            only_host,
            acl(Topic, "orders", Literal, "User:bob", AlterConfigs, Allow),
        ]);
        let bob = |op, name: &str| acls.authorize("bob", None, op, Topic, name);
        assert!(bob(Write, "billing.eu"));
        assert!(bob(Delete, "billing.us"));
        assert!(
            !bob(Read, "billing"),
            "the prefix itself is longer than the name"
        );
        assert!(!bob(Read, "billing.secret"));
        assert!(bob(Write, "billing.secret"), "only Read is denied");
        assert!(
            bob(DescribeConfigs, "orders"),
            "AlterConfigs implies DescribeConfigs"
        );
        assert!(!bob(Describe, "orders"));
        let from = |ip: &str| Some(ip.parse().unwrap());
        assert!(acls.authorize("carol", from("127.0.0.1"), Read, Group, "any"));
        assert!(!acls.authorize("carol", from("10.1.1.1"), Read, Group, "any"));
        assert!(!acls.authorize("carol", None, Read, Group, "any"));
    }

    #[test]
    fn names_parse_and_bad_acls_are_refused() {
        assert_eq!("describe_configs".parse::<Operation>(), Ok(DescribeConfigs));
        assert_eq!("TOPIC".parse::<ResourceType>(), Ok(Topic));
        assert!("Burn".parse::<Operation>().is_err());
        assert!(acl(Topic, "t", Literal, "alice", Read, Allow)
            .validate()
            .is_err());
        assert!(acl(Group, "g", Literal, "User:a", Write, Allow)
            .validate()
            .is_err());
        assert!(acl(Cluster, "c", Literal, "User:a", Alter, Allow)
            .validate()
            .is_err());
        assert!(acl(Cluster, CLUSTER_NAME, Literal, "User:a", Alter, Allow)
            .validate()
            .is_ok());
        let filter = AclFilter {
            principal: Some("User:a".into()),
            ..AclFilter::default()
        };
        assert!(filter.matches(&acl(Topic, "t", Literal, "User:a", Read, Allow)));
        assert!(!filter.matches(&acl(Topic, "t", Literal, "User:b", Read, Allow)));
    }
}
