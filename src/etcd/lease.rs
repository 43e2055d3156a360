//! The Lease service with etcd 3.5's answers. The Primary owns leases
//! (primary::Leases); a replica forwards every lease call to it, and
//! proxies a KeepAlive stream over one stream to the Primary.

use std::sync::Arc;

use crate::grpc::{Connector, RequestContext, Requests, Responses, Status};
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader,
};

use super::errors::from_write;
use super::forward::forward;
use super::EtcdApi;

const GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
const KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
const TIME_TO_LIVE: &str = "/etcdserverpb.Lease/LeaseTimeToLive";
const LEASES: &str = "/etcdserverpb.Lease/LeaseLeases";

/// A lease answer's header.
trait Headed {
    fn header(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! headed {
    ($($t:ty),*) => {$(
        impl Headed for $t {
            fn header(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        }
    )*};
}

headed!(
    LeaseGrantResponse,
    LeaseRevokeResponse,
    LeaseTimeToLiveResponse,
    LeaseLeasesResponse
);

/// Forwards a unary lease call to the Primary; the header names this node.
async fn forwarded<Req, Resp>(
    api: &EtcdApi,
    primary: &Connector,
    path: &str,
    req: &Req,
) -> Result<Resp, Status>
where
    Req: prost::Message,
    Resp: prost::Message + Default + Headed,
{
    let mut resp: Resp = forward(&api.metrics, primary, "lease", path, req).await?;
    api.fill(resp.header());
    Ok(resp)
}

pub async fn grant(
    api: Arc<EtcdApi>,
    req: LeaseGrantRequest,
) -> Result<LeaseGrantResponse, Status> {
    if let Some(primary) = api.primary() {
        return forwarded(&api, &primary, GRANT, &req).await;
    }
    let (id, ttl) = api
        .leases
        .grant(req.id, req.ttl)
        .await
        .map_err(from_write)?;
    Ok(LeaseGrantResponse {
        header: Some(api.header(api.store.committed_revision())),
        id,
        ttl,
        error: String::new(),
    })
}

pub async fn revoke(
    api: Arc<EtcdApi>,
    req: LeaseRevokeRequest,
) -> Result<LeaseRevokeResponse, Status> {
    if let Some(primary) = api.primary() {
        return forwarded(&api, &primary, REVOKE, &req).await;
    }
    let revision = api.leases.revoke(req.id).await.map_err(from_write)?;
    Ok(LeaseRevokeResponse {
        header: Some(api.header(revision.max(api.store.committed_revision()))),
    })
}

pub async fn time_to_live(
    api: Arc<EtcdApi>,
    req: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Status> {
    if let Some(primary) = api.primary() {
        return forwarded(&api, &primary, TIME_TO_LIVE, &req).await;
    }
    let status = api
        .leases
        .time_to_live(req.id, req.keys)
        .await
        .map_err(from_write)?;
    let header = Some(api.header(api.store.committed_revision()));
    // etcd answers an unknown lease with TTL -1, not an error.
    Ok(match status {
        None => LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: -1,
            ..LeaseTimeToLiveResponse::default()
        },
        Some(s) => LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: s.ttl.remaining,
            granted_ttl: s.ttl.granted,
            keys: s.keys,
        },
    })
}

pub async fn leases(
    api: Arc<EtcdApi>,
    req: LeaseLeasesRequest,
) -> Result<LeaseLeasesResponse, Status> {
    if let Some(primary) = api.primary() {
        return forwarded(&api, &primary, LEASES, &req).await;
    }
    let ids = api.leases.list().await.map_err(from_write)?;
    Ok(LeaseLeasesResponse {
        header: Some(api.header(api.store.committed_revision())),
        leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
    })
}

/// One answer per keep-alive request, in order, until the client closes
/// its side.
pub async fn keep_alive(
    api: Arc<EtcdApi>,
    mut requests: Requests<LeaseKeepAliveRequest>,
    _ctx: RequestContext,
    responses: Responses<LeaseKeepAliveResponse>,
) -> Result<(), Status> {
    let mut shutdown = api.shutdown.clone();
    loop {
        let next = tokio::select! {
            next = requests.next() => next?,
            _ = stopping(&mut shutdown) => return Ok(()),
        };
        let Some(req) = next else { return Ok(()) };
        // The Primary may change between two requests.
        if let Some(primary) = api.primary() {
            return proxy_keep_alive(&api, &primary, req, requests, responses).await;
        }
        let ttl = api.leases.renew(req.id).await.map_err(from_write)?;
        let resp = LeaseKeepAliveResponse {
            header: Some(api.header(api.store.committed_revision())),
            id: req.id,
            ttl,
        };
        responses.send(resp).await?;
    }
}

/// A replica's keep-alive stream: every request goes over one stream to
/// the Primary and every answer comes back with this node's header. When
/// the Primary's stream ends, so does the client's (clients open a new
/// one, which reaches whoever leads then).
async fn proxy_keep_alive(
    api: &EtcdApi,
    primary: &Connector,
    first: LeaseKeepAliveRequest,
    mut requests: Requests<LeaseKeepAliveRequest>,
    responses: Responses<LeaseKeepAliveResponse>,
) -> Result<(), Status> {
    let unavailable =
        |e: Status| Status::unavailable(format!("no connection to primary: {}", e.message));
    let mut call = primary.start(KEEP_ALIVE, None).await.map_err(unavailable)?;
    call.sender.send(&first).await?;
    let mut shutdown = api.shutdown.clone();
    let mut client_open = true;
    loop {
        tokio::select! {
            next = requests.next(), if client_open => match next? {
                Some(req) => call.sender.send(&req).await?,
                None => {
                    client_open = false;
                    call.sender.close();
                }
            },
            answer = call.receiver.next::<LeaseKeepAliveResponse>() => match answer? {
                Some(mut resp) => {
                    api.fill(&mut resp.header);
                    responses.send(resp).await?;
                }
                None => return Ok(()),
            },
            _ = stopping(&mut shutdown) => {
                call.sender.cancel();
                return Ok(());
            }
        }
    }
}

/// Resolves once the node stops.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
