//! What the labels of the request and connection metrics name.

/// A listener kind, the `listener` label of the connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The native protocol's shared port.
    Native,
    /// A shard's own native port.
    Direct,
    /// The Kafka protocol's port.
    Kafka,
}

impl Listener {
    /// Every listener kind, in label order.
    pub const ALL: [Listener; 3] = [Listener::Native, Listener::Direct, Listener::Kafka];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Listener::Native => "native",
            Listener::Direct => "direct",
            Listener::Kafka => "kafka",
        }
    }
}

/// The wire protocol a request came in, the `protocol` label of the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireProtocol {
    /// Eventflow's own protocol.
    Native,
    /// Kafka's protocol.
    Kafka,
}

impl WireProtocol {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            WireProtocol::Native => "native",
            WireProtocol::Kafka => "kafka",
        }
    }
}

/// A request's API, its number in its protocol's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiId {
    /// The protocol.
    pub protocol: WireProtocol,
    /// The API key.
    pub key: i16,
}

/// How a request ended, for the `error` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered without a request-level error.
    Ok,
    /// Answered with this native error code.
    Error(u16),
    /// The connection was closed instead of answering.
    Closed,
}
