//! Cluster membership through object storage: each node's registration
//! (`nodes/{node_id}.json`) and the stable etcd member ids
//! (`members.json`), both changed only through conditional writes. (The
//! tier-1 elector lock and Primary election build on these.)

pub mod discovery;
