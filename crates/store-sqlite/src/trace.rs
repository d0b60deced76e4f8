//! A purchase's story, read back from the log through `purchase_index`.
//!
//! The projection keeps, per purchase, only where its events are (their
//! `event_position`s); a read decodes those records and tells the steps with
//! the same [`projectors::trace::purchase_steps`] the CQL read models store.
//! So the story is the log's own, and costs a purchase one index row instead
//! of a row per step.

use std::collections::BTreeMap;

use ledger_core::codec::BatchRecord;
use projectors::{Change, PurchaseStepView, PURCHASE_STEPS_MAX};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::SqliteStoreError;
use crate::schema::ENTRY_INDEX_BITS;

/// The steps of `purchase_id` (at most [`PURCHASE_STEPS_MAX`]), in the
/// order their events were committed.
pub(crate) fn purchase_steps(
    connection: &mut Connection,
    purchase_id: &str,
) -> Result<Vec<PurchaseStepView>, SqliteStoreError> {
    // One read transaction: the index and the records it names are one cut.
    let transaction = connection
        .transaction()
        .map_err(SqliteStoreError::sqlite("begin purchase steps read"))?;
    let index: Option<String> = transaction
        .prepare_cached("SELECT event_positions FROM purchase_index WHERE purchase_id = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![purchase_id], |row| row.get(0))
                .optional()
        })
        .map_err(SqliteStoreError::sqlite("read purchase index"))?;
    let Some(index) = index else {
        return Ok(Vec::new());
    };
    let positions = parse_positions(purchase_id, &index)?;
    // Each record once, its entries in order.
    let mut by_record: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for position in positions {
        let entry_mask = (1_i64 << ENTRY_INDEX_BITS) - 1;
        let entry_index = usize::try_from(position & entry_mask).expect("masked to 16 bits");
        by_record
            .entry(position >> ENTRY_INDEX_BITS)
            .or_default()
            .push(entry_index);
    }
    let mut steps = Vec::new();
    let mut record_statement = transaction
        .prepare_cached("SELECT record FROM records WHERE position = ?1")
        .map_err(SqliteStoreError::sqlite("prepare record read"))?;
    for (record_position, entry_indexes) in by_record {
        let bytes: Vec<u8> = record_statement
            .query_row(params![record_position], |row| row.get(0))
            .optional()
            .map_err(SqliteStoreError::sqlite("read purchase record"))?
            .ok_or_else(|| SqliteStoreError::PurchaseIndex {
                purchase_id: purchase_id.to_string(),
                detail: format!("it names record {record_position}, which is not stored"),
            })?;
        let record = BatchRecord::from_bytes(&bytes)?;
        let mut logged = record.logged().enumerate();
        for entry_index in entry_indexes {
            let Some((_, logged)) = logged.find(|(index, _)| *index == entry_index) else {
                return Err(SqliteStoreError::PurchaseIndex {
                    purchase_id: purchase_id.to_string(),
                    detail: format!(
                        "it names entry {entry_index} of record {record_position}, which has {} entries",
                        record.len()
                    ),
                });
            };
            let event = logged.event()?;
            for change in projectors::trace::purchase_steps(&logged, &event) {
                if let Change::PurchaseStep(step) = change {
                    if step.purchase_id.as_str() == purchase_id && steps.len() < PURCHASE_STEPS_MAX
                    {
                        steps.push(step.into_view());
                    }
                }
            }
        }
    }
    Ok(steps)
}

/// The index's positions, sorted and each once (at most
/// [`PURCHASE_STEPS_MAX`]: every indexed event tells at least one step).
fn parse_positions(purchase_id: &str, index: &str) -> Result<Vec<i64>, SqliteStoreError> {
    let mut positions = Vec::new();
    for text in index.split(',') {
        let position: i64 = text.parse().map_err(|_| SqliteStoreError::PurchaseIndex {
            purchase_id: purchase_id.to_string(),
            detail: format!("`{text}` is not an event position"),
        })?;
        if position < 0 {
            return Err(SqliteStoreError::PurchaseIndex {
                purchase_id: purchase_id.to_string(),
                detail: format!("`{text}` is not an event position"),
            });
        }
        positions.push(position);
    }
    positions.sort_unstable();
    positions.dedup();
    positions.truncate(PURCHASE_STEPS_MAX);
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_sorted_and_each_once() {
        assert_eq!(
            parse_positions("p", "65537,3,65537,2").expect("parses"),
            vec![2, 3, 65537]
        );
    }

    #[test]
    fn an_unreadable_position_is_refused_with_the_purchase() {
        for index in ["", "1,,2", "x", "-4", "1,2.5"] {
            let error = parse_positions("p-1", index).expect_err(index);
            assert!(
                error.to_string().contains("purchase p-1"),
                "{index}: {error}"
            );
        }
    }
}
