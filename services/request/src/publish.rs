//! The NATS JetStream publisher (docs/EVENTS.md, "NATS JetStream"): when `[events]
//! nats_url` is set, every event of the feed is published, in feed order, to
//! `<subject_prefix>.<type>.<business unit>` with its id as `Nats-Msg-Id` and the
//! CloudEvents attributes as `ce-*` headers (binary content mode; the payload is the
//! event's protobuf message). The stream is created or updated at start from the
//! configuration. Progress is the feed position of the last event JetStream acknowledged
//! (a `decision_cursor` row), saved after each batch: a crash before the save publishes
//! the batch again, and JetStream's duplicate window drops what it already has. A broker
//! that is down: the events wait in the table (`sspm_events_pending`), retried with
//! backoff.
//!
//! A batch goes out as one window: every event is sent before any acknowledgement is
//! awaited (one round trip per batch, not per event), and each but the first carries
//! `Nats-Expected-Last-Msg-Id` = the id of the event before it. JetStream stores an event
//! only if the one before it is the stream's last (it checks duplicates first, so an event
//! already stored is acknowledged as a duplicate), so when one is refused or lost every later
//! one of the window is refused too: the stream always holds a prefix of the feed, in feed
//! order, and the next batch resumes after the last acknowledged event
//! (docs/EVENTS.md, "NATS JetStream").

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::Context, message::PublishMessage, stream};
use backon::{BackoffBuilder, ExponentialBuilder};
use prost::Message;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, Statement, Value};
use sspm_platform::config::EventsConfig;
use sspm_proto::v1 as pb;

use crate::entities::event;
use crate::events;
use crate::feed::Feed;
use crate::store::Store;
use crate::workflow::rfc3339;

/// The `decision_cursor` row that holds the position of the last event published.
const PUBLISHED: &str = "nats_published";

/// Where the publisher is: the position of the last event JetStream acknowledged (0: none).
pub async fn published<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    events::cursor_row(db, PUBLISHED).await
}

/// Records that everything up to `position` is published (never moves back: another
/// replica's publisher may be ahead).
async fn set_published<C: ConnectionTrait>(db: &C, position: i64) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => {
            "INSERT INTO decision_cursor (feed, cursor) VALUES ($1, $2) ON CONFLICT (feed) DO UPDATE \
             SET cursor = GREATEST(decision_cursor.cursor, EXCLUDED.cursor)"
        }
        _ => {
            "INSERT INTO decision_cursor (feed, cursor) VALUES (?, ?) ON CONFLICT (feed) DO UPDATE \
             SET cursor = MAX(decision_cursor.cursor, excluded.cursor)"
        }
    };
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        sql,
        [Value::from(PUBLISHED), Value::from(position)],
    ))
    .await
    .map(|_| ())
}

/// Events not yet published: placed after the publisher's position, or not yet placed.
pub async fn pending<C: ConnectionTrait>(db: &C) -> Result<u64, DbErr> {
    use sea_orm::{ColumnTrait, Condition, PaginatorTrait, QueryFilter};
    let at = published(db).await?;
    event::Entity::find()
        .filter(
            Condition::any()
                .add(event::Column::Position.gt(at))
                .add(event::Column::Position.is_null()),
        )
        .count(db)
        .await
}

/// The subject of an event: `<prefix>.<type without "sspm.v1.">.<business unit>`, a `.` in
/// the business unit's id written `_` (a subject's tokens are separated by dots; the
/// exact id is in `ce-subject`).
pub fn subject_of(prefix: &str, e: &pb::Event) -> String {
    format!(
        "{prefix}.{}.{}",
        e.r#type.trim_start_matches("sspm.v1."),
        e.subject.replace('.', "_")
    )
}

/// An event as a JetStream message: CloudEvents binary content mode.
fn message(e: &pb::Event, time: i64) -> PublishMessage {
    let payload = match &e.data {
        Some(pb::event::Data::PortLimitsChanged(m)) => m.encode_to_vec(),
        Some(pb::event::Data::Request(m)) => m.encode_to_vec(),
        Some(pb::event::Data::ApprovalTask(m)) => m.encode_to_vec(),
        Some(pb::event::Data::CapacityChanged(m)) => m.encode_to_vec(),
        None => Vec::new(),
    };
    PublishMessage::build()
        .payload(payload.into())
        .message_id(&e.id)
        .header("ce-specversion", "1.0")
        .header("ce-id", e.id.as_str())
        .header("ce-source", e.source.as_str())
        .header("ce-type", e.r#type.as_str())
        .header("ce-subject", e.subject.as_str())
        .header("ce-time", rfc3339(time).as_str())
        .header("ce-sequence", e.sequence.to_string().as_str())
        .header("ce-position", e.cursor.as_str())
        .header("content-type", "application/protobuf")
}

/// The stream as configured.
fn stream_config(cfg: &EventsConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![format!("{}.>", cfg.subject_prefix)],
        max_age: Duration::from_secs(cfg.stream_max_age_seconds),
        num_replicas: cfg.stream_replicas,
        duplicate_window: Duration::from_secs(cfg.duplicate_window_seconds),
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("cannot reach the broker: {0}")]
    Connect(String),
    #[error("cannot create or update stream: {0}")]
    Stream(String),
    #[error("publishing failed: {0}")]
    Publish(String),
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

/// The publisher of one replica.
#[derive(Debug)]
pub struct Publisher {
    cfg: EventsConfig,
    db: DatabaseConnection,
    feed: Arc<Feed>,
}

impl Publisher {
    /// Publishes `store`'s events as `cfg` says, following `feed`.
    pub fn new(cfg: EventsConfig, store: &Store, feed: Arc<Feed>) -> Self {
        Self {
            cfg,
            db: store.db().clone(),
            feed,
        }
    }

    /// Runs until the process ends: sessions (connect, ensure the stream, publish), each
    /// failed one followed by a backoff wait.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut head = self.feed.subscribe();
            let backoff = || {
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(self.cfg.retry_initial_ms))
                    .with_max_delay(Duration::from_millis(self.cfg.retry_max_ms))
                    .with_jitter()
                    .without_max_times()
                    .build()
            };
            let mut delays = backoff();
            loop {
                let mut progressed = false;
                let stop = self.session(&mut head, &mut progressed).await;
                if progressed {
                    delays = backoff();
                }
                let wait = delays.next().unwrap_or(Duration::from_millis(self.cfg.retry_max_ms));
                tracing::warn!(error = %stop, retry_in_ms = wait.as_millis() as u64, "event publisher stopped; retrying");
                tokio::time::sleep(wait).await;
            }
        })
    }

    async fn session(&self, head: &mut tokio::sync::watch::Receiver<i64>, progressed: &mut bool) -> Stop {
        let connected = async_nats::ConnectOptions::new()
            .name("sspm-request")
            .connection_timeout(Duration::from_millis(self.cfg.ack_timeout_ms))
            .connect(self.cfg.nats_url.as_str())
            .await;
        let client = match connected {
            Ok(c) => c,
            Err(e) => return Stop::Connect(e.to_string()),
        };
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_millis(self.cfg.ack_timeout_ms));
        if let Err(e) = js.create_or_update_stream(stream_config(&self.cfg)).await {
            return Stop::Stream(e.to_string());
        }
        tracing::info!(
            stream = self.cfg.stream,
            url = self.cfg.nats_url,
            "event publisher connected"
        );
        loop {
            match self.batch(&js).await {
                Ok(0) => {}
                Ok(_) => {
                    *progressed = true;
                    continue;
                }
                Err(stop) => return stop,
            }
            // Nothing to send: wait for the feed to move (or a poll, for other replicas').
            tokio::select! {
                moved = head.changed() => if moved.is_err() {
                    return Stop::Publish("the feed stopped".to_owned());
                },
                () = tokio::time::sleep(Duration::from_millis(self.cfg.poll_ms)) => {}
            }
        }
    }

    /// Publishes the next batch as one chained window; how many JetStream acknowledged.
    /// What was acknowledged, up to the first event that was not, is recorded even when a
    /// later one fails.
    async fn batch(&self, js: &Context) -> Result<usize, Stop> {
        let at = published(&self.db).await?;
        let rows = events::feed(&self.db, at, None, &[], self.cfg.publish_batch).await?;
        let mut in_flight = Vec::with_capacity(rows.len());
        let mut failed = None;
        let mut previous: Option<String> = None;
        for row in rows {
            let (position, time) = (row.position.unwrap_or(at), row.time);
            let e = events::event_pb(row);
            let mut msg = message(&e, time);
            if let Some(previous) = &previous {
                msg = msg.expected_last_message_id(previous);
            }
            match js.send_publish(subject_of(&self.cfg.subject_prefix, &e), msg).await {
                Ok(ack) => in_flight.push((position, ack)),
                Err(err) => {
                    failed = Some(Stop::Publish(err.to_string()));
                    break;
                }
            }
            previous = Some(e.id);
        }
        let mut last = at;
        let mut sent = 0;
        for (position, ack) in in_flight {
            match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        tracing::debug!(position, "event already in the stream (published before)");
                    }
                    last = position;
                    sent += 1;
                }
                Err(err) => {
                    // The later ones expected this one before them: refused as well.
                    failed.get_or_insert(Stop::Publish(err.to_string()));
                    break;
                }
            }
        }
        if last > at {
            set_published(&self.db, last).await?;
        }
        match failed {
            Some(stop) => Err(stop),
            None => Ok(sent),
        }
    }
}

/// One event as a JetStream stream holds it (see [`read_stream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    /// The stream's sequence number.
    pub stream_sequence: u64,
    /// The NATS subject.
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub message_id: String,
    /// `ce-id`.
    pub id: String,
    /// `ce-type`.
    pub event_type: String,
    /// `ce-subject` (the business unit).
    pub business_unit_id: String,
    /// `ce-sequence`.
    pub sequence: i64,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Every message of `stream` on the NATS server at `url`, in stream order: how the tests
/// (and an operator checking a deployment) see what the publisher sent.
pub async fn read_stream(url: &str, stream: &str) -> anyhow::Result<Vec<Streamed>> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let mut s = js.get_stream(stream).await?;
    let (first, last) = {
        let info = s.info().await?;
        (info.state.first_sequence, info.state.last_sequence)
    };
    let mut out = Vec::new();
    for seq in first.max(1)..=last {
        let m = s.get_raw_message(seq).await?;
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        out.push(Streamed {
            stream_sequence: m.sequence,
            subject: m.subject.to_string(),
            message_id: header("Nats-Msg-Id"),
            id: header("ce-id"),
            event_type: header("ce-type"),
            business_unit_id: header("ce-subject"),
            sequence: header("ce-sequence").parse().unwrap_or_default(),
            payload: m.payload.to_vec(),
        });
    }
    Ok(out)
}

/// Deletes `stream` from the NATS server at `url` (tests clean up after themselves).
pub async fn delete_stream(url: &str, stream: &str) -> anyhow::Result<()> {
    let js = jetstream::new(async_nats::connect(url).await?);
    js.delete_stream(stream).await?;
    Ok(())
}
