//! A Range request as etcd checks it, and as the store's range query.

use crate::grpc::Status;
use crate::pb::etcdserverpb::range_request::{SortOrder as PbOrder, SortTarget as PbTarget};
use crate::pb::etcdserverpb::RangeRequest;
use crate::store::{KeyRange, RangeQuery, SortOrder, SortTarget};

use super::errors;

/// The store query of a Range request, checked the way etcd does before
/// executing it.
pub fn query(req: &RangeRequest) -> Result<RangeQuery, Status> {
    if req.key.is_empty() {
        return Err(errors::empty_key());
    }
    let (Ok(order), Ok(target)) = (
        PbOrder::try_from(req.sort_order),
        PbTarget::try_from(req.sort_target),
    ) else {
        return Err(errors::invalid_sort_option());
    };
    let sort_order = match order {
        PbOrder::Ascend => SortOrder::Ascend,
        PbOrder::Descend => SortOrder::Descend,
        PbOrder::None => SortOrder::None,
    };
    let sort_target = match target {
        PbTarget::Version => SortTarget::Version,
        PbTarget::Create => SortTarget::Create,
        PbTarget::Mod => SortTarget::Mod,
        PbTarget::Value => SortTarget::Value,
        PbTarget::Key => SortTarget::Key,
    };
    Ok(RangeQuery {
        range: KeyRange::new(&req.key, &req.range_end),
        revision: req.revision,
        // etcd reads a negative limit as no limit.
        limit: req.limit.max(0),
        count_only: req.count_only,
        keys_only: req.keys_only,
        sort_order,
        sort_target,
        min_mod_revision: req.min_mod_revision,
        max_mod_revision: req.max_mod_revision,
        min_create_revision: req.min_create_revision,
        max_create_revision: req.max_create_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_texts() {
        assert_eq!(
            query(&RangeRequest::default()).unwrap_err().message,
            "etcdserver: key is not provided"
        );
        let neg = RangeRequest {
            key: "a".into(),
            limit: -1,
            ..Default::default()
        };
        assert_eq!(query(&neg).unwrap().limit, 0, "no limit, as etcd");
        let bad = RangeRequest {
            key: "a".into(),
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(
            query(&bad).unwrap_err().message,
            "etcdserver: invalid sort option"
        );
    }

    #[test]
    fn every_option_reaches_the_query() {
        let req = RangeRequest {
            key: "a".into(),
            range_end: "b".into(),
            revision: 7,
            limit: 3,
            count_only: true,
            keys_only: true,
            sort_order: PbOrder::Descend as i32,
            sort_target: PbTarget::Value as i32,
            min_mod_revision: 1,
            max_mod_revision: 2,
            min_create_revision: 3,
            max_create_revision: 4,
            ..Default::default()
        };
        let q = query(&req).unwrap();
        assert_eq!(
            q,
            RangeQuery {
                range: KeyRange::new(&"a".into(), &"b".into()),
                revision: 7,
                limit: 3,
                count_only: true,
                keys_only: true,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Value,
                min_mod_revision: 1,
                max_mod_revision: 2,
                min_create_revision: 3,
                max_create_revision: 4,
            }
        );
    }
}
