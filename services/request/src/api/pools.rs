//! Partner pools (R12) and cluster capacity (R13) as the API shows and sets them
//! ([`crate::capacity`] holds the arithmetic's storage and the locks).

use sspm_platform::Principal;
use sspm_platform::error::{self, db, not_found};
use sspm_platform::rpc::{invalid, now_micros, parse_at, timestamp};
use sspm_proto::v1 as pb;
use sspm_rules::capacity::{Ports, validate_size};
use sspm_rules::{BusinessUnitId, ClusterName, Text};
use tonic::Status;

use super::RequestApi;
use crate::capacity::{LevelView, SizeSet, counts_pb};
use crate::entities::capacity::Level;

/// A pool as the API shows it.
fn pool_pb(v: LevelView) -> pb::PartnerPool {
    pb::PartnerPool {
        partner_id: v.name,
        size: v.size.map(counts_pb),
        allocated: Some(counts_pb(v.allocated)),
        headroom: v.size.map(|s| counts_pb(s.headroom(v.allocated))),
        shares: v
            .shares
            .into_iter()
            .map(|l| pb::PoolShare {
                business_unit_id: l.business_unit_id,
                limits: Some(pb::PortLimits {
                    concurrent: l.concurrent,
                    outbound: l.outbound,
                    agentless: l.agentless,
                }),
            })
            .collect(),
        shares_truncated: v.truncated,
        updated_by: v.updated_by.unwrap_or_default(),
        update_time: (v.update_time > 0).then(|| timestamp(v.update_time)),
    }
}

/// A cluster's capacity as the API shows it.
fn cluster_pb(v: LevelView) -> pb::ClusterCapacity {
    pb::ClusterCapacity {
        cluster: v.name,
        size: v.size.map(counts_pb),
        allocated: Some(counts_pb(v.allocated)),
        headroom: v.size.map(|s| counts_pb(s.headroom(v.allocated))),
        business_units: i32::try_from(v.units).unwrap_or(i32::MAX),
        updated_by: v.updated_by.unwrap_or_default(),
        update_time: (v.update_time > 0).then(|| timestamp(v.update_time)),
    }
}

/// A size as a caller sent it, checked (`size` is required).
fn size_of(size: Option<&pb::PortCounts>) -> Result<Ports, Status> {
    let s = size.ok_or_else(|| invalid("size", "is required"))?;
    validate_size(s.concurrent.into(), s.outbound.into(), s.agentless.into(), "size").map_err(|v| error::violations(&v))
}

impl RequestApi {
    /// Network Operations (Network Operations › Daily limits), not services.
    async fn require_network_operations(&self, caller: &Principal) -> Result<(), Status> {
        if caller.is_service() {
            return Err(error::permission_denied(
                "cluster capacity is set by Network Operations, not services",
                &[],
            ));
        }
        self.wf
            .authz()
            .require(&caller.id, pb::Action::ManageDailyLimits, "")
            .await
            .map(|_| ())
    }

    /// The partner named by `raw`: an existing business unit without a partner of its own.
    async fn partner(&self, raw: &str) -> Result<BusinessUnitId, Status> {
        let id = parse_at("partner_id", BusinessUnitId::parse(raw))?;
        let unit = self
            .wf
            .authz()
            .business_unit(id.as_str())
            .await?
            .ok_or_else(|| not_found("business unit", id.as_str()))?;
        if !unit.partner_id.is_empty() {
            return Err(invalid(
                "partner_id",
                format!(
                    "{id} is a customer of {}: its business units draw on {}'s pool",
                    unit.partner_id, unit.partner_id
                ),
            ));
        }
        Ok(id)
    }

    /// Sets (`Some`) or clears (`None`) level `level` `name`'s size for `caller`: what
    /// [`crate::store::Store::set_size`] did, its refusal (R12, R13) as the caller's error.
    async fn resize(
        &self,
        level: Level,
        name: &str,
        size: Option<Ports>,
        caller: &Principal,
        reason: &str,
        what: &'static str,
    ) -> Result<Option<SizeSet>, Status> {
        self.wf
            .store()
            .set_size(level, name, size, caller.id.as_str(), reason, now_micros())
            .await
            .map_err(db(what))?
            .map_err(|v| error::violations(&v))
    }

    pub(super) async fn get_partner_pool_impl(
        &self,
        caller: &Principal,
        req: pb::GetPartnerPoolRequest,
    ) -> Result<pb::GetPartnerPoolResponse, Status> {
        let id = parse_at("partner_id", BusinessUnitId::parse(&req.partner_id))?;
        // Its administrators (View on it) and staff; anyone else learns nothing of it.
        self.wf
            .authz()
            .require(&caller.id, pb::Action::ViewPorts, id.as_str())
            .await?;
        let id = self.partner(id.as_str()).await?;
        let view = self
            .wf
            .store()
            .level_view(Level::Pool, id.as_str(), true)
            .await
            .map_err(db("loading a pool"))?;
        Ok(pb::GetPartnerPoolResponse {
            pool: Some(pool_pb(view)),
        })
    }

    pub(super) async fn set_partner_pool_impl(
        &self,
        caller: &Principal,
        req: pb::SetPartnerPoolRequest,
    ) -> Result<pb::SetPartnerPoolResponse, Status> {
        self.require_account_representative(caller).await?;
        let id = self.partner(&req.partner_id).await?;
        let size = size_of(req.size.as_ref())?;
        let reason = parse_at("reason", Text::parse(&req.reason, "reason"))?;
        let set = self
            .resize(
                Level::Pool,
                id.as_str(),
                Some(size),
                caller,
                reason.as_str(),
                "setting a pool",
            )
            .await?
            .ok_or_else(|| Status::internal("a size set answered nothing"))?;
        tracing::info!(partner = %id, size = %size, by = %caller.id, "partner pool set");
        Ok(pb::SetPartnerPoolResponse {
            pool: Some(pool_pb(set.after)),
        })
    }

    pub(super) async fn clear_partner_pool_impl(
        &self,
        caller: &Principal,
        req: pb::ClearPartnerPoolRequest,
    ) -> Result<pb::ClearPartnerPoolResponse, Status> {
        self.require_account_representative(caller).await?;
        let id = self.partner(&req.partner_id).await?;
        let reason = parse_at("reason", Text::parse(&req.reason, "reason"))?;
        let cleared = self
            .resize(
                Level::Pool,
                id.as_str(),
                None,
                caller,
                reason.as_str(),
                "clearing a pool",
            )
            .await?
            .is_some();
        Ok(pb::ClearPartnerPoolResponse { cleared })
    }

    pub(super) async fn get_cluster_capacity_impl(
        &self,
        caller: &Principal,
        req: pb::GetClusterCapacityRequest,
    ) -> Result<pb::GetClusterCapacityResponse, Status> {
        self.require_network_operations(caller).await?;
        let cluster = parse_at("cluster", ClusterName::parse(&req.cluster))?;
        let view = self
            .wf
            .store()
            .level_view(Level::Cluster, cluster.as_str(), false)
            .await
            .map_err(db("loading a cluster's capacity"))?;
        Ok(pb::GetClusterCapacityResponse {
            capacity: Some(cluster_pb(view)),
        })
    }

    pub(super) async fn list_cluster_capacities_impl(
        &self,
        caller: &Principal,
    ) -> Result<pb::ListClusterCapacitiesResponse, Status> {
        self.require_network_operations(caller).await?;
        let views = self.wf.store().clusters().await.map_err(db("listing clusters"))?;
        Ok(pb::ListClusterCapacitiesResponse {
            capacities: views.into_iter().map(cluster_pb).collect(),
        })
    }

    pub(super) async fn set_cluster_capacity_impl(
        &self,
        caller: &Principal,
        req: pb::SetClusterCapacityRequest,
    ) -> Result<pb::SetClusterCapacityResponse, Status> {
        self.require_network_operations(caller).await?;
        let cluster = parse_at("cluster", ClusterName::parse(&req.cluster))?;
        let size = size_of(req.size.as_ref())?;
        let reason = parse_at("reason", Text::parse(&req.reason, "reason"))?;
        let set = self
            .resize(
                Level::Cluster,
                cluster.as_str(),
                Some(size),
                caller,
                reason.as_str(),
                "setting a cluster's capacity",
            )
            .await?
            .ok_or_else(|| Status::internal("a size set answered nothing"))?;
        tracing::info!(cluster = %cluster, size = %size, by = %caller.id, "cluster capacity set");
        Ok(pb::SetClusterCapacityResponse {
            capacity: Some(cluster_pb(set.after)),
        })
    }

    pub(super) async fn clear_cluster_capacity_impl(
        &self,
        caller: &Principal,
        req: pb::ClearClusterCapacityRequest,
    ) -> Result<pb::ClearClusterCapacityResponse, Status> {
        self.require_network_operations(caller).await?;
        let cluster = parse_at("cluster", ClusterName::parse(&req.cluster))?;
        let reason = parse_at("reason", Text::parse(&req.reason, "reason"))?;
        let cleared = self
            .resize(
                Level::Cluster,
                cluster.as_str(),
                None,
                caller,
                reason.as_str(),
                "clearing a cluster's capacity",
            )
            .await?
            .is_some();
        Ok(pb::ClearClusterCapacityResponse { cleared })
    }
}
