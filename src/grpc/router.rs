//! Maps `/package.Service/Method` paths to handlers, and adapts typed async
//! functions into handlers so services never see frames.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use prost::Message;

use super::call::{Finished, Inbound, Outbound, RequestContext};
use super::status::Status;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One server-side call handed to a handler.
pub struct Call {
    pub ctx: RequestContext,
    pub inbound: Inbound,
    pub outbound: Outbound,
}

/// A method implementation: consumes the call and finishes it.
pub type Handler = Arc<dyn Fn(Call) -> BoxFuture<Finished> + Send + Sync>;

/// The method table of one server.
#[derive(Default, Clone)]
pub struct Router {
    methods: HashMap<String, Handler>,
    services: HashSet<String>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Registers `handler` for `service`/`method` (service is the full
    /// protobuf name, e.g. `etcdserverpb.KV`).
    pub fn add(&mut self, service: &str, method: &str, handler: Handler) {
        self.services.insert(service.to_string());
        self.methods.insert(format!("/{service}/{method}"), handler);
    }

    /// Registers methods of a known service that we deliberately do not
    /// serve; they answer Unimplemented "method X not implemented".
    pub fn add_unimplemented(&mut self, service: &str, methods: &[&str]) {
        for method in methods {
            let text = format!("method {method} not implemented");
            let handler: Handler = Arc::new(move |call: Call| {
                let text = text.clone();
                Box::pin(async move { call.outbound.finish(Err(Status::unimplemented(text))) })
            });
            self.add(service, method, handler);
        }
    }

    /// Finds the handler for a request path, or the status grpc-go gives
    /// for unknown services and methods.
    pub fn lookup(&self, path: &str) -> Result<&Handler, Status> {
        if let Some(h) = self.methods.get(path) {
            return Ok(h);
        }
        let malformed = || Status::unimplemented(format!("malformed method name: {path:?}"));
        let rest = path.strip_prefix('/').ok_or_else(malformed)?;
        let (service, method) = rest.rsplit_once('/').ok_or_else(malformed)?;
        if self.services.contains(service) {
            Err(Status::unimplemented(format!(
                "unknown method {method} for service {service}"
            )))
        } else {
            Err(Status::unimplemented(format!("unknown service {service}")))
        }
    }
}

/// Adapts `async fn(Req, RequestContext) -> Result<Resp, Status>` into a
/// unary handler: one request message in, one response message out. The
/// client's deadline is enforced and a client reset drops the work.
pub fn unary<Req, Resp, F, Fut>(f: F) -> Handler
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Send + 'static,
    F: Fn(Req, RequestContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let f = Arc::new(f);
    handler(move |call: Call| {
        let f = f.clone();
        async move {
            let Call {
                ctx,
                mut inbound,
                mut outbound,
            } = call;
            let request: Req = match inbound.expect_one().await {
                Ok(r) => r,
                Err(status) => return outbound.finish(Err(status)),
            };
            let deadline = ctx.deadline;
            let work = f(request, ctx);
            let result = tokio::select! {
                r = with_deadline(deadline, work) => r,
                _ = outbound.reset() => Err(Status::cancelled("call cancelled by the client")),
            };
            let result = match result {
                Ok(response) => outbound.send(&response).await,
                Err(status) => Err(status),
            };
            let finished = outbound.finish(result);
            inbound.close_after_answer();
            finished
        }
    })
}

/// A handler from an async function of the whole call.
pub(crate) fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Finished> + Send + 'static,
{
    Arc::new(move |call: Call| Box::pin(f(call)))
}

/// Runs `work` until `deadline`, answering DeadlineExceeded when it passes.
pub async fn with_deadline<T>(
    deadline: Option<tokio::time::Instant>,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline {
        Some(at) => match tokio::time::timeout_at(at, work).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded("context deadline exceeded")),
        },
        None => work.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::status::Code;

    #[test]
    fn unknown_paths_get_grpc_go_texts() {
        let mut r = Router::new();
        r.add_unimplemented("etcdserverpb.Maintenance", &["Defragment"]);
        let err = r.lookup("/etcdserverpb.Maintenance/Nope").err().unwrap();
        assert_eq!(err.code, Code::Unimplemented);
        assert_eq!(
            err.message,
            "unknown method Nope for service etcdserverpb.Maintenance"
        );
        let err = r.lookup("/x.Y/Z").err().unwrap();
        assert_eq!(err.message, "unknown service x.Y");
        let err = r.lookup("nonsense").err().unwrap();
        assert_eq!(err.code, Code::Unimplemented);
        assert!(r.lookup("/etcdserverpb.Maintenance/Defragment").is_ok());
    }
}
