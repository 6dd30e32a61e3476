//! The gRPC API: one module per service, plus the wire conversions and error mapping.
//!
//! Only this module knows protobuf and `tonic::Status`. Handlers validate their input, ask the
//! core for a snapshot or run a decision through `Core::execute`, and convert the answer.

pub mod access;
pub mod agents;
pub mod bounds;
pub mod call_layer;
pub mod caller;
pub mod convert;
pub mod devices;
pub mod error;
pub mod events;
pub mod firmware;
pub mod guard;
pub mod paging;
pub mod rollouts;
pub mod rpc_metrics;
pub mod rpc_trace;
pub mod server_message;
pub mod system;
