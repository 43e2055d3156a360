//! Generated protobuf types (prost) for the etcd API and the netsy peer API.

#![allow(clippy::all, missing_docs)]

/// etcd's storage types: KeyValue and Event.
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// etcd's v3 API requests and responses.
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// The netsy peer API, records and data-file framing.
pub mod netsy {
    include!(concat!(env!("OUT_DIR"), "/netsy.rs"));
}
