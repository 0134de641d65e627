//! InitProducerId: producer ids for idempotent producers, from the durable counter every
//! shard shares (`storage::ProducerIds`). The partitions check the producers' batches
//! themselves (`storage::producers`); nothing here keeps state.
//!
//! - No transactional id: a new id at epoch 0, or, when the request carries the producer's
//!   current id and epoch (v3+, after an error that leaves its sequences in doubt), the
//!   same id at the next epoch.
//! - A transactional id: `COORDINATOR_NOT_AVAILABLE`, the answer FindCoordinator gives for
//!   transaction keys, and what a Kafka broker answers while no transaction coordinator
//!   can be reached (say, its transaction log cannot be created). Clients retry it until
//!   their own timeout: eventflow has no transactions.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::protocol::StrBytes;

use crate::protocol::kafka::error::{error_code, COORDINATOR_NOT_AVAILABLE, INVALID_REQUEST};
use crate::server::context::ShardContext;
use crate::server::partitions::storage_error;

pub(super) fn init_producer_id(
    ctx: &ShardContext,
    r: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let refused = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    match r.transactional_id.as_deref().map(StrBytes::as_str) {
        None => {}
        // Kafka refuses an empty transactional id outright.
        Some("") => return refused(INVALID_REQUEST),
        Some(id) => {
            tracing::debug!(
                transactional_id = id,
                "InitProducerId for a transaction refused"
            );
            return refused(COORDINATOR_NOT_AVAILABLE);
        }
    }
    let (id, epoch) = (r.producer_id.0, r.producer_epoch);
    let allocated = match (id < 0, epoch < 0) {
        (true, true) => ctx.producer_ids.allocate().map(|id| (id, 0)),
        (false, false) => ctx.producer_ids.bump(id, epoch),
        // One without the other.
        _ => return refused(INVALID_REQUEST),
    };
    match allocated {
        Ok((id, epoch)) => {
            tracing::debug!(producer_id = id, epoch, "producer id issued");
            InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch)
        }
        Err(e) => refused(error_code(storage_error(e).code)),
    }
}
