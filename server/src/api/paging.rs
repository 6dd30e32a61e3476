//! Offset paging for List calls: the token is the offset of the next item.

use super::error::ApiError;
use ota_proto::v1 as pb;

/// Default page size.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page size.
pub const MAX_PAGE: usize = 1000;

/// Resolved page request: skip `offset`, take `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Items to skip.
    pub offset: usize,
    /// Items to take.
    pub size: usize,
}

impl Page {
    /// Validates a page request.
    pub fn from_pb(p: Option<&pb::PageRequest>) -> Result<Page, ApiError> {
        let Some(p) = p else {
            return Ok(Page {
                offset: 0,
                size: DEFAULT_PAGE,
            });
        };
        let size = match p.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(ApiError::invalid(format!(
                    "page_size {n} is too large: at most {MAX_PAGE}"
                )));
            }
            n => n,
        };
        let offset = if p.page_token.is_empty() {
            0
        } else {
            p.page_token
                .strip_prefix("o")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::invalid("page_token is not one this server handed out"))?
        };
        Ok(Page { offset, size })
    }

    /// Cuts a page out of `items`, returning it and the next token (empty at the end).
    pub fn apply<T>(self, items: Vec<T>) -> (Vec<T>, String) {
        let total = items.len();
        let page: Vec<T> = items
            .into_iter()
            .skip(self.offset)
            .take(self.size)
            .collect();
        let next = self.offset + page.len();
        let token = if next < total {
            format!("o{next}")
        } else {
            String::new()
        };
        (page, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_the_list() {
        let p = Page::from_pb(Some(&pb::PageRequest {
            page_size: 2,
            page_token: String::new(),
        }))
        .unwrap();
        let (items, token) = p.apply(vec![1, 2, 3]);
        assert_eq!(items, [1, 2]);
        let p = Page::from_pb(Some(&pb::PageRequest {
            page_size: 2,
            page_token: token,
        }))
        .unwrap();
        let (items, token) = p.apply(vec![1, 2, 3]);
        assert_eq!(items, [3]);
        assert!(token.is_empty());
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(
            Page::from_pb(Some(&pb::PageRequest {
                page_size: 5000,
                page_token: String::new()
            }))
            .is_err()
        );
        assert!(
            Page::from_pb(Some(&pb::PageRequest {
                page_size: 1,
                page_token: "x".into()
            }))
            .is_err()
        );
    }
}
