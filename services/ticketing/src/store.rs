//! Every query of the ticketing service.

use sea_orm::ActiveEnum;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use sspm_platform::audit;
use sspm_platform::db::SelectUnique;
use sspm_platform::db::{DbErrorKind, classify};
use sspm_platform::group_commit::{Savepoint, Writer};
use sspm_rules::CaseNumber;

use crate::entities::{case, comment, org_write};

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

/// How the cases' writes reach a Salesforce org (see [`Store::mirroring`]).
#[derive(Debug, Clone, Copy)]
pub struct Mirror {
    /// The org has no resolution field: the resolution goes as a comment before closing.
    pub resolution_as_comment: bool,
}

/// What the org is sent, in order per case (`org_writes.kind`).
pub use crate::entities::org_write::Kind as OrgWriteKind;

/// The most a Salesforce case comment holds (`CaseComment.CommentBody`), in bytes of UTF-8.
pub const ORG_COMMENT_MAX_BYTES: usize = 4000;

/// A comment as the org gets it: the text, who wrote it (the org shows the integration user
/// as its author) and a reference unique to this comment, by which a comment whose answer
/// was lost is recognised. Cut to [`ORG_COMMENT_MAX_BYTES`], the signature kept whole.
pub fn org_comment(body: &str, author: &str, reference: &str) -> String {
    let signature = if author == "system" {
        format!("\n\n— SSPM ({reference})")
    } else {
        format!("\n\n— {author}, via SSPM ({reference})")
    };
    let room = ORG_COMMENT_MAX_BYTES.saturating_sub(signature.len());
    let mut text = String::with_capacity(ORG_COMMENT_MAX_BYTES);
    if body.len() <= room {
        text.push_str(body);
    } else {
        let keep = room.saturating_sub('…'.len_utf8());
        let end = (0..=keep).rev().find(|i| body.is_char_boundary(*i)).unwrap_or(0);
        text.push_str(&body[..end]);
        text.push('…');
    }
    text + &signature
}

/// Pending and failed writes to the org.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrgBacklog {
    /// Not carried out yet.
    pub pending: u64,
    /// Refused by the org for good.
    pub failed: u64,
}

/// The ticketing service's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Plain reads outside transactions (see [`Store::with_reader`]).
    read: DatabaseConnection,
    /// Whether the cases' writes go to an org too.
    mirror: Option<Mirror>,
    /// How opening and closing cases commit (group commit on SQLite: see
    /// [`Store::with_group_commit`]).
    writer: Writer,
}

impl Store {
    /// A store on `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            read: db.clone(),
            writer: Writer::new(db.clone(), 0),
            db,
            mirror: None,
        }
    }

    /// The same store, opening and closing cases (two per create) with commits shared in
    /// groups on SQLite (`sspm_platform::group_commit`); at most `queue` callers wait; 0
    /// commits each alone.
    pub fn with_group_commit(mut self, queue: usize) -> Self {
        self.writer = Writer::new(self.db.clone(), queue);
        self
    }

    /// The same store, queueing every write to a case the org has (one with an `org_id`)
    /// for the org, in the transaction that writes it here (see [`Store::due_org_writes`]).
    pub fn mirroring(mut self, mirror: Mirror) -> Self {
        self.mirror = Some(mirror);
        self
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
        self.insert_case(new, None, now).await
    }

    /// Records the case the org opened (`org_id`, numbered `case_number` by the org), or
    /// returns the one with the same external reference, as [`Store::open`].
    pub async fn open_from_org(
        &self,
        new: NewCase,
        org_id: &str,
        case_number: &str,
        now: i64,
    ) -> Result<(CaseRecord, bool), DbErr> {
        self.insert_case(new, Some((org_id, case_number)), now).await
    }

    async fn insert_case(
        &self,
        new: NewCase,
        org: Option<(&str, &str)>,
        now: i64,
    ) -> Result<(CaseRecord, bool), DbErr> {
        let mut case = case::Model {
            id: 0,
            case_number: org.map(|(_, number)| number.to_owned()),
            external_reference: new.external_reference,
            subject: new.subject,
            description: new.description,
            business_unit_id: new.business_unit_id,
            requester: new.requester,
            status: case::Status::New,
            resolution: None,
            create_time: now,
            update_time: now,
            close_time: None,
            org_id: org.map(|(id, _)| id.to_owned()),
        };
        let row = case.clone();
        let org: Option<(String, String)> = org.map(|(id, number)| (id.to_owned(), number.to_owned()));
        let inserted = self
            .writer
            .write(move |tx| {
                Box::pin(async move {
                    let mut active = case::ActiveModel::from(row.clone());
                    active.id = NotSet;
                    let id = case::Entity::insert(active).exec(tx).await?.last_insert_id;
                    let number = match &org {
                        Some((_, number)) => number.clone(),
                        None => {
                            let number = CaseNumber::from_sequence(u64::try_from(id).unwrap_or_default());
                            case::Entity::update_many()
                                .col_expr(case::Column::CaseNumber, Expr::val(number.as_str()))
                                .filter(case::Column::Id.eq(id))
                                .exec(tx)
                                .await?;
                            number.as_str().to_owned()
                        }
                    };
                    let detail = match &org {
                        Some((org_id, _)) => format!("opened for {} (Salesforce {org_id})", row.external_reference),
                        None => format!("opened for {}", row.external_reference),
                    };
                    audit::record(tx, "case.opened", &number, &detail, now).await?;
                    Ok(Savepoint::Keep((id, number)))
                })
            })
            .await;
        match inserted {
            Ok((id, number)) => {
                case.id = id;
                case.case_number = Some(number);
                Ok((CaseRecord { case, comments: vec![] }, true))
            }
            // Opened before (a retry), or concurrently by another call: that one is the case.
            Err(e) if classify(&e) == DbErrorKind::UniqueViolation => {
                let existing = self.by_reference(&case.external_reference).await?.ok_or_else(|| {
                    DbErr::Custom(format!(
                        "case {} cannot be recorded: its number {} is another case's",
                        case.external_reference,
                        case.case_number.unwrap_or_default()
                    ))
                })?;
                Ok((existing, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Queues a write for the org in `tx`, when the store mirrors and the case is the org's.
    async fn queue_for_org(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        case: &case::Model,
        kind: OrgWriteKind,
        argument: String,
        now: i64,
    ) -> Result<(), DbErr> {
        if self.mirror.is_none() || case.org_id.is_none() {
            return Ok(());
        }
        org_write::Entity::insert(org_write::ActiveModel {
            id: NotSet,
            case_id: Set(case.id),
            kind: Set(kind),
            argument: Set(argument),
            attempts: Set(0),
            next_attempt_time: Set(now),
            lease_until: Set(None),
            maybe_done: Set(false),
            last_error: Set(None),
            failed_time: Set(None),
            create_time: Set(now),
        })
        .exec(tx)
        .await?;
        Ok(())
    }

    /// Adds a comment; `false` when a comment with the same `key` is on the case already
    /// (a retried call), which is left as it is.
    pub async fn comment(
        &self,
        case: &case::Model,
        author: &str,
        body: &str,
        key: Option<&str>,
        now: i64,
    ) -> Result<bool, DbErr> {
        let number = case.case_number.clone().unwrap_or_default();
        let added = async {
            let tx = self.db.begin().await?;
            let id = comment::Entity::insert(comment::ActiveModel {
                id: NotSet,
                case_id: Set(case.id),
                author: Set(author.to_owned()),
                body: Set(body.to_owned()),
                create_time: Set(now),
                comment_key: Set(key.map(str::to_owned)),
            })
            .exec(&tx)
            .await?
            .last_insert_id;
            case::Entity::update_many()
                .col_expr(case::Column::UpdateTime, Expr::val(now))
                .filter(case::Column::Id.eq(case.id))
                .exec(&tx)
                .await?;
            audit::record(&tx, "case.commented", &number, &format!("comment by {author}"), now).await?;
            let text = org_comment(body, author, &format!("{number}/{id}"));
            self.queue_for_org(&tx, case, OrgWriteKind::Comment, text, now).await?;
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
    pub async fn set_status(&self, case: &case::Model, status: case::Status, now: i64) -> Result<bool, DbErr> {
        let tx = self.db.begin().await?;
        let r = case::Entity::update_many()
            .col_expr(case::Column::Status, Expr::val(status.to_value()))
            .col_expr(case::Column::UpdateTime, Expr::val(now))
            .filter(case::Column::Id.eq(case.id))
            .filter(case::Column::Status.ne(case::Status::Closed))
            .exec(&tx)
            .await?;
        if r.rows_affected == 1 {
            let number = case.case_number.clone().unwrap_or_default();
            let name = status.to_value();
            audit::record(&tx, "case.status_set", &number, &format!("status {name}"), now).await?;
            self.queue_for_org(&tx, case, OrgWriteKind::Status, name, now).await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected == 1)
    }

    /// Closes a case with a resolution (a no-op when closed with the same one).
    pub async fn close(&self, number: &str, resolution: &str, now: i64) -> Result<Option<Closed>, DbErr> {
        let store = self.clone();
        let (n, r) = (number.to_owned(), resolution.to_owned());
        let closed = self
            .writer
            .write(move |tx| Box::pin(async move { store.close_in(tx, &n, &r, now).await }))
            .await?;
        match closed {
            Some(case) => Ok(self.with_comments(Some(case)).await?.map(Closed::Ok)),
            None => Ok(self.by_number(number).await?.map(|c| {
                if c.case.resolution.as_deref() == Some(resolution) {
                    Closed::Ok(c)
                } else {
                    Closed::Conflict(c)
                }
            })),
        }
    }

    /// [`Store::close`] in `tx`: the case as closed now, or `None` (nothing written) when it
    /// was closed already or does not exist.
    async fn close_in(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        number: &str,
        resolution: &str,
        now: i64,
    ) -> Result<Savepoint<Option<case::Model>>, DbErr> {
        let closed = case::Entity::update_many()
            .col_expr(case::Column::Status, Expr::val(case::Status::Closed.to_value()))
            .col_expr(case::Column::Resolution, Expr::val(resolution))
            .col_expr(case::Column::CloseTime, Expr::val(now))
            .col_expr(case::Column::UpdateTime, Expr::val(now))
            .filter(case::Column::CaseNumber.eq(number))
            .filter(case::Column::Status.ne(case::Status::Closed))
            .exec_with_returning(tx)
            .await?
            .pop();
        let Some(case) = closed else {
            return Ok(Savepoint::Undo(None));
        };
        audit::record(tx, "case.closed", number, &format!("closed: {resolution}"), now).await?;
        if self.mirror.is_some_and(|m| m.resolution_as_comment) {
            let text = org_comment(
                &format!("Resolution: {resolution}"),
                "system",
                &format!("{number}/close"),
            );
            self.queue_for_org(tx, &case, OrgWriteKind::Comment, text, now).await?;
        }
        self.queue_for_org(tx, &case, OrgWriteKind::Close, resolution.to_owned(), now)
            .await?;
        Ok(Savepoint::Keep(Some(case)))
    }

    /// Cases newest first, with ids below `before`, filtered.
    pub async fn list(
        &self,
        business_unit_id: Option<&str>,
        statuses: &[case::Status],
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

    /// The writes the org may be sent now, in order: of each case only its oldest pending
    /// write (a case's writes go in the order they were made), when it is due and no worker
    /// holds it; with the case's org id. Also the earliest time a write that is not due
    /// yet becomes due.
    pub async fn due_org_writes(
        &self,
        now: i64,
        limit: u64,
    ) -> Result<(Vec<(org_write::Model, case::Model)>, Option<i64>), DbErr> {
        let pending = org_write::Entity::find()
            .filter(org_write::Column::FailedTime.is_null())
            .order_by_asc(org_write::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        let mut seen = std::collections::HashSet::new();
        let mut due = Vec::new();
        let mut later: Option<i64> = None;
        for w in pending {
            if !seen.insert(w.case_id) {
                continue;
            }
            let free_at = w.next_attempt_time.max(w.lease_until.unwrap_or(0));
            if free_at > now {
                later = Some(later.map_or(free_at, |l| l.min(free_at)));
                continue;
            }
            due.push(w);
        }
        if due.is_empty() {
            return Ok((vec![], later));
        }
        // The cases of the due writes, in one query.
        let cases: std::collections::HashMap<i64, case::Model> = case::Entity::find()
            .filter(case::Column::Id.is_in(due.iter().map(|w| w.case_id)))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        let due = due
            .into_iter()
            .filter_map(|w| cases.get(&w.case_id).cloned().map(|c| (w, c)))
            .collect();
        Ok((due, later))
    }

    /// Takes the write `w` until `lease_until`; `false` when another worker holds it or it
    /// is done. A comment is marked as possibly made from here on: should this process stop
    /// while it is being sent, the next attempt looks for it on the case before posting it.
    pub async fn claim_org_write(&self, w: &org_write::Model, now: i64, lease_until: i64) -> Result<bool, DbErr> {
        let in_flight = w.maybe_done || w.kind == OrgWriteKind::Comment;
        let r = org_write::Entity::update_many()
            .col_expr(org_write::Column::LeaseUntil, Expr::val(lease_until))
            .col_expr(org_write::Column::MaybeDone, Expr::val(in_flight))
            .filter(org_write::Column::Id.eq(w.id))
            .filter(org_write::Column::FailedTime.is_null())
            .filter(
                sea_orm::Condition::any()
                    .add(org_write::Column::LeaseUntil.is_null())
                    .add(org_write::Column::LeaseUntil.lte(now)),
            )
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected == 1)
    }

    /// The org took the write `id`.
    pub async fn org_write_done(&self, id: i64) -> Result<(), DbErr> {
        org_write::Entity::delete_by_id(id).exec(&self.db).await?;
        Ok(())
    }

    /// The write `id` failed for now: try again at `next_attempt_time`.
    pub async fn org_write_retry(
        &self,
        w: &org_write::Model,
        next_attempt_time: i64,
        error: &str,
        maybe_done: bool,
    ) -> Result<(), DbErr> {
        org_write::Entity::update_many()
            .col_expr(org_write::Column::Attempts, Expr::val(w.attempts.saturating_add(1)))
            .col_expr(org_write::Column::NextAttemptTime, Expr::val(next_attempt_time))
            .col_expr(org_write::Column::LeaseUntil, Expr::val(Option::<i64>::None))
            .col_expr(org_write::Column::MaybeDone, Expr::val(w.maybe_done || maybe_done))
            .col_expr(org_write::Column::LastError, Expr::val(error))
            .filter(org_write::Column::Id.eq(w.id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// The org refused the write `id` for good: it is kept, with the reason, and not tried
    /// again; the case's later writes go on.
    pub async fn org_write_failed(
        &self,
        w: &org_write::Model,
        case_number: &str,
        error: &str,
        now: i64,
    ) -> Result<(), DbErr> {
        let tx = self.db.begin().await?;
        org_write::Entity::update_many()
            .col_expr(org_write::Column::Attempts, Expr::val(w.attempts.saturating_add(1)))
            .col_expr(org_write::Column::LeaseUntil, Expr::val(Option::<i64>::None))
            .col_expr(org_write::Column::LastError, Expr::val(error))
            .col_expr(org_write::Column::FailedTime, Expr::val(now))
            .filter(org_write::Column::Id.eq(w.id))
            .exec(&tx)
            .await?;
        audit::record(
            &tx,
            "case.org_write_failed",
            case_number,
            &format!("{} refused by Salesforce: {error}", w.kind.to_value()),
            now,
        )
        .await?;
        tx.commit().await
    }

    /// How many writes wait for the org, and how many it refused.
    pub async fn org_backlog(&self) -> Result<OrgBacklog, DbErr> {
        let count = |failed: bool| {
            let q = org_write::Entity::find();
            let q = if failed {
                q.filter(org_write::Column::FailedTime.is_not_null())
            } else {
                q.filter(org_write::Column::FailedTime.is_null())
            };
            q.count(&self.read)
        };
        Ok(OrgBacklog {
            pending: count(false).await?,
            failed: count(true).await?,
        })
    }

    /// The writes waiting for the org or refused by it, oldest first (for tests and
    /// operators' tools).
    pub async fn org_writes(&self) -> Result<Vec<org_write::Model>, DbErr> {
        org_write::Entity::find()
            .order_by_asc(org_write::Column::Id)
            .all(&self.read)
            .await
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
        assert_eq!(first.case.status, case::Status::New);
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

    /// The org's comments hold 4,000 bytes: a longer one is cut on a character boundary,
    /// its signature (author and reference) kept whole.
    #[test]
    fn org_comments_fit_the_org() {
        assert_eq!(
            org_comment("Hi", "percy@classics.example", "00001001/7"),
            "Hi\n\n— percy@classics.example, via SSPM (00001001/7)"
        );
        assert_eq!(
            org_comment("Hi", "system", "00001001/close"),
            "Hi\n\n— SSPM (00001001/close)"
        );
        for body in ["é".repeat(2_100), "x".repeat(5_000), "x".repeat(3_999) + "€€"] {
            let c = org_comment(&body, "system", "00001001/8");
            assert!(c.len() <= ORG_COMMENT_MAX_BYTES, "{}", c.len());
            assert!(c.len() > ORG_COMMENT_MAX_BYTES - 4, "{}", c.len());
            assert!(c.ends_with("…\n\n— SSPM (00001001/8)"), "{c}");
        }
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
