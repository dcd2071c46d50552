//! DP3 storage on MongoDB, in DP3's own layout (data-model.md §8), so a DP3 deployment's
//! database can be read and written by dp3-rs and vice versa:
//!
//! * `{etype}#master` master records, written with DP3's per-entity upsert
//!   (`$push`/`$set`/`$min #min_t2s`/`$max #ttl`/`$inc #revision`, [`update`]);
//! * `{etype}#raw` raw datapoints, inserted with **acknowledged** writes (DP3 uses w=0 and
//!   can lose them silently);
//! * `{etype}#snapshots` buckets with DP3's bucket ids, `latest` flag and oversized handling
//!   ([`snapshots`], [`buckets`]), `{etype}#snapshots_oversized`;
//! * `#cache#Link` link cache ([`links`]), `#metadata` run records, and our key/value
//!   metadata in `#cache#dp3rs_meta` ([`meta`]);
//! * DP3's indexes, created at open ([`indexes`]).
//!
//! **Atomicity of [`Store::apply`].** The whole batch is turned into commands and encoded
//! first, so values BSON cannot hold fail the batch before anything is written. On a
//! replica set or sharded cluster the batch then runs in one multi-document transaction
//! (all or nothing). A standalone server has no transactions: the commands run in order
//! with the metadata entries (the pipeline's watermark) **last**, so a crash can leave data
//! written without its watermark but never the reverse; the pipeline then replays the
//! tasks. On standalone servers this backend is therefore *at-least-once*: a replayed batch
//! can push history items twice (later aggregation merges equal ones), everything else it
//! writes is idempotent.
//!
//! **Deliberate differences from DP3** (the stored shapes stay DP3's):
//! * `#hash`/`#time_created` are written with `$setOnInsert` (DP3: `$set`), so a replayed
//!   creation keeps the original creation time;
//! * raw datapoints are archived by selecting them in `{etype}#raw`, handing them to the
//!   sink and deleting them afterwards; DP3 renames `#raw` to `#archive_<time>` first;
//! * snapshot retention removes exactly the snapshots older than the cut-off (DP3 removes
//!   whole buckets, §6.6); trimmed buckets keep their `count`, so they are never refilled;
//! * the buckets of a string eid are selected with an anchored regex, fixing DP3's prefix
//!   collision (§9.44);
//! * raw inserts are acknowledged (DP3: w=0).
//!
//! **Sync over async.** [`Store`] is synchronous; the official driver is async. The store
//! owns a small tokio runtime and blocks on each operation ([`runtime`]).

pub mod buckets;
pub mod cascade;
pub mod command;
pub mod config;
pub mod eids;
pub mod indexes;
pub mod links;
pub mod master;
pub mod meta;
pub mod names;
pub mod runtime;
pub mod snapshots;
pub mod update;
pub mod write;

use std::future::Future;
use std::path::PathBuf;

use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use dp3_model::{Eid, ModelSpec};
use dp3_store::{
    ApplyStats, LinkEntry, LinkKey, MasterScan, RawQuery, Result, RunMetadataQuery, SnapshotQuery,
    Store, StoreError, WriteBatch,
};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

pub use config::{MongoConfig, TransactionMode, connection_uri};

use command::Cx;
use eids::EidTypes;
use runtime::BlockingRuntime;

/// BSON's document size limit when the server does not say.
const DEFAULT_MAX_BSON: usize = 16 * 1024 * 1024;
/// Attempts of a transaction that failed with a transient error.
const TRANSACTION_ATTEMPTS: usize = 3;

/// The MongoDB store.
pub struct MongoStore {
    client: Option<Client>,
    db: Database,
    types: EidTypes,
    bucket_size: u32,
    transactions: bool,
    max_bson: usize,
    uri: String,
    // last: dropped after the client
    rt: BlockingRuntime,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("uri", &self.uri)
            .field("db", &self.db.name())
            .field("transactions", &self.transactions)
            .finish()
    }
}

/// What `hello` said about the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerInfo {
    /// Replica set member or mongos: multi-document transactions are available.
    pub supports_transactions: bool,
    pub max_bson_size: usize,
}

impl ServerInfo {
    pub fn from_hello(hello: &Document) -> ServerInfo {
        let replica = hello.get_str("setName").is_ok();
        let mongos = hello.get_str("msg").ok() == Some("isdbgrid");
        let sessions = hello.contains_key("logicalSessionTimeoutMinutes");
        let max = hello
            .get("maxBsonObjectSize")
            .and_then(dp3_model::value::as_int)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(DEFAULT_MAX_BSON);
        ServerInfo {
            supports_transactions: (replica || mongos) && sessions,
            max_bson_size: max.min(DEFAULT_MAX_BSON),
        }
    }
}

impl MongoStore {
    /// Connect, inspect the deployment and create DP3's indexes (for the entity types of
    /// `model`, if given; entity types the store is not told about work too, see [`eids`]).
    pub fn open(config: &MongoConfig, model: Option<&ModelSpec>) -> Result<MongoStore> {
        let uri = config::redact_uri(&config.uri);
        let open_err = |reason: String| StoreError::Open {
            path: PathBuf::from(&uri),
            reason,
        };
        if config.snapshot_bucket_size < 2 {
            return Err(open_err(format!(
                "snapshot_bucket_size must be at least 2, not {} (data-model.md §1.3.2)",
                config.snapshot_bucket_size
            )));
        }
        let rt = BlockingRuntime::new()?;
        let (client, info) = rt
            .block_on(connect(config))?
            .map_err(|e| open_err(format!("database '{}': {e}", config.db_name)))?;
        let db = client.database(&config.db_name);
        let store = MongoStore {
            db,
            client: Some(client),
            types: model.map(EidTypes::from_model).unwrap_or_default(),
            bucket_size: config.snapshot_bucket_size,
            transactions: info.supports_transactions
                && config.transactions == TransactionMode::Auto,
            max_bson: info.max_bson_size,
            uri,
            rt,
        };
        store.ensure_indexes(model)?;
        Ok(store)
    }

    /// Whether [`Store::apply`] runs in transactions (else: at-least-once, see crate docs).
    pub fn uses_transactions(&self) -> bool {
        self.transactions
    }

    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    /// Create DP3's indexes: the shared ones and, for every entity type of `model`, the
    /// snapshot, oversized and master indexes (including the wildcard index).
    pub fn ensure_indexes(&self, model: Option<&ModelSpec>) -> Result<()> {
        self.run(async {
            let mut cx = Cx::new(&self.db);
            let mut specs = indexes::global_indexes();
            if let Some(model) = model {
                for etype in model.entities.keys() {
                    names::check_etype(etype)?;
                    specs.extend(indexes::entity_indexes(etype, self.bucket_size));
                }
            }
            for (etype, stale) in self.stale_open_bucket_indexes(&mut cx, model).await? {
                drop_index(&mut cx, &names::snapshots(&etype), &stale).await?;
            }
            for s in specs {
                create_index(&mut cx, &s.coll, s.spec).await?;
            }
            if let Some(model) = model {
                for (etype, et) in &model.entities {
                    let coll = names::master(etype);
                    let existing = list_indexes(&mut cx, &coll).await?;
                    let attrs: Vec<String> = et.attribs.keys().cloned().collect();
                    let projection = indexes::wildcard_projection(model, etype);
                    let (drops, create) =
                        indexes::plan_master_indexes(&existing, &attrs, &projection, Utc::now());
                    for name in drops {
                        drop_index(&mut cx, &coll, &name).await?;
                    }
                    if let Some(spec) = create {
                        create_index(&mut cx, &coll, spec).await?;
                    }
                }
            }
            Ok(())
        })
    }

    async fn stale_open_bucket_indexes(
        &self,
        cx: &mut Cx<'_>,
        model: Option<&ModelSpec>,
    ) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for etype in model
            .map(|m| m.entities.keys().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let existing = list_indexes(cx, &names::snapshots(etype)).await?;
            let wanted = indexes::open_bucket_index(etype, self.bucket_size);
            if let Some(name) = indexes::open_bucket_index_is_stale(&existing, &wanted) {
                out.push((etype.clone(), name));
            }
        }
        Ok(out)
    }

    /// Run a database command and return the server's reply (tooling and layout tests).
    pub fn run_command(&self, cmd: Document) -> Result<Document> {
        self.run(async { Cx::new(&self.db).run("command", cmd).await })
    }

    /// All documents of a collection matching `filter`, in natural order (tooling and
    /// layout tests).
    pub fn find_raw(&self, coll: &str, filter: Document) -> Result<Vec<Document>> {
        let f = command::Find::new(coll, filter);
        self.run(async { Cx::new(&self.db).find(&format!("read '{coll}'"), f).await })
    }

    /// Drop the whole database (tests and tooling).
    pub fn drop_database(&self) -> Result<()> {
        self.run(async {
            Cx::new(&self.db)
                .run("drop database", doc! {"dropDatabase": 1})
                .await
                .map(|_| ())
        })
    }

    fn run<T: Send>(&self, fut: impl Future<Output = Result<T>> + Send) -> Result<T> {
        self.rt.block_on(fut)?
    }

    async fn apply_async(&self, plan: &write::Plan) -> Result<ApplyStats> {
        let now = Utc::now();
        if !self.transactions {
            let mut cx = Cx::new(&self.db);
            return write::execute(&mut cx, plan, &self.types, now).await;
        }
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| StoreError::backend("mongodb", "client already closed"))?;
        let mut session = client
            .start_session()
            .await
            .map_err(|e| command::map_err("start session", e))?;
        let mut last_err = None;
        for _ in 0..TRANSACTION_ATTEMPTS {
            session
                .start_transaction()
                .await
                .map_err(|e| command::map_err("start transaction", e))?;
            let (result, transient) = {
                let mut cx = Cx::with_session(&self.db, &mut session);
                let r = write::execute(&mut cx, plan, &self.types, now).await;
                (r, cx.transient)
            };
            match result {
                Ok(stats) => match commit(&mut session).await {
                    Ok(()) => return Ok(stats),
                    Err((e, true)) => last_err = Some(e),
                    Err((e, false)) => return Err(e),
                },
                Err(e) => {
                    // Aborting can fail when the server already aborted; the error that
                    // caused it is the one to report.
                    let _ = session.abort_transaction().await;
                    if !transient {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| StoreError::backend("mongodb", "transaction failed")))
    }
}

/// Commit, retrying an unknown commit result; the flag says whether the whole transaction
/// may be retried.
async fn commit(
    session: &mut mongodb::ClientSession,
) -> std::result::Result<(), (StoreError, bool)> {
    let mut attempts = 0;
    loop {
        match session.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT)
                    && attempts < 3 =>
            {
                attempts += 1;
            }
            Err(e) => {
                let transient = e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR);
                return Err((command::map_err("commit transaction", e), transient));
            }
        }
    }
}

async fn connect(config: &MongoConfig) -> Result<(Client, ServerInfo)> {
    let mut attempt = 0;
    loop {
        match try_connect(config).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let delay = config::CONNECT_RETRY_DELAYS.get(attempt).copied();
                match delay {
                    Some(d) if config.retry_connect => {
                        tracing::warn!(error = %e, retry_in = ?d, "cannot connect to MongoDB");
                        tokio::time::sleep(d).await;
                        attempt += 1;
                    }
                    _ => return Err(e),
                }
            }
        }
    }
}

async fn try_connect(config: &MongoConfig) -> Result<(Client, ServerInfo)> {
    let err = |e: mongodb::error::Error| StoreError::backend("mongodb", e.to_string());
    let mut opts = ClientOptions::parse(&config.uri).await.map_err(err)?;
    opts.connect_timeout = Some(config::CONNECT_TIMEOUT);
    opts.server_selection_timeout = Some(config::SERVER_SELECTION_TIMEOUT);
    opts.app_name.get_or_insert_with(|| "dp3-rs".to_owned());
    let client = Client::with_options(opts).map_err(err)?;
    let admin = client.database("admin");
    let hello = match admin.run_command(doc! {"hello": 1}).await {
        Ok(h) => h,
        // servers before 4.4.2 only know the legacy name
        Err(_) => admin.run_command(doc! {"isMaster": 1}).await.map_err(err)?,
    };
    Ok((client, ServerInfo::from_hello(&hello)))
}

async fn list_indexes(cx: &mut Cx<'_>, coll: &str) -> Result<Vec<Document>> {
    match cx
        .cursor(
            &format!("list indexes of '{coll}'"),
            doc! {"listIndexes": coll},
        )
        .await
    {
        Ok(v) => Ok(v),
        // NamespaceNotFound: the collection does not exist yet
        Err(e)
            if e.to_string().contains("NamespaceNotFound")
                || e.to_string().contains("ns does not exist") =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

async fn create_index(cx: &mut Cx<'_>, coll: &str, spec: Document) -> Result<()> {
    let name = spec.get_str("name").unwrap_or_default().to_owned();
    let ctx = format!("create index '{name}' on '{coll}'");
    match cx
        .run(&ctx, doc! {"createIndexes": coll, "indexes": [spec]})
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = e.to_string();
            // IndexOptionsConflict / IndexKeySpecsConflict: an equivalent index exists
            // under another name or with other options; DP3 keeps going too.
            if msg.contains("IndexOptionsConflict") || msg.contains("IndexKeySpecsConflict") {
                tracing::warn!(%coll, %name, error = %msg, "index exists with different options");
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

async fn drop_index(cx: &mut Cx<'_>, coll: &str, name: &str) -> Result<()> {
    cx.run(
        &format!("drop index '{name}' of '{coll}'"),
        doc! {"dropIndexes": coll, "index": name},
    )
    .await
    .map(|_| ())
}

impl Drop for MongoStore {
    fn drop(&mut self) {
        // The driver spawns clean-up tasks when the last client handle drops; give it the
        // store's runtime as context.
        let _guard = self.rt.enter();
        self.client.take();
    }
}

impl Store for MongoStore {
    fn apply(&self, batch: &WriteBatch) -> Result<ApplyStats> {
        if batch.is_empty() {
            return Ok(ApplyStats::default());
        }
        let plan = write::build_plan(batch)?;
        self.run(self.apply_async(&plan))
    }

    fn exists(&self, etype: &str, eid: &Eid) -> Result<bool> {
        names::check_etype(etype)?;
        self.run(async {
            let mut cx = Cx::new(&self.db);
            Ok(master::get(&mut cx, etype, eid, Some(doc! {"_id": 1}))
                .await?
                .is_some())
        })
    }

    fn get_master(&self, etype: &str, eid: &Eid) -> Result<Option<Document>> {
        names::check_etype(etype)?;
        self.run(async { master::get(&mut Cx::new(&self.db), etype, eid, None).await })
    }

    fn scan_master(&self, etype: &str, scan: &MasterScan) -> Result<Vec<Document>> {
        names::check_etype(etype)?;
        let f = master::scan_find(etype, scan)?;
        self.run(async { Cx::new(&self.db).find(&format!("scan '{etype}'"), f).await })
    }

    fn count_master(&self, etype: &str) -> Result<u64> {
        names::check_etype(etype)?;
        self.run(async { master::count(&mut Cx::new(&self.db), etype).await })
    }

    fn replace_histories(
        &self,
        etype: &str,
        eid: &Eid,
        expected_revision: i64,
        histories: &[(String, Vec<dp3_model::aggregate::AggregatedItem>)],
    ) -> Result<bool> {
        names::check_etype(etype)?;
        self.run(async {
            master::replace_histories(
                &mut Cx::new(&self.db),
                etype,
                eid,
                expected_revision,
                histories,
            )
            .await
        })
    }

    fn delete_old_history(
        &self,
        etype: &str,
        attr: &str,
        older_than: DateTime<Utc>,
    ) -> Result<u64> {
        names::check_etype(etype)?;
        self.run(async {
            master::delete_old_history(&mut Cx::new(&self.db), etype, attr, older_than).await
        })
    }

    fn expire_ttl_tokens(
        &self,
        etype: &str,
        now: DateTime<Utc>,
        partition: Option<(u32, u32)>,
    ) -> Result<Vec<Eid>> {
        names::check_etype(etype)?;
        master::check_partition(partition)?;
        self.run(async {
            master::expire_ttl_tokens(&mut Cx::new(&self.db), etype, now, partition).await
        })
    }

    fn raw_get(&self, etype: &str, query: &RawQuery) -> Result<Vec<Document>> {
        names::check_etype(etype)?;
        let f = master::raw_find(etype, query);
        self.run(async {
            Cx::new(&self.db)
                .find(&format!("read raw '{etype}'"), f)
                .await
        })
    }

    fn archive_raw(
        &self,
        etype: &str,
        older_than: DateTime<Utc>,
        sink: &mut dyn FnMut(&[Document]) -> Result<()>,
    ) -> Result<u64> {
        // DP3 renames `{etype}#raw` to `{etype}#archive_<time>` and exports and deletes from
        // there; here the datapoints are selected in `#raw` directly, handed to the sink
        // batch by batch and deleted only after the sink accepted them.
        names::check_etype(etype)?;
        let ctx = format!("archive raw '{etype}'");
        let mut total = 0u64;
        loop {
            let f = master::archive_batch_find(etype, older_than);
            let docs = self.run(async { Cx::new(&self.db).find(&ctx, f).await })?;
            if docs.is_empty() {
                return Ok(total);
            }
            let (ids, batch) = master::split_ids(docs);
            sink(&batch)?;
            let del = master::delete_ids(names::raw(etype), ids);
            total += self
                .run(async { Cx::new(&self.db).write(&ctx, &del).await })?
                .n;
        }
    }

    fn links_to(
        &self,
        to: &LinkKey,
        using_attr: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<LinkEntry>> {
        let mut filter = doc! {"to": to.to_string(), "ttl": links::live(now)};
        if let Some(u) = using_attr {
            filter.insert("using_attr", u);
        }
        self.read_links(filter)
    }

    fn links_using(&self, using_attrs: &[String], now: DateTime<Utc>) -> Result<Vec<LinkEntry>> {
        if using_attrs.is_empty() {
            return Ok(Vec::new());
        }
        self.read_links(doc! {"using_attr": {"$in": using_attrs}, "ttl": links::live(now)})
    }

    fn referenced_eids(&self, etype: &str, now: DateTime<Utc>) -> Result<Vec<Eid>> {
        names::check_etype(etype)?;
        let pipeline = vec![
            doc! {"$match": {
                "to": {"$regex": format!("^{}#", regex::escape(etype))},
                "ttl": links::live(now),
            }},
            doc! {"$group": {"_id": "$to"}},
        ];
        let docs = self.run(async {
            Cx::new(&self.db)
                .aggregate(
                    &format!("referenced '{etype}'"),
                    names::LINK_CACHE,
                    pipeline,
                )
                .await
        })?;
        let mut out: Vec<Eid> = docs
            .iter()
            .filter_map(|d| d.get_str("_id").ok())
            .filter_map(eids::split_key)
            .map(|(t, e)| self.types.parse(t, e))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn save_snapshots(
        &self,
        etype: &str,
        snapshots: &[(Eid, Document)],
        time: DateTime<Utc>,
    ) -> Result<()> {
        names::check_etype(etype)?;
        if snapshots.is_empty() {
            return Ok(());
        }
        self.run(async {
            snapshots::save(
                &mut Cx::new(&self.db),
                etype,
                snapshots,
                time,
                self.bucket_size,
                self.max_bson,
            )
            .await
        })
    }

    fn latest_snapshots(&self, etype: &str, query: &SnapshotQuery) -> Result<Vec<Document>> {
        names::check_etype(etype)?;
        self.run(async { snapshots::latest(&mut Cx::new(&self.db), etype, query).await })
    }

    fn count_latest_snapshots(&self, etype: &str, filter: &Document) -> Result<u64> {
        names::check_etype(etype)?;
        self.run(async { snapshots::count_latest(&mut Cx::new(&self.db), etype, filter).await })
    }

    fn latest_snapshot(&self, etype: &str, eid: &Eid) -> Result<Option<Document>> {
        names::check_etype(etype)?;
        self.run(async { snapshots::latest_one(&mut Cx::new(&self.db), etype, eid).await })
    }

    fn snapshot_history(
        &self,
        etype: &str,
        eid: &Eid,
        query: &dp3_store::HistoryQuery,
    ) -> Result<Vec<Document>> {
        names::check_etype(etype)?;
        self.run(async { snapshots::history(&mut Cx::new(&self.db), etype, eid, query).await })
    }

    fn distinct_latest(&self, etype: &str, attr: &str) -> Result<Vec<(Bson, u64)>> {
        names::check_etype(etype)?;
        self.run(async { snapshots::distinct(&mut Cx::new(&self.db), etype, attr).await })
    }

    fn delete_old_snapshots(&self, etype: &str, older_than: DateTime<Utc>) -> Result<u64> {
        names::check_etype(etype)?;
        self.run(async { snapshots::delete_old(&mut Cx::new(&self.db), etype, older_than).await })
    }

    fn get_meta(&self, key: &str) -> Result<Option<Document>> {
        self.run(async { meta::get(&mut Cx::new(&self.db), key).await })
    }

    fn put_meta(&self, key: &str, value: &Document) -> Result<()> {
        self.run(async { meta::put(&mut Cx::new(&self.db), key, value).await })
    }

    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Document)>> {
        self.run(async { meta::list(&mut Cx::new(&self.db), prefix).await })
    }

    fn delete_meta(&self, key: &str) -> Result<()> {
        self.run(async { meta::delete(&mut Cx::new(&self.db), key).await })
    }

    fn insert_run_metadata(&self, doc: &Document) -> Result<()> {
        self.run(async { meta::insert_run(&mut Cx::new(&self.db), doc).await })
    }

    fn update_run_metadata(&self, id: &str, set: &Document, inc: &Document) -> Result<()> {
        self.run(async { meta::update_run(&mut Cx::new(&self.db), id, set, inc).await })
    }

    fn query_run_metadata(&self, query: &RunMetadataQuery) -> Result<Vec<Document>> {
        let f = meta::runs_find(query);
        self.run(async { Cx::new(&self.db).find("query run metadata", f).await })
    }

    fn flush(&self) -> Result<()> {
        // Every write is acknowledged by the server when `apply` returns (the server's
        // default write concern decides journaling); nothing is buffered client-side.
        Ok(())
    }
}

impl MongoStore {
    fn read_links(&self, filter: Document) -> Result<Vec<LinkEntry>> {
        let f = command::Find::new(names::LINK_CACHE, filter);
        let docs = self.run(async { Cx::new(&self.db).find("read link cache", f).await })?;
        Ok(links::dedup(
            docs.iter()
                .filter_map(|d| links::decode_entry(d, &self.types))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_info_from_hello() {
        let standalone = doc! {"isWritablePrimary": true, "maxBsonObjectSize": 16777216, "logicalSessionTimeoutMinutes": 30};
        assert_eq!(
            ServerInfo::from_hello(&standalone),
            ServerInfo {
                supports_transactions: false,
                max_bson_size: 16777216
            }
        );
        let replica =
            doc! {"setName": "dp3", "logicalSessionTimeoutMinutes": 30, "maxBsonObjectSize": 1000};
        assert_eq!(
            ServerInfo::from_hello(&replica),
            ServerInfo {
                supports_transactions: true,
                max_bson_size: 1000
            }
        );
        let mongos = doc! {"msg": "isdbgrid", "logicalSessionTimeoutMinutes": 30};
        assert!(ServerInfo::from_hello(&mongos).supports_transactions);
        assert!(
            !ServerInfo::from_hello(&doc! {"setName": "x"}).supports_transactions,
            "no sessions"
        );
    }

    #[test]
    fn open_rejects_tiny_buckets_without_connecting() {
        let mut c = MongoConfig::from_uri("mongodb://u:secret@127.0.0.1:1/", "x");
        c.snapshot_bucket_size = 1;
        let e = MongoStore::open(&c, None).expect_err("bucket size 1");
        let msg = e.to_string();
        assert!(
            msg.contains("snapshot_bucket_size") && !msg.contains("secret"),
            "{msg}"
        );
    }
}
