//! Connection settings: DP3's `database.yml` → MongoDB connection URI (data-model.md §1.3.2).

use std::time::Duration;

use dp3_model::config::{DatabaseConfig, MongoConnection, MongoHost};

/// DP3's connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// DP3's server selection timeout.
pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// DP3's delays between connection attempts at start-up.
pub const CONNECT_RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

/// Whether [`crate::MongoStore::apply`] runs in a multi-document transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransactionMode {
    /// Use transactions when the deployment supports them (replica set or sharded cluster,
    /// detected with `hello` at open), ordered writes with the metadata last otherwise.
    #[default]
    Auto,
    /// Never use transactions (at-least-once application, see the crate docs).
    Never,
}

/// Everything needed to open a [`crate::MongoStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoConfig {
    /// `mongodb://...` connection string.
    pub uri: String,
    /// Database name (`database.yml: db_name`).
    pub db_name: String,
    /// Snapshots per bucket document (`storage.snapshot_bucket_size`, ≥ 2).
    pub snapshot_bucket_size: u32,
    pub transactions: TransactionMode,
    /// Retry the initial connection with DP3's delays (1, 2, 5, 10, 30 s) before failing.
    pub retry_connect: bool,
}

impl MongoConfig {
    /// Settings from DP3's `database.yml`; `None` when it has no `connection` block.
    pub fn from_database_config(db: &DatabaseConfig) -> Option<MongoConfig> {
        let connection = db.connection.as_ref()?;
        Some(MongoConfig {
            uri: connection_uri(&db.username, &db.password, connection),
            db_name: db.db_name.clone(),
            snapshot_bucket_size: db.storage.snapshot_bucket_size,
            transactions: TransactionMode::Auto,
            retry_connect: true,
        })
    }

    /// Settings for an explicit URI (tests, `DP3_TEST_MONGODB_URI`).
    pub fn from_uri(uri: impl Into<String>, db_name: impl Into<String>) -> MongoConfig {
        MongoConfig {
            uri: uri.into(),
            db_name: db_name.into(),
            snapshot_bucket_size: 32,
            transactions: TransactionMode::Auto,
            retry_connect: false,
        }
    }
}

/// DP3's connection URI: standalone `mongodb://user:pass@address:port/`, replica
/// `mongodb://user:pass@h1:p1,h2:p2/?replicaSet=<name>`; user and password escaped with
/// Python's `quote_plus`.
pub fn connection_uri(username: &str, password: &str, connection: &MongoConnection) -> String {
    let hosts = match connection {
        MongoConnection::Standalone { host } => host_port(host),
        MongoConnection::Replica { hosts, .. } => {
            hosts.iter().map(host_port).collect::<Vec<_>>().join(",")
        }
    };
    let mut uri = format!(
        "mongodb://{}:{}@{hosts}/",
        quote_plus(username),
        quote_plus(password)
    );
    if let MongoConnection::Replica { replica_set, .. } = connection {
        uri.push_str("?replicaSet=");
        uri.push_str(&quote_plus(replica_set));
    }
    uri
}

fn host_port(h: &MongoHost) -> String {
    // IPv6 literals need brackets in a URI; DP3 would produce an unparsable URI here.
    if h.address.contains(':') && !h.address.starts_with('[') {
        format!("[{}]:{}", h.address, h.port)
    } else {
        format!("{}:{}", h.address, h.port)
    }
}

/// Python's `urllib.parse.quote_plus`: letters, digits and `_.-~` stay, space becomes `+`,
/// every other byte of the UTF-8 encoding becomes `%XX`.
pub fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The URI with its password replaced (for logs and errors).
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &uri[..scheme_end], &rest[at..])
        }
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(a: &str, p: u16) -> MongoHost {
        MongoHost {
            address: a.into(),
            port: p,
        }
    }

    #[test]
    fn quote_plus_matches_python() {
        assert_eq!(quote_plus("dp3"), "dp3");
        assert_eq!(quote_plus("a b/c"), "a+b%2Fc");
        assert_eq!(quote_plus("p@ss:w%rd"), "p%40ss%3Aw%25rd");
        assert_eq!(quote_plus("x_y.z-~"), "x_y.z-~");
        assert_eq!(quote_plus("é"), "%C3%A9");
        assert_eq!(quote_plus("a+b"), "a%2Bb");
    }

    #[test]
    fn standalone_uri() {
        let c = MongoConnection::Standalone {
            host: host("mongo", 27017),
        };
        assert_eq!(
            connection_uri("test", "te st/1", &c),
            "mongodb://test:te+st%2F1@mongo:27017/"
        );
    }

    #[test]
    fn replica_uri() {
        let c = MongoConnection::Replica {
            replica_set: "dp3".into(),
            hosts: vec![host("h1", 1), host("h2", 2), host("::1", 3)],
        };
        assert_eq!(
            connection_uri("u", "p", &c),
            "mongodb://u:p@h1:1,h2:2,[::1]:3/?replicaSet=dp3"
        );
    }

    #[test]
    fn config_from_database_yml() {
        let mut db = DatabaseConfig::default();
        assert_eq!(MongoConfig::from_database_config(&db), None);
        db.db_name = "test".into();
        db.username = "us er".into();
        db.password = "p/w".into();
        db.storage.snapshot_bucket_size = 8;
        db.connection = Some(MongoConnection::Standalone {
            host: MongoHost::default(),
        });
        let c = MongoConfig::from_database_config(&db).expect("has connection");
        assert_eq!(c.uri, "mongodb://us+er:p%2Fw@localhost:27017/");
        assert_eq!(c.db_name, "test");
        assert_eq!(c.snapshot_bucket_size, 8);
        assert_eq!(c.transactions, TransactionMode::Auto);
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_uri("mongodb://u:secret@h:1/?replicaSet=x"),
            "mongodb://u:***@h:1/?replicaSet=x"
        );
        assert_eq!(redact_uri("mongodb://h:1/"), "mongodb://h:1/");
        assert_eq!(redact_uri("nonsense"), "nonsense");
    }
}
