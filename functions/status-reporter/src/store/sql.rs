//! The store on SQLite or PostgreSQL through sqlx's `Any` driver: one implementation, with the
//! few statements that differ chosen by dialect.

use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader as _, Event};
use sqlx::AnyPool;
use sqlx::Row as _;
use sqlx::any::{AnyPoolOptions, AnyRow};
use tokio::sync::OnceCell;

use klambda_events::data::Phase;

use super::{
    BoxFuture, Census, Folder, Recorded, StatusStore, StoreError, StoredEvent, decode_state,
    encode_state, structured,
};
use crate::fold::FunctionState;

/// Which database the URL named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// The schema; `{seq}` is the dialect's auto-numbered key column.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events (
        seq {seq}, source TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, function TEXT,
        received_at TEXT NOT NULL, body TEXT NOT NULL, UNIQUE (source, id))",
    "CREATE INDEX IF NOT EXISTS events_by_function ON events (function, seq)",
    "CREATE INDEX IF NOT EXISTS events_by_id ON events (id, seq)",
    "CREATE TABLE IF NOT EXISTS functions (name TEXT PRIMARY KEY, state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dead_letters (
        seq {seq}, source TEXT NOT NULL, id TEXT NOT NULL, destination TEXT NOT NULL,
        received_at TEXT NOT NULL, body TEXT NOT NULL, UNIQUE (source, id, destination))",
];

impl Dialect {
    /// The one place the dialects' DDL differs.
    fn sequence_column(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        }
    }

    fn schema(self) -> impl Iterator<Item = String> {
        SCHEMA
            .iter()
            .map(move |statement| statement.replace("{seq}", self.sequence_column()))
    }
}

/// The event log and function states in SQLite or PostgreSQL.
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    schema: OnceCell<()>,
}

impl SqlStore {
    /// A store at `url` (`sqlite:PATH` or `postgres://…`); nothing connects until first use.
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (dialect, url, connections) = if url.starts_with("sqlite:") {
            // One connection: SQLite serialises writers anyway, and one connection never meets
            // SQLITE_BUSY under the broker's parallel deliveries. `mode=rwc` creates the file.
            let url = if url.contains("mode=") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Dialect::Sqlite, url, 1)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_owned(), 8)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        // Fail fast when the database is unreachable: the stage answers 503 and the broker's
        // backoff does the waiting, instead of a request hanging for sqlx's default 30 s.
        let mut options = AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(std::time::Duration::from_secs(3));
        if dialect == Dialect::Sqlite {
            // Write-ahead log (sqlx's default) synced at checkpoints, not at every commit: a
            // commit survives the process being killed at any instant (it is in the log, which
            // the OS holds), though not the machine losing power. The embedded platform records
            // every accepted event before its 202, so a sync per commit would cap the ingress
            // at the disk's fsync rate.
            options = options.after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *connection, "PRAGMA synchronous = NORMAL")
                        .await
                        .map(drop)
                })
            });
        }
        let pool = options.connect_lazy(&url)?;
        Ok(Self {
            pool,
            dialect,
            schema: OnceCell::new(),
        })
    }

    async fn ready(&self) -> Result<&AnyPool, StoreError> {
        self.schema
            .get_or_try_init(|| async {
                for statement in self.dialect.schema() {
                    // Our own constant DDL with a constant column type: nothing from input.
                    sqlx::query(sqlx::AssertSqlSafe(statement))
                        .execute(&self.pool)
                        .await?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        Ok(&self.pool)
    }
}

fn stored(row: &AnyRow) -> Result<StoredEvent, StoreError> {
    let received: String = row.try_get("received_at")?;
    Ok(StoredEvent {
        seq: row.try_get("seq")?,
        received_at: DateTime::parse_from_rfc3339(&received)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
        body: row.try_get("body")?,
    })
}

fn state_of(name: &str, row: &AnyRow) -> Result<FunctionState, StoreError> {
    decode_state(name, &row.try_get::<String, _>("state")?)
}

impl StatusStore for SqlStore {
    fn record<'a>(
        &'a self,
        event: &'a Event,
        function: Option<&'a str>,
        received_at: DateTime<Utc>,
        fold: Folder,
    ) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        Box::pin(async move {
            let pool = self.ready().await?;
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO events (source, id, type, function, received_at, body)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (source, id) DO NOTHING RETURNING seq",
            )
            .bind(event.source().to_string())
            .bind(event.id().to_owned())
            .bind(event.ty().to_owned())
            .bind(function.map(str::to_owned))
            .bind(received_at.to_rfc3339())
            .bind(structured(event))
            .fetch_optional(&mut *tx)
            .await?;
            if inserted.is_none() {
                tx.commit().await?;
                return Ok(Recorded {
                    new: false,
                    state: None,
                });
            }
            let mut state = None;
            if let Some(name) = function {
                if self.dialect == Dialect::Postgres {
                    // Serialises folds of one function across connections and replicas.
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))::text")
                        .bind(name.to_owned())
                        .execute(&mut *tx)
                        .await?;
                }
                let current = sqlx::query("SELECT state FROM functions WHERE name = $1")
                    .bind(name.to_owned())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| state_of(name, &row))
                    .transpose()?;
                if let Some(next) = fold(current, event, received_at) {
                    sqlx::query(
                        "INSERT INTO functions (name, state) VALUES ($1, $2)
                         ON CONFLICT (name) DO UPDATE SET state = excluded.state",
                    )
                    .bind(name.to_owned())
                    .bind(encode_state(&next))
                    .execute(&mut *tx)
                    .await?;
                    state = Some(next);
                }
            }
            tx.commit().await?;
            Ok(Recorded { new: true, state })
        })
    }

    fn functions(&self) -> BoxFuture<'_, Result<Vec<FunctionState>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT name, state FROM functions ORDER BY name")
                .fetch_all(self.ready().await?)
                .await?;
            rows.iter()
                .map(|row| state_of(&row.try_get::<String, _>("name")?, row))
                .collect()
        })
    }

    fn function<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<FunctionState>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT state FROM functions WHERE name = $1")
                .bind(name.to_owned())
                .fetch_optional(self.ready().await?)
                .await?;
            row.map(|row| state_of(name, &row)).transpose()
        })
    }

    fn function_events<'a>(
        &'a self,
        name: &'a str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, received_at, body FROM events WHERE function = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(name.to_owned())
            .bind(after)
            .bind(limit)
            .fetch_all(self.ready().await?)
            .await?;
            rows.iter().map(stored).collect()
        })
    }

    fn event<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<StoredEvent>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT seq, received_at, body FROM events WHERE id = $1 ORDER BY seq LIMIT 1",
            )
            .bind(id.to_owned())
            .fetch_optional(self.ready().await?)
            .await?;
            row.as_ref().map(stored).transpose()
        })
    }

    fn record_dead_letter<'a>(
        &'a self,
        event: &'a Event,
        received_at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let destination = event
                .extension("knativeerrordest")
                .map(|v| v.to_string())
                .unwrap_or_default();
            let inserted = sqlx::query(
                "INSERT INTO dead_letters (source, id, destination, received_at, body)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (source, id, destination) DO NOTHING RETURNING seq",
            )
            .bind(event.source().to_string())
            .bind(event.id().to_owned())
            .bind(destination)
            .bind(received_at.to_rfc3339())
            .bind(structured(event))
            .fetch_optional(self.ready().await?)
            .await?;
            Ok(inserted.is_some())
        })
    }

    fn dead_letters(&self, limit: i64) -> BoxFuture<'_, Result<Vec<StoredEvent>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, received_at, body FROM dead_letters ORDER BY seq LIMIT $1",
            )
            .bind(limit)
            .fetch_all(self.ready().await?)
            .await?;
            rows.iter().map(stored).collect()
        })
    }

    fn dead_letter(&self, seq: i64) -> BoxFuture<'_, Result<Option<StoredEvent>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT seq, received_at, body FROM dead_letters WHERE seq = $1")
                .bind(seq)
                .fetch_optional(self.ready().await?)
                .await?;
            row.as_ref().map(stored).transpose()
        })
    }

    fn remove_dead_letters(&self, seq: Option<i64>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let pool = self.ready().await?;
            let done = match seq {
                Some(seq) => {
                    sqlx::query("DELETE FROM dead_letters WHERE seq = $1")
                        .bind(seq)
                        .execute(pool)
                        .await?
                }
                None => {
                    sqlx::query("DELETE FROM dead_letters")
                        .execute(pool)
                        .await?
                }
            };
            Ok(done.rows_affected())
        })
    }

    fn census(&self) -> BoxFuture<'_, Result<Census, StoreError>> {
        Box::pin(async move {
            /// Only the phase of a stored state is read.
            #[derive(serde::Deserialize)]
            struct PhaseOnly {
                phase: Phase,
            }
            let pool = self.ready().await?;
            let mut census = Census::default();
            // States are JSON documents (no phase column), so they are read and counted here;
            // a scrape every 15 s reads each state once.
            for row in sqlx::query("SELECT state FROM functions")
                .fetch_all(pool)
                .await?
            {
                let text = row.try_get::<String, _>("state")?;
                if let Ok(state) = serde_json::from_str::<PhaseOnly>(&text) {
                    *census.phases.entry(state.phase).or_default() += 1;
                }
            }
            let row = sqlx::query("SELECT COUNT(*) AS n FROM dead_letters")
                .fetch_one(pool)
                .await?;
            census.dead_letters = row.try_get::<i64, _>("n")?;
            Ok(census)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(self.ready().await?).await?;
            Ok(())
        })
    }
}
