//! Tags: an operator's `key=value` labels on devices, and the tag part of a
//! device filter (`site=berlin,env`). The rules of what a tag may be are
//! here, once.

use std::collections::BTreeMap;

use serde_json::json;

use crate::store::tags::TagUpdate;
use crate::store::{Action, TagSet};
use protocol::now_ms;

use super::{Caller, OpError, Operations, Permission};

/// Most tags one device carries.
pub const MAX_TAGS_PER_DEVICE: usize = 32;
/// Longest tag key, in bytes.
const MAX_KEY_BYTES: usize = 64;
/// Longest tag value, in bytes.
const MAX_VALUE_BYTES: usize = 128;
/// Most conditions in one filter.
const MAX_CONDITIONS: usize = 16;

/// A change to a device's tags, as a JSON merge patch (RFC 7396): a string
/// sets the key, null removes it.
pub type TagPatch = BTreeMap<String, Option<String>>;

/// A key is what a filter names: letters, digits, `.`, `_`, `-`, `/`.
fn check_key(key: &str) -> Result<(), OpError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if valid {
        Ok(())
    } else {
        Err(OpError::bad_request(format!(
            "tag key {key:?}: 1 to {MAX_KEY_BYTES} letters, digits, '.', '_', '-' or '/'"
        )))
    }
}

/// A value is printable text without `,` (which separates filter
/// conditions), at most [`MAX_VALUE_BYTES`].
fn check_value(key: &str, value: &str) -> Result<(), OpError> {
    let valid =
        value.len() <= MAX_VALUE_BYTES && !value.chars().any(|c| c.is_control() || c == ',');
    if valid {
        Ok(())
    } else {
        Err(OpError::bad_request(format!(
            "tag {key}: a value is at most {MAX_VALUE_BYTES} bytes of printable text without ','"
        )))
    }
}

/// Reads `key=value` words (the CLI's and the dashboard's form) into tags.
pub fn parse_assignments<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<TagSet, OpError> {
    let mut tags = TagSet::new();
    for word in words {
        let (key, value) = word.split_once('=').ok_or_else(|| {
            OpError::bad_request(format!("{word:?} is not key=value (e.g. site=berlin)"))
        })?;
        check_key(key)?;
        check_value(key, value)?;
        tags.insert(key.to_owned(), value.to_owned());
    }
    Ok(tags)
}

/// One condition of a tag filter: the key is present, with this value if given.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    key: String,
    value: Option<String>,
}

/// The tag part of a device filter: `site=berlin,env` matches devices tagged
/// `site=berlin` that have an `env` tag too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagSelector {
    conditions: Vec<Condition>,
}

impl TagSelector {
    pub fn parse(text: &str) -> Result<Self, OpError> {
        let mut conditions = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let condition = match part.split_once('=') {
                Some((key, value)) => {
                    check_key(key)?;
                    check_value(key, value)?;
                    Condition {
                        key: key.to_owned(),
                        value: Some(value.to_owned()),
                    }
                }
                None => {
                    check_key(part)?;
                    Condition {
                        key: part.to_owned(),
                        value: None,
                    }
                }
            };
            conditions.push(condition);
        }
        if conditions.len() > MAX_CONDITIONS {
            return Err(OpError::bad_request(format!(
                "a filter has at most {MAX_CONDITIONS} tag conditions"
            )));
        }
        Ok(TagSelector { conditions })
    }

    pub fn matches(&self, tags: &TagSet) -> bool {
        self.conditions.iter().all(
            |condition| match (tags.get(&condition.key), &condition.value) {
                (Some(value), Some(wanted)) => value == wanted,
                (Some(_), None) => true,
                (None, _) => false,
            },
        )
    }
}

impl Operations {
    /// Changes a device's tags by a merge patch; its tags after.
    pub async fn tag_device(
        &self,
        caller: &Caller,
        id: &str,
        patch: &TagPatch,
    ) -> Result<TagSet, OpError> {
        let mut set = TagSet::new();
        let mut remove = Vec::new();
        for (key, value) in patch {
            check_key(key)?;
            match value {
                Some(value) => {
                    check_value(key, value)?;
                    set.insert(key.clone(), value.clone());
                }
                None => remove.push(key.clone()),
            }
        }
        self.update_tags(caller, id, &set, &remove, false).await
    }

    /// Replaces all of a device's tags; its tags after.
    pub async fn set_device_tags(
        &self,
        caller: &Caller,
        id: &str,
        tags: &TagSet,
    ) -> Result<TagSet, OpError> {
        for (key, value) in tags {
            check_key(key)?;
            check_value(key, value)?;
        }
        self.update_tags(caller, id, tags, &[], true).await
    }

    async fn update_tags(
        &self,
        caller: &Caller,
        id: &str,
        set: &TagSet,
        remove: &[String],
        replace: bool,
    ) -> Result<TagSet, OpError> {
        let action = "device.tag";
        self.auditor()
            .authorize(caller, Permission::TagDevices, action, id, "")
            .await?;
        if set.len() > MAX_TAGS_PER_DEVICE {
            return Err(too_many());
        }
        let update = self
            .store()
            .tags
            .update(id, set, remove, replace, MAX_TAGS_PER_DEVICE)
            .await?;
        let tags = match update {
            TagUpdate::Updated(tags) => tags,
            TagUpdate::UnknownDevice => return Err(OpError::unknown_device(id)),
            TagUpdate::TooMany => return Err(too_many()),
        };
        let detail = tags
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(",");
        self.auditor()
            .record(&Action {
                actor: &caller.name,
                action,
                target: id,
                outcome: "ok",
                detail: &detail,
                latency_ms: None,
            })
            .await;
        self.device_layer().events().device(
            "device.tags",
            id,
            json!({ "tags": tags, "at": now_ms() }),
        );
        Ok(tags)
    }
}

fn too_many() -> OpError {
    OpError::bad_request(format!(
        "a device carries at most {MAX_TAGS_PER_DEVICE} tags"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> TagSet {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_selector_needs_every_condition() {
        let selector = TagSelector::parse("site=berlin, env").unwrap();
        assert!(selector.matches(&tags(&[("site", "berlin"), ("env", "prod")])));
        assert!(!selector.matches(&tags(&[("site", "berlin")])));
        assert!(!selector.matches(&tags(&[("site", "paris"), ("env", "prod")])));
        assert!(TagSelector::parse("").unwrap().matches(&TagSet::new()));
    }

    #[test]
    fn bad_keys_and_values_are_refused_with_the_rule() {
        let error = TagSelector::parse("si te=x").unwrap_err();
        assert!(
            error.message.contains("letters, digits"),
            "{}",
            error.message
        );
        assert!(parse_assignments(["site"])
            .unwrap_err()
            .message
            .contains("key=value"));
        assert!(parse_assignments(["site=a\u{7}b"]).is_err());
        assert!(parse_assignments([&*format!("k={}", "v".repeat(129))]).is_err());
        assert_eq!(
            parse_assignments(["site=berlin", "empty="]).unwrap(),
            tags(&[("site", "berlin"), ("empty", "")])
        );
        let many = vec!["k"; MAX_CONDITIONS + 1].join(",");
        assert!(TagSelector::parse(&many).is_err());
    }
}
