//! Database commands: every operation of the store is a server command (`find`,
//! `aggregate`, `update`, `insert`, `delete`, ...) run through the driver's `run_command`,
//! optionally inside a session's transaction. Batched write commands are what DP3's
//! `bulk_write` sends as well; issuing them directly works on every server version (the
//! driver's `Client::bulk_write` needs MongoDB 8) and gives one code path with and without
//! a transaction.

use bson::{Bson, Document, doc};
use dp3_store::{Result, StoreError};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::{ClientSession, Database};

const BACKEND: &str = "mongodb";

/// Server error codes caused by the query itself (bad operator, bad regex, type errors in
/// the filter): reported as [`StoreError::InvalidQuery`].
pub const INVALID_QUERY_CODES: &[i32] = &[
    2,     // BadValue: unknown operator, `$in needs an array`, ...
    9,     // FailedToParse
    14,    // TypeMismatch
    15,    // Overflow
    16,    // InvalidLength
    17,    // ProtocolError (malformed sort)
    28,    // PathNotViable
    40,    // ConflictingUpdateOperators
    51091, // invalid regular expression
    51108, // invalid regex options
    31249, // path collision in projection
    40323, // bad pipeline stage
    168,   // InvalidPipelineOperator
];

/// Server error codes meaning a document would exceed the maximum BSON size.
pub const TOO_LARGE_CODES: &[i32] = &[10334, 17419, 17420, 10329, 13548];

/// Code of a command-level or single write error.
pub fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    }
}

/// Convert a driver error into a store error.
pub fn map_err(context: &str, e: MongoError) -> StoreError {
    match error_code(&e) {
        Some(code) if INVALID_QUERY_CODES.contains(&code) => {
            StoreError::InvalidQuery(format!("{context}: {e}"))
        }
        _ => StoreError::backend(BACKEND, format!("{context}: {e}")),
    }
}

/// The database plus an optional session (inside a transaction when started).
pub struct Cx<'a> {
    pub db: &'a Database,
    pub session: Option<&'a mut ClientSession>,
    /// The last error was labelled `TransientTransactionError` (the transaction may be
    /// retried as a whole).
    pub transient: bool,
}

impl<'a> Cx<'a> {
    pub fn new(db: &'a Database) -> Cx<'a> {
        Cx {
            db,
            session: None,
            transient: false,
        }
    }

    pub fn with_session(db: &'a Database, session: &'a mut ClientSession) -> Cx<'a> {
        Cx {
            db,
            session: Some(session),
            transient: false,
        }
    }

    pub async fn run(&mut self, context: &str, cmd: Document) -> Result<Document> {
        let out = match self.session.as_deref_mut() {
            Some(s) => self.db.run_command(cmd).session(s).await,
            None => self.db.run_command(cmd).await,
        };
        out.map_err(|e| {
            self.transient = e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR);
            map_err(context, e)
        })
    }

    /// Drain a command cursor (`find`, `aggregate`, `listIndexes`) with `getMore`.
    pub async fn cursor(&mut self, context: &str, cmd: Document) -> Result<Vec<Document>> {
        let mut reply = self.run(context, cmd).await?;
        let mut out = Vec::new();
        loop {
            let (id, ns, batch) =
                cursor_batch(&reply).ok_or_else(|| malformed(context, &reply, "a cursor reply"))?;
            out.extend(batch);
            if id == 0 {
                return Ok(out);
            }
            let coll = ns
                .split_once('.')
                .map_or(ns.as_str(), |(_, c)| c)
                .to_owned();
            reply = self
                .run(context, doc! {"getMore": id, "collection": coll})
                .await?;
        }
    }

    pub async fn find(&mut self, context: &str, q: Find) -> Result<Vec<Document>> {
        let cmd = q.command();
        self.cursor(context, cmd).await
    }

    pub async fn aggregate(
        &mut self,
        context: &str,
        coll: &str,
        pipeline: Vec<Document>,
    ) -> Result<Vec<Document>> {
        self.cursor(
            context,
            doc! {"aggregate": coll, "pipeline": pipeline, "cursor": {}, "allowDiskUse": true},
        )
        .await
    }

    /// Run a batched write, chunked to stay below the command size limits. Returns the
    /// merged reply; write errors and write-concern errors become store errors.
    pub async fn write(&mut self, context: &str, w: &WriteCommand) -> Result<WriteReply> {
        let mut total = WriteReply::default();
        for (offset, cmd) in w.commands()? {
            let reply = self.run(context, cmd).await?;
            let r = WriteReply::parse(&reply, offset)
                .ok_or_else(|| malformed(context, &reply, "a write reply"))?;
            let failed = r.first_error().map(|e| e.to_string());
            total.merge(r);
            if let Some(msg) = failed.filter(|_| w.ordered) {
                return Err(StoreError::backend(BACKEND, format!("{context}: {msg}")));
            }
        }
        if let Some(msg) = total.first_error() {
            return Err(StoreError::backend(BACKEND, format!("{context}: {msg}")));
        }
        Ok(total)
    }

    /// Like [`Cx::write`] but returns write errors in the reply instead of failing (used
    /// where individual errors are handled, e.g. oversized snapshot buckets).
    pub async fn write_lenient(&mut self, context: &str, w: &WriteCommand) -> Result<WriteReply> {
        let mut total = WriteReply::default();
        for (offset, cmd) in w.commands()? {
            let reply = self.run(context, cmd).await?;
            let r = WriteReply::parse(&reply, offset)
                .ok_or_else(|| malformed(context, &reply, "a write reply"))?;
            if let Some(wc) = &r.write_concern_error {
                return Err(StoreError::backend(BACKEND, format!("{context}: {wc}")));
            }
            total.merge(r);
        }
        Ok(total)
    }
}

fn malformed(context: &str, reply: &Document, what: &str) -> StoreError {
    StoreError::backend(
        BACKEND,
        format!("{context}: the server reply is not {what}: {reply}"),
    )
}

/// `(cursor id, namespace, documents)` of a `find`/`aggregate`/`getMore` reply.
pub fn cursor_batch(reply: &Document) -> Option<(i64, String, Vec<Document>)> {
    let c = reply.get_document("cursor").ok()?;
    let id = match c.get("id")? {
        Bson::Int64(i) => *i,
        Bson::Int32(i) => i64::from(*i),
        _ => return None,
    };
    let ns = c.get_str("ns").unwrap_or_default().to_owned();
    let batch = c
        .get_array("firstBatch")
        .or_else(|_| c.get_array("nextBatch"))
        .ok()?;
    let docs = batch
        .iter()
        .filter_map(|b| b.as_document().cloned())
        .collect();
    Some((id, ns, docs))
}

/// A `find` command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Find {
    pub coll: String,
    pub filter: Document,
    pub projection: Option<Document>,
    pub sort: Option<Document>,
    pub skip: u64,
    /// 0 = no limit.
    pub limit: u64,
}

impl Find {
    pub fn new(coll: impl Into<String>, filter: Document) -> Find {
        Find {
            coll: coll.into(),
            filter,
            ..Default::default()
        }
    }

    pub fn command(&self) -> Document {
        let mut cmd = doc! {"find": &self.coll, "filter": self.filter.clone()};
        if let Some(p) = &self.projection {
            cmd.insert("projection", p.clone());
        }
        if let Some(s) = &self.sort {
            cmd.insert("sort", s.clone());
        }
        if self.skip > 0 {
            cmd.insert("skip", clamp_i64(self.skip));
        }
        if self.limit > 0 {
            cmd.insert("limit", clamp_i64(self.limit));
        }
        cmd
    }
}

pub fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Which write command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Insert,
    Update,
    Delete,
}

impl WriteKind {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            WriteKind::Insert => ("insert", "documents"),
            WriteKind::Update => ("update", "updates"),
            WriteKind::Delete => ("delete", "deletes"),
        }
    }
}

/// Statements per command (the server allows 100 000).
pub const MAX_STATEMENTS: usize = 1000;
/// Encoded statement bytes per command; a command document may be at most 16 MiB (+16 KiB).
pub const MAX_COMMAND_BYTES: usize = 12 * 1024 * 1024;

/// One batched write command on one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteCommand {
    pub coll: String,
    pub kind: WriteKind,
    pub statements: Vec<Document>,
    pub ordered: bool,
}

impl WriteCommand {
    pub fn new(coll: impl Into<String>, kind: WriteKind) -> WriteCommand {
        WriteCommand {
            coll: coll.into(),
            kind,
            statements: Vec::new(),
            ordered: true,
        }
    }

    /// `{q, u, upsert, multi}` update statement.
    pub fn update(q: Document, u: impl Into<Bson>, upsert: bool, multi: bool) -> Document {
        doc! {"q": q, "u": u.into(), "upsert": upsert, "multi": multi}
    }

    /// `{q, limit}` delete statement (`many` = delete all matches).
    pub fn delete(q: Document, many: bool) -> Document {
        doc! {"q": q, "limit": if many { 0 } else { 1 }}
    }

    /// The command documents with the index of their first statement. Statements are
    /// encoded here, so a value that cannot be BSON-encoded fails before anything is sent.
    pub fn commands(&self) -> Result<Vec<(usize, Document)>> {
        let (verb, field) = self.kind.names();
        let mut out = Vec::new();
        let mut chunk: Vec<Document> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut start = 0usize;
        for (i, s) in self.statements.iter().enumerate() {
            let len = encoded_len(s).map_err(|e| {
                StoreError::backend(
                    BACKEND,
                    format!(
                        "statement {i} of {verb} on '{}' cannot be encoded: {e}",
                        self.coll
                    ),
                )
            })?;
            if !chunk.is_empty()
                && (chunk.len() >= MAX_STATEMENTS || chunk_bytes + len > MAX_COMMAND_BYTES)
            {
                out.push((start, self.command(verb, field, std::mem::take(&mut chunk))));
                chunk_bytes = 0;
                start = i;
            }
            chunk.push(s.clone());
            chunk_bytes += len;
        }
        if !chunk.is_empty() {
            out.push((start, self.command(verb, field, chunk)));
        }
        Ok(out)
    }

    fn command(&self, verb: &str, field: &str, statements: Vec<Document>) -> Document {
        let mut cmd = Document::new();
        cmd.insert(verb, &self.coll);
        cmd.insert(field, statements);
        cmd.insert("ordered", self.ordered);
        cmd
    }
}

/// Encoded size of a document; fails for values BSON cannot represent (e.g. NUL in keys).
pub fn encoded_len(d: &Document) -> std::result::Result<usize, bson::error::Error> {
    d.to_vec().map(|v| v.len())
}

/// One failed statement of a write command.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementError {
    /// Index in the whole [`WriteCommand`] (chunk offsets added).
    pub index: usize,
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for StatementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "statement {} failed with code {}: {}",
            self.index, self.code, self.message
        )
    }
}

/// The merged reply of a write command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteReply {
    /// Matched (update), inserted or deleted documents.
    pub n: u64,
    pub modified: u64,
    /// `(statement index, _id)` of upserted documents.
    pub upserted: Vec<(usize, Bson)>,
    pub errors: Vec<StatementError>,
    pub write_concern_error: Option<String>,
}

impl WriteReply {
    /// Parse one reply; `offset` is the index of the chunk's first statement.
    pub fn parse(reply: &Document, offset: usize) -> Option<WriteReply> {
        let num = |k: &str| match reply.get(k) {
            Some(Bson::Int32(i)) => u64::try_from(*i).ok(),
            Some(Bson::Int64(i)) => u64::try_from(*i).ok(),
            Some(Bson::Double(d)) if *d >= 0.0 => Some(*d as u64),
            _ => None,
        };
        let index = |d: &Document| -> Option<usize> {
            match d.get("index")? {
                Bson::Int32(i) => usize::try_from(*i).ok(),
                Bson::Int64(i) => usize::try_from(*i).ok(),
                _ => None,
            }
            .map(|i| i + offset)
        };
        let mut r = WriteReply {
            n: num("n")?,
            modified: num("nModified").unwrap_or(0),
            ..Default::default()
        };
        if let Ok(ups) = reply.get_array("upserted") {
            for u in ups {
                let d = u.as_document()?;
                r.upserted
                    .push((index(d)?, d.get("_id").cloned().unwrap_or(Bson::Null)));
            }
        }
        if let Ok(errs) = reply.get_array("writeErrors") {
            for e in errs {
                let d = e.as_document()?;
                r.errors.push(StatementError {
                    index: index(d)?,
                    code: d.get_i32("code").unwrap_or(0),
                    message: d.get_str("errmsg").unwrap_or_default().to_owned(),
                });
            }
        }
        if let Ok(wc) = reply.get_document("writeConcernError") {
            r.write_concern_error = Some(format!(
                "write concern error {}: {}",
                wc.get_i32("code").unwrap_or(0),
                wc.get_str("errmsg").unwrap_or_default()
            ));
        }
        Some(r)
    }

    fn merge(&mut self, other: WriteReply) {
        self.n += other.n;
        self.modified += other.modified;
        self.upserted.extend(other.upserted);
        self.errors.extend(other.errors);
        if self.write_concern_error.is_none() {
            self.write_concern_error = other.write_concern_error;
        }
    }

    fn first_error(&self) -> Option<String> {
        self.errors
            .first()
            .map(ToString::to_string)
            .or_else(|| self.write_concern_error.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_commands_by_count_and_keeps_offsets() {
        let mut w = WriteCommand::new("A#master", WriteKind::Update);
        for i in 0..(MAX_STATEMENTS + 5) {
            w.statements.push(WriteCommand::update(
                doc! {"_id": i as i64},
                doc! {"$inc": {"#revision": 1}},
                true,
                false,
            ));
        }
        let cmds = w.commands().expect("encodable");
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].0, 0);
        assert_eq!(cmds[1].0, MAX_STATEMENTS);
        assert_eq!(cmds[0].1.get_str("update").ok(), Some("A#master"));
        assert_eq!(
            cmds[0].1.get_array("updates").map(Vec::len).ok(),
            Some(MAX_STATEMENTS)
        );
        assert_eq!(cmds[1].1.get_array("updates").map(Vec::len).ok(), Some(5));
        assert_eq!(cmds[1].1.get_bool("ordered").ok(), Some(true));
    }

    #[test]
    fn chunks_by_size() {
        let mut w = WriteCommand::new("A#raw", WriteKind::Insert);
        let big = "x".repeat(5 * 1024 * 1024);
        for _ in 0..3 {
            w.statements.push(doc! {"v": &big});
        }
        let cmds = w.commands().expect("encodable");
        assert_eq!(cmds.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 2]);
        assert!(cmds[0].1.contains_key("documents"));
    }

    #[test]
    fn unencodable_statement_fails_before_sending() {
        let mut w = WriteCommand::new("A#master", WriteKind::Update);
        w.statements
            .push(doc! {"q": {"_id": 1}, "u": {"$set": {"a": {"bad\0key": 1}}}});
        let e = w.commands().expect_err("NUL in key");
        assert!(e.to_string().contains("statement 0"), "{e}");
        assert!(
            WriteCommand::new("x", WriteKind::Delete)
                .commands()
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn parses_write_replies() {
        let reply = doc! {
            "n": 3, "nModified": 1, "ok": 1.0,
            "upserted": [{"index": 0, "_id": "a"}, {"index": 2, "_id": 7}],
            "writeErrors": [{"index": 1, "code": 17419, "errmsg": "too large"}],
        };
        let r = WriteReply::parse(&reply, 10).expect("reply");
        assert_eq!(r.n, 3);
        assert_eq!(r.modified, 1);
        assert_eq!(
            r.upserted,
            vec![(10, Bson::String("a".into())), (12, Bson::Int32(7))]
        );
        assert_eq!(r.errors[0].index, 11);
        assert_eq!(r.errors[0].code, 17419);
        assert!(r.first_error().expect("error").contains("17419"));
        let wc = doc! {"n": 1, "writeConcernError": {"code": 64, "errmsg": "timeout"}};
        let r = WriteReply::parse(&wc, 0).expect("reply");
        assert_eq!(
            r.write_concern_error.as_deref(),
            Some("write concern error 64: timeout")
        );
        assert_eq!(WriteReply::parse(&doc! {"ok": 0}, 0), None);
    }

    #[test]
    fn parses_cursor_batches() {
        let first =
            doc! {"cursor": {"id": 5i64, "ns": "db.A#raw", "firstBatch": [{"a": 1}]}, "ok": 1};
        let (id, ns, docs) = cursor_batch(&first).expect("cursor");
        assert_eq!((id, ns.as_str(), docs.len()), (5, "db.A#raw", 1));
        let next = doc! {"cursor": {"id": 0i64, "ns": "db.A#raw", "nextBatch": []}};
        assert_eq!(cursor_batch(&next).map(|c| c.0), Some(0));
        assert_eq!(cursor_batch(&doc! {"n": 1}), None);
    }

    #[test]
    fn find_command_shape() {
        let mut f = Find::new("A#raw", doc! {"attr": "x"});
        f.sort = Some(doc! {"$natural": -1});
        f.skip = 2;
        f.limit = 0;
        assert_eq!(
            f.command(),
            doc! {"find": "A#raw", "filter": {"attr": "x"}, "sort": {"$natural": -1}, "skip": 2i64}
        );
    }
}
