//! Our own gRPC over HTTP/2 (h2), server and client. Layered like h2 itself:
//! `codec` frames messages, `status` and `timeout` encode headers, `call`,
//! `router` and `streaming` give handlers typed messages and streams,
//! `server` and `client` own the connections, and `connector` keeps one
//! peer connected. Services never see a frame.

pub mod call;
pub mod client;
pub mod codec;
pub mod connector;
mod flow;
mod queued;
pub mod router;
pub mod server;
pub mod status;
pub mod streaming;
pub mod timeout;
mod write_batch;

pub use call::{Finished, Inbound, Outbound, RequestContext};
pub use client::{Channel, Keepalive};
pub use connector::{Connector, ConnectorSettings, TlsTarget};
pub use router::{unary, Call, Handler, Router};
pub use server::{PeerInfo, Server, ServerConfig, Shutdown};
pub use status::{Code, Status};
pub use streaming::{bidi_streaming, server_streaming, Requests, Responses};

#[cfg(test)]
mod tests;
