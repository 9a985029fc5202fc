//! Start-up registration of account representatives, and the demo tenancy of `sspm up`.

use sea_orm::{DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, TransactionTrait};
use sspm_platform::db::SelectUnique;
use sspm_platform::rpc::now_micros;

use crate::entities::{business_unit, grant, principal};
use crate::model::Perm;
use crate::store::{ensure_principal, grant_on};

/// Registers each of `ids` as a principal holding the account-representative permission
/// (idempotent: existing principals and grants are kept).
pub async fn bootstrap_account_representatives(db: &DatabaseConnection, ids: &[String]) -> Result<(), DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    let tx = db.begin().await?;
    for id in ids {
        ensure_principal(&tx, staff(id, id)).await?;
        let g = global(id, Perm::AccountRepresentative, "config");
        let held = grant::Entity::find_by_id((g.principal_id.clone(), g.business_unit_id.clone(), g.permission))
            .unique(&tx)
            .await?
            .is_some();
        if held {
            continue;
        }
        grant_on(&tx, g).await?;
        sspm_platform::audit::record_as(
            &tx,
            Some("config"),
            "permission.granted",
            id,
            "ACCOUNT_REPRESENTATIVE globally granted by auth.account_representatives at start",
            now_micros(),
        )
        .await?;
    }
    tx.commit().await
}

fn staff(id: &str, name: &str) -> principal::Model {
    principal::Model {
        principal_id: id.to_owned(),
        display_name: name.to_owned(),
        home_business_unit_id: None,
        kind: principal::Kind::User,
        create_time: now_micros(),
    }
}

fn global(id: &str, p: Perm, by: &str) -> grant::Model {
    on(id, "", p, by)
}

fn on(id: &str, bu: &str, p: Perm, by: &str) -> grant::Model {
    grant::Model {
        principal_id: id.to_owned(),
        business_unit_id: bu.to_owned(),
        permission: p,
        granted_by: by.to_owned(),
        grant_time: now_micros(),
    }
}

/// The demo tenancy's principals.
pub mod demo {
    /// The partner administrator of Classics, Inc. (View and Create on the partner).
    pub const PARTNER_ADMIN: &str = "percy@classics.example";
    /// A user of the customer The League of the Scarlet Pimpernel (View only).
    pub const CUSTOMER_USER: &str = "marguerite@league.example";
    /// An account representative.
    pub const ACCOUNT_REP: &str = "rep@sspm.example";
    /// A Network Operations engineer (daily limits and approvals).
    pub const NETOPS: &str = "netops@sspm.example";
    /// A platform service that follows every business unit's events (Events › Read all):
    /// the media servers that enforce the limits.
    pub const EVENTS_CONSUMER: &str = "media-servers@platform.example";
    /// The partner.
    pub const PARTNER: &str = "bu-classics";
    /// The partner's customer with Monitoring Gateway and Personal Connection.
    pub const CUSTOMER: &str = "bu-league";
    /// Another customer of the partner, without Personal Connection.
    pub const SIBLING: &str = "bu-musketeers";
    /// A customer of the partner without Monitoring Gateway.
    pub const NO_GATEWAY: &str = "bu-baskerville";
    /// Another partner, on another cluster.
    pub const OTHER_PARTNER: &str = "bu-nautilus";
    /// The cluster of Classics, Inc. and its customers.
    pub const CLUSTER: &str = "C14";
}

/// Seeds the demo tenancy unless business units exist already; whether it seeded.
pub async fn seed_demo(db: &DatabaseConnection) -> Result<bool, DbErr> {
    if business_unit::Entity::find().count(db).await? > 0 {
        return Ok(false);
    }
    let now = now_micros();
    let bu = |id: &str, name: &str, cluster: &str, partner: Option<&str>, mg: bool, pc: bool| business_unit::Model {
        business_unit_id: id.to_owned(),
        display_name: name.to_owned(),
        cluster: cluster.to_owned(),
        partner_id: partner.map(str::to_owned),
        monitoring_gateway_enabled: mg,
        personal_connection_enabled: pc,
        create_time: now,
        update_time: now,
    };
    use demo::*;
    let units = [
        bu(PARTNER, "Classics, Inc.", CLUSTER, None, true, true),
        bu(
            CUSTOMER,
            "The League of the Scarlet Pimpernel",
            CLUSTER,
            Some(PARTNER),
            true,
            true,
        ),
        bu(SIBLING, "The Three Musketeers", CLUSTER, Some(PARTNER), true, false),
        bu(
            NO_GATEWAY,
            "The Hound of the Baskervilles",
            CLUSTER,
            Some(PARTNER),
            false,
            true,
        ),
        bu(OTHER_PARTNER, "Nautilus Expeditions", "E39", None, true, true),
    ];
    let tx = db.begin().await?;
    for u in units {
        business_unit::Entity::insert(business_unit::ActiveModel::from(u))
            .exec_without_returning(&tx)
            .await?;
    }
    let mut percy = staff(PARTNER_ADMIN, "Percy Blakeney");
    percy.home_business_unit_id = Some(PARTNER.to_owned());
    let mut marguerite = staff(CUSTOMER_USER, "Marguerite St. Just");
    marguerite.home_business_unit_id = Some(CUSTOMER.to_owned());
    for p in [
        percy,
        marguerite,
        staff(ACCOUNT_REP, "Armand St. Just (account representative)"),
        staff(NETOPS, "Chauvelin (Network Operations)"),
        principal::Model {
            kind: principal::Kind::Service,
            ..staff(EVENTS_CONSUMER, "Media servers (follow the port limits)")
        },
    ] {
        ensure_principal(&tx, p).await?;
    }
    let by = ACCOUNT_REP;
    for g in [
        global(ACCOUNT_REP, Perm::AccountRepresentative, "demo"),
        global(NETOPS, Perm::NetworkOperationsDailyLimits, by),
        global(NETOPS, Perm::NetworkOperationsApprove, by),
        global(EVENTS_CONSUMER, Perm::EventsReadAll, by),
        on(PARTNER_ADMIN, PARTNER, Perm::MonitoringGatewayView, by),
        on(PARTNER_ADMIN, PARTNER, Perm::PortManagementView, by),
        on(PARTNER_ADMIN, PARTNER, Perm::PortManagementCreate, by),
        on(CUSTOMER_USER, CUSTOMER, Perm::MonitoringGatewayView, by),
        on(CUSTOMER_USER, CUSTOMER, Perm::PortManagementView, by),
    ] {
        grant_on(&tx, g).await?;
    }
    tx.commit().await?;
    Ok(true)
}
