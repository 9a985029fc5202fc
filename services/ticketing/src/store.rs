//! Every query of the ticketing service.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use sspm_platform::audit;
use sspm_platform::db::SelectUnique;
use sspm_platform::db::{DbErrorKind, classify};
use sspm_rules::CaseNumber;

use crate::entities::{case, comment};

/// A case with its comments.
#[derive(Debug, Clone)]
pub struct CaseRecord {
    /// The case.
    pub case: case::Model,
    /// Its comments, oldest first.
    pub comments: Vec<comment::Model>,
}

/// A new case.
#[derive(Debug, Clone)]
pub struct NewCase {
    /// The caller's unique reference.
    pub external_reference: String,
    /// Subject.
    pub subject: String,
    /// Description.
    pub description: String,
    /// Business unit.
    pub business_unit_id: String,
    /// Requester.
    pub requester: String,
}

/// What closing a case did.
#[derive(Debug)]
pub enum Closed {
    /// Closed now, or it was closed already with the same resolution.
    Ok(CaseRecord),
    /// It was closed already with another resolution.
    Conflict(CaseRecord),
}

/// The ticketing service's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Plain reads outside transactions (see [`Store::with_reader`]).
    read: DatabaseConnection,
}

impl Store {
    /// A store on `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { read: db.clone(), db }
    }

    /// The same store, reading outside transactions from `read` (the service's reader
    /// pool: `ServiceApp::read_db`).
    pub fn with_reader(mut self, read: DatabaseConnection) -> Self {
        self.read = read;
        self
    }

    async fn with_comments(&self, case: Option<case::Model>) -> Result<Option<CaseRecord>, DbErr> {
        let Some(case) = case else { return Ok(None) };
        let comments = comment::Entity::find()
            .filter(comment::Column::CaseId.eq(case.id))
            .order_by_asc(comment::Column::Id)
            .all(&self.read)
            .await?;
        Ok(Some(CaseRecord { case, comments }))
    }

    /// A case by number.
    pub async fn by_number(&self, number: &str) -> Result<Option<CaseRecord>, DbErr> {
        let c = case::Entity::find()
            .filter(case::Column::CaseNumber.eq(number))
            .unique(&self.read)
            .await?;
        self.with_comments(c).await
    }

    /// A case by external reference.
    pub async fn by_reference(&self, reference: &str) -> Result<Option<CaseRecord>, DbErr> {
        let c = case::Entity::find()
            .filter(case::Column::ExternalReference.eq(reference))
            .unique(&self.read)
            .await?;
        self.with_comments(c).await
    }

    /// Opens a case, or returns the one with the same external reference; `true` when this
    /// call opened it. The case number is formatted from the row id in the same transaction.
    /// The insert comes first: a repeated call finds the reference taken and reads that case.
    pub async fn open(&self, new: NewCase, now: i64) -> Result<(CaseRecord, bool), DbErr> {
        let mut case = case::Model {
            id: 0,
            case_number: None,
            external_reference: new.external_reference,
            subject: new.subject,
            description: new.description,
            business_unit_id: new.business_unit_id,
            requester: new.requester,
            status: "NEW".to_owned(),
            resolution: None,
            create_time: now,
            update_time: now,
            close_time: None,
        };
        let inserted = async {
            let tx = self.db.begin().await?;
            let mut row = case::ActiveModel::from(case.clone());
            row.id = NotSet;
            let id = case::Entity::insert(row).exec(&tx).await?.last_insert_id;
            let number = CaseNumber::from_sequence(u64::try_from(id).unwrap_or_default());
            case::Entity::update_many()
                .col_expr(case::Column::CaseNumber, Expr::val(number.as_str()))
                .filter(case::Column::Id.eq(id))
                .exec(&tx)
                .await?;
            audit::record(
                &tx,
                "case.opened",
                number.as_str(),
                &format!("opened for {}", case.external_reference),
                now,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, DbErr>((id, number))
        }
        .await;
        match inserted {
            Ok((id, number)) => {
                case.id = id;
                case.case_number = Some(number.as_str().to_owned());
                Ok((CaseRecord { case, comments: vec![] }, true))
            }
            // Opened before (a retry), or concurrently by another call: that one is the case.
            Err(e) if classify(&e) == DbErrorKind::UniqueViolation => {
                let existing = self.by_reference(&case.external_reference).await?.ok_or_else(|| {
                    DbErr::RecordNotFound(format!("case {} after a unique violation", case.external_reference))
                })?;
                Ok((existing, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Adds a comment; `false` when a comment with the same `key` is on the case already
    /// (a retried call), which is left as it is.
    pub async fn comment(
        &self,
        case_id: i64,
        author: &str,
        body: &str,
        key: Option<&str>,
        now: i64,
    ) -> Result<bool, DbErr> {
        let added = async {
            let tx = self.db.begin().await?;
            comment::Entity::insert(comment::ActiveModel {
                id: NotSet,
                case_id: Set(case_id),
                author: Set(author.to_owned()),
                body: Set(body.to_owned()),
                create_time: Set(now),
                comment_key: Set(key.map(str::to_owned)),
            })
            .exec(&tx)
            .await?;
            case::Entity::update_many()
                .col_expr(case::Column::UpdateTime, Expr::val(now))
                .filter(case::Column::Id.eq(case_id))
                .exec(&tx)
                .await?;
            let number = CaseNumber::from_sequence(u64::try_from(case_id).unwrap_or_default());
            audit::record(
                &tx,
                "case.commented",
                number.as_str(),
                &format!("comment by {author}"),
                now,
            )
            .await?;
            tx.commit().await
        }
        .await;
        match added {
            Ok(()) => Ok(true),
            Err(e) if key.is_some() && classify(&e) == DbErrorKind::UniqueViolation => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets the status of an open case; `false` when the case is closed.
    pub async fn set_status(&self, case_id: i64, status: &str, now: i64) -> Result<bool, DbErr> {
        let tx = self.db.begin().await?;
        let r = case::Entity::update_many()
            .col_expr(case::Column::Status, Expr::val(status))
            .col_expr(case::Column::UpdateTime, Expr::val(now))
            .filter(case::Column::Id.eq(case_id))
            .filter(case::Column::Status.ne("CLOSED"))
            .exec(&tx)
            .await?;
        if r.rows_affected == 1 {
            let number = CaseNumber::from_sequence(u64::try_from(case_id).unwrap_or_default());
            audit::record(
                &tx,
                "case.status_set",
                number.as_str(),
                &format!("status {status}"),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected == 1)
    }

    /// Closes a case with a resolution (a no-op when closed with the same one).
    pub async fn close(&self, number: &str, resolution: &str, now: i64) -> Result<Option<Closed>, DbErr> {
        let tx = self.db.begin().await?;
        let r = case::Entity::update_many()
            .col_expr(case::Column::Status, Expr::val("CLOSED"))
            .col_expr(case::Column::Resolution, Expr::val(resolution))
            .col_expr(case::Column::CloseTime, Expr::val(now))
            .col_expr(case::Column::UpdateTime, Expr::val(now))
            .filter(case::Column::CaseNumber.eq(number))
            .filter(case::Column::Status.ne("CLOSED"))
            .exec(&tx)
            .await?;
        if r.rows_affected == 1 {
            audit::record(&tx, "case.closed", number, &format!("closed: {resolution}"), now).await?;
        }
        tx.commit().await?;
        Ok(self.by_number(number).await?.map(|c| {
            if c.case.resolution.as_deref() == Some(resolution) {
                Closed::Ok(c)
            } else {
                Closed::Conflict(c)
            }
        }))
    }

    /// Cases newest first, with ids below `before`, filtered.
    pub async fn list(
        &self,
        business_unit_id: Option<&str>,
        statuses: &[&str],
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<CaseRecord>, DbErr> {
        let mut q = case::Entity::find();
        if let Some(bu) = business_unit_id {
            q = q.filter(case::Column::BusinessUnitId.eq(bu));
        }
        if !statuses.is_empty() {
            q = q.filter(case::Column::Status.is_in(statuses.iter().copied()));
        }
        if let Some(b) = before {
            q = q.filter(case::Column::Id.lt(b));
        }
        let cases = q.order_by_desc(case::Column::Id).limit(limit).all(&self.read).await?;
        let mut out = Vec::with_capacity(cases.len());
        for c in cases {
            if let Some(r) = self.with_comments(Some(c)).await? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use sspm_platform::db::connect_and_migrate;
    use sspm_platform::testing;

    use super::*;
    use crate::migration::Migrator;

    fn new_case(reference: &str) -> NewCase {
        NewCase {
            external_reference: reference.to_owned(),
            subject: "Port change".to_owned(),
            description: "+1 concurrent".to_owned(),
            business_unit_id: "bu-1".to_owned(),
            requester: "alice@example.com".to_owned(),
        }
    }

    /// OpenCase is idempotent by external reference, also when the calls race: one case,
    /// the same number for every caller, and what the opener got is what is stored.
    async fn opening_twice_gives_one_case(url: &str) {
        let store = Store::new(connect_and_migrate::<Migrator>(url).await.unwrap());
        let (first, created) = store.open(new_case("r-1"), 10).await.unwrap();
        assert!(created);
        assert_eq!(first.case.status, "NEW");
        let stored = store.by_reference("r-1").await.unwrap().unwrap();
        assert_eq!(stored.case, first.case);
        assert!(stored.comments.is_empty());

        let (again, created) = store.open(new_case("r-1"), 20).await.unwrap();
        assert!(!created);
        assert_eq!(again.case, first.case);

        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let store = store.clone();
            calls.spawn(async move { store.open(new_case("r-2"), 30).await });
        }
        let racing = calls.join_all().await;
        let numbers: std::collections::BTreeSet<_> = racing
            .iter()
            .map(|r| r.as_ref().unwrap().0.case.case_number.clone())
            .collect();
        assert_eq!(numbers.len(), 1, "{numbers:?}");
        assert_eq!(racing.iter().filter(|r| r.as_ref().unwrap().1).count(), 1);
        assert_ne!(numbers.first().unwrap(), &first.case.case_number);
    }

    #[tokio::test]
    async fn opening_twice_gives_one_case_on_sqlite() {
        opening_twice_gives_one_case(&testing::fresh_sqlite().url).await;
    }

    #[tokio::test]
    #[ignore = "PostgreSQL variant: set SSPM_TEST_POSTGRES_URL and run with --ignored"]
    async fn opening_twice_gives_one_case_on_postgres() {
        opening_twice_gives_one_case(&testing::fresh_postgres("ticketing").await.url).await;
    }
}
