//! Reads the read models after a run, for the invariant checks: through the
//! query API (HTTP mode) or straight from the embedded store's read models
//! (embedded mode, once its projector has caught up). Reads are bounded:
//! pages are capped and every HTTP read has a timeout.

use std::sync::Arc;
use std::time::Duration;

use projectors::ReadModels;
use serde_json::Value;

/// At most this many pages of one list are read (1,000 entries a page).
const PAGES_MAX: usize = 10_000;
const PAGE_SIZE: usize = 1_000;
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalanceRead {
    pub balance: i64,
    pub pending: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemRead {
    pub sold: u64,
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingRead {
    pub listing_id: String,
    pub serial: u32,
    pub seller_id: String,
    pub price: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EarningsRead {
    pub pending: i64,
    pub released: i64,
    pub lifetime: i64,
}

/// Where the read models are read.
#[derive(Clone)]
pub enum Reader {
    Http {
        client: reqwest::Client,
        query_url: String,
        token: String,
    },
    Store(Arc<dyn ReadModels>),
}

/// Escapes a query-string value (cursors are opaque).
fn escape_query_value(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl Reader {
    async fn get(&self, path: &str) -> Result<Value, String> {
        let Reader::Http {
            client,
            query_url,
            token,
        } = self
        else {
            unreachable!("only the http reader gets paths");
        };
        let url = format!("{}{path}", query_url.trim_end_matches('/'));
        let response = client
            .get(&url)
            .bearer_auth(token)
            .timeout(READ_TIMEOUT)
            .send()
            .await
            .map_err(|error| format!("GET {path} failed: {error}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|error| format!("GET {path}: the answer is not json: {error}"))?;
        if !status.is_success() {
            return Err(format!(
                "GET {path} answered {status} {}",
                body["code"].as_str().unwrap_or("without a problem code")
            ));
        }
        Ok(body)
    }

    pub async fn balance(&self, user_id: &str) -> Result<BalanceRead, String> {
        match self {
            Reader::Store(read_models) => {
                let view = read_models
                    .balance(user_id)
                    .await
                    .map_err(|error| error.to_string())?;
                Ok(BalanceRead {
                    balance: view.balance,
                    pending: view.pending,
                })
            }
            Reader::Http { .. } => {
                let body = self.get(&format!("/v1/users/{user_id}/balance")).await?;
                Ok(BalanceRead {
                    balance: number(&body, "balance")?,
                    pending: number(&body, "pending")?,
                })
            }
        }
    }

    /// `None` for an item the read models do not have (yet).
    pub async fn item(&self, item_id: &str) -> Result<Option<ItemRead>, String> {
        match self {
            Reader::Store(read_models) => Ok(read_models
                .item(item_id)
                .await
                .map_err(|error| error.to_string())?
                .map(|view| ItemRead {
                    sold: view.sold,
                    remaining: view.remaining,
                })),
            Reader::Http { .. } => match self.get(&format!("/v1/items/{item_id}")).await {
                Ok(body) => Ok(Some(ItemRead {
                    sold: number(&body, "sold")? as u64,
                    remaining: body["remaining"].as_u64(),
                })),
                Err(error) if error.contains("not_found") => Ok(None),
                Err(error) => Err(error),
            },
        }
    }

    pub async fn earnings(&self, creator_id: &str) -> Result<EarningsRead, String> {
        match self {
            Reader::Store(read_models) => {
                let view = read_models
                    .earnings(creator_id)
                    .await
                    .map_err(|error| error.to_string())?;
                Ok(EarningsRead {
                    pending: view.pending,
                    released: view.released,
                    lifetime: view.lifetime,
                })
            }
            Reader::Http { .. } => {
                let body = self
                    .get(&format!("/v1/creators/{creator_id}/earnings"))
                    .await?;
                Ok(EarningsRead {
                    pending: number(&body, "pending")?,
                    released: number(&body, "released")?,
                    lifetime: number(&body, "lifetime")?,
                })
            }
        }
    }

    /// Every (serial, owner) of a Limited, by serial.
    pub async fn owners(&self, item_id: &str) -> Result<Vec<(u32, String)>, String> {
        let mut owners = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let next = match self {
                Reader::Store(read_models) => {
                    let page = read_models
                        .owners(item_id, PAGE_SIZE, cursor.as_deref())
                        .await
                        .map_err(|error| error.to_string())?;
                    owners.extend(page.entries.into_iter().map(|e| (e.serial, e.user_id)));
                    page.next_cursor
                }
                Reader::Http { .. } => {
                    let body = self.get(&page_path(item_id, "owners", &cursor)).await?;
                    for entry in body["owners"].as_array().into_iter().flatten() {
                        owners.push((number(entry, "serial")? as u32, text(entry, "user_id")?));
                    }
                    body["next_cursor"].as_str().map(str::to_string)
                }
            };
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(owners),
            }
        }
        Err(format!(
            "the owners of {item_id} span more than {PAGES_MAX} pages"
        ))
    }

    /// Every open resale listing of an item.
    pub async fn listings(&self, item_id: &str) -> Result<Vec<ListingRead>, String> {
        let mut listings = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let next = match self {
                Reader::Store(read_models) => {
                    let page = read_models
                        .resale_listings(item_id, PAGE_SIZE, cursor.as_deref())
                        .await
                        .map_err(|error| error.to_string())?;
                    listings.extend(page.entries.into_iter().map(|listing| ListingRead {
                        listing_id: listing.listing_id,
                        serial: listing.serial,
                        seller_id: listing.seller_id,
                        price: listing.price,
                    }));
                    page.next_cursor
                }
                Reader::Http { .. } => {
                    let body = self
                        .get(&page_path(item_id, "resale-listings", &cursor))
                        .await?;
                    for entry in body["listings"].as_array().into_iter().flatten() {
                        listings.push(ListingRead {
                            listing_id: text(entry, "listing_id")?,
                            serial: number(entry, "serial")? as u32,
                            seller_id: text(entry, "seller_id")?,
                            price: number(entry, "price")?,
                        });
                    }
                    body["next_cursor"].as_str().map(str::to_string)
                }
            };
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(listings),
            }
        }
        Err(format!(
            "the listings of {item_id} span more than {PAGES_MAX} pages"
        ))
    }

    /// Wallet balances of many users, `parallelism` reads at a time, in the order given.
    pub async fn balances(
        &self,
        user_ids: &[String],
        parallelism: usize,
    ) -> Result<Vec<i64>, String> {
        let mut balances = vec![0i64; user_ids.len()];
        let mut reads = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while reads.len() < parallelism.max(1) && next < user_ids.len() {
                let (reader, user_id, index) = (self.clone(), user_ids[next].clone(), next);
                reads.spawn(async move { (index, reader.balance(&user_id).await) });
                next += 1;
            }
            let Some(joined) = reads.join_next().await else {
                return Ok(balances);
            };
            let (index, read) =
                joined.map_err(|error| format!("a balance read failed: {error}"))?;
            balances[index] = read?.balance;
        }
    }
}

fn page_path(item_id: &str, list: &str, cursor: &Option<String>) -> String {
    match cursor {
        None => format!("/v1/items/{item_id}/{list}?limit={PAGE_SIZE}"),
        Some(cursor) => format!(
            "/v1/items/{item_id}/{list}?limit={PAGE_SIZE}&cursor={}",
            escape_query_value(cursor)
        ),
    }
}

fn number(body: &Value, field: &str) -> Result<i64, String> {
    body[field]
        .as_i64()
        .ok_or_else(|| format!("the answer has no integer `{field}`: {body}"))
}

fn text(body: &Value, field: &str) -> Result<String, String> {
    body[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("the answer has no string `{field}`: {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_escaped_in_query_strings() {
        assert_eq!(escape_query_value("6f776e657273"), "6f776e657273");
        assert_eq!(escape_query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(
            page_path("crown", "owners", &Some("x+y".into())),
            "/v1/items/crown/owners?limit=1000&cursor=x%2By"
        );
    }
}
