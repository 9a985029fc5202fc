//! Every query of the authorization service.

use sea_orm::ActiveEnum;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};
use sspm_platform::db::SelectUnique;
use sspm_platform::lite::LiteReader;
use std::sync::Arc;

use sspm_platform::audit;

use crate::entities::{business_unit, grant, principal};
use crate::model::Perm;

/// The authorization service's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Plain reads outside transactions (see [`Store::with_reader`]).
    read: DatabaseConnection,
    /// On SQLite, every Check's reads without a thread hop (see [`Store::with_lite`]).
    lite: Option<Arc<LiteReader>>,
}

impl Store {
    /// A store on `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            read: db.clone(),
            db,
            lite: None,
        }
    }

    /// The same store, reading principals and business units through `lite` (SQLite:
    /// `ServiceApp::lite_reader`, [`sspm_platform::lite`]).
    pub fn with_lite(mut self, lite: Option<Arc<LiteReader>>) -> Self {
        self.lite = lite;
        self
    }

    /// The same store, reading outside transactions from `read` (the service's reader
    /// pool: `ServiceApp::read_db`).
    pub fn with_reader(mut self, read: DatabaseConnection) -> Self {
        self.read = read;
        self
    }

    /// One business unit.
    pub async fn business_unit(&self, id: &str) -> Result<Option<business_unit::Model>, DbErr> {
        if let Some(lite) = &self.lite {
            return lite.read(|c| {
                use sspm_platform::lite::rusqlite::OptionalExtension;
                c.prepare_cached(
                    "SELECT business_unit_id, display_name, cluster, partner_id, monitoring_gateway_enabled, \
                     personal_connection_enabled, create_time, update_time FROM business_units \
                     WHERE business_unit_id = ?1",
                )?
                .query_row([id], |r| {
                    Ok(business_unit::Model {
                        business_unit_id: r.get(0)?,
                        display_name: r.get(1)?,
                        cluster: r.get(2)?,
                        partner_id: r.get(3)?,
                        monitoring_gateway_enabled: r.get(4)?,
                        personal_connection_enabled: r.get(5)?,
                        create_time: r.get(6)?,
                        update_time: r.get(7)?,
                    })
                })
                .optional()
            });
        }
        business_unit::Entity::find_by_id(id.to_owned())
            .unique(&self.read)
            .await
    }

    /// Whether any business unit has `id` as its partner.
    pub async fn has_customers(&self, id: &str) -> Result<bool, DbErr> {
        Ok(business_unit::Entity::find()
            .filter(business_unit::Column::PartnerId.eq(id))
            .one(&self.read)
            .await?
            .is_some())
    }

    /// Business units ordered by id after `after`: all of them, or (with `scope`) those
    /// whose id or partner is in `scope`.
    pub async fn business_units(
        &self,
        scope: Option<&[String]>,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<business_unit::Model>, DbErr> {
        let mut q = business_unit::Entity::find();
        if let Some(ids) = scope {
            q = q.filter(
                Condition::any()
                    .add(business_unit::Column::BusinessUnitId.is_in(ids.iter().cloned()))
                    .add(business_unit::Column::PartnerId.is_in(ids.iter().cloned())),
            );
        }
        if let Some(after) = after {
            q = q.filter(business_unit::Column::BusinessUnitId.gt(after));
        }
        q.order_by_asc(business_unit::Column::BusinessUnitId)
            .limit(limit)
            .all(&self.read)
            .await
    }

    /// Inserts a business unit; a unique violation means it exists.
    pub async fn insert_business_unit(&self, bu: business_unit::Model) -> Result<(), DbErr> {
        let tx = self.db.begin().await?;
        let (id, now, detail) = (bu.business_unit_id.clone(), bu.create_time, describe_bu(&bu));
        business_unit::Entity::insert(business_unit::ActiveModel::from(bu))
            .exec_without_returning(&tx)
            .await?;
        count_change(&tx).await?;
        audit::record(&tx, "business_unit.created", &id, &detail, now).await?;
        tx.commit().await
    }

    /// Replaces a business unit's fields.
    pub async fn update_business_unit(&self, bu: business_unit::Model) -> Result<(), DbErr> {
        let tx = self.db.begin().await?;
        let before = business_unit::Entity::find_by_id(bu.business_unit_id.clone())
            .unique(&tx)
            .await?
            .map_or_else(|| "nothing".to_owned(), |b| describe_bu(&b));
        let detail = format!("{before} -> {}", describe_bu(&bu));
        let (id, now) = (bu.business_unit_id.clone(), bu.update_time);
        business_unit::Entity::update_many()
            .col_expr(business_unit::Column::DisplayName, Expr::val(bu.display_name))
            .col_expr(business_unit::Column::Cluster, Expr::val(bu.cluster))
            .col_expr(business_unit::Column::PartnerId, Expr::val(bu.partner_id))
            .col_expr(
                business_unit::Column::MonitoringGatewayEnabled,
                Expr::val(bu.monitoring_gateway_enabled),
            )
            .col_expr(
                business_unit::Column::PersonalConnectionEnabled,
                Expr::val(bu.personal_connection_enabled),
            )
            .col_expr(business_unit::Column::UpdateTime, Expr::val(bu.update_time))
            .filter(business_unit::Column::BusinessUnitId.eq(bu.business_unit_id))
            .exec(&tx)
            .await?;
        count_change(&tx).await?;
        audit::record(&tx, "business_unit.updated", &id, &detail, now).await?;
        tx.commit().await
    }

    /// One principal.
    pub async fn principal(&self, id: &str) -> Result<Option<principal::Model>, DbErr> {
        principal::Entity::find_by_id(id.to_owned()).unique(&self.read).await
    }

    /// A principal with its grants, in one query (every authorization check starts here).
    pub async fn principal_with_grants(
        &self,
        id: &str,
    ) -> Result<Option<(principal::Model, Vec<grant::Model>)>, DbErr> {
        use sea_orm::{ConnectionTrait, Statement};
        const SQL: &str = "SELECT p.principal_id, p.display_name, p.home_business_unit_id, p.kind, p.create_time, \
             g.business_unit_id AS grant_business_unit_id, g.permission AS grant_permission, \
             g.granted_by AS grant_granted_by, g.grant_time AS grant_time \
             FROM principals p LEFT JOIN permission_grants g ON g.principal_id = p.principal_id \
             WHERE p.principal_id = $1";
        if let Some(lite) = &self.lite {
            // SQLite: on this thread (sspm_platform::lite); `$1` is SQLite's `?1` too.
            return lite.read(|c| {
                let mut statement = c.prepare_cached(SQL)?;
                let mut rows = statement.query([id])?;
                let mut found: Option<(principal::Model, Vec<grant::Model>)> = None;
                while let Some(row) = rows.next()? {
                    let (principal, grants) = match &mut found {
                        Some(f) => f,
                        None => found.insert((
                            principal::Model {
                                principal_id: row.get(0)?,
                                display_name: row.get(1)?,
                                home_business_unit_id: row.get(2)?,
                                kind: lite_enum(row, 3)?,
                                create_time: row.get(4)?,
                            },
                            Vec::new(),
                        )),
                    };
                    if let Some(business_unit_id) = row.get::<_, Option<String>>(5)? {
                        grants.push(grant::Model {
                            principal_id: principal.principal_id.clone(),
                            business_unit_id,
                            permission: lite_enum(row, 6)?,
                            granted_by: row.get(7)?,
                            grant_time: row.get(8)?,
                        });
                    }
                }
                Ok(found)
            });
        }
        let rows = self
            .read
            .query_all_raw(Statement::from_sql_and_values(
                self.read.get_database_backend(),
                SQL,
                [id.into()],
            ))
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let principal = principal::Model {
            principal_id: first.try_get("", "principal_id")?,
            display_name: first.try_get("", "display_name")?,
            home_business_unit_id: first.try_get("", "home_business_unit_id")?,
            kind: principal::Kind::try_from_value(&first.try_get::<String>("", "kind")?)?,
            create_time: first.try_get("", "create_time")?,
        };
        let mut grants = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(business_unit_id) = row.try_get::<Option<String>>("", "grant_business_unit_id")? else {
                continue;
            };
            grants.push(grant::Model {
                principal_id: principal.principal_id.clone(),
                business_unit_id,
                permission: grant::Permission::try_from_value(&row.try_get::<String>("", "grant_permission")?)?,
                granted_by: row.try_get("", "grant_granted_by")?,
                grant_time: row.try_get("", "grant_time")?,
            });
        }
        Ok(Some((principal, grants)))
    }

    /// Inserts a principal; a unique violation means it exists.
    pub async fn insert_principal(&self, p: principal::Model) -> Result<(), DbErr> {
        let tx = self.db.begin().await?;
        let (id, now, detail) = (p.principal_id.clone(), p.create_time, describe_principal(&p));
        principal::Entity::insert(principal::ActiveModel::from(p))
            .exec_without_returning(&tx)
            .await?;
        count_change(&tx).await?;
        audit::record(&tx, "principal.created", &id, &detail, now).await?;
        tx.commit().await
    }

    /// Replaces a principal's display name and home business unit.
    pub async fn update_principal(&self, p: &principal::Model, now: i64) -> Result<(), DbErr> {
        let tx = self.db.begin().await?;
        let before = principal::Entity::find_by_id(p.principal_id.clone())
            .unique(&tx)
            .await?
            .map_or_else(|| "nothing".to_owned(), |b| describe_principal(&b));
        let detail = format!("{before} -> {}", describe_principal(p));
        principal::Entity::update_many()
            .col_expr(principal::Column::DisplayName, Expr::val(p.display_name.clone()))
            .col_expr(
                principal::Column::HomeBusinessUnitId,
                Expr::val(p.home_business_unit_id.clone()),
            )
            .filter(principal::Column::PrincipalId.eq(p.principal_id.clone()))
            .exec(&tx)
            .await?;
        count_change(&tx).await?;
        audit::record(&tx, "principal.updated", &p.principal_id, &detail, now).await?;
        tx.commit().await
    }

    /// Every grant of a principal.
    pub async fn grants_of(&self, principal_id: &str) -> Result<Vec<grant::Model>, DbErr> {
        grant::Entity::find()
            .filter(grant::Column::PrincipalId.eq(principal_id))
            .all(&self.read)
            .await
    }

    /// Grants a permission unless already granted; returns the stored grant.
    pub async fn grant(&self, g: grant::Model) -> Result<grant::Model, DbErr> {
        let tx = self.db.begin().await?;
        grant_on(&tx, g.clone()).await?;
        audit::record(
            &tx,
            "permission.granted",
            &g.principal_id,
            &describe_grant(&g),
            g.grant_time,
        )
        .await?;
        let stored = grant::Entity::find_by_id((g.principal_id, g.business_unit_id, g.permission))
            .unique(&tx)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("grant vanished after insert".into()))?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Revokes a permission; whether there was one.
    pub async fn revoke(
        &self,
        principal_id: &str,
        business_unit_id: &str,
        perm: Perm,
        now: i64,
    ) -> Result<bool, DbErr> {
        let tx = self.db.begin().await?;
        let r = grant::Entity::delete_many()
            .filter(grant::Column::PrincipalId.eq(principal_id))
            .filter(grant::Column::BusinessUnitId.eq(business_unit_id))
            .filter(grant::Column::Permission.eq(perm))
            .exec(&tx)
            .await?;
        if r.rows_affected > 0 {
            let on = if business_unit_id.is_empty() {
                "globally"
            } else {
                business_unit_id
            };
            let detail = format!("{perm} on {on} revoked");
            audit::record(&tx, "permission.revoked", principal_id, &detail, now).await?;
            count_change(&tx).await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected > 0)
    }

    /// Grants ordered by (principal, business unit, permission), filtered, from `offset`.
    pub async fn grants(
        &self,
        principal_id: Option<&str>,
        business_unit_id: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<grant::Model>, DbErr> {
        let mut q = grant::Entity::find();
        if let Some(p) = principal_id {
            q = q.filter(grant::Column::PrincipalId.eq(p));
        }
        if let Some(b) = business_unit_id {
            q = q.filter(grant::Column::BusinessUnitId.eq(b));
        }
        q.order_by_asc(grant::Column::PrincipalId)
            .order_by_asc(grant::Column::BusinessUnitId)
            .order_by_asc(grant::Column::Permission)
            .offset(offset)
            .limit(limit)
            .all(&self.read)
            .await
    }

    /// How many changes to authorization facts have committed, on any replica.
    pub async fn generation(&self) -> Result<i64, DbErr> {
        use sea_orm::{ConnectionTrait, Statement};
        let row = self
            .read
            .query_one_raw(Statement::from_string(
                self.read.get_database_backend(),
                "SELECT generation FROM authorization_generation WHERE id = 1",
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("the authorization_generation row".into()))?;
        row.try_get("", "generation")
    }

    /// The database, for seeding.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// Inserts a grant, doing nothing when it exists.
pub async fn grant_on(db: &impl ConnectionTrait, g: grant::Model) -> Result<(), DbErr> {
    let inserted = grant::Entity::insert(grant::ActiveModel::from(g))
        .on_conflict_do_nothing()
        .exec_without_returning(db)
        .await?;
    count_changes(db, inserted_rows(inserted)).await
}

/// Counts a change to authorization facts, in the transaction that makes it: every replica
/// polls the count ([`Store::generation`]) and tells its subscribers when it moves, so that
/// their cached answers go (README, "Authorization answers are reused").
pub async fn count_change(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    count_changes(db, 1).await
}

/// How many rows an insert `ON CONFLICT DO NOTHING` wrote.
fn inserted_rows(r: sea_orm::TryInsertResult<u64>) -> u64 {
    match r {
        sea_orm::TryInsertResult::Inserted(n) => n,
        sea_orm::TryInsertResult::Empty | sea_orm::TryInsertResult::Conflicted => 0,
    }
}

/// [`count_change`] when `n` rows changed, nothing when none did (a seed run again).
async fn count_changes(db: &impl ConnectionTrait, n: u64) -> Result<(), DbErr> {
    if n == 0 {
        return Ok(());
    }
    db.execute_unprepared("UPDATE authorization_generation SET generation = generation + 1 WHERE id = 1")
        .await
        .map(|_| ())
}

/// Inserts a principal, doing nothing when it exists.
pub async fn ensure_principal(db: &impl ConnectionTrait, p: principal::Model) -> Result<(), DbErr> {
    let inserted = principal::Entity::insert(principal::ActiveModel {
        principal_id: Set(p.principal_id),
        display_name: Set(p.display_name),
        home_business_unit_id: Set(p.home_business_unit_id),
        kind: Set(p.kind),
        create_time: Set(p.create_time),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await?;
    count_changes(db, inserted_rows(inserted)).await
}

fn describe_bu(b: &business_unit::Model) -> String {
    format!(
        "{:?} on cluster {}, partner {}, Monitoring Gateway {}, Personal Connection {}",
        b.display_name,
        b.cluster,
        b.partner_id.as_deref().unwrap_or("none"),
        on_off(b.monitoring_gateway_enabled),
        on_off(b.personal_connection_enabled)
    )
}

fn describe_principal(p: &principal::Model) -> String {
    format!(
        "{:?} ({}), home {}",
        p.display_name,
        p.kind.to_value(),
        p.home_business_unit_id.as_deref().unwrap_or("none")
    )
}

fn describe_grant(g: &grant::Model) -> String {
    let on = if g.business_unit_id.is_empty() {
        "globally"
    } else {
        g.business_unit_id.as_str()
    };
    format!("{} on {on} granted", g.permission)
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Column `idx` of a rusqlite row as a stored enum (its text, checked as sea-orm checks it).
fn lite_enum<E: ActiveEnum<Value = String>>(
    row: &sspm_platform::lite::rusqlite::Row<'_>,
    idx: usize,
) -> sspm_platform::lite::rusqlite::Result<E> {
    E::try_from_value(&row.get::<_, String>(idx)?).map_err(|e| {
        sspm_platform::lite::rusqlite::Error::FromSqlConversionFailure(
            idx,
            sspm_platform::lite::rusqlite::types::Type::Text,
            Box::new(e),
        )
    })
}
