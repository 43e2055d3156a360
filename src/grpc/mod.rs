//! Our own gRPC over HTTP/2 (h2), server and client. Layered like h2 itself:
//! `codec` frames messages, `status` and `timeout` encode headers, `call`
//! and `router` give handlers typed streams, `server` and `client` own the
//! connections. Services never see a frame.

pub mod call;
pub mod client;
pub mod codec;
mod flow;
pub mod router;
pub mod server;
pub mod status;
pub mod timeout;

pub use call::{Finished, Inbound, Outbound, RequestContext};
pub use client::Channel;
pub use router::{unary, Call, Handler, Router};
pub use server::{PeerInfo, Server, ServerConfig, Shutdown};
pub use status::{Code, Status};

#[cfg(test)]
mod tests;
