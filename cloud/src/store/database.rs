//! The one database every store shares: a SQLite file (the default, one
//! machine) or a PostgreSQL server (several cloud instances sharing one
//! fleet), chosen by the URL's scheme.
//!
//! Both go through sqlx's `Any` driver, so each query is written once, in
//! the SQL both understand: `$N` placeholders, `ON CONFLICT … DO UPDATE`,
//! `RETURNING`, 64-bit integers and text. The schema is the one place the
//! dialects differ: `migrations/sqlite` and `migrations/postgres` hold the
//! same migrations in each.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::Executor;

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("unsupported database URL scheme {0:?}: use sqlite:PATH or postgres://…")]
    UnsupportedUrl(String),
}

/// The pool every store queries.
pub type Pool = sqlx::AnyPool;

/// A connection of [`Pool`], for a statement that must share a transaction.
pub type Connection = sqlx::AnyConnection;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database engine a [`Pool`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The engine a database URL names: `sqlite:…` or `postgres://…`.
    pub fn of_url(url: &str) -> Result<Self, OpenError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(OpenError::UnsupportedUrl(scheme.to_string())),
        }
    }

    fn migrations(self) -> &'static Migrator {
        match self {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Connections per cloud instance. SQLite has one writer at a time
    /// whatever the pool; a PostgreSQL server is shared by every instance,
    /// so each takes a modest share of its `max_connections` (100 by default).
    fn max_connections(self) -> u32 {
        match self {
            Backend::Sqlite => 8,
            Backend::Postgres => 16,
        }
    }
}

/// Opens the database at `url` (for SQLite creating the file, readable by
/// its owner only, and its directory) and brings its schema up to date.
pub async fn open(url: &str) -> Result<(Pool, Backend), OpenError> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(url)?;
    if backend == Backend::Sqlite {
        let file = SqliteConnectOptions::from_str(url)?
            .get_filename()
            .to_owned();
        create_parent_dir(&file)?;
        create_private_file(&file)?;
    }
    let pool = AnyPoolOptions::new()
        .max_connections(backend.max_connections())
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // Readers never wait for the writer, and a commit waits
                    // for the log, not the disk: a crash may lose the last
                    // commits, never the database.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    backend.migrations().run(&pool).await?;
    Ok((pool, backend))
}

/// Creates the database file readable by its owner only, since it holds
/// password hashes; SQLite gives its journal files the same mode. An
/// existing file is left as it is.
fn create_private_file(file: &Path) -> Result<(), OpenError> {
    if file.as_os_str() == ":memory:" || file.as_os_str().is_empty() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(OpenError::Create {
            path: file.display().to_string(),
            source,
        }),
    }
}

fn create_parent_dir(file: &Path) -> Result<(), OpenError> {
    let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if file.as_os_str() == ":memory:" {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| OpenError::Create {
        path: dir.display().to_string(),
        source,
    })
}
