//! Size and health as far as a client can see them. The server keeps its own pages sound
//! (its write-ahead log, and page checksums where the cluster has them) and gives dead
//! rows' space back itself (autovacuum), so there is no file for castor to check or
//! truncate: the checks ask only that castor's tables answer.

use super::{PostgresDriver, TABLES};
use crate::error::StoreError;

impl PostgresDriver {
    /// The bytes castor's tables take on the server, with their indexes and TOAST.
    ///
    /// # Errors
    /// Fails if the database cannot be read.
    pub fn size(&self) -> Result<u64, StoreError> {
        self.read("measure the database", |conn| {
            let bytes: i64 = conn
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(to_regclass(name))), 0)::bigint \
                     FROM unnest($1::text[]) AS name WHERE to_regclass(name) IS NOT NULL",
                    &[&TABLES.as_slice()],
                )?
                .try_get(0)?;
            Ok(u64::try_from(bytes).unwrap_or(0))
        })
    }

    /// Reads a row of every castor table the database has, so a table the server cannot
    /// read fails here with its reason.
    ///
    /// # Errors
    /// The server's error, or a lost connection.
    pub fn check(&self) -> Result<(), StoreError> {
        let expected = PostgresDriver::schema_objects(self.schema_version()?);
        let missing = self.missing_schema_objects()?;
        let present = TABLES
            .iter()
            .filter(|t| expected.contains(t) && !missing.iter().any(|m| m == *t))
            .collect::<Vec<_>>();
        self.read("check the database", |conn| {
            for table in &present {
                conn.batch(&format!("SELECT 1 FROM {table} LIMIT 1"))?;
            }
            Ok(())
        })
    }
}
